"""The verdict procedure (liftcam_utils.evaluation.verdicts, docs/statistics.md) against hand-computed values,
exhaustive sign-flip enumerations, Holm by hand, and simulations of its error rates."""

import itertools

import numpy as np
import pandas as pd
import pytest

from liftcam_utils.evaluation import verdicts as V


def _rows(values_by_method: dict[str, list[float]], metric="AD", units=None, draw=None) -> pd.DataFrame:
    frames = []
    for method, values in values_by_method.items():
        frame = pd.DataFrame({"image": [f"im{i}" for i in range(len(values))], "method": method, metric: values})
        if units is not None:
            frame["unit"] = list(units)
        if draw is not None:
            frame["draw"] = draw
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _one(rows, claim, setup="x", **kwargs) -> pd.Series:
    table = V.verdict_table({setup: rows}, [claim], **kwargs)
    return V.summary(table).iloc[0]


def _exhaustive_p(sums: np.ndarray) -> float:
    """P(sum of randomly signed unit sums >= the observed sum), by enumerating every signing."""
    observed = sums.sum()
    totals = [np.dot(signs, np.abs(sums)) for signs in itertools.product([-1, 1], repeat=len(sums))]
    return float(np.mean(np.array(totals) >= observed - 1e-12))


def test_six_improvements_give_one_in_sixty_four():
    # the all-positive signing is the most extreme of 2^6: one-sided p = 1/64, and the other direction 1
    c = V.compare(np.arange(1.0, 7.0), np.zeros(6))
    assert c.p_better == pytest.approx(1 / 64) and c.p_worse == pytest.approx(1.0)
    assert (c.better, c.worse, c.units, c.min_p) == (6, 0, 6, pytest.approx(1 / 64))


def test_sign_flip_p_equals_exhaustive_enumeration_with_clusters():
    rng = np.random.default_rng(4)
    values = rng.normal(0.4, 1.0, 20)
    units = np.repeat(np.arange(8), [1, 2, 3, 4, 2, 3, 4, 1])
    c = V.compare(values, np.zeros(20), units=units)
    sums = np.bincount(units, weights=values)
    assert c.units == 8 and c.images == 20
    assert c.p_better == pytest.approx(_exhaustive_p(sums))
    assert c.p_worse == pytest.approx(_exhaustive_p(-sums))
    assert c.diff == pytest.approx(values.mean())  # the claim's quantity: the mean over images


def test_the_mean_decides_and_a_disagreeing_majority_is_reported():
    # 34 of 40 images improve by 1 point, 6 lose 20: the mean (the paper's quantity) is -2.15
    row = _one(_rows({"a": [1.0] * 34 + [-20.0] * 6, "b": [0.0] * 40}, "ADD"),
               V.Claim("a raises ADD", "Table 3", "ADD", "a", ("b",)))
    assert row["diff"] == pytest.approx(-2.15) and row["verdict"] == V.CONTRADICTED
    assert (row["better"], row["worse"]) == (34, 6)
    assert row["note"] == "mean and majority disagree: the mean favours b, but 34 of 40 non-zero units favour a"
    # the other way round: the mean favours a, most units favour b
    row = _one(_rows({"a": [-1.0] * 34 + [20.0] * 6, "b": [0.0] * 40}, "ADD"),
               V.Claim("a raises ADD", "Table 3", "ADD", "a", ("b",)))
    assert row["note"] == "mean and majority disagree: the mean favours a, but 34 of 40 non-zero units favour b"


def test_a_gain_below_the_margin_is_negligible_not_a_win():
    rng = np.random.default_rng(0)
    base = rng.normal(50, 10, 2000)
    row = _one(_rows({"a": base + 0.0005 + rng.normal(0, 0.001, 2000), "b": base}, "ADD"),
               V.Claim("a raises ADD", "Table 3", "ADD", "a", ("b",)), n_permutations=999)
    assert row["adj p better"] <= 1e-3  # real, but far below the 1-point margin
    assert row["verdict"] == V.NEGLIGIBLE and row["margin"] == V.PRACTICAL_MARGINS["ADD"]


