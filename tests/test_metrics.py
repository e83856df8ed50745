"""Metrics against values computed by hand on tiny inputs, and their edge cases."""

import math
import re

import pytest
import torch
from PIL import Image

from liftcam_utils.datasets import Box, ImageRecord
from liftcam_utils.evaluation import metrics as M
from liftcam_utils.models.registry import _imagenet_preprocess


def _net(images):
    """Two classes; logit of class 0 = sum of pixels, class 1 = 0: softmax_0 = sigmoid(sum)."""
    total = images.flatten(1).sum(1)
    return torch.stack([total, torch.zeros_like(total)], 1)


def _sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_confidence_scores_and_ic_ad_add_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])  # sum 2
    s = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])  # e: [1, 1, 0, 0] -> sum 2; e_inv: [0, 1, 0, -1] -> 0
    scores = M.confidence_scores(_net, x, s, torch.tensor([0]), torch.zeros(1, 1, 1))
    y, o, d = _sigmoid(2), _sigmoid(2), _sigmoid(0)
    torch.testing.assert_close(scores["Y"], torch.tensor([y]))
    torch.testing.assert_close(scores["O"], torch.tensor([o]))
    torch.testing.assert_close(scores["D"], torch.tensor([d]))
    ys, os_ = torch.tensor([0.5, 0.8, 0.4]), torch.tensor([0.6, 0.4, 0.4])
    assert M.increase_in_confidence(ys, os_).tolist() == [100.0, 0.0, 0.0]
    torch.testing.assert_close(M.average_drop(ys, os_), torch.tensor([0.0, 50.0, 0.0]))
    torch.testing.assert_close(M.average_drop_in_deletion(ys, torch.tensor([0.25, 0.9, 0.1])),
                               torch.tensor([50.0, -12.5, 75.0]))


def test_zero_confidence_gives_zero_not_nan():
    zero = torch.tensor([0.0])
    assert M.average_drop(zero, torch.tensor([0.3])).item() == 0
    assert M.average_drop_in_deletion(zero, torch.tensor([0.0])).item() == 0


def test_baseline_mean_and_black():
    preprocess = _imagenet_preprocess((0.5, 0.25, 0.0), (0.5, 0.5, 1.0))
    assert torch.equal(M.baseline_image(preprocess, "mean"), torch.zeros(3, 1, 1))
    torch.testing.assert_close(M.baseline_image(preprocess, "black").flatten(), torch.tensor([-1.0, -0.5, 0.0]))
    with pytest.raises(ValueError, match=r"absent must be one of \('mean', 'black'\)"):
        M.baseline_image(preprocess, "white")
    # blending towards raw black == multiplying raw pixels by s, then normalising
    raw = torch.rand(1, 3, 2, 2)
    s = torch.rand(1, 2, 2)
    mean, std = torch.tensor([0.5, 0.25, 0.0])[:, None, None], torch.tensor([0.5, 0.5, 1.0])[:, None, None]
    blended = M.blend((raw - mean) / std, s, M.baseline_image(preprocess, "black"))
    torch.testing.assert_close(blended, (raw * s[:, None] - mean) / std)


def test_top_fraction_mask_counts_and_ties():
    s = torch.tensor([[[0.1, 0.9], [0.5, 0.5]]])
    assert M.top_fraction_mask(s, 0.0).sum() == 0
    assert M.top_fraction_mask(s, 0.25).tolist() == [[[0, 1], [0, 0]]]
    # the two 0.5 pixels tie for the last place: either one, by the seed's random order (no longer
    # always the lower pixel index, [[0, 1], [1, 0]])
    halves = {tuple(M.top_fraction_mask(s, 0.5, seed).flatten().tolist()) for seed in range(20)}
    assert halves == {(0, 1, 1, 0), (0, 1, 0, 1)}
    assert M.top_fraction_mask(s, 1.0).sum() == 4
    flat = torch.zeros(1, 4, 4)  # an all-zero map still yields exact counts
    assert M.top_fraction_mask(flat, 0.5).sum() == 8


