"""The paper's claims tested on our data: one procedure from per-image rows to a computed verdict.

The procedure is written out, with its reasons, in ``docs/statistics.md``. In short, for a claim
"``method`` is better than ``versus`` on ``metric``" (e.g. "LIFT-CAM lowers Average Drop vs Grad-CAM",
Table 3) on one setup:

1. **The quantity** is the one the paper's tables report: the mean over images of the metric, so the
   claim is about the mean paired difference ``d_i = m_method(i) - m_versus(i)``. Its *improvement*
   is ``d_i`` where higher is better and ``-d_i`` where lower is better; ``|d_i|`` below float noise
   (``1e-6`` of the metric's scale) is a tie.
2. **Independent units.** Images that share a source (a mosaic's photos, a VQA image's questions)
   are not independent: rows carry a ``unit`` column and everything below resamples and flips
   whole units. Without one, each image is its own unit.
3. **The test** is a paired sign-flip permutation test of the mean improvement in the claimed
   direction (``scipy.stats.permutation_test``; exact up to 14 non-zero units, else seeded Monte
   Carlo), and the same test in the other direction. It tests the claim's own quantity, needs no
   normal approximation for 0/1 metrics such as IC, and ties and zeros need no special rule.
4. **The interval** is a seeded BCa bootstrap 95 % interval of the mean difference with units
   resampled (``scipy.stats.bootstrap``).
5. **The margin** is the smallest improvement that counts: the metric's practical difference
   (:data:`PRACTICAL_MARGINS`), or half the paper's own gap for the same comparison (on ImageNet)
   where the paper reports one and that is smaller. An equivalence test (TOST, ``statsmodels``)
   asks whether the improvement lies within it.
6. **Multiplicity.** Holm's step-down adjustment (``statsmodels.stats.multitest.multipletests``)
   over the distinct comparisons of a family, the paper's claims and the claims beyond the paper
   separately, for each of the three tests.
7. **The verdict**, in this order: *negligible* (equivalence shown, adjusted TOST p < ``alpha``),
   *holds* (adjusted p in the claimed direction < ``alpha``), *contradicted* (adjusted p in the
   other direction < ``alpha``), *cannot be shown at this n* (even the most extreme signs of these
   non-zero units give p > ``alpha``: at most 4 of them), else *not shown at this n*.

A claim against several methods ("the highest of all") holds only if it holds against each of
them (an intersection-union test) and is contradicted if any of them beats it; the row shown is the
competitor that decides. Two comparisons with the same per-image improvements (a method equal to
another one here, e.g. ShapleyCAM and Grad-CAM with the logit utility) are one piece of evidence:
they enter the Holm family once, and :func:`verdict_counts` counts each piece of evidence once.

A *reference draw* column ``draw`` (e.g. cosines to references drawn with different seeds) carries
the reference's own error: the claim is judged on every draw, its p-values are the largest and its
interval the union over the draws.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW

HOLDS = "holds"
NEGLIGIBLE = "negligible"
CONTRADICTED = "contradicted"
NOT_SHOWN = "not shown at this n"
CANNOT_BE_SHOWN = "cannot be shown at this n"
VERDICTS = (HOLDS, NEGLIGIBLE, CONTRADICTED, NOT_SHOWN, CANNOT_BE_SHOWN)
PAPER, BEYOND = "paper", "beyond the paper"
ALPHA = 0.05
N_PERMUTATIONS = 20_000
N_BOOTSTRAP = 10_000
RELATIVE_TIE = 1e-6

# The smallest improvement that counts, for claims the paper gives no number for (in the metric's units as the
# rows hold them: IC/AD/ADD and the energy pointing game in %, the others as fractions). One point of a
# percentage and 0.01 of a cosine are the last digits the paper's own tables read as differences (Tables 3, 5
# print IC to 0.1, Table 2 cosines to 0.001 with gaps of 0.008 and more); 0.005 of an AUC or a ROAD score is
# half the smallest insertion gap of Table 4 between LIFT-CAM and Grad-CAM (0.0285).
PRACTICAL_MARGINS = {"IC": 1.0, "AD": 1.0, "ADD": 1.0, "pointing": 1.0, "cosine": 0.01, "insertion_auc": 0.005,
                     "deletion_auc": 0.005, "road_morf": 0.005, "road_lerf": 0.005}

LONG_COLUMNS = (
    "setup", "claim", "source", "family", "metric", "method", "versus", "higher is better", "margin",
    "margin source", "paper diff", "units", "images", "non-zero", "ours", "theirs", "diff", "CI low", "CI high",
    "median diff", "better", "worse", "p better", "p worse", "p equivalent", "min p", "power at paper's effect",
    "evidence")
DECIDED_COLUMNS = ("adj p better", "adj p worse", "adj p equivalent", "pairwise verdict", "verdict", "deciding",
                   "same evidence as", "note")


@dataclass(frozen=True)
class Claim:
    """A claim: ``method`` is better than each of ``versus`` on ``metric``.

    ``statement`` says it in words ("LIFT-CAM lowers AD vs Grad-CAM"), ``source`` where the paper makes it
    ("Table 3"); ``higher_is_better`` gives the metric's direction (False for AD and deletion AUC).
    ``paper_diff`` is the paper's own difference ``method - closest competitor`` on ImageNet, in the rows'
    units (:func:`liftcam_utils.evaluation.paper.gap`). The margin is ``margin`` where given, else the
    smaller of the metric's :data:`PRACTICAL_MARGINS` and half the paper's gap: an effect too small to
    matter is *negligible* however large the paper's was, and a real effect above the practical
    difference is never called negligible because the paper's was larger. ``beyond_paper`` puts the claim in the
    family of claims the paper does not make.
    """

    statement: str
    source: str
    metric: str
    method: str
    versus: tuple[str, ...]
    higher_is_better: bool = True
    paper_diff: float | None = None
    margin: float | None = None
    beyond_paper: bool = False

    def __post_init__(self):
        if isinstance(self.versus, str):
            object.__setattr__(self, "versus", (self.versus,))
        if not self.versus or self.method in self.versus:
            raise ValueError(f"claim {self.statement!r}: versus must name other methods than {self.method!r}, "
                             f"got {self.versus!r}")
        if self.margin is not None and not (np.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"claim {self.statement!r}: margin must be a positive number, got {self.margin!r}")
        if self.paper_diff is not None:
            if not np.isfinite(self.paper_diff) or self.paper_diff == 0:
                raise ValueError(f"claim {self.statement!r}: paper_diff must be a non-zero number, "
                                 f"got {self.paper_diff!r}")
        if self.margin is None and self.paper_diff is None and self.metric not in PRACTICAL_MARGINS:
            raise ValueError(f"claim {self.statement!r}: metric {self.metric!r} has no practical margin; give "
                             f"margin= or paper_diff= (practical margins exist for {sorted(PRACTICAL_MARGINS)})")

    @property
    def family(self) -> str:
        return BEYOND if self.beyond_paper else PAPER

    def margin_and_source(self) -> tuple[float, str]:
        """The smallest improvement that counts and where it comes from."""
        if self.margin is not None:
            return float(self.margin), "given"
        practical = PRACTICAL_MARGINS.get(self.metric)
        if self.paper_diff is not None and (practical is None or abs(self.paper_diff) / 2 < practical):
            return abs(self.paper_diff) / 2, "half the paper's gap"
        return practical, "practical"


@dataclass(frozen=True)
class Comparison:
    """One method against one competitor on one setup: the statistics before any multiplicity adjustment.

    ``diff`` and its interval are ``ours - theirs`` in the metric's units; ``better`` / ``worse`` count the
    units whose improvement (in the claimed direction) is above / below float noise; ``p_better`` and
    ``p_worse`` are the one-sided sign-flip p-values of the mean improvement, ``p_equivalent`` the TOST
    p-value of ``|mean improvement| < margin``, ``min_p`` the smallest ``p_better`` these units allow."""

    units: int
    images: int
    ours: float
    theirs: float
    diff: float
    ci_low: float
    ci_high: float
    median_diff: float
    better: int
    worse: int
    p_better: float
    p_worse: float
    p_equivalent: float
    min_p: float
    power: float

    @property
    def non_zero(self) -> int:
        return self.better + self.worse


def _unit_sums(values: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per independent unit: the sum of ``values`` over its images and the number of images."""
    _, index = np.unique(units, return_inverse=True)
    return np.bincount(index, weights=values), np.bincount(index).astype(float)