def test_a_gain_beyond_the_margin_holds_and_the_paper_gap_sets_the_margin():
    rng = np.random.default_rng(1)
    base = rng.normal(30, 5, 60)
    claim = V.Claim("a lowers AD", "Table 3", "AD", "a", ("b",), higher_is_better=False, paper_diff=-1.2)
    row = _one(_rows({"a": base - 3 + rng.normal(0, 1, 60), "b": base}), claim)
    assert row["margin"] == pytest.approx(0.6) and row["margin source"] == "half the paper's gap"
    assert row["paper diff"] == -1.2
    assert row["verdict"] == V.HOLDS and row["CI high"] < 0 and row["power at paper's effect"] > 0.99


def test_a_real_effect_smaller_than_the_papers_is_not_negligible():
    # the paper's gap is 0.48 (margin 0.24 if it were half of it); ours is +0.16, far above noise and above the
    # practical 0.01 of a cosine: it holds, with the practical margin, and is not called negligible
    rng = np.random.default_rng(2)
    base = rng.uniform(0.3, 0.8, 100)
    claim = V.Claim("a closer than b", "Table 2", "cosine", "a", ("b",), paper_diff=0.48)
    row = _one(_rows({"a": base + 0.16 + rng.normal(0, 0.02, 100), "b": base}, "cosine"), claim)
    assert row["margin"] == V.PRACTICAL_MARGINS["cosine"] and row["margin source"] == "practical"
    assert row["verdict"] == V.HOLDS
    # and a gain below the practical margin is negligible whatever the paper's gap
    row = _one(_rows({"a": base + 0.001 + rng.normal(0, 0.0005, 100), "b": base}, "cosine"), claim)
    assert row["verdict"] == V.NEGLIGIBLE


def test_float_noise_and_zeros_are_ties():
    # differences of 1e-9 on values near 1 are float noise: no unit differs, the two are equivalent
    values = np.linspace(0.2, 0.9, 30)
    row = _one(_rows({"a": values + 1e-9, "b": values}, "cosine"), V.Claim("a", "T2", "cosine", "a", ("b",)))
    assert (row["non-zero"], row["better"]) == (0, 0) and row["verdict"] == V.NEGLIGIBLE
    # 100 images, 23 differ: units 100, non-zero 23; zeros do not move the mean test
    a = np.r_[np.full(20, 2.0), np.full(3, -1.0), np.zeros(77)]
    row = _one(_rows({"a": a, "b": np.zeros(100)}, "ADD"), V.Claim("a", "T3", "ADD", "a", ("b",)))
    assert (row["units"], row["non-zero"], row["better"], row["worse"]) == (100, 23, 20, 3)
    assert row["diff"] == pytest.approx(0.37)


def test_zero_one_metric_uses_the_exact_test():
    # IC is 0 or 100 per image: 7 images gain, 1 loses, 22 tie. Exact: P(S >= 600) over 2^8 signings of 8 units
    a = np.r_[np.full(7, 100.0), 0.0, np.zeros(22)]
    b = np.r_[np.zeros(7), 100.0, np.zeros(22)]
    row = _one(_rows({"a": a, "b": b}, "IC"), V.Claim("a raises IC", "T3", "IC", "a", ("b",)))
    assert row["adj p better"] == pytest.approx(9 / 256)  # all 8 positive (1) + the 8 ways one is negative
    assert row["verdict"] == V.HOLDS


def test_four_units_cannot_ever_hold():
    row = _one(_rows({"a": [10.0, 11, 12, 13], "b": [0.0] * 4}, "ADD"), V.Claim("a", "T", "ADD", "a", ("b",)))
    assert row["adj p better"] == pytest.approx(1 / 16) and row["verdict"] == V.CANNOT_BE_SHOWN
    row = _one(_rows({"a": [10.0, 11, 12, 13, 14], "b": [0.0] * 5}, "ADD"), V.Claim("a", "T", "ADD", "a", ("b",)))
    assert row["adj p better"] == pytest.approx(1 / 32) and row["verdict"] == V.HOLDS