def test_top_fraction_mask_has_exact_counts_and_is_deterministic_for_a_seed():
    """Maps with four levels (many ties) and one all-tied map, 7 x 9 pixels."""
    s = (torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(0)) * 4).floor() / 4
    s[2] = 0
    previous = torch.zeros_like(s)
    for fraction in M.DELTAS.tolist() + [1 / 3]:
        mask = M.top_fraction_mask(s, fraction, seed=5)
        assert mask.flatten(1).sum(1).tolist() == [int(round(fraction * 63))] * 3
        assert torch.equal(mask, M.top_fraction_mask(s, fraction, seed=5))
        assert torch.equal(mask[1:2], M.top_fraction_mask(s[1:2], fraction, seed=5))  # not batch-dependent
        # ties only decide among equal values: no kept pixel is less salient than a dropped one
        kept = torch.where(mask > 0, s, torch.inf).flatten(1).amin(1)
        dropped = torch.where(mask > 0, -torch.inf, s).flatten(1).amax(1)
        assert (kept >= dropped).all()
        if fraction in M.DELTAS.tolist():  # growing fractions give nested masks
            assert (mask >= previous).all()
            previous = mask
    assert not torch.equal(M.top_fraction_mask(s, 0.5, seed=0), M.top_fraction_mask(s, 0.5, seed=1))


def _row_major_ranking(saliency, seed):
    """The former rule, for comparison: ties broken by pixel index (row-major); ``seed`` is ignored."""
    return saliency.flatten(1).argsort(dim=1, descending=True, stable=True)


_ROWS, _COLUMNS = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")


@pytest.mark.parametrize("transform", ["flip", "transpose"])
@pytest.mark.parametrize("kind", ["constant", "plateau"])
def test_insertion_deletion_auc_does_not_depend_on_row_major_order(monkeypatch, kind, transform):
    """One 8 x 8 problem and its flipped (or transposed) copy, which is the same problem with the
    pixels relabelled: image x = 1, baseline 0, and a linear model over pixels with
    logit_0 = sum_p w_p x_p - 3, w_p ~ exp(-(2 i + j) / 4) (top rows matter most, sum w = 6), the
    map and the weights transformed alike. The map is constant (all ties) or a tied plateau of zeros
    around a 3 x 3 block with one peak.

    Row-major ties insert the original's heavy top rows first and the flipped copy's light bottom
    rows first: AUCs 0.78 vs 0.25 for a constant map. Random ties give each seed's AUC a spread
    (std ~0.055 here), so the AUCs are averaged over 64 seeds, and the two means must agree within 4
    standard errors of their difference (~0.04), estimated from the seeds themselves; the former gaps
    (0.53 / 0.41 flipped, 0.09 / 0.08 transposed) are far outside it."""
    weights = torch.exp(-(2 * _ROWS + _COLUMNS) / 4.0)
    weights = 6 * weights / weights.sum()
    s = torch.full((8, 8), 0.5) if kind == "constant" else ((_ROWS >= 5) & (_COLUMNS >= 5)).float()
    if kind == "plateau":
        s[6, 6] = 2.0
    change = {"flip": lambda t: t.flip(-2), "transpose": lambda t: t.transpose(-2, -1)}[transform]
    weights, s = torch.stack([weights, change(weights)]), torch.stack([s, change(s)])  # problem and copy

    def net(images):
        logit = (images[:, 0] * weights).sum((1, 2)) - 3
        return torch.stack([logit, torch.zeros_like(logit)], 1)

    def aucs(seed):  # (2 problems, insertion / deletion)
        curves = M.insertion_deletion_curves(net, torch.ones(2, 1, 8, 8), s, torch.tensor([0, 0]),
                                             torch.zeros(1, 1, 1), seed=seed)
        return torch.stack([M.auc(curves["insertion"]), M.auc(curves["deletion"])], 1)

    seeded = torch.stack([aucs(seed) for seed in range(64)])  # (seeds, 2, 2)
    gap = (seeded[:, 0] - seeded[:, 1]).mean(0).abs()
    standard_error = ((seeded[:, 0].var(0) + seeded[:, 1].var(0)) / len(seeded)).sqrt()
    assert (gap < 4 * standard_error).all(), (gap, standard_error)
    with monkeypatch.context() as patch:
        patch.setattr(M, "_relevance_ranking", _row_major_ranking)
        former = aucs(0)
    assert ((former[0] - former[1]).abs() > 8 * standard_error).all()


def test_insertion_deletion_by_hand():
    """1 x 2 image [2, 0] with map [1, 0], deltas {0, 0.5, 1}, baseline 0."""
    x = torch.tensor([[[[2.0, 0.0]]]])
    s = torch.tensor([[[1.0, 0.0]]])
    deltas = torch.tensor([0.0, 0.5, 1.0])
    curves = M.insertion_deletion_curves(_net, x, s, torch.tensor([0]), torch.zeros(1, 1, 1), deltas)
    # insertion keeps nothing, the top pixel, everything: sums 0, 2, 2
    torch.testing.assert_close(curves["insertion"], torch.tensor([[0.5, _sigmoid(2), _sigmoid(2)]]))
    # deletion removes nothing, the top pixel, everything: sums 2, 0, 0
    torch.testing.assert_close(curves["deletion"], torch.tensor([[_sigmoid(2), 0.5, 0.5]]))
    area = M.auc(curves["insertion"], deltas)
    torch.testing.assert_close(area, torch.tensor([0.25 * (0.5 + _sigmoid(2)) + 0.5 * _sigmoid(2)]))
    assert len(M.DELTAS) == 41 and M.DELTAS[1].item() == pytest.approx(0.025)


