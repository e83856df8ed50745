"""ROAD's noisy linear imputation (Rong et al., ICML 2022) against a plain reference of the same equations and
against pytorch-grad-cam's ``NoisyLinearImputer``, on the masks ``road_curves`` makes, and its edge cases.

The reference below is deliberately naive: a loop over the removed pixels and their 8 neighbours writes the
equations one coefficient at a time, with the unknowns in row-major order, and SciPy's default sparse solver
(``spsolve``) solves them. It shares no code with ``metrics``: the nested-dissection numbering, the vectorised
assembly and the LU of ``metrics._RoadSystem`` must give its solution to rounding.
"""

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from scipy import sparse
from scipy.sparse.linalg import spsolve

from liftcam_utils.evaluation import metrics as M

# pytorch-grad-cam passes tensors to NumPy functions (a NumPy 2 deprecation, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

DIRECT, DIAGONAL = 1 / 6, 1 / 12  # the paper's weights of the 4 direct and the 4 diagonal neighbours


def _reference_values(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """(C, n) values of the removed pixels (row-major) solving, for each removed pixel i,
    ``sum_j w_ij (x_i - x_j) = 0`` over its neighbours j inside the image, kept ones fixed; 0 with none kept."""
    channels, height, width = image.shape
    pixels = [(int(r), int(c)) for r, c in zip(*np.nonzero(removed), strict=True)]
    if len(pixels) == height * width:
        return np.zeros((channels, len(pixels)))
    unknown = {pixel: k for k, pixel in enumerate(pixels)}
    coefficients = []  # (equation, unknown, coefficient); repeated pairs add up
    right_hand_side = np.zeros((len(pixels), channels))
    for k, (r, c) in enumerate(pixels):
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr, dc) == (0, 0) or not (0 <= r + dr < height and 0 <= c + dc < width):
                    continue
                weight = DIRECT if dr == 0 or dc == 0 else DIAGONAL
                coefficients.append((k, k, weight))
                if removed[r + dr, c + dc]:
                    coefficients.append((k, unknown[(r + dr, c + dc)], -weight))
                else:
                    right_hand_side[k] += weight * image[:, r + dr, c + dc]
    rows, columns, values = zip(*coefficients, strict=True)
    system = sparse.csc_matrix((values, (rows, columns)), shape=(len(pixels), len(pixels)))
    return np.atleast_2d(spsolve(system, right_hand_side).reshape(len(pixels), channels)).T