def test_holm_adjustment_by_hand_and_families_apart():
    rng = np.random.default_rng(2)
    n = 40
    base = rng.normal(0, 1, n)
    rows = _rows({"a": base + 0.5 + rng.normal(0, 1, n), "b": base, "c": base + rng.normal(0, 1, n),
                  "d": base + 0.35 + rng.normal(0, 1, n)}, "ADD")
    claims = [V.Claim("a > b", "T", "ADD", "a", ("b",), margin=0.01), V.Claim("a > c", "T", "ADD", "a", ("c",),
                                                                               margin=0.01),
              V.Claim("d > b", "T", "ADD", "d", ("b",), margin=0.01),
              V.Claim("d > c", "beyond", "ADD", "d", ("c",), margin=0.01, beyond_paper=True)]
    table = V.verdict_table({"x": rows}, claims)
    raw = table["p better"].to_numpy()[:3]
    order = np.argsort(raw)
    holm = np.empty(3)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        holm[i] = running
    np.testing.assert_allclose(table["adj p better"].to_numpy()[:3], holm)
    # the beyond-the-paper claim is its own family of one: unadjusted
    assert table["adj p better"].iloc[3] == pytest.approx(table["p better"].iloc[3])
    # verdicts use the adjusted p: a raw p below 0.05 whose adjusted p is above does not hold
    summary = V.summary(table)
    for (_, claim), row in summary.iterrows():
        if row["adj p better"] >= 0.05:
            assert row["verdict"] != V.HOLDS, claim


def test_identical_evidence_enters_holm_and_the_tally_once():
    rng = np.random.default_rng(3)
    a = rng.normal(0.9, 0.02, 40)
    rows = _rows({"liftcam": a, "gradcam": a - 0.3 + rng.normal(0, 0.05, 40), "ablationcam": a - 0.02,
                  "scorecam": a - 0.2}, "cosine")
    rows_copy = rows[rows["method"] == "gradcam"].assign(method="shapleycam")  # equal to Grad-CAM here
    rows = pd.concat([rows, rows_copy], ignore_index=True)
    claims = [V.Claim("LIFT > Grad", "T2", "cosine", "liftcam", ("gradcam",)),
              V.Claim("LIFT > ShapleyCAM", "T2", "cosine", "liftcam", ("shapleycam",)),
              V.Claim("LIFT highest", "T2", "cosine", "liftcam", ("gradcam", "ablationcam", "scorecam"))]
    table = V.verdict_table({"photos": rows}, claims)
    assert table["evidence"].nunique() == 3  # Grad-CAM and ShapleyCAM are one piece of evidence
    summary = V.summary(table)
    assert summary.loc[("photos", "LIFT > ShapleyCAM"), "same evidence as"] == "LIFT > Grad"
    # "highest" rests on its weakest competitor, Ablation-CAM (0.02 below): new evidence, counted
    assert summary.loc[("photos", "LIFT highest"), "versus"] == "ablationcam"
    counts = V.verdict_counts(table)
    assert counts.to_numpy().sum() == 2 and counts.loc[V.PAPER, V.HOLDS] == 2


def test_of_all_is_contradicted_by_any_competitor_that_wins():
    rng = np.random.default_rng(1)
    a = rng.normal(0.9, 0.02, 40)
    rows = _rows({"liftcam": a, "gradcam": a - 0.5, "ablationcam": a + 0.03 + rng.normal(0, 0.002, 40)}, "cosine")
    row = _one(rows, V.Claim("LIFT highest", "T2", "cosine", "liftcam", ("gradcam", "ablationcam")), "photos")
    assert row["verdict"] == V.CONTRADICTED and row["versus"] == "ablationcam"
    assert "CONTRADICTED" in V.describe(V.verdict_table({"photos": rows}, [
        V.Claim("LIFT highest", "T2", "cosine", "liftcam", ("gradcam", "ablationcam"))]))


def test_clustered_units_widen_the_interval_and_the_test():
    # 10 photos, 8 mosaics each: the photo's own effect is shared by its mosaics
    rng = np.random.default_rng(5)
    units = np.repeat(np.arange(10), 8)
    shared = rng.normal(0.3, 1.0, 10)[units]
    a = shared + rng.normal(0, 0.1, 80)
    b = np.zeros(80)
    image_level = V.compare(a, b)
    clustered = V.compare(a, b, units=units)
    assert clustered.units == 10 and image_level.units == 80
    assert clustered.p_better > 5 * image_level.p_better
    assert clustered.ci_high - clustered.ci_low > 2 * (image_level.ci_high - image_level.ci_low)
    with pytest.raises(ValueError, match="more than one unit"):
        bad = _rows({"a": [1.0, 2.0], "b": [0.0, 0.0]}, units=["u1", "u2"])
        bad.loc[2, "unit"] = "u9"
        V.verdict_table({"x": bad}, [V.Claim("a", "T", "AD", "a", ("b",))])