def test_trapezoid_is_exact_for_linear_functions():
    xs = torch.linspace(0, 1, 41)
    torch.testing.assert_close(M.trapezoid(3 * xs + 1, xs), torch.tensor(2.5))


def test_energy_pointing_game_by_hand_and_edges():
    s = torch.tensor([[[1.0, 0.5], [0.5, 0.0]]])
    box = M.box_mask([Box(0, 0, 0, 1, 2)], 2, 2)  # left column
    assert box.tolist() == [[1, 0], [1, 0]]
    torch.testing.assert_close(M.energy_pointing_game(s, box[None]), torch.tensor([0.75]))
    whole = M.box_mask([Box(0, -5, -5, 10, 10)], 2, 2)  # clipped to the image
    torch.testing.assert_close(M.energy_pointing_game(s, whole[None]), torch.tensor([1.0]))
    assert M.energy_pointing_game(torch.zeros(1, 2, 2), whole[None]).item() == 0  # no energy
    empty = M.box_mask([], 2, 2)
    assert M.energy_pointing_game(s, empty[None]).item() == 0  # no box
    two = M.box_mask([Box(0, 0, 0, 1, 1), Box(1, 1, 1, 2, 2)], 2, 2)  # union of boxes
    torch.testing.assert_close(M.energy_pointing_game(s, two[None]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="differ"):
        M.energy_pointing_game(s, torch.zeros(1, 3, 3))


def test_cosine_similarity_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]])
    torch.testing.assert_close(M.cosine_similarity(a, b), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(M.cosine_similarity(torch.tensor([3.0, 4.0]), torch.tensor([4.0, 3.0])),
                               torch.tensor(24 / 25))


# ROAD (Rong et al., ICML 2022): noisy linear imputation, MoRF / LeRF curves


def _impute(image, removed, noise=0.0, seed=0):
    """One (C, H, W) image and its (H, W) mask through the batched imputation."""
    return M.noisy_linear_imputation(image[None], torch.as_tensor(removed)[None], noise, seed)[0]


def test_imputed_centre_is_the_weighted_mean_of_its_eight_neighbours():
    """3 x 3, two channels, centre removed: direct neighbours weigh 1/6, diagonal ones 1/12."""
    image = torch.tensor([[[24.0, 1.0, 0.0], [2.0, 99.0, 3.0], [0.0, 4.0, 0.0]],
                          [[0.0, 5.0, 0.0], [0.0, -7.0, 0.0], [6.0, 0.0, 1.0]]])
    removed = torch.zeros(3, 3, dtype=torch.bool)
    removed[1, 1] = True
    imputed = _impute(image, removed)
    # channel 0: (1 + 2 + 3 + 4) / 6 + 24 / 12 = 11 / 3; channel 1: 5 / 6 + (6 + 1) / 12 = 17 / 12
    torch.testing.assert_close(imputed[:, 1, 1], torch.tensor([11 / 3, 17 / 12]))
    assert torch.equal(imputed[:, ~removed], image[:, ~removed])  # kept pixels exactly unchanged
    # not the plain mean of the 8 neighbours (34 / 8), nor of the 4 direct ones (10 / 4)
    assert abs(imputed[0, 1, 1].item() - 34 / 8) > 0.5 and abs(imputed[0, 1, 1].item() - 10 / 4) > 0.5


def test_imputed_corner_renormalises_the_weights_of_the_neighbours_inside_the_image():
    """Corner (0, 0) of a 3 x 3 image: neighbours (0, 1), (1, 0) at 1/6 and (1, 1) at 1/12, sum 5/12:
    the value is (2 x01 + 2 x10 + x11) / 5."""
    image = torch.tensor([[[50.0, 1.0, 7.0], [3.0, 10.0, 7.0], [7.0, 7.0, 7.0]]])
    removed = torch.zeros(3, 3)
    removed[0, 0] = 1  # a 0 / 1 float mask works like a boolean one
    torch.testing.assert_close(_impute(image, removed)[0, 0, 0], torch.tensor((2 * 1 + 2 * 3 + 10) / 5))


def test_imputation_of_a_strip_is_linear_interpolation():
    """Between two kept ends the solution of the system is linear in the column: a 1 x 6 strip, and
    a 3 x 5 image whose rows are equal (diagonal neighbours then weigh like the direct ones)."""
    strip = torch.tensor([[[0.0, 5.0, -3.0, 8.0, 1.0, 10.0]]])
    inner = torch.tensor([[False, True, True, True, True, False]])
    torch.testing.assert_close(_impute(strip, inner)[0, 0], torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0, 10.0]))
    rows = torch.tensor([1.0, -4.0, 0.0, 2.0, 9.0]).expand(3, 5)[None]
    middle = torch.zeros(3, 5, dtype=torch.bool)
    middle[:, 1:4] = True
    torch.testing.assert_close(_impute(rows, middle)[0], torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0]).expand(3, 5))
    # a removed run at the end of the strip has one kept neighbour: it takes its value
    end = torch.tensor([[False, False, False, False, True, True]])
    torch.testing.assert_close(_impute(strip, end)[0, 0], torch.tensor([0.0, 5.0, -3.0, 8.0, 8.0, 8.0]))


