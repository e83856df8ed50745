"""The paper's claims tested on our data: a paired test, a bootstrap interval and a computed verdict.

Every claim the notebooks test compares methods on the *same* images, e.g. "LIFT-CAM lowers Average
Drop vs Grad-CAM" (Table 3) or "LIFT-CAM has the highest cosine to SHAP-CAM_10k" (Table 2). For one
claim of method ``a`` against method ``b`` on metric ``m`` the per-image differences are

    d_i = m_a(i) - m_b(i),    i = 1 .. n,

and the *improvement* is ``d_i`` where higher is better and ``-d_i`` where lower is better, so that a
positive improvement is what the paper claims. Two things are computed from them:

* a two-sided Wilcoxon signed-rank test of "the improvements are symmetric about 0" (scipy; zero
  differences are dropped, as Wilcoxon proposed; p = 1 when every difference is 0), and
* a seeded percentile bootstrap 95 % interval of the mean difference (images resampled with
  replacement).

The verdict is computed from both, never written by hand:

* ``holds``: p < ``alpha`` and the whole interval lies on the claimed side of 0;
* ``contradicted``: p < ``alpha`` and the whole interval lies on the other side;
* ``not shown at this n``: anything else (too few images, or no difference to find).

A claim against several methods ("the highest of all") is the intersection of its pairwise claims:
it holds only if it holds against every competitor (an intersection-union test, so no correction is
needed), and it is contradicted if any competitor beats it at ``alpha / k`` (Bonferroni over the k
competitors). The row reported is the competitor that decides the verdict: the one that contradicts
it, else the closest one (largest p).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

HOLDS = "holds"
NOT_SHOWN = "not shown at this n"
CONTRADICTED = "contradicted"
VERDICTS = (HOLDS, NOT_SHOWN, CONTRADICTED)
ALPHA = 0.05
N_BOOTSTRAP = 10_000
COLUMNS = ("setup", "claim", "source", "metric", "method", "versus", "ours", "theirs", "mean diff",
           "CI low", "CI high", "n", "p", "verdict")


@dataclass(frozen=True)
class Claim:
    """A claim of the paper: ``method`` is better than each of ``versus`` on ``metric``.

    ``statement`` says it in words ("LIFT-CAM lowers AD vs Grad-CAM"), ``source`` where the paper makes
    it ("Table 3"); ``higher_is_better`` gives the metric's direction (False for AD and deletion AUC).
    """

    statement: str
    source: str
    metric: str
    method: str
    versus: tuple[str, ...]
    higher_is_better: bool = True

    def __post_init__(self):
        if isinstance(self.versus, str):
            object.__setattr__(self, "versus", (self.versus,))
        if not self.versus or self.method in self.versus:
            raise ValueError(f"claim {self.statement!r}: versus must name other methods than {self.method!r}, "
                             f"got {self.versus!r}")


@dataclass(frozen=True)
class PairedComparison:
    """The per-image comparison of two methods; ``mean_diff`` and the interval are ``a - b``."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p: float

    def verdict(self, higher_is_better: bool, alpha: float = ALPHA) -> str:
        """``holds`` / ``contradicted`` / ``not shown at this n`` (see the module docstring)."""
        low, high = (self.ci_low, self.ci_high) if higher_is_better else (-self.ci_high, -self.ci_low)
        if self.p < alpha and low > 0:
            return HOLDS
        if self.p < alpha and high < 0:
            return CONTRADICTED
        return NOT_SHOWN


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1 when all are zero."""
    from scipy.stats import wilcoxon

    differences = np.asarray(differences, dtype=float)
    if not np.any(differences != 0):
        return 1.0
    return float(wilcoxon(differences).pvalue)


def bootstrap_interval(values: np.ndarray, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded, resampling with replacement)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("a bootstrap interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_bootstrap, values.size))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_comparison(a: np.ndarray, b: np.ndarray, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0
                      ) -> PairedComparison:
    """Compare two methods' per-image values ``a`` and ``b`` (same images, same order)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two 1-d arrays of one length, got {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired values contain NaN: drop the images a metric is undefined on first")
    diff = a - b
    low, high = bootstrap_interval(diff, n_bootstrap, seed)
    return PairedComparison(n=len(diff), mean_a=float(a.mean()), mean_b=float(b.mean()),
                            mean_diff=float(diff.mean()), ci_low=low, ci_high=high, p=wilcoxon_p(diff))


