"""Our metrics against the same quantities computed by Quantus and pytorch-grad-cam (docs/crosschecks.md).

Every comparison runs both sides on identical inputs: a seeded conv net on smooth random images, fixed
maps with distinct values (so that no ordering depends on how ties are broken) and, where the order
matters, maps with ties in a test of their own. Where the definitions differ by a known
transformation (a pixel count, a baseline, an accuracy instead of a softmax, a sign or a scale), the
test applies it explicitly; each test also shows that a different input gives a different number.
"""

import math

import numpy as np
import pytest
import quantus
import torch
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation
from torchvision import transforms

from liftcam_utils.datasets import Box
from liftcam_utils.evaluation import metrics as M
from liftcam_utils.models.registry import _imagenet_preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREPROCESS = _imagenet_preprocess(MEAN, STD)
TIGHT = {"atol": 1e-6, "rtol": 1e-5}  # float32 on both sides, the same operations in another order
# pytorch-grad-cam passes tensors to NumPy functions (a NumPy 2 deprecation, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")


def _tiny_net(in_channels: int = 3, classes: int = 5) -> torch.nn.Module:
    """A seeded conv net in eval mode, its logits scaled so that its softmax is neither flat nor saturated."""
    with torch.random.fork_rng():  # seeded without moving the global generator of the other tests
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, classes))
    with torch.no_grad():
        net[-1].weight.mul_(8)
    return net.eval()