def test_imputation_with_every_pixel_removed_is_zero_and_nothing_removed_is_the_image():
    """No kept pixel: the system would be singular (constants solve it); the defined answer is 0, the
    mean colour in normalised space. In a batch, the other images are imputed as usual."""
    images = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    removed = torch.zeros(2, 4, 5, dtype=torch.bool)
    removed[0] = True
    removed[1, 1, 2] = True
    imputed = M.noisy_linear_imputation(images, removed, noise=0.0)
    assert torch.equal(imputed[0], torch.zeros(3, 4, 5))
    torch.testing.assert_close(imputed[1], _impute(images[1], removed[1]))
    assert imputed[1, :, 1, 2].abs().max() > 0
    for height, width in ((1, 2), (2, 2), (7, 9)):  # small ones are exactly singular: splu would raise
        whole = torch.ones(1, height, width, dtype=torch.bool)
        assert torch.equal(M.noisy_linear_imputation(torch.ones(1, 2, height, width), whole, noise=0.0),
                           torch.zeros(1, 2, height, width))
    nothing = torch.zeros(2, 4, 5, dtype=torch.bool)
    assert torch.equal(M.noisy_linear_imputation(images, nothing, noise=0.5), images)
    # with noise, the all-removed image is the seed's noise field itself
    noisy = M.noisy_linear_imputation(images[:1], removed[:1], noise=0.5, seed=3)[0]
    torch.testing.assert_close(noisy, 0.5 * torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(3),
                                                        dtype=torch.float64).float())


def test_imputation_noise_is_only_on_removed_pixels_and_deterministic_for_a_seed():
    images = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    removed = torch.rand(2, 40, 40, generator=torch.Generator().manual_seed(2)) < 0.6
    clean = M.noisy_linear_imputation(images, removed, noise=0.0)
    noisy = M.noisy_linear_imputation(images, removed, noise=0.1, seed=7)
    kept = ~removed[:, None].expand_as(images)
    assert torch.equal(noisy[kept], images[kept])
    added = (noisy - clean)[~kept]
    assert 0.09 < added.std().item() < 0.11 and abs(added.mean().item()) < 0.01
    assert torch.equal(noisy, M.noisy_linear_imputation(images, removed, noise=0.1, seed=7))
    assert not torch.equal(noisy, M.noisy_linear_imputation(images, removed, noise=0.1, seed=8))
    assert torch.equal(noisy[1:], M.noisy_linear_imputation(images[1:], removed[1:], noise=0.1, seed=7))
    # a per-channel std: none on channel 1
    per_channel = M.noisy_linear_imputation(images, removed, noise=torch.tensor([0.1, 0.0, 0.2])[:, None, None])
    torch.testing.assert_close(per_channel[:, 1], clean[:, 1], rtol=0, atol=0)
    assert (per_channel[:, 2] - clean[:, 2])[removed].std() > 1.5 * (per_channel[:, 0] - clean[:, 0])[removed].std()


def test_imputation_noise_in_normalised_space():
    """0.01 on raw pixels in [0, 1] is 0.01 / std after Normalize."""
    preprocess = _imagenet_preprocess((0.5, 0.25, 0.0), (0.5, 0.5, 1.0))
    torch.testing.assert_close(M.imputation_noise(preprocess).flatten(), torch.tensor([0.02, 0.02, 0.01]))
    torch.testing.assert_close(M.imputation_noise(preprocess, 0.1).flatten(), torch.tensor([0.2, 0.2, 0.1]))