def test_reference_draws_take_the_least_favourable_p_and_the_union_of_intervals():
    rng = np.random.default_rng(6)
    base = rng.normal(0.9, 0.02, 30)
    draws = [_rows({"a": base + shift + rng.normal(0, 0.002, 30), "b": base}, "cosine", draw=k)
             for k, shift in enumerate((0.004, -0.002, 0.001))]
    claim = V.Claim("a > b", "T2", "cosine", "a", ("b",), margin=0.001)
    single = [_one(d, claim) for d in draws]
    both = _one(pd.concat(draws, ignore_index=True), claim)
    assert both["adj p better"] == pytest.approx(max(s["adj p better"] for s in single))
    assert both["CI low"] == min(s["CI low"] for s in single) and both["CI high"] == max(s["CI high"] for s in single)
    assert both["verdict"] != V.HOLDS and single[0]["verdict"] == V.HOLDS


def _null_rate(n_units, per_unit, correlated, rng, trials=400, clustered=True):
    """Share of trials where a claim with no true effect comes out `holds` (cheap permutation and bootstrap
    counts: the rate depends on the p-values only)."""
    units = np.repeat(np.arange(n_units), per_unit)
    hits = 0
    for _ in range(trials):
        shared = rng.normal(0, 1.0, n_units)[units] if correlated else 0
        diff = shared + rng.normal(0, 0.3 if correlated else 1.0, units.size)
        c = V.compare(diff, np.zeros(units.size), units=units if clustered else None, margin=0.01,
                      n_permutations=999, n_bootstrap=50, seed=int(rng.integers(1 << 30)))
        hits += c.p_better < V.ALPHA and c.p_equivalent >= V.ALPHA
    return hits / trials


def test_false_holds_under_the_null_at_most_five_percent():
    from scipy.stats import binomtest

    rng = np.random.default_rng(7)
    for n_units, per_unit, correlated in ((30, 1, False), (16, 4, True)):
        rate = _null_rate(n_units, per_unit, correlated, rng)
        # a one-sided binomial test would flag a rate above 5 % (it fails for an anti-conservative procedure)
        assert binomtest(round(rate * 400), 400, 0.05, alternative="greater").pvalue > 0.01, (n_units, rate)
    # the same clustered null judged image by image (units ignored) calls far too many claims true
    assert _null_rate(16, 4, True, rng, clustered=False) > 0.15


def test_power_at_the_paper_effect_matches_its_normal_approximation():
    rng = np.random.default_rng(8)
    n, effect, sd = 30, 0.5, 1.0
    hits, approx = 0, []
    for _ in range(300):
        diff = effect + rng.normal(0, sd, n)
        c = V.compare(diff, np.zeros(n), margin=0.01, paper_diff=effect, n_permutations=999, n_bootstrap=50,
                      seed=int(rng.integers(1 << 30)))
        hits += c.p_better < V.ALPHA
        approx.append(c.power)
    assert abs(hits / 300 - np.mean(approx)) < 0.08  # both about 0.86 at n = 30, effect 0.5 sd