def _reference_imputation(x: torch.Tensor, removed: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """The imputation by its specification: reference values plus the seed's noise field on the removed pixels."""
    out = x.clone()
    field = noise * torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for index in range(len(x)):
        where = removed[index].numpy().astype(bool)
        values = _reference_values(x[index].double().numpy(), where)
        out[index][:, torch.from_numpy(where)] = (torch.from_numpy(values) + field[:, torch.from_numpy(where)]).to(x)
    return out


def _smooth(channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(channels, height, width) low-frequency noise: a smooth image or, with one channel, a CAM-like map."""
    coarse = torch.randn(1, channels, 7, 7, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]


def _road_masks(saliency: torch.Tensor, fractions=None) -> list[torch.Tensor]:
    """The MoRF and LeRF masks of ``road_curves`` at ``fractions`` (default: its own) for (1, H, W) ``saliency``."""
    ranking = M._relevance_ranking(saliency, 0)
    fractions = M.ROAD_FRACTIONS.tolist() if fractions is None else fractions
    return [mask for p in fractions for mask in (M._top_of(saliency, ranking, p), M._bottom_of(saliency, ranking, p))]


def test_imputation_equals_the_reference_on_road_masks_of_a_non_square_image():
    """23 x 37, 3 channels: every MoRF / LeRF mask of a smooth map (blobs) and of a map with a large flat
    region (a ReLU's zeros: scattered pixels, ranked by the seeded tie-break), in float64 to 1e-10 and
    through ``noisy_linear_imputation`` with noise, in float32."""
    height, width = 23, 37
    x = _smooth(3, height, width, seed=1)[None] + 0.1 * torch.randn(1, 3, height, width,
                                                                    generator=torch.Generator().manual_seed(2))
    smooth = _smooth(1, height, width, seed=3)
    assert 0.2 < (smooth <= 0).float().mean() < 0.8  # the ReLU's flat region is large
    for saliency in (smooth, smooth.relu()):
        for removed in _road_masks(saliency):
            ours = M._interpolated_values(x[0].double().numpy(), removed[0].numpy().astype(bool))
            reference = _reference_values(x[0].double().numpy(), removed[0].numpy().astype(bool))
            np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)
            torch.testing.assert_close(M.noisy_linear_imputation(x, removed, noise=0.05, seed=4),
                                       _reference_imputation(x, removed, noise=0.05, seed=4), rtol=0, atol=1e-6)


def test_imputation_at_224_equals_the_reference_on_the_largest_removals():
    """The size the notebooks evaluate: MoRF 90 % and LeRF 50 % of a CAM-like map, float64 to 1e-9."""
    x = _smooth(3, 224, 224, seed=5).double().numpy()
    masks = _road_masks(_smooth(1, 224, 224, seed=6), fractions=[0.5, 0.9])
    for removed in (masks[3], masks[1]):  # MoRF 90 %, LeRF 50 %
        where = removed[0].numpy().astype(bool)
        np.testing.assert_allclose(M._interpolated_values(x, where), _reference_values(x, where), rtol=0, atol=1e-9)


def test_imputation_equals_pytorch_grad_cam_on_road_masks():
    """pytorch-grad-cam's ``NoisyLinearImputer`` (the authors' imputation; its mask is 1 on the kept pixels)
    on a non-square 64 x 48 image, every ROAD fraction of both orders, without noise: float32 to 1e-5."""
    x = _smooth(3, 64, 48, seed=7)[None]
    for removed in _road_masks(_smooth(1, 64, 48, seed=8)):
        peer = NoisyLinearImputer(noise=0.0)(x[0], (removed[0] == 0).to(torch.float32))
        np.testing.assert_allclose(M.noisy_linear_imputation(x, removed, noise=0.0)[0].numpy(), peer.numpy(),
                                   rtol=0, atol=1e-5)


def test_a_removed_pixel_with_no_kept_neighbour_and_a_single_kept_pixel():
    """A 5 x 5 block removed from 9 x 8: its centre has only removed neighbours and still gets the reference's
    value. With one pixel kept, the only solution is that pixel's value everywhere (each removed pixel is the
    weighted mean of its neighbours)."""
    image = _smooth(2, 9, 8, seed=9).double()
    block = torch.zeros(9, 8, dtype=torch.bool)
    block[2:7, 1:6] = True
    np.testing.assert_allclose(M._interpolated_values(image.numpy(), block.numpy()),
                               _reference_values(image.numpy(), block.numpy()), rtol=0, atol=1e-12)
    all_but_one = torch.ones(1, 9, 8, dtype=torch.bool)
    all_but_one[0, 4, 6] = False
    imputed = M.noisy_linear_imputation(image[None], all_but_one, noise=0.0)[0]
    torch.testing.assert_close(imputed, image[:, 4, 6, None, None].expand(2, 9, 8), rtol=0, atol=1e-12)


def test_nothing_removed_all_removed_and_the_noise_field():
    """Nothing removed: the images themselves, bit for bit. Everything removed: 0 plus the noise field of the
    seed (``torch.randn`` of (C, H, W) float64 from the seed, times the per-channel std, as documented). With
    pixels removed the noise is added to exactly those pixels."""
    x = _smooth(3, 12, 17, seed=10)[None].expand(2, 3, 12, 17).contiguous()
    assert torch.equal(M.noisy_linear_imputation(x, torch.zeros(2, 12, 17), noise=0.3), x)
    std = torch.tensor([0.1, 0.0, 0.2])[:, None, None]
    field = torch.randn(3, 12, 17, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * std
    everything = M.noisy_linear_imputation(x, torch.ones(2, 12, 17), noise=std, seed=11)
    assert torch.equal(everything, field.float().expand(2, 3, 12, 17))
    removed = _road_masks(_smooth(1, 12, 17, seed=12), fractions=[0.4])[0]
    clean = M.noisy_linear_imputation(x[:1], removed, noise=0.0)
    noisy = M.noisy_linear_imputation(x[:1], removed, noise=std, seed=11)
    where = removed[0].bool()
    torch.testing.assert_close((noisy - clean)[0][:, where], field[:, where].float(), rtol=0, atol=1e-6)
    assert torch.equal(noisy[0][:, ~where], x[0][:, ~where])


def test_images_sharing_a_mask_share_one_solve_and_get_their_own_values():
    """A batch whose images have the same mask (one factorisation, all channels solved together) gives what each
    image gives alone, and a batch of distinct masks what each mask gives alone, whatever the number of threads;
    the dtype is kept (float64, float16, bfloat16) and a channels-last image gives the same result."""
    images = torch.stack([_smooth(3, 20, 26, seed=s) for s in (13, 14, 15)])
    masks = _road_masks(_smooth(1, 20, 26, seed=16), fractions=[0.3, 0.7])
    shared = masks[1].expand(3, 20, 26)
    together = M.noisy_linear_imputation(images, shared, noise=0.1, seed=2)
    for index in range(3):
        alone = M.noisy_linear_imputation(images[index:index + 1], shared[:1], noise=0.1, seed=2)
        torch.testing.assert_close(together[index:index + 1], alone, rtol=0, atol=1e-7)
    mixed = torch.cat([masks[0], masks[3], masks[0]])
    batch = M.noisy_linear_imputation(images.double(), mixed, noise=0.0)
    assert batch.dtype == torch.float64
    for index in range(3):
        alone = M.noisy_linear_imputation(images[index:index + 1].double(), mixed[index:index + 1], noise=0.0)
        torch.testing.assert_close(batch[index:index + 1], alone, rtol=0, atol=1e-12)
    half = M.noisy_linear_imputation(images.half(), mixed, noise=0.0)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), batch.float(), rtol=0, atol=5e-3)
    brain = M.noisy_linear_imputation(images.bfloat16(), mixed, noise=0.0)
    assert brain.dtype == torch.bfloat16
    torch.testing.assert_close(brain.float(), batch.float(), rtol=0, atol=3e-2)
    for workers in (1, 2, 3):  # distinct masks factorised side by side in threads: the same result
        assert torch.equal(M.noisy_linear_imputation(images, mixed, noise=0.1, workers=workers),
                           M.noisy_linear_imputation(images, mixed, noise=0.1, workers=1))
    for workers in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be a positive integer"):
            M.noisy_linear_imputation(images, mixed, workers=workers)
    strided = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(M.noisy_linear_imputation(strided, mixed, noise=0.1),
                       M.noisy_linear_imputation(images, mixed, noise=0.1))


@pytest.mark.parametrize("size", [(1, 1), (1, 17), (5, 3), (16, 16), (33, 20), (224, 224)])
def test_dissection_order_is_a_permutation_of_the_pixels(size):
    order = M._dissection_order(*size)
    assert sorted(order.tolist()) == list(range(size[0] * size[1]))


def test_road_curves_equal_those_of_the_reference_imputation(monkeypatch):
    """``road_curves`` gives the curves of the reference imputation put in place of ours."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(17)))
    x = torch.stack([_smooth(3, 18, 22, seed=s) for s in (18, 19)])
    saliency = torch.stack([_smooth(1, 18, 22, seed=s)[0] for s in (20, 21)])
    target = torch.tensor([0, 2])
    ours = M.road_curves(net, x, saliency, target, noise=0.02, seed=3)
    monkeypatch.setattr(M, "noisy_linear_imputation", _reference_imputation)
    reference = M.road_curves(net, x, saliency, target, noise=0.02, seed=3)
    for order in ("morf", "lerf"):
        torch.testing.assert_close(ours[order], reference[order], rtol=0, atol=1e-6)