def test_bottom_fraction_mask_is_the_end_of_the_same_ranking():
    s = torch.tensor([[[0.1, 0.9], [0.5, 0.5]]])
    assert M.bottom_fraction_mask(s, 0.25).tolist() == [[[1, 0], [0, 0]]]
    assert M.bottom_fraction_mask(s, 0.0).sum() == 0 and M.bottom_fraction_mask(s, 1.0).sum() == 4
    ties = (torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3).floor()
    for seed in range(5):
        for fraction in (0.25, 0.5, 0.75):
            bottom = M.bottom_fraction_mask(ties, fraction, seed)
            assert torch.equal(bottom, 1 - M.top_fraction_mask(ties, 1 - fraction, seed))
    assert not all(torch.equal(M.bottom_fraction_mask(ties, 0.5, 0), M.bottom_fraction_mask(ties, 0.5, seed))
                   for seed in range(1, 5))


def _half_sum_net(images):
    """logit_0 = sum of pixels / 2 - 5, logit_1 = 0: softmax_0 = sigmoid(sum / 2 - 5)."""
    total = images.flatten(1).sum(1)
    return torch.stack([total / 2 - 5, torch.zeros_like(total)], 1)


def test_road_morf_and_lerf_by_hand():
    """1 x 5 image [4, 0, 2, 0, 6] (sum 12), map [0.1, 0.9, 0.5, 0.3, 0.7]: ranking p1, p4, p2, p3, p0.
    A removed run between kept pixels is interpolated linearly, one at the end takes its kept
    neighbour's value.
    MoRF 20 %: p1 -> 3 ([4, 3, 2, 0, 6], sum 15); 40 %: p1 -> 3, p4 -> 0 (sum 9);
    60 %: p1, p2 -> 8/3, 4/3 between 4 and 0, p4 -> 0 (sum 8).
    LeRF 20 %: p0 -> 0 ([0, 0, 2, 0, 6], sum 8); 40 %: p0 -> 0, p3 -> 4 (sum 12);
    60 %: p0 -> 0, p2, p3 -> 2, 4 between 0 and 6 (sum 12)."""
    x = torch.tensor([[[[4.0, 0.0, 2.0, 0.0, 6.0]]]])
    s = torch.tensor([[[0.1, 0.9, 0.5, 0.3, 0.7]]])
    curves = M.road_curves(_half_sum_net, x, s, torch.tensor([0]), fractions=[0.0, 0.2, 0.4, 0.6], noise=0.0)
    morf = [_sigmoid(v / 2 - 5) for v in (12, 15, 9, 8)]
    lerf = [_sigmoid(v / 2 - 5) for v in (12, 8, 12, 12)]
    torch.testing.assert_close(curves["morf"], torch.tensor([morf]))
    torch.testing.assert_close(curves["lerf"], torch.tensor([lerf]))
    torch.testing.assert_close(M.road_score(curves["morf"]), torch.tensor([sum(morf) / 4]))
    # with the authors' noise the curves move a little and are reproducible for the seed
    noisy = M.road_curves(_half_sum_net, x, s, torch.tensor([0]), fractions=[0.2, 0.4], seed=1)
    assert torch.equal(noisy["morf"], M.road_curves(_half_sum_net, x, s, torch.tensor([0]), [0.2, 0.4], seed=1)["morf"])
    torch.testing.assert_close(noisy["morf"], torch.tensor([morf[1:3]]), atol=0.02, rtol=0)
    assert not torch.equal(noisy["morf"], torch.tensor([morf[1:3]]))
    assert len(M.ROAD_FRACTIONS) == 9 and M.ROAD_FRACTIONS[0].item() == pytest.approx(0.1)