def _smooth(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """(n, channels, size, size) low-frequency Gaussian noise."""
    coarse = torch.randn(n, channels, 5, 5, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Normalised images: raw pixels in (0, 1), then the ImageNet normalisation (per channel for 3)."""
    raw = _smooth(n, channels, size, seed).sigmoid()
    if channels != 3:
        return (raw - 0.5) / 0.25
    return transforms.Normalize(MEAN, STD)(raw)


def _distinct_maps(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth maps with no two equal pixels: the rank of each pixel of a smooth field, divided by H * W
    (values k / (H * W), exact in float32, and so is 1 - value)."""
    field = _smooth(n, 1, size, seed)[:, 0].flatten(1)
    ranks = field.argsort(1).argsort(1)
    return (ranks.to(torch.float32) / field.shape[1]).view(n, size, size)


def _tied_maps(n: int, size: int, seed: int, levels: int = 4) -> torch.Tensor:
    """Smooth maps with ``levels`` values, each taken by exactly ``H * W / levels`` pixels."""
    return (_distinct_maps(n, size, seed) * levels).floor() / (levels - 1)


def _softmax_targets(target: torch.Tensor) -> list:
    return [ClassifierOutputSoftmaxTarget(int(c)) for c in target]


# --- energy pointing game (Eq. 14) vs Quantus RelevanceMassAccuracy ---------------------------------------------


def test_energy_pointing_game_equals_quantus_relevance_mass_accuracy():
    """Both are the map's sum inside the box(es) over its total sum, per image."""
    size, n = 32, 4
    maps = torch.cat([_distinct_maps(n, size, seed=1), _tied_maps(n, size, seed=2),
                      _smooth(n, 1, size, seed=3)[:, 0].relu()])
    boxes = [[Box(0, 3.4, 5, 20, 17.6)], [Box(0, 0, 0, 32, 8), Box(0, 20, 20, 40, 40)],
             [Box(0, 10, 10, 11, 11)], [Box(0, 0, 0, 32, 32)]] * 3
    masks = torch.stack([M.box_mask(b, size, size) for b in boxes])
    x = _images(len(maps), size=size).numpy()
    ours = M.energy_pointing_game(maps, masks).numpy()
    for normalise in (False, True):  # Quantus divides the map by its maximum by default: a ratio ignores that
        peer = quantus.RelevanceMassAccuracy(normalise=normalise, abs=False, disable_warnings=True)(
            model=None, x_batch=x, y_batch=np.zeros(len(maps), dtype=int), a_batch=maps[:, None].numpy(),
            s_batch=masks[:, None].numpy(), channel_first=True)
        np.testing.assert_allclose(ours, peer, **TIGHT)
    shifted = torch.roll(masks, 3, dims=2)  # not vacuous: another box, other numbers
    assert np.abs(M.energy_pointing_game(maps, shifted).numpy() - ours).max() > 0.01


@pytest.mark.filterwarnings("ignore:Return np.nan as result as the segmentation map is empty")
def test_energy_pointing_game_edge_cases_against_quantus():
    """No box: Quantus gives NaN, ``energy_pointing_game`` 0 and ``evaluate`` NaN. An all-zero map:
    Quantus 0 / 0 = NaN, ours 0 (no energy). Quantus's PointingGame is the other, max-point game."""
    size = 16
    box = M.box_mask([Box(0, 0, 0, 8, 8)], size, size)
    ranks = _distinct_maps(1, size, seed=4)[0]
    maps = torch.stack([ranks, ranks, torch.zeros(size, size)])
    masks = torch.stack([box, torch.zeros(size, size), box])
    with np.errstate(invalid="ignore"):
        peer = quantus.RelevanceMassAccuracy(normalise=False, disable_warnings=True)(
            model=None, x_batch=_images(3, size=size).numpy(), y_batch=np.zeros(3, dtype=int),
            a_batch=maps[:, None].numpy(), s_batch=masks[:, None].numpy(), channel_first=True)
    ours = M.energy_pointing_game(maps, masks)
    assert math.isfinite(peer[0]) and math.isnan(peer[1]) and math.isnan(peer[2])
    assert ours[1] == 0 and ours[2] == 0

    # one bright pixel in the box, a dim plateau everywhere else: the maximum is inside (PointingGame 1),
    # but most of the energy is outside (Eq. 14: 7.3 / 26.5, about 0.28)
    spot = torch.full((1, size, size), 0.1)
    spot[0, 2, 2] = 1.0
    energy = M.energy_pointing_game(spot, box[None]).item()
    hit = quantus.PointingGame(normalise=False, disable_warnings=True)(
        model=None, x_batch=_images(1, size=size).numpy(), y_batch=np.zeros(1, dtype=int),
        a_batch=spot[:, None].numpy(), s_batch=box[None, None].numpy(), channel_first=True)
    assert hit == [True]
    assert energy == pytest.approx((1 + 63 * 0.1) / (1 + 255 * 0.1), abs=1e-6)


# --- IC / AD / ADD (Eqs. 10-13) vs pytorch-grad-cam's cam_mult_image ---------------------------------------------


def test_confidence_scores_equal_pytorch_grad_cam_cam_mult_image():
    """absent="mean" blends towards 0 in normalised space, i.e. multiplies the normalised image by the map,
    which is what ``multiply_tensor_with_cam`` does. With the softmax target: their O - Y is our O - Y,
    ``DropInConfidence`` is max(0, Y - O) (AD without the division by Y and the 100),
    ``IncreaseInConfidence`` is 1[O > Y] (IC without the 100); D is their change for the map 1 - s."""
    net, x = _tiny_net(), _images(6)
    maps = torch.cat([_distinct_maps(3, 32, seed=5), _smooth(3, 1, 32, seed=6)[:, 0].sigmoid()])
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = M.confidence_scores(net, x, maps, target, M.baseline_image(PREPROCESS, "mean"))
    targets, s = _softmax_targets(target), maps.numpy()
    change = CamMultImageConfidenceChange()
    y = change(x, np.ones_like(s), targets, net, return_diff=False)
    o = change(x, s, targets, net, return_diff=False)
    d = change(x, 1 - s, targets, net, return_diff=False)
    for key, peer in (("Y", y), ("O", o), ("D", d)):
        np.testing.assert_allclose(ours[key].numpy(), peer, **TIGHT)
    np.testing.assert_allclose(M.average_drop(ours["Y"], ours["O"]).numpy(),
                               100 * DropInConfidence()(x, s, targets, net) / y, **TIGHT)
    np.testing.assert_array_equal(M.increase_in_confidence(ours["Y"], ours["O"]).numpy(),
                                  100 * IncreaseInConfidence()(x, s, targets, net))
    np.testing.assert_allclose(M.average_drop_in_deletion(ours["Y"], ours["D"]).numpy(),
                               -100 * change(x, 1 - s, targets, net) / y, **TIGHT)
    assert 0 < M.increase_in_confidence(ours["Y"], ours["O"]).mean() < 100  # both outcomes occur
    # not vacuous: the logit target (pytorch-grad-cam's ClassifierOutputTarget) measures something else
    logit = change(x, s, [ClassifierOutputTarget(int(c)) for c in target], net, return_diff=False)
    assert np.abs(logit - o).max() > 0.1


def test_black_baseline_is_cam_mult_image_on_raw_pixels():
    """absent="black" blends towards raw black: pytorch-grad-cam multiplying the raw image by the map,
    with the normalisation moved into the model, gives our O; the mean-colour O is another number."""
    net, raw = _tiny_net(), _smooth(4, 3, 32, seed=7).sigmoid()
    normalise = transforms.Normalize(MEAN, STD)
    x, maps, target = normalise(raw), _distinct_maps(4, 32, seed=8), torch.tensor([1, 2, 3, 4])
    black = M.confidence_scores(net, x, maps, target, M.baseline_image(PREPROCESS, "black"))
    peer = CamMultImageConfidenceChange()(raw, maps.numpy(), _softmax_targets(target),
                                          torch.nn.Sequential(normalise, net), return_diff=False)
    np.testing.assert_allclose(black["O"].numpy(), peer, **TIGHT)
    mean = M.confidence_scores(net, x, maps, target, M.baseline_image(PREPROCESS, "mean"))
    assert (mean["O"] - black["O"]).abs().max() > 1e-3


# --- ROAD (Rong et al. 2022) vs pytorch-grad-cam's metrics.road and Quantus's ROAD ---------------------------------


def test_noisy_linear_imputation_without_noise_equals_both_peers():
    """The same sparse system: 1/6 and 1/12 weights, renormalised at the border, kept pixels fixed."""
    x = _images(3, size=32, seed=9)
    ranks = _distinct_maps(3, 32, seed=10)
    removed = torch.stack([ranks[0] >= 0.3, ranks[1] < 0.6, torch.zeros(32, 32, dtype=torch.bool)])
    removed[2, :12, :9] = True  # a block in the corner
    removed[2, 20:, 31] = True  # and a strip along the border
    ours = M.noisy_linear_imputation(x, removed, noise=0.0)
    for index in range(3):
        gradcam = NoisyLinearImputer(noise=0.0)(x[index], (~removed[index]).to(torch.float32))
        quantus_ = quantus_imputation(arr=x[index].numpy(), indices=np.flatnonzero(removed[index].numpy()), noise=0.0)
        np.testing.assert_allclose(ours[index].numpy(), gradcam.numpy(), **TIGHT)
        np.testing.assert_allclose(ours[index].numpy(), quantus_, **TIGHT)
    assert torch.equal(ours[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    moved = M.noisy_linear_imputation(x, torch.roll(removed, 1, dims=2), noise=0.0)  # not vacuous
    assert (moved - ours).abs().max() > 0.1


def _gradcam_removed_fraction(n_pixels: int, percentile: int) -> float:
    """pytorch-grad-cam removes the pixels at or above ``np.percentile(map, p)`` (MoRF; LeRF: at or above
    that of ``1 - map``). With distinct values the percentile lies at position ``(n - 1) p / 100`` of the
    sorted map, so ``ceil((n - 1) p / 100)`` pixels are below it and kept: the removed fraction."""
    return (n_pixels - math.ceil((n_pixels - 1) * percentile / 100)) / n_pixels


def test_road_curves_equal_pytorch_grad_cam_road_without_noise():
    """Their percentile p keeps p % of the pixels (removes 100 - p %, up to the count above); our fraction is
    the share removed. Their softmax target with ``return_diff=False`` is our curve; their
    ``AveragerAcrossThresholds`` (``return_diff``) is our ``road_score`` minus Y."""
    net, x, maps = _tiny_net(), _images(3, seed=11), _distinct_maps(3, 32, seed=12)
    target, n_pixels = torch.tensor([0, 3, 4]), 32 * 32
    percentiles = [10, 30, 50, 70, 90]
    fractions = [_gradcam_removed_fraction(n_pixels, p) for p in percentiles]
    # pixels removed; round(fraction * n_pixels) at 90 %, 70 %, ..., 10 % would be 922, 717, 512, 307, 102
    assert [round(f * n_pixels) for f in fractions] == [921, 717, 512, 307, 103]
    ours = M.road_curves(net, x, maps, target, fractions=fractions, noise=0.0)
    targets, s = _softmax_targets(target), maps.numpy()
    for rule, key in ((RemoveMostRelevantFirst, "morf"), (RemoveLeastRelevantFirst, "lerf")):
        peer = np.stack([PerturbationConfidenceMetric(rule(p, NoisyLinearImputer(noise=0.0)))(
            x, s, targets, net, return_diff=False) for p in percentiles], 1)
        np.testing.assert_allclose(ours[key].numpy(), peer, **TIGHT)
    y = CamMultImageConfidenceChange()(x, np.ones_like(s), targets, net, return_diff=False)
    averaged = AveragerAcrossThresholds(
        lambda p: PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, NoisyLinearImputer(noise=0.0))),
        percentiles)(x, s, targets, net)
    np.testing.assert_allclose(M.road_score(ours["morf"]).numpy() - y, averaged, **TIGHT)
    assert (ours["lerf"] - ours["morf"]).abs().max() > 0.01  # not vacuous: the two orders differ


def _quantus_road(net, x, target, maps, percentages, **options) -> list[float]:
    scores = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, abs=False, disable_warnings=True)(
        net, x.numpy(), target.numpy(), a_batch=maps[:, None].numpy(), channel_first=True, softmax=True,
        device="cpu", **options)
    return [scores[p] for p in percentages]


def test_road_morf_accuracy_equals_quantus_road_on_one_channel():
    """Quantus's ROAD removes ``int(H W p / 100)`` most relevant pixels and reports the accuracy over the
    batch (argmax == label), not the softmax: on a two-class net the argmax is the target exactly when the
    target's softmax exceeds 1/2. Quantus 0.6.0 ranks the map broadcast to every channel but imputes
    (C, H * W) images, so only one-channel images run (three channels index past the mask), and with more
    images than ``batch_size`` it reports the first batch's accuracy only."""
    net, x = _tiny_net(in_channels=1, classes=2), _images(8, channels=1, seed=13)
    maps, n_pixels, target = _distinct_maps(8, 32, seed=14), 32 * 32, torch.tensor([0, 1] * 4)
    percentages = [10, 30, 50, 70, 90]
    fractions = [math.floor(n_pixels * p / 100) / n_pixels for p in percentages]
    ours = M.road_curves(net, x, maps, target, fractions=fractions, noise=0.0)["morf"]
    assert (ours - 0.5).abs().min() > 1e-4  # no argmax decided by rounding
    correct = (ours > 0.5).to(torch.float64)
    assert (correct.amax(1) != correct.amin(1)).any()  # not vacuous: some prediction flips along its curve
    np.testing.assert_array_equal(correct.mean(0).numpy(), _quantus_road(net, x, target, maps, percentages))
    np.testing.assert_array_equal(correct[:4].mean(0).numpy(),
                                  _quantus_road(net, x, target, maps, percentages, batch_size=4))
    with pytest.raises(IndexError):
        _quantus_road(_tiny_net(), _images(2), torch.zeros(2, dtype=torch.long), _distinct_maps(2, 32, seed=0), [10])


# --- deletion / insertion (Table 4) vs Quantus PixelFlipping / RegionPerturbation -----------------------------------

# PixelFlipping flips ``features_in_step`` values of the map broadcast to the 3 channels (3 * STEP: STEP pixels),
# and that must divide SIDE * SIDE
SIDE, STEP = 24, 16


def _pixel_flipping(net, x, maps, target, **options) -> np.ndarray:
    """Quantus's deletion curve: the target's softmax after each step of ``STEP`` pixels (3 * STEP features)."""
    return np.array(quantus.PixelFlipping(features_in_step=3 * STEP, normalise=False, abs=False, disable_warnings=True,
                                          **options)(
        net, x.numpy(), target.numpy(), a_batch=maps[:, None].numpy(), channel_first=True, softmax=True, device="cpu"))


def test_deletion_curve_equals_quantus_pixel_flipping():
    """Quantus's curve starts after the first step (ours at delta 0, nothing removed) and its default
    baseline "black" is each image's minimum; ``perturb_baseline=0.0`` is our absent="mean". Our AUC is the
    trapezoid over delta in [0, 1] of Y followed by their curve (Quantus 0.6.0's own ``calculate_auc``
    calls ``np.trapz``, which NumPy 2.4 removed)."""
    net, x, maps = _tiny_net(), _images(4, size=SIDE, seed=15), _distinct_maps(4, SIDE, seed=16)
    target, n_steps = torch.tensor([0, 2, 3, 4]), SIDE * SIDE // STEP
    deltas = torch.arange(n_steps + 1) / n_steps  # k STEP pixels of SIDE^2
    ours = M.insertion_deletion_curves(net, x, maps, target, M.baseline_image(PREPROCESS, "mean"), deltas=deltas)
    peer = _pixel_flipping(net, x, maps, target, perturb_baseline=0.0)
    np.testing.assert_allclose(ours["deletion"][:, 1:].numpy(), peer, **TIGHT)
    y = M.confidence_scores(net, x, maps, target, M.baseline_image(PREPROCESS, "mean"))["Y"]
    np.testing.assert_allclose(M.auc(ours["deletion"], deltas).numpy(),
                               np.trapezoid(np.concatenate([y.numpy()[:, None], peer], 1), dx=1 / n_steps, axis=1),
                               **TIGHT)
    minimum = _pixel_flipping(net, x, maps, target, perturb_baseline="black")  # not vacuous: another baseline
    assert np.abs(minimum - peer).max() > 0.01


def test_insertion_curve_equals_quantus_region_perturbation_lerf():
    """Inserting the top ``delta`` of the pixels is removing the bottom ``1 - delta``: RegionPerturbation
    with 1-pixel patches in LeRF order reports ``Y - f`` after each removed pixel, so our insertion at
    ``k / n`` is Y minus their value after ``n - k`` pixels (``k < n``)."""
    side = 16  # one step per pixel: 256 steps
    net, x, maps = _tiny_net(), _images(4, size=side, seed=17), _distinct_maps(4, side, seed=18)
    target, n_pixels = torch.tensor([1, 2, 3, 4]), side * side
    kept = torch.arange(0, n_pixels, STEP)
    ours = M.insertion_deletion_curves(net, x, maps, target, M.baseline_image(PREPROCESS, "mean"),
                                       deltas=kept / n_pixels)["insertion"]
    drops = np.array(quantus.RegionPerturbation(
        patch_size=1, order="lerf", regions_evaluation=n_pixels, perturb_baseline=0.0, normalise=False, abs=False,
        disable_warnings=True)(net, x.numpy(), target.numpy(), a_batch=maps[:, None].numpy(), channel_first=True,
                               softmax=True, device="cpu"))
    y = M.confidence_scores(net, x, maps, target, M.baseline_image(PREPROCESS, "mean"))["Y"].numpy()
    np.testing.assert_allclose(ours.numpy(), y[:, None] - drops[:, n_pixels - kept.numpy() - 1], **TIGHT)
    assert np.ptp(ours.numpy(), axis=1).min() > 0.01  # not vacuous: the curves move


def test_deletion_with_ties_agrees_with_quantus_only_where_the_tie_order_does_not_matter():
    """Four levels of ``SIDE^2 / 4`` pixels each. Both remove whole levels in the same order, so the curves
    agree where a level ends (every 9 steps); inside a level, Quantus takes ``np.argsort(-a)`` of the map
    broadcast to 3 channels (NumPy's unstable sort: within a tie, some channels of a pixel go before the
    others), we take whole pixels in an order drawn from the seed, so they differ there."""
    net, x, maps = _tiny_net(), _images(4, size=SIDE, seed=19), _tied_maps(4, SIDE, seed=20)
    target, n_steps = torch.tensor([0, 1, 2, 4]), SIDE * SIDE // STEP
    deltas = torch.arange(n_steps + 1) / n_steps
    ours = M.insertion_deletion_curves(net, x, maps, target, M.baseline_image(PREPROCESS, "mean"),
                                       deltas=deltas)["deletion"][:, 1:].numpy()
    peer = _pixel_flipping(net, x, maps, target, perturb_baseline=0.0)
    level_ends = np.arange(n_steps // 4 - 1, n_steps, n_steps // 4)
    np.testing.assert_allclose(ours[:, level_ends], peer[:, level_ends], **TIGHT)
    assert np.abs(ours - peer).max() > 1e-3