def _sign_flip_ps(sums: np.ndarray, n_images: int, n_permutations: int, seed: int) -> tuple[float, float]:
    """One-sided p-values (greater, less) of the mean improvement ``sum(sums) / n_images`` against sign
    flips of whole units (``scipy.stats.permutation_test``). Zero units change nothing and are left out, so
    the test is exact while ``2 ** non-zero <= n_permutations``. Sign flips make the null distribution
    symmetric about 0, so its draws give both tails; they are counted as scipy counts its own tail."""
    sums = sums[sums != 0]
    if sums.size == 0:
        return 1.0, 1.0
    if sums.size == 1:  # two signings, the observed one and its mirror (scipy needs two observations)
        return (0.5, 1.0) if sums[0] > 0 else (1.0, 0.5)
    result = stats.permutation_test((sums,), lambda x, axis: x.sum(axis=axis) / n_images, vectorized=True,
                                    permutation_type="samples", alternative="greater",
                                    n_resamples=n_permutations, rng=np.random.default_rng(seed))
    null, observed = result.null_distribution, result.statistic
    tolerance = abs(observed) * np.finfo(float).eps * 100
    at_most = np.count_nonzero(-null <= observed + tolerance)  # the lower tail, mirrored
    exact = 2 ** sums.size <= n_permutations
    p_less = at_most / null.size if exact else (at_most + 1) / (null.size + 1)
    return float(result.pvalue), float(min(p_less, 1.0))