def test_road_refuses_bad_input():
    x = torch.zeros(1, 1, 3, 3)
    s = torch.zeros(1, 3, 3)
    target = torch.tensor([0])
    for fraction in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
            M.road_curves(_net, x, s, target, fractions=[0.5, fraction])
        with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
            M.top_fraction_mask(s, fraction)
    with pytest.raises(ValueError, match="fractions is empty"):
        M.road_curves(_net, x, s, target, fractions=[])
    with pytest.raises(ValueError, match="saliency .* does not match the images"):
        M.road_curves(_net, x, torch.zeros(1, 3, 4), target)
    with pytest.raises(ValueError, match="mask .* does not match the images"):
        M.noisy_linear_imputation(x, torch.zeros(1, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean or 0 / 1"):
        M.noisy_linear_imputation(x, torch.full((1, 3, 3), 0.5))
    with pytest.raises(ValueError, match="noise must be >= 0"):
        M.noisy_linear_imputation(x, torch.ones(1, 3, 3), noise=-0.01)
    with pytest.raises(ValueError, match=r"noise must be a number or a \(1, 1, 1\) tensor"):
        M.noisy_linear_imputation(x, torch.ones(1, 3, 3), noise=torch.ones(3))
    with pytest.raises(ValueError, match=r"x must be a \(B, C, H, W\)"):
        M.noisy_linear_imputation(x[0], torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match=r"saliency must be \(B, H, W\)"):
        M.top_fraction_mask(s[0], 0.5)


# Non-finite inputs: NaN out, or refused; never a score


def _net_nan_for_second_image(images):
    """:func:`_net`, with NaN logits for image 1 of every batch (a model with a NaN weight on some inputs)."""
    logits = _net(images)
    logits[1:2] = torch.nan
    return logits


def test_ic_ad_add_terms_of_non_finite_confidences_are_nan():
    """A NaN or infinite Y, O or D gives a NaN term, never IC 0, AD 0 (the best score) or ADD 0; finite ones
    are untouched, including Y = 0."""
    nan, inf = math.nan, math.inf
    y = torch.tensor([0.5, nan, 0.5, 0.0, 0.5, inf])
    other = torch.tensor([0.6, 0.4, nan, nan, -inf, 0.5])
    for term in (M.increase_in_confidence, M.average_drop, M.average_drop_in_deletion):
        values = term(y, other)
        assert values[1:].isnan().all(), term.__name__
        assert values[0].isfinite()
    assert M.average_drop(torch.tensor([0.0]), torch.tensor([0.3])).item() == 0  # Y = 0 stays defined
    x = torch.zeros(2, 1, 2, 2)
    scores = M.confidence_scores(_net_nan_for_second_image, x, torch.rand(2, 2, 2), torch.tensor([0, 0]),
                                 torch.zeros(1, 1, 1))
    for term, other in ((M.increase_in_confidence, "O"), (M.average_drop, "O"), (M.average_drop_in_deletion, "D")):
        values = term(scores["Y"], scores[other])
        assert values[0].isfinite() and values[1].isnan()


def test_insertion_deletion_and_road_of_a_nan_model_are_nan():
    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    s = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 0])
    curves = M.insertion_deletion_curves(_net_nan_for_second_image, x, s, target, torch.zeros(1, 1, 1))
    road = M.road_curves(_net_nan_for_second_image, x, s, target, fractions=[0.2, 0.5], noise=0.0)
    for curve, score in ((curves["insertion"], M.auc), (curves["deletion"], M.auc),
                         (road["morf"], M.road_score), (road["lerf"], M.road_score)):
        assert curve[0].isfinite().all() and curve[1].isnan().all()
        assert score(curve)[0].isfinite() and score(curve)[1].isnan()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_saliency_maps_with_non_finite_values_are_refused(bad):
    """A map with a NaN or infinite pixel has no ranking and no energy: every metric of a map refuses it,
    naming the map, where the ranking would have put the NaN pixel somewhere and scored the result."""
    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    s = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(1))
    s[1, 2, 0] = bad
    target, baseline = torch.tensor([0, 0]), torch.zeros(1, 1, 1)
    refused = r"saliency has NaN or infinite values in map\(s\) \[1\]"
    calls = {
        "confidence_scores": lambda: M.confidence_scores(_net, x, s, target, baseline),
        "insertion_deletion_curves": lambda: M.insertion_deletion_curves(_net, x, s, target, baseline),
        "road_curves": lambda: M.road_curves(_net, x, s, target, fractions=[0.5], noise=0.0),
        "top_fraction_mask": lambda: M.top_fraction_mask(s, 0.5),
        "bottom_fraction_mask": lambda: M.bottom_fraction_mask(s, 0.5),
        "energy_pointing_game": lambda: M.energy_pointing_game(s, torch.ones(2, 3, 3)),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=refused):
            call()
            pytest.fail(name)


def test_cosine_similarity_of_a_non_finite_row_is_nan():
    a = torch.tensor([[1.0, 2.0], [math.nan, 1.0], [0.0, 0.0], [1.0, math.inf]])
    b = torch.tensor([[2.0, 4.0], [1.0, 1.0], [math.nan, 0.0], [1.0, 1.0]])
    cosine = M.cosine_similarity(a, b)
    assert cosine[0].item() == pytest.approx(1.0) and cosine[1:].isnan().all()
    assert M.cosine_similarity(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])).item() == 0  # a zero row: 0


# Edge errors name what is valid


def test_an_empty_batch_of_maps_is_refused():
    for empty in (torch.zeros(0, 4, 4), torch.zeros(2, 0, 4)):
        with pytest.raises(ValueError, match=r"saliency \(\d, \d, 4\) is empty: give at least one map"):
            M.top_fraction_mask(empty, 0.5)
        with pytest.raises(ValueError, match="is empty"):
            M.bottom_fraction_mask(empty, 0.5)