def test_bad_input_is_refused():
    rows = _rows({"a": [1.0, 2.0, 3.0], "b": [1.0, float("nan"), 2.0]})
    with pytest.raises(ValueError, match="no rows for method"):
        V.verdict_table({"x": rows}, [V.Claim("s", "t", "AD", "a", ("c",))])
    with pytest.raises(ValueError, match="no column"):
        V.verdict_table({"x": rows}, [V.Claim("s", "t", "ADD", "a", ("b",))])
    with pytest.raises(ValueError, match="versus"):
        V.Claim("s", "t", "AD", "a", ("a",))
    with pytest.raises(ValueError, match="margin must be a positive"):
        V.Claim("s", "t", "AD", "a", ("b",), margin=0.0)
    with pytest.raises(ValueError, match="no practical margin"):
        V.Claim("s", "t", "SSIM", "a", ("b",))
    with pytest.raises(ValueError, match="NaN or infinity"):
        V.compare(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    # NaN rows of a metric (undefined on an image) are dropped before pairing
    assert _one(rows, V.Claim("s", "t", "AD", "a", ("b",)))["units"] == 2


def test_bootstrap_interval_covers_and_degenerates_cleanly():
    c = V.compare(np.full(7, 2.5), np.zeros(7))
    assert (c.ci_low, c.ci_high) == (2.5, 2.5)
    rng = np.random.default_rng(9)
    covered = 0
    for _ in range(100):
        c = V.compare(rng.normal(1.0, 2.0, 40), np.zeros(40), n_permutations=99, n_bootstrap=999,
                      seed=int(rng.integers(1 << 30)))
        covered += c.ci_low < 1.0 < c.ci_high
    assert covered >= 88  # nominal 95 %


def test_require_prints_the_statement_or_raises_with_the_numbers(capsys):
    from liftcam_utils.evaluation.checks import ScienceCheckError, require

    require("random below every method", True, "not shown")
    assert capsys.readouterr().out == "check: random below every method\n"
    with pytest.raises(ScienceCheckError, match=r"random below every method: does NOT hold \(AD 91 < 20\)"):
        require("random below every method", False, "AD 91 < 20")


def test_paper_gap_reads_the_paper_tables():
    from liftcam_utils.evaluation import paper

    assert paper.gap(paper.table3()["AD"], "liftcam", "gradcam", higher_is_better=False) == pytest.approx(-2.74)
    # against several: the closest competitor (Table 5: Ablation-CAM 51.87 vs LIFT-CAM 52.43)
    assert paper.gap(paper.table5(), "liftcam", ("gradcam", "ablationcam", "scorecam")) == pytest.approx(0.56)
    assert paper.gap(paper.table1()["ADD"], 100, 1) == pytest.approx(0.39)
    with pytest.raises(ValueError, match="no row"):
        paper.gap(paper.table2(), "liftcam", "eigencam")


def test_mean_interval_resamples_units():
    rng = np.random.default_rng(10)
    units = np.repeat(np.arange(6), 10)
    values = rng.normal(0, 1, 6)[units] + rng.normal(0, 0.05, 60)
    low, high = V.mean_interval(values, units)
    naive_low, naive_high = V.mean_interval(values)
    assert low < values.mean() < high and high - low > 2 * (naive_high - naive_low)
    assert V.mean_interval(np.full(5, 3.0)) == (3.0, 3.0)
    with pytest.raises(ValueError, match="finite"):
        V.mean_interval(np.array([1.0, np.nan]))


def test_saved_rows_and_verdicts_recompute_every_verdict(tmp_path):
    from liftcam_utils.evaluation import report

    rng = np.random.default_rng(11)
    base = rng.normal(40, 8, 24)
    photos = _rows({"liftcam": base - 2 + rng.normal(0, 1, 24), "gradcam": base, "ablationcam": base - 1.5}, "AD")
    grids = _rows({"liftcam": base + rng.normal(0, 3, 24), "gradcam": base}, "AD", units=np.repeat(list("abcdef"), 4))
    claims = {"photos": [V.Claim("LIFT lowers AD", "Table 3", "AD", "liftcam", ("gradcam",), False, paper_diff=-2.74),
                         V.Claim("LIFT lowest AD", "Table 3", "AD", "liftcam", ("gradcam", "ablationcam"), False,
                                 paper_diff=-0.26)],
              "grids": [V.Claim("LIFT lowers AD", "ours", "AD", "liftcam", ("gradcam",), False, margin=0.5,
                                beyond_paper=True)]}
    table = V.verdict_table({"photos": photos, "grids": grids}, claims)
    report.save_verdicts(table, "04_x", tmp_path)
    report.save_rows({"photos": photos, "grids": grids}, "04_x", tmp_path)
    saved = pd.read_csv(tmp_path / "04_x_verdicts.csv")
    again = V.verdict_table(report.load_rows(tmp_path / "04_x_rows.csv"), V.claims_of(saved))
    columns = ["setup", "claim", "versus", "diff", "CI low", "CI high", "p better", "adj p better", "verdict"]
    pd.testing.assert_frame_equal(again[columns], table[columns])