def _per_image(rows: pd.DataFrame, metric: str, methods: Sequence[str]) -> pd.DataFrame:
    """``rows`` (one row per image and method, as ``evaluate`` returns) as images x methods."""
    missing = [m for m in methods if m not in set(rows["method"])]
    if missing:
        raise ValueError(f"no rows for method(s) {missing}; rows have {sorted(set(rows['method']))}")
    if metric not in rows.columns:
        raise ValueError(f"rows have no column {metric!r}; columns: {list(rows.columns)}")
    wide = rows[rows["method"].isin(methods)].pivot(index="image", columns="method", values=metric)
    return wide[list(methods)].dropna()


def judge_claim(rows: pd.DataFrame, claim: Claim, setup: str, alpha: float = ALPHA,
               n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """One row of the verdict table: ``claim`` tested on ``rows`` (images present for every method)."""
    wide = _per_image(rows, claim.metric, (claim.method, *claim.versus))
    comparisons = {other: paired_comparison(wide[claim.method].to_numpy(), wide[other].to_numpy(), n_bootstrap,
                                            seed) for other in claim.versus}
    k = len(comparisons)
    pairwise = {other: c.verdict(claim.higher_is_better, alpha) for other, c in comparisons.items()}
    beaten_by = [o for o, c in comparisons.items() if c.verdict(claim.higher_is_better, alpha / k) == CONTRADICTED]
    if beaten_by:
        deciding = min(beaten_by, key=lambda o: comparisons[o].p)
        verdict = CONTRADICTED
    else:
        deciding = max(comparisons, key=lambda o: comparisons[o].p)
        verdict = HOLDS if all(v == HOLDS for v in pairwise.values()) else NOT_SHOWN
    c = comparisons[deciding]
    return {"setup": setup, "claim": claim.statement, "source": claim.source, "metric": claim.metric,
            "method": claim.method, "versus": deciding, "ours": c.mean_a, "theirs": c.mean_b,
            "mean diff": c.mean_diff, "CI low": c.ci_low, "CI high": c.ci_high, "n": c.n, "p": c.p,
            "verdict": verdict}


def verdict_table(rows_by_setup: dict[str, pd.DataFrame], claims: Sequence[Claim], alpha: float = ALPHA,
                  n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Every claim on every setup (e.g. ``{"photos": rows, "scenes": rows}``): one row each, in order.

    ``ours`` and ``theirs`` are the means of the claimed method and of the deciding competitor,
    ``mean diff`` and its 95 % bootstrap interval are ``ours - theirs``, ``p`` is Wilcoxon's.
    """
    table = [judge_claim(rows, claim, setup, alpha, n_bootstrap, seed)
             for setup, rows in rows_by_setup.items() for claim in claims]
    return pd.DataFrame(table, columns=list(COLUMNS)).set_index(["setup", "claim"])


def describe(table: pd.DataFrame, names: dict[str, str] | None = None) -> str:
    """One sentence per verdict row, for the narrative: the verdict with its numbers."""
    names = names or {}
    lines = []
    for (setup, claim), row in table.iterrows():
        lines.append(f"{setup}: {claim} ({row['source']}): {row['verdict'].upper()}; {row['metric']} "
                     f"{names.get(row['method'], row['method'])} {row['ours']:.3g} vs "
                     f"{names.get(row['versus'], row['versus'])} {row['theirs']:.3g}, difference "
                     f"{row['mean diff']:+.3g} [95 % CI {row['CI low']:+.3g}, {row['CI high']:+.3g}], "
                     f"n = {row['n']}, Wilcoxon p = {row['p']:.2g}")
    return "\n".join(lines)


def verdict_counts(table: pd.DataFrame) -> pd.Series:
    """How many claims hold, are not shown and are contradicted."""
    return table["verdict"].value_counts().reindex(list(VERDICTS), fill_value=0)
