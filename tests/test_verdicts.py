"""Verdicts of the paper's claims: the paired test, the bootstrap interval and the verdict rules,
against hand-computed values and an exhaustive sign-flip enumeration."""

import itertools

import numpy as np
import pandas as pd
import pytest

from liftcam_utils.evaluation import verdicts as V


def _rows(values_by_method: dict[str, list[float]], metric="AD") -> pd.DataFrame:
    frames = [pd.DataFrame({"image": [f"im{i}" for i in range(len(v))], "method": m, metric: v})
              for m, v in values_by_method.items()]
    return pd.concat(frames, ignore_index=True)


def test_wilcoxon_six_positive_differences_is_two_over_sixty_four():
    # W+ = 21 is the largest of 2^6 equally likely signings: one-sided 1/64, two-sided 2/64
    assert V.wilcoxon_p(np.array([1.0, 2, 3, 4, 5, 6])) == pytest.approx(2 / 64)
    assert V.wilcoxon_p(np.zeros(5)) == 1.0


def test_wilcoxon_equals_exhaustive_sign_flips():
    d = np.array([0.3, -1.1, 2.4, 0.9, 1.7, -0.2, 3.1, 0.6])
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    mean = ranks.sum() / 2
    sums = [ranks[np.array(s, bool)].sum() for s in itertools.product([0, 1], repeat=len(d))]
    exact = np.mean([abs(s - mean) >= abs(observed - mean) for s in sums])
    assert V.wilcoxon_p(d) == pytest.approx(exact)


def test_bootstrap_interval():
    assert V.bootstrap_interval(np.full(7, 2.5)) == (2.5, 2.5)
    # two values: resampled means are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    assert V.bootstrap_interval(np.array([0.0, 1.0])) == (0.0, 1.0)
    low, high = V.bootstrap_interval(np.arange(100.0), seed=3)
    assert low < 49.5 < high and high - low == pytest.approx(2 * 1.96 * np.arange(100.0).std() / 10, rel=0.15)
    assert V.bootstrap_interval(np.arange(10.0), seed=1) == V.bootstrap_interval(np.arange(10.0), seed=1)


def test_verdicts_follow_direction_and_evidence():
    rng = np.random.default_rng(0)
    base = rng.normal(30, 5, size=30)
    better = base - 3 + rng.normal(0, 0.5, size=30)  # lower AD: better
    noise = base + rng.normal(0, 2, size=30)
    rows = _rows({"liftcam": list(better), "gradcam": list(base), "noisy": list(noise)})
    lower = V.Claim("LIFT-CAM lowers AD vs Grad-CAM", "Table 3", "AD", "liftcam", ("gradcam",), False)
    assert V.judge_claim(rows, lower, "photos")["verdict"] == V.HOLDS
    higher = V.Claim("LIFT-CAM raises AD", "none", "AD", "liftcam", ("gradcam",), True)
    assert V.judge_claim(rows, higher, "photos")["verdict"] == V.CONTRADICTED
    row = V.judge_claim(rows, V.Claim("noise", "none", "AD", "noisy", ("gradcam",), False), "photos")
    assert row["verdict"] == V.NOT_SHOWN and row["CI low"] < 0 < row["CI high"]
    assert row["n"] == 30 and row["mean diff"] == pytest.approx(np.mean(noise - base))


def test_few_images_never_hold():
    # n = 4: the smallest two-sided Wilcoxon p is 2 / 16 = 0.125 > 0.05, however large the effect
    rows = _rows({"a": [10.0, 11, 12, 13], "b": [0.0, 0, 0, 0]}, "ADD")
    row = V.judge_claim(rows, V.Claim("a beats b", "none", "ADD", "a", ("b",)), "x")
    assert row["p"] == pytest.approx(0.125) and row["verdict"] == V.NOT_SHOWN


def test_claim_against_several_competitors():
    rng = np.random.default_rng(1)
    a = rng.normal(0.9, 0.02, 40)
    close = a + 0.01 + rng.normal(0, 0.002, 40)
    rows = _rows({"liftcam": list(a), "gradcam": list(a - 0.5), "ablationcam": list(close)}, "cosine")
    best = V.Claim("LIFT-CAM highest", "Table 2", "cosine", "liftcam", ("gradcam", "ablationcam"))
    row = V.judge_claim(rows, best, "photos")
    assert row["verdict"] == V.CONTRADICTED and row["versus"] == "ablationcam"
    only_gradcam = V.Claim("LIFT-CAM above Grad-CAM", "Table 2", "cosine", "liftcam", ("gradcam",))
    table = V.verdict_table({"photos": rows}, [best, only_gradcam])
    assert list(table["verdict"]) == [V.CONTRADICTED, V.HOLDS]
    assert V.verdict_counts(table).to_dict() == {V.HOLDS: 1, V.NOT_SHOWN: 0, V.CONTRADICTED: 1}
    assert "CONTRADICTED" in V.describe(table) and "n = 40" in V.describe(table)


def test_bad_input_is_refused():
    rows = _rows({"a": [1.0, 2.0], "b": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="no rows for method"):
        V.judge_claim(rows, V.Claim("s", "t", "AD", "a", ("c",)), "x")
    with pytest.raises(ValueError, match="no column"):
        V.judge_claim(rows, V.Claim("s", "t", "ADD", "a", ("b",)), "x")
    with pytest.raises(ValueError, match="versus"):
        V.Claim("s", "t", "AD", "a", ("a",))
    with pytest.raises(ValueError, match="NaN"):
        V.paired_comparison(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    # NaN rows of a metric (undefined on an image) are dropped before pairing
    assert V.judge_claim(rows, V.Claim("s", "t", "AD", "a", ("b",)), "x")["n"] == 1


def test_require_prints_the_statement_or_raises_with_the_numbers(capsys):
    from liftcam_utils.evaluation.checks import ScienceCheckError, require

    require("random below every method", True, "not shown")
    assert capsys.readouterr().out == "check: random below every method\n"
    with pytest.raises(ScienceCheckError, match=r"random below every method: does NOT hold \(AD 91 < 20\)"):
        require("random below every method", False, "AD 91 < 20")