def test_a_record_without_labels_has_no_target_to_score():
    """The evaluation takes each record's target from ``record.label``; ``labels=()`` says so instead of
    'tuple index out of range'."""
    record = ImageRecord(name="unlabelled", labels=(), pixels=Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError, match=r"record 'unlabelled' has no labels \(labels=\(\)\).*e\.g\. labels=\(3,\)"):
        _ = record.label
    assert ImageRecord(name="two", labels=(5, 2), pixels=Image.new("RGB", (4, 4))).label == 5


def test_one_map_is_never_broadcast_over_a_batch():
    """A (1, H, W) map with 2 images: every metric of a map refuses it, naming both shapes and the valid one."""
    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    one = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(1))
    target, baseline = torch.tensor([0, 0]), torch.zeros(1, 1, 1)
    mismatch = r"\(1, 3, 3\) does not match the images \(2, 1, 3, 3\): expected one map per image, shape \(2, 3, 3\)"
    with pytest.raises(ValueError, match="saliency " + mismatch):
        M.confidence_scores(_net, x, one, target, baseline)
    with pytest.raises(ValueError, match="saliency " + mismatch):
        M.insertion_deletion_curves(_net, x, one, target, baseline)
    with pytest.raises(ValueError, match="saliency " + mismatch):
        M.road_curves(_net, x, one, target, noise=0.0)
    with pytest.raises(ValueError, match="keep " + mismatch):
        M.blend(x, one, baseline)


def test_energy_pointing_game_refuses_signed_maps_and_masks_that_are_not_binary():
    """Eq. 14 is the energy of a non-negative map inside the box over its total: the signed map below scored
    10.0 and the mask of 0 / 7 values 3.5, neither a share."""
    box = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    signed = torch.tensor([[[1.0, -0.5], [-0.3, -0.1]]])  # total 0.1, inside 1
    with pytest.raises(ValueError, match=r"saliency has negative values \(minimum -0\.5\).*non-negative map"):
        M.energy_pointing_game(signed, box)
    s = torch.tensor([[[0.5, 0.2], [0.2, 0.1]]])  # total 1
    for mask in (torch.tensor([[[7.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]),
                 torch.tensor([[[1.0, math.nan], [0.0, 0.0]]])):
        with pytest.raises(ValueError, match="box_mask must be binary, 0 outside and 1 inside the boxes"):
            M.energy_pointing_game(s, mask)
    assert M.energy_pointing_game(s, box.bool()).item() == pytest.approx(0.5)  # a boolean mask is binary
    with pytest.raises(ValueError, match=r"saliency \(1, 2, 2\) and box mask \(1, 3, 3\) differ"):
        M.energy_pointing_game(s, torch.zeros(1, 3, 3))


# The model's output function: the softmax of the target (single-label) or the sigmoid of its logit (multi-label)


def _rivals(images):
    """Three classes with logits [sum of pixels, 1, 2]: two other classes that a multi-label model finds present
    too, so that the target 0's softmax ``exp(sum) / (exp(sum) + e + e^2)`` is far below its sigmoid."""
    total = images.flatten(1).sum(1)
    return torch.stack([total, torch.ones_like(total), torch.full_like(total, 2.0)], 1)


def _quarter_rivals(images):
    """:func:`_rivals` of the image divided by 4: logits [sum / 4, 1, 2]."""
    return _rivals(images / 4)


def _softmax_of(logits, c):
    return math.exp(logits[c]) / sum(math.exp(v) for v in logits)


def _class_0(total, output):
    """Class 0's probability, by hand, for logits [total, 1, 2] under ``output``."""
    return _sigmoid(total) if output == "sigmoid" else _softmax_of([total, 1.0, 2.0], 0)


def test_target_probability_is_the_targets_softmax_or_the_sigmoid_of_its_logit():
    images = torch.tensor([[[[2.0]]], [[[-1.0]]]])  # logits [2, 1, 2] and [-1, 1, 2]
    target = torch.tensor([0, 2])
    softmax = M.target_probability(_rivals, images, target, "softmax")
    sigmoid = M.target_probability(_rivals, images, target, "sigmoid")
    torch.testing.assert_close(softmax, torch.tensor([_softmax_of([2, 1, 2], 0), _softmax_of([-1, 1, 2], 2)]))
    torch.testing.assert_close(sigmoid, torch.tensor([_sigmoid(2), _sigmoid(2)]))  # the target's logit alone
    assert softmax[0] < 0.45 < 0.85 < sigmoid[0]


def test_confidence_scores_and_ic_ad_add_follow_the_output_by_hand():
    """Y, O, D on the image (pixel sum 2), on s o x (sum 1.5) and on (1 - s) o x (sum 0.5), then AD and ADD
    (Eqs. 12-13), under each output function; the default is the softmax."""
    x = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])
    s = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])  # e: [0.5, 1, 0, 0]; e_inv: [0.5, 1, 0, -1]
    target, baseline = torch.tensor([0]), torch.zeros(1, 1, 1)
    terms = {}
    for output in ("softmax", "sigmoid"):
        scores = M.confidence_scores(_rivals, x, s, target, baseline, output=output)
        y, o, d = (_class_0(total, output) for total in (2.0, 1.5, 0.5))
        for name, value in (("Y", y), ("O", o), ("D", d)):
            torch.testing.assert_close(scores[name], torch.tensor([value]), msg=f"{name} under {output}")
        ad, add = M.average_drop(scores["Y"], scores["O"]), M.average_drop_in_deletion(scores["Y"], scores["D"])
        torch.testing.assert_close(ad, torch.tensor([100 * (y - o) / y]))
        torch.testing.assert_close(add, torch.tensor([100 * (y - d) / y]))
        assert M.increase_in_confidence(scores["Y"], scores["O"]).item() == 0
        terms[output] = (ad.item(), add.item())
    assert terms["sigmoid"][0] < terms["softmax"][0] - 20  # AD: 7.2 % of the sigmoid lost, 27.3 % of the softmax
    default = M.confidence_scores(_rivals, x, s, target, baseline)
    assert all(torch.equal(default[name], M.confidence_scores(_rivals, x, s, target, baseline,
                                                              output="softmax")[name]) for name in "YOD")


