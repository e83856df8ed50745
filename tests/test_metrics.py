"""Metrics against values computed by hand on tiny inputs, and their edge cases."""

import math

import pytest
import torch

from liftcam_utils import metrics as M
from liftcam_utils.datasets import Box
from liftcam_utils.models import _imagenet_preprocess


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


def _row_major_mask(saliency, fraction, seed):
    """The former rule, for comparison: ties broken by pixel index (row-major); ``seed`` is ignored."""
    count = int(round(fraction * saliency[0].numel()))
    order = saliency.flatten(1).argsort(dim=1, descending=True, stable=True)
    return torch.zeros(saliency.flatten(1).shape).scatter_(1, order[:, :count], 1.0).view(saliency.shape)


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
        patch.setattr(M, "top_fraction_mask", _row_major_mask)
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