def _bootstrap_interval(sums: np.ndarray, counts: np.ndarray, tie: float, n_bootstrap: int, seed: int,
                        level: float = 0.95) -> tuple[float, float]:
    """BCa bootstrap interval of ``sum(sums) / sum(counts)`` with whole units resampled; every unit mean equal
    (within ``tie``) gives the point itself."""
    mean = sums.sum() / counts.sum()
    if sums.size < 2 or np.ptp(sums / counts) <= tie:
        return (mean, mean) if sums.size >= 2 else (float("nan"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((sums, counts), lambda s, c, axis: s.sum(axis=axis) / c.sum(axis=axis),
                                 paired=True, vectorized=True, n_resamples=n_bootstrap, confidence_level=level,
                                 method="BCa", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def mean_interval(values: np.ndarray, units: np.ndarray | None = None, n_bootstrap: int = N_BOOTSTRAP,
                  seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """BCa bootstrap interval of the mean of ``values`` (e.g. one method's per-image scores, for error bars),
    resampling whole ``units`` (default: each value its own unit), as the verdicts' intervals do."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"an interval needs a non-empty 1-d array of finite values, got shape {values.shape}")
    sums, counts = _unit_sums(values, np.arange(values.size) if units is None else np.asarray(units))
    tie = RELATIVE_TIE * max(1.0, np.abs(values).max())
    return _bootstrap_interval(sums, counts, tie, n_bootstrap, seed, level)


def _equivalence_p(contributions: np.ndarray, margin: float) -> float:
    """TOST p (Schuirmann's two one-sided t-tests, statsmodels) that the mean of ``contributions`` lies in
    ``(-margin, margin)``; each unit's contribution is scaled so that their mean is the mean over images."""
    if contributions.size < 2:
        return 1.0
    if np.ptp(contributions) == 0:
        return 0.0 if abs(contributions[0]) < margin else 1.0
    return float(DescrStatsW(contributions).ttost_mean(-margin, margin)[0])


def _power(contributions: np.ndarray, paper_improvement: float | None, alpha: float) -> float:
    """Approximate power of the one-sided test to show the paper's improvement at these units' spread
    (normal approximation: ``1 - Phi(z_(1 - alpha) - effect / se)``); NaN without a paper number."""
    if paper_improvement is None or contributions.size < 2:
        return float("nan")
    se = contributions.std(ddof=1) / np.sqrt(contributions.size)
    if se == 0:
        return 1.0 if paper_improvement > 0 else 0.0
    return float(stats.norm.sf(stats.norm.ppf(1 - alpha) - paper_improvement / se))


def compare(ours: np.ndarray, theirs: np.ndarray, units: np.ndarray | None = None, higher_is_better: bool = True,
            margin: float = 1.0, paper_diff: float | None = None, alpha: float = ALPHA,
            n_permutations: int = N_PERMUTATIONS, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> Comparison:
    """Compare two methods' per-image values (same images, same order), ``units`` naming each image's
    independent unit (default: every image its own). See the module docstring for each statistic."""
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if ours.shape != theirs.shape or ours.ndim != 1 or ours.size == 0:
        raise ValueError(f"paired values must be two non-empty 1-d arrays of one length, got {ours.shape} and "
                         f"{theirs.shape}")
    if not (np.isfinite(ours).all() and np.isfinite(theirs).all()):
        raise ValueError("paired values contain NaN or infinity: drop the images a metric is undefined on first")
    units = np.arange(ours.size) if units is None else np.asarray(units)
    if units.shape != ours.shape:
        raise ValueError(f"units must name one unit per image: {units.shape} for {ours.shape} values")
    sign = 1.0 if higher_is_better else -1.0
    tie = RELATIVE_TIE * max(1.0, np.abs(ours).max(), np.abs(theirs).max())
    diff = ours - theirs
    improvement = np.where(np.abs(diff) <= tie, 0.0, sign * diff)
    sums, counts = _unit_sums(improvement, units)
    sums[np.abs(sums) <= tie * counts] = 0.0
    n_images = ours.size
    contributions = sums * sums.size / n_images
    low, high = _bootstrap_interval(sums, counts, tie, n_bootstrap, seed)
    interval = (low, high) if sign > 0 else (-high, -low)
    better, worse = int((sums > 0).sum()), int((sums < 0).sum())
    p_better, p_worse = _sign_flip_ps(sums, n_images, n_permutations, seed)
    non_zero = better + worse
    exact = 2 ** non_zero <= n_permutations  # scipy enumerates every sign flip, else draws n_permutations
    min_p = 2.0 ** -non_zero if exact else max(2.0 ** -non_zero, 1 / (n_permutations + 1))
    return Comparison(
        units=int(sums.size), images=int(n_images), ours=float(ours.mean()), theirs=float(theirs.mean()),
        diff=float(sign * sums.sum() / n_images), ci_low=interval[0], ci_high=interval[1],
        median_diff=float(sign * np.median(sums / counts)), better=better, worse=worse,
        p_better=p_better, p_worse=p_worse,
        p_equivalent=_equivalence_p(contributions, margin), min_p=float(min_p),
        power=_power(contributions, None if paper_diff is None else sign * paper_diff, alpha))


def _combine_draws(comparisons: list[Comparison]) -> Comparison:
    """A comparison judged against several reference draws: the largest p-values, the union of the
    intervals (the reference's own error widens it), the mean numbers, and the unit counts and median
    of the least favourable draw (largest ``p_better``)."""
    if len(comparisons) == 1:
        return comparisons[0]
    worst = max(comparisons, key=lambda c: c.p_better)

    def mean(name):
        return float(np.mean([getattr(c, name) for c in comparisons]))

    return dataclasses.replace(
        worst, ours=mean("ours"), theirs=mean("theirs"), diff=mean("diff"),
        ci_low=min(c.ci_low for c in comparisons), ci_high=max(c.ci_high for c in comparisons),
        p_worse=max(c.p_worse for c in comparisons), p_equivalent=max(c.p_equivalent for c in comparisons),
        min_p=max(c.min_p for c in comparisons), power=min(c.power for c in comparisons))


def _wide(rows: pd.DataFrame, metric: str, methods: Sequence[str]) -> pd.DataFrame:
    """``rows`` (one row per image and method, as ``evaluate`` returns; optional ``unit`` and ``draw``
    columns) as (image, unit, draw) x methods, images where some method's value is NaN dropped."""
    missing = [m for m in methods if m not in set(rows["method"])]
    if missing:
        raise ValueError(f"no rows for method(s) {missing}; rows have {sorted(set(rows['method']))}")
    if metric not in rows.columns:
        raise ValueError(f"rows have no column {metric!r}; columns: {list(rows.columns)}")
    rows = rows[rows["method"].isin(methods)].copy()
    rows["unit"] = rows["unit"] if "unit" in rows else rows["image"]
    rows["draw"] = rows["draw"] if "draw" in rows else 0
    units_per_image = rows.groupby("image")["unit"].nunique()
    if (units_per_image > 1).any():
        raise ValueError(f"image {units_per_image.idxmax()!r} is in more than one unit: each image needs one unit")
    if rows.duplicated(["image", "draw", "method"]).any():
        raise ValueError("rows hold more than one value for an (image, draw, method): one row each")
    wide = rows.pivot(index=["image", "unit", "draw"], columns="method", values=metric)
    return wide[list(methods)].dropna()


def _evidence(setup: str, metric: str, higher_is_better: bool, wide: pd.DataFrame, method: str, other: str) -> str:
    """An id of the evidence: equal for two comparisons whose every per-image value is the same."""
    digest = hashlib.sha256(f"{setup}|{metric}|{higher_is_better}|{method}".encode())
    digest.update(np.ascontiguousarray(wide[[method, other]].to_numpy()).tobytes())
    digest.update(repr(wide.index.tolist()).encode())
    return digest.hexdigest()[:12]


def claim_comparisons(rows: pd.DataFrame, claim: Claim, setup: str, alpha: float = ALPHA,
                      n_permutations: int = N_PERMUTATIONS, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0
                      ) -> pd.DataFrame:
    """``claim`` on ``rows``: one row of :data:`LONG_COLUMNS` per competitor, nothing decided yet."""
    wide = _wide(rows, claim.metric, (claim.method, *claim.versus))
    if wide.empty:
        raise ValueError(f"claim {claim.statement!r} on {setup!r}: no image has a {claim.metric} value for "
                         f"every one of {[claim.method, *claim.versus]}")
    margin, margin_source = claim.margin_and_source()
    out = []
    for other in claim.versus:
        by_draw = [compare(part[claim.method].to_numpy(), part[other].to_numpy(),
                           part.index.get_level_values("unit").to_numpy(), claim.higher_is_better, margin,
                           claim.paper_diff, alpha, n_permutations, n_bootstrap, seed)
                   for _, part in wide.groupby(level="draw")]
        c = _combine_draws(by_draw)
        out.append({
            "setup": setup, "claim": claim.statement, "source": claim.source, "family": claim.family,
            "metric": claim.metric, "method": claim.method, "versus": other,
            "higher is better": claim.higher_is_better, "margin": margin, "margin source": margin_source,
            "paper diff": np.nan if claim.paper_diff is None else claim.paper_diff, "units": c.units,
            "images": c.images, "non-zero": c.non_zero, "ours": c.ours, "theirs": c.theirs, "diff": c.diff,
            "CI low": c.ci_low, "CI high": c.ci_high, "median diff": c.median_diff, "better": c.better,
            "worse": c.worse, "p better": c.p_better, "p worse": c.p_worse, "p equivalent": c.p_equivalent,
            "min p": c.min_p, "power at paper's effect": c.power,
            "evidence": _evidence(setup, claim.metric, claim.higher_is_better, wide, claim.method, other)})
    return pd.DataFrame(out, columns=list(LONG_COLUMNS))


def claims_of(table: pd.DataFrame) -> dict[str, list[Claim]]:
    """The claims behind a (saved) long table, per setup: with the per-image rows saved beside it
    (:func:`liftcam_utils.evaluation.report.save_rows`), ``verdict_table(rows, claims_of(table))`` recomputes it."""
    claims: dict[str, list[Claim]] = {}
    for (setup, statement), pairs in table.groupby(["setup", "claim"], sort=False):
        first = pairs.iloc[0]
        paper_diff = None if pd.isna(first["paper diff"]) else float(first["paper diff"])
        claims.setdefault(setup, []).append(Claim(
            statement, first["source"], first["metric"], first["method"], tuple(pairs["versus"]),
            bool(first["higher is better"]), paper_diff,
            float(first["margin"]) if first["margin source"] == "given" else None, first["family"] == BEYOND))
    return claims


def _holm(p: pd.Series) -> np.ndarray:
    return multipletests(p.to_numpy(), method="holm")[1] if len(p) else np.array([])


def _pairwise_verdict(row: pd.Series, alpha: float) -> str:
    if row["adj p equivalent"] < alpha:
        return NEGLIGIBLE
    if row["adj p better"] < alpha:
        return HOLDS
    if row["adj p worse"] < alpha:
        return CONTRADICTED
    return CANNOT_BE_SHOWN if row["min p"] > alpha else NOT_SHOWN


def _claim_verdict(pairs: pd.DataFrame) -> tuple[str, int]:
    """The claim's verdict from its pairwise verdicts and the index of the deciding competitor's row: the
    competitor that contradicts it most clearly, else the closest one (largest p, then smallest improvement)."""
    verdict = pairs["pairwise verdict"]
    improvement = pairs["diff"].where(pairs["higher is better"], -pairs["diff"])
    ranked = pairs.assign(improvement=improvement)

    def closest(rows: pd.DataFrame, p: str) -> int:
        return rows.sort_values([p, "improvement"], ascending=[False, True], kind="stable").index[0]

    if (verdict == CONTRADICTED).any():
        losing = ranked[verdict == CONTRADICTED]
        return CONTRADICTED, losing.sort_values(["adj p worse", "improvement"], kind="stable").index[0]
    if (verdict == HOLDS).all():
        return HOLDS, closest(ranked, "adj p better")
    if verdict.isin([HOLDS, NEGLIGIBLE]).all():
        return NEGLIGIBLE, closest(ranked[verdict == NEGLIGIBLE], "adj p equivalent")
    open_ = ranked[verdict.isin([NOT_SHOWN, CANNOT_BE_SHOWN])]
    deciding = closest(open_, "adj p better")
    return open_.loc[deciding, "pairwise verdict"], deciding


def _note(row: pd.Series) -> str:
    """Where the mean and the majority of units point different ways, say so."""
    if row["better"] == row["worse"] or row["diff"] == 0:
        return ""
    improvement = row["diff"] if row["higher is better"] else -row["diff"]
    if improvement > 0 and row["worse"] > row["better"]:
        return (f"mean and majority disagree: the mean favours {row['method']}, but {row['worse']} of "
                f"{row['non-zero']} non-zero units favour {row['versus']}")
    if improvement < 0 and row["better"] > row["worse"]:
        return (f"mean and majority disagree: the mean favours {row['versus']}, but {row['better']} of "
                f"{row['non-zero']} non-zero units favour {row['method']}")
    return ""


def decide(long: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust a long table (:func:`claim_comparisons` rows of one or several notebooks) within each
    family over its distinct pieces of evidence, and compose each claim's verdict.

    Adds :data:`DECIDED_COLUMNS`; ``deciding`` marks the competitor each claim's verdict rests on, and
    ``same evidence as`` names an earlier claim whose deciding evidence is the same (it is not counted twice)."""
    long = long.reset_index(drop=True).copy()
    long["family"] = long["family"].astype(str)
    for column in DECIDED_COLUMNS:
        long[column] = np.nan if column.startswith("adj") else ""
    long["deciding"] = False
    family_of = long.groupby("evidence")["family"].agg(lambda f: PAPER if (f == PAPER).any() else BEYOND)
    distinct = long.drop_duplicates("evidence").set_index("evidence")
    adjusted = {}
    for family in (PAPER, BEYOND):
        members = distinct[family_of.reindex(distinct.index) == family]
        adjusted.update({(evidence, name): value
                         for name in ("p better", "p worse", "p equivalent")
                         for evidence, value in zip(members.index, _holm(members[name]), strict=True)})
    for name in ("p better", "p worse", "p equivalent"):
        long[f"adj {name}"] = [adjusted[(e, name)] for e in long["evidence"]]
    long["pairwise verdict"] = long.apply(_pairwise_verdict, axis=1, alpha=alpha)
    seen: dict[str, str] = {}
    claim_keys = [key for key in ("notebook", "setup", "claim") if key in long.columns]
    for _, pairs in long.groupby(claim_keys, sort=False):
        verdict, deciding = _claim_verdict(pairs)
        long.loc[pairs.index, "verdict"] = verdict
        long.loc[deciding, "deciding"] = True
        first = seen.setdefault(long.loc[deciding, "evidence"], long.loc[deciding, "claim"])
        if first != long.loc[deciding, "claim"]:
            long.loc[deciding, "same evidence as"] = first
        long.loc[deciding, "note"] = _note(long.loc[deciding])
    return long


def verdict_table(rows_by_setup: Mapping[str, pd.DataFrame], claims: Sequence[Claim] | Mapping[str, Sequence[Claim]],
                  alpha: float = ALPHA, n_permutations: int = N_PERMUTATIONS, n_bootstrap: int = N_BOOTSTRAP,
                  seed: int = 0) -> pd.DataFrame:
    """Every claim on every setup (e.g. ``{"photos": rows, "scenes": rows}``; ``claims`` either one list for
    every setup or a list per setup), tested and decided together: the long table (one row per claim and
    competitor; :func:`summary` shows one row per claim)."""
    if isinstance(claims, Mapping):
        unknown = set(claims) - set(rows_by_setup)
        if unknown:
            raise ValueError(f"claims for setup(s) {sorted(unknown)} without rows; setups: {list(rows_by_setup)}")
    per_setup = {setup: claims.get(setup, ()) if isinstance(claims, Mapping) else claims for setup in rows_by_setup}
    long = pd.concat([claim_comparisons(rows, claim, setup, alpha, n_permutations, n_bootstrap, seed)
                      for setup, rows in rows_by_setup.items() for claim in per_setup[setup]], ignore_index=True)
    return decide(long, alpha)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (its deciding competitor): the numbers a reader needs, indexed by (setup, claim)."""
    shown = table[table["deciding"]]
    columns = ["source", "family", "metric", "method", "versus", "ours", "theirs", "diff", "CI low", "CI high",
               "paper diff", "margin", "margin source", "units", "non-zero", "better", "worse", "median diff",
               "adj p better", "adj p worse", "adj p equivalent", "power at paper's effect", "verdict",
               "same evidence as", "note"]
    return shown.set_index(["setup", "claim"])[columns]


def describe(table: pd.DataFrame, names: Mapping[str, str] | None = None) -> str:
    """One sentence per claim, for the narrative: the verdict with its numbers."""
    names = names or {}
    lines = []
    for (setup, claim), row in summary(table).iterrows():
        name, other = names.get(row["method"], row["method"]), names.get(row["versus"], row["versus"])
        paper = "" if pd.isna(row["paper diff"]) else f"; paper {row['paper diff']:+.3g}"
        p = row["adj p better"] if row["verdict"] != CONTRADICTED else row["adj p worse"]
        p_name = "p" if row["verdict"] != CONTRADICTED else "p (other way)"
        if row["verdict"] == NEGLIGIBLE:
            p, p_name = row["adj p equivalent"], "TOST p"
        extra = f"; same evidence as {row['same evidence as']!r}" if row["same evidence as"] else ""
        extra += f"; {row['note']}" if row["note"] else ""
        lines.append(
            f"{setup}: {claim} ({row['source']}): {row['verdict'].upper()}; {row['metric']} {name} "
            f"{row['ours']:.3g} vs {other} {row['theirs']:.3g}, difference {row['diff']:+.3g} "
            f"[95 % CI {row['CI low']:+.3g}, {row['CI high']:+.3g}]{paper}, margin {row['margin']:.3g}; "
            f"{row['better']} of {row['non-zero']} non-zero units better ({row['units']} units); Holm-adjusted "
            f"{p_name} = {p:.2g}{extra}")
    return "\n".join(lines)


def verdict_counts(table: pd.DataFrame) -> pd.DataFrame:
    """How many claims of each family get each verdict, each piece of evidence counted once."""
    counted = summary(table)
    counted = counted[counted["same evidence as"] == ""]
    counts = counted.groupby(["family", "verdict"]).size().unstack("verdict", fill_value=0)
    return counts.reindex(columns=list(VERDICTS), fill_value=0)