def test_insertion_deletion_curves_follow_the_output_by_hand():
    """1 x 2 image [2, 0] with map [1, 0], deltas {0, 0.5, 1}: insertion sums 0, 2, 2; deletion 2, 0, 0."""
    x, s = torch.tensor([[[[2.0, 0.0]]]]), torch.tensor([[[1.0, 0.0]]])
    deltas = torch.tensor([0.0, 0.5, 1.0])
    for output in ("softmax", "sigmoid"):
        curves = M.insertion_deletion_curves(_rivals, x, s, torch.tensor([0]), torch.zeros(1, 1, 1), deltas,
                                             output=output)
        torch.testing.assert_close(curves["insertion"], torch.tensor([[_class_0(v, output) for v in (0, 2, 2)]]))
        torch.testing.assert_close(curves["deletion"], torch.tensor([[_class_0(v, output) for v in (2, 0, 0)]]))


def test_road_curves_follow_the_output_by_hand():
    """The image and map of :func:`test_road_morf_and_lerf_by_hand` (MoRF sums 12, 15, 9; LeRF 12, 8, 12 at
    0, 20 and 40 % removed, no noise) under logits [sum / 4, 1, 2]."""
    x = torch.tensor([[[[4.0, 0.0, 2.0, 0.0, 6.0]]]])
    s = torch.tensor([[[0.1, 0.9, 0.5, 0.3, 0.7]]])
    for output in ("softmax", "sigmoid"):
        curves = M.road_curves(_quarter_rivals, x, s, torch.tensor([0]), fractions=[0.0, 0.2, 0.4], noise=0.0,
                               output=output)
        torch.testing.assert_close(curves["morf"], torch.tensor([[_class_0(v / 4, output) for v in (12, 15, 9)]]))
        torch.testing.assert_close(curves["lerf"], torch.tensor([[_class_0(v / 4, output) for v in (12, 8, 12)]]))


@pytest.mark.parametrize("output", ["logits", "Sigmoid", None])
def test_an_unknown_output_is_refused_naming_the_valid_ones(output):
    x, s = torch.rand(1, 1, 3, 3), torch.rand(1, 3, 3)
    target, baseline = torch.tensor([0]), torch.zeros(1, 1, 1)
    refused = rf"output must be one of \('softmax', 'sigmoid'\) .*got {re.escape(repr(output))}"
    calls = {
        "target_probability": lambda: M.target_probability(_rivals, x, target, output),
        "confidence_scores": lambda: M.confidence_scores(_rivals, x, s, target, baseline, output=output),
        "insertion_deletion_curves": lambda: M.insertion_deletion_curves(_rivals, x, s, target, baseline,
                                                                         output=output),
        "road_curves": lambda: M.road_curves(_rivals, x, s, target, fractions=[0.5], noise=0.0, output=output),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=refused):
            call()
            pytest.fail(name)
