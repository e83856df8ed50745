"""The paper's evaluation metrics (Sec. 4), for saliency maps ``s(u(L))`` in [0, 1].

Which image counts as "nothing"? The paper multiplies the map with ``x`` (Eq. 10) without saying
whether ``x`` is the raw or the normalised image. Here every metric blends towards a
``baseline`` image: ``e = s * x + (1 - s) * baseline``. ``baseline_image(model, "mean")`` is 0 in
the model's normalised space (the dataset's mean colour, the usual choice); ``"black"`` is the
raw black image, i.e. ``s * x`` on raw pixels. Tables must say which one was used.

Which number is the model's confidence? The paper's ``Y``, ``O`` and ``D`` (Eqs. 10-13) and its insertion /
deletion curves are the target class's probability. Every metric that scores the model takes the model's
output function, ``output`` (``LoadedModel.output``; :mod:`liftcam_utils.engine.outputs`): ``"softmax"``, the
target's softmax across classes, for a single-label classifier (the paper's ImageNet models; a VQA model,
whose classes are the answers), or ``"sigmoid"``, the sigmoid of the target's own logit, for a multi-label one
trained with binary cross-entropy (``shapes_vgg``, ``vgg16_voc``, ``vgg16_coco``). The softmax of a multi-label
model is not its confidence: beside another class that is present too, a class the model is sure of gets a
small softmax, and AD / ADD divide by it. ``output`` defaults to ``"softmax"`` in the functions below;
:func:`~liftcam_utils.evaluation.batch.evaluate` and the explorer pass the model's own. :func:`target_probability`
is that score.

ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML
2022) has no baseline: its removed pixels are filled in from the kept ones by noisy linear
imputation (:func:`noisy_linear_imputation`), so that the shape of the removed region tells the
model as little as possible about the class.

Nothing undefined becomes a score. A metric of the model's outputs (the confidences ``Y``, ``O``, ``D``,
the curves, the coefficient vectors of the cosine) is NaN for an image where its input is NaN or
infinite: a NaN model gives NaN rows, never a plausible score. A saliency map with a NaN or infinite
value, or not one map per image, is refused (``ValueError``): the maps of
:func:`~liftcam_utils.engine.cam_map.cam_map` are always finite, so such a map is a caller's mistake.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import splu

from ..engine.outputs import check_output, class_probabilities

DELTAS = torch.linspace(0, 1, 41)  # delta in [0 : 0.025 : 1]
ABSENT_CHOICES = ("mean", "black")
ROAD_FRACTIONS = torch.arange(1, 10) / 10  # 10 %, 20 %, ..., 90 % of the pixels removed
ROAD_NOISE = 0.01  # std of ROAD's imputation noise on raw pixels in [0, 1], the authors' default
# ROAD's imputation weights: (row offset, column offset, weight) of the 8 neighbours of a pixel
ROAD_NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
                   (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))
_DISSECTION_LEAF = 16  # boxes of at most this many pixels end the nested dissection of ROAD's grid


def normalisation_of(preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the ``Normalize`` step of a torchvision preprocessing pipeline."""
    for step in getattr(preprocess, "transforms", [preprocess]):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return torch.as_tensor(step.mean, dtype=torch.float32), torch.as_tensor(step.std, dtype=torch.float32)
    raise ValueError("the preprocessing has no Normalize step, so 'black' cannot be expressed")


def baseline_image(preprocess, absent: str = "mean") -> torch.Tensor:
    """The (3, 1, 1) normalised value of an absent pixel: the mean colour (0) or raw black."""
    if absent not in ABSENT_CHOICES:
        raise ValueError(f"absent must be one of {ABSENT_CHOICES}, got {absent!r}")
    mean, std = normalisation_of(preprocess)
    value = torch.zeros_like(mean) if absent == "mean" else -mean / std
    return value[:, None, None]


def _check_one_map_per_image(x: torch.Tensor, maps: torch.Tensor, name: str) -> None:
    """``ValueError`` unless ``x`` is (B, C, H, W) images and ``maps`` one (H, W) map per image, (B, H, W):
    a single map is never broadcast over a batch."""
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
    expected = (x.shape[0], *x.shape[2:])
    if tuple(maps.shape) != expected:
        raise ValueError(f"{name} {tuple(maps.shape)} does not match the images {tuple(x.shape)}: expected one "
                         f"map per image, shape {expected}")


def _check_saliency(saliency: torch.Tensor) -> None:
    """``ValueError`` unless ``saliency`` is a non-empty batch of finite (H, W) maps, (B, H, W)."""
    if saliency.dim() != 3:
        raise ValueError(f"saliency must be (B, H, W) maps, got shape {tuple(saliency.shape)}")
    if saliency.numel() == 0:
        raise ValueError(f"saliency {tuple(saliency.shape)} is empty: give at least one map of at least one pixel")
    finite = torch.isfinite(saliency).flatten(1).all(1)
    if not finite.all():
        raise ValueError(f"saliency has NaN or infinite values in map(s) {(~finite).nonzero()[:, 0].tolist()}; "
                         "metrics need finite maps (those of cam_map are in [0, 1])")


def _nan_where_not_finite(values: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """``values`` with NaN wherever an entry of one of ``inputs`` (same shape) is NaN or infinite."""
    finite = torch.stack([torch.isfinite(t) for t in inputs]).all(0)
    return torch.where(finite, values, torch.nan)


def blend(x: torch.Tensor, keep: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """``keep * x + (1 - keep) * baseline``; ``keep`` is (B, H, W) in [0, 1], one map per image of ``x``."""
    _check_one_map_per_image(x, keep, "keep")
    keep = keep[:, None].to(x.dtype)
    return keep * x + (1 - keep) * baseline.to(x)


def target_probability(net, images: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """(B,) the model's probability of each image's ``target`` class under its output function ``output``
    (one of :data:`~liftcam_utils.engine.outputs.OUTPUTS`): ``softmax(net(images))[target]`` across the
    classes for ``"softmax"``, ``sigmoid(net(images)[target])`` of the target's logit alone for ``"sigmoid"``.
    ``ValueError`` listing the valid values for any other ``output``.

    A (B, C, H, W) batch on the CPU goes through the network in channels-last memory order: the same
    numbers up to float rounding, and convolutions and max-pooling run faster on the CPU in that order
    (``benchmarks/memory_format.py``)."""
    check_output(output)
    if images.dim() == 4 and images.device.type == "cpu":
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return class_probabilities(net(images), output).gather(1, target[:, None])[:, 0]


def confidence_scores(net, x, saliency, target, baseline, *, output: str = "softmax") -> dict[str, torch.Tensor]:
    """Per image, the target's probability (:func:`target_probability` under ``output``, the model's
    output function): ``Y`` on the image ``x``, ``O`` on the explanation map's image ``e = s o x`` (Eq. 10)
    and ``D`` on its complement ``e_inv = (1 - s) o x`` (Sec. 4.1), the absent pixels at ``baseline``. They
    make the terms of IC (Eq. 11), AD (Eq. 12) and ADD (Eq. 13). NaN where the model gives NaN;
    ``ValueError`` for a saliency map that is not finite or not one (H, W) map per image, or an unknown
    ``output``."""
    check_output(output)
    _check_one_map_per_image(x, saliency, "saliency")
    _check_saliency(saliency)
    return {
        "Y": target_probability(net, x, target, output),
        "O": target_probability(net, blend(x, saliency, baseline), target, output),
        "D": target_probability(net, blend(x, 1 - saliency, baseline), target, output),
    }


def _ratio(numerator: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """numerator / Y, with 0 where Y = 0 (no confidence to lose or gain)."""
    return torch.where(y > 0, numerator / torch.where(y > 0, y, 1.0), 0.0)


def increase_in_confidence(y: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Per-image term of IC (Eq. 11): ``100 * 1[Y < O]``, ``Y`` and ``O`` of :func:`confidence_scores`
    (Eq. 10). Average over images for the metric.
    NaN where ``Y`` or ``O`` is NaN or infinite (never 0, which would read as a valid comparison)."""
    return _nan_where_not_finite((y < o).to(torch.float32) * 100, y, o)


def average_drop(y: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Per-image term of AD (Eq. 12): ``100 * max(0, Y - O) / Y`` (0 where Y = 0), ``Y`` and ``O`` of
    :func:`confidence_scores` (Eq. 10): the relative confidence lost by keeping only the map's pixels.
    NaN where ``Y`` or ``O`` is NaN or infinite (never 0, the best score)."""
    return _nan_where_not_finite(_ratio((y - o).clamp_min(0), y) * 100, y, o)


def average_drop_in_deletion(y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per-image term of ADD (Eq. 13): ``100 * (Y - D) / Y`` (0 where Y = 0), ``Y`` and ``D`` of
    :func:`confidence_scores`: the relative confidence lost by removing the map's pixels.
    NaN where ``Y`` or ``D`` is NaN or infinite."""
    return _nan_where_not_finite(_ratio(y - d, y) * 100, y, d)


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")


def _pixel_count(fraction: float, n_pixels: int) -> int:
    """``round(fraction * n_pixels)``; ``ValueError`` unless ``fraction`` is in [0, 1]."""
    _check_fraction(fraction)
    return int(round(fraction * n_pixels))


def _relevance_ranking(saliency: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, H * W) pixel indices of each map, most salient first, ties in an order drawn from ``seed``;
    ``ValueError`` for an empty batch or a map with a NaN or infinite value (it has no ranking)."""
    _check_saliency(saliency)
    shuffle = torch.randperm(saliency[0].numel(), generator=torch.Generator().manual_seed(seed)).to(saliency.device)
    return shuffle[saliency.flatten(1)[:, shuffle].argsort(dim=1, descending=True, stable=True)]


def _mask_of(saliency: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """1 on ``pixels`` (B, n) of each map, 0 elsewhere, shaped like ``saliency``."""
    mask = torch.zeros(saliency.flatten(1).shape, dtype=saliency.dtype, device=saliency.device)
    mask.scatter_(1, pixels, 1.0)
    return mask.view(saliency.shape)


def _top_of(saliency: torch.Tensor, ranking: torch.Tensor, fraction: float) -> torch.Tensor:
    """The mask of the first ``round(fraction * H * W)`` pixels of ``ranking`` (:func:`_relevance_ranking`)."""
    return _mask_of(saliency, ranking[:, :_pixel_count(fraction, ranking.shape[1])])


def _bottom_of(saliency: torch.Tensor, ranking: torch.Tensor, fraction: float) -> torch.Tensor:
    """The mask of the last ``round(fraction * H * W)`` pixels of ``ranking``."""
    count = _pixel_count(fraction, ranking.shape[1])
    return _mask_of(saliency, ranking[:, ranking.shape[1] - count:])


def top_fraction_mask(saliency: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """1 on the ``round(fraction * H * W)`` most salient pixels of each map, 0 elsewhere.

    Ties are broken at random: the pixels are put in an order drawn from ``seed`` (one permutation
    for every map and every fraction) and stably sorted by saliency, so the mask always has exactly
    that many ones, is the same on every call with the same ``seed``, and grows by nesting as the
    fraction grows. Breaking ties by pixel index instead would favour the top rows of every flat
    region of the map (a ReLU's zeros, a saturated plateau) and bias insertion / deletion AUCs by where
    the object happens to sit in the image. ``ValueError`` unless ``fraction`` is in [0, 1] and ``saliency``
    is a non-empty (B, H, W) batch of finite maps.
    """
    return _top_of(saliency, _relevance_ranking(saliency, seed), fraction)


def bottom_fraction_mask(saliency: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """1 on the ``round(fraction * H * W)`` least salient pixels of each map, 0 elsewhere: the end of
    the ranking :func:`top_fraction_mask` starts from (same ``seed``, same ties), so where the counts
    add up to ``H * W`` it is the complement of ``top_fraction_mask(saliency, 1 - fraction, seed)``."""
    return _bottom_of(saliency, _relevance_ranking(saliency, seed), fraction)


def trapezoid(values: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Area under ``values`` (..., K) sampled at ``xs`` (K,) by the trapezoidal rule."""
    widths = xs.diff().to(values)
    return ((values[..., 1:] + values[..., :-1]) / 2 * widths).sum(-1)


def insertion_deletion_curves(net, x, saliency, target, baseline, deltas: torch.Tensor = DELTAS, seed: int = 0,
                              *, output: str = "softmax") -> dict[str, torch.Tensor]:
    """The target's probability (:func:`target_probability` under ``output``, the model's output function)
    when the top ``100 delta %`` pixels are kept (insertion, the rest at the baseline) or removed (deletion),
    for each delta (Table 4). Returns (B, K) curves.

    Pixels of equal saliency are ranked in a random order drawn from ``seed``
    (:func:`top_fraction_mask`), the same at every delta: the curves are deterministic for a seed,
    and a flat region of the map is inserted or deleted in no particular spatial order.

    An image's curves are NaN where the model gives NaN (and so is its :func:`auc`); a saliency map that
    is not finite, or not one (H, W) map per image, or an unknown ``output``, is refused (``ValueError``)."""
    check_output(output)
    _check_one_map_per_image(x, saliency, "saliency")
    ranking = _relevance_ranking(saliency, seed)  # once: every delta takes a prefix of it
    insertion, deletion = [], []
    for delta in deltas.tolist():
        keep = _top_of(saliency, ranking, delta)
        insertion.append(target_probability(net, blend(x, keep, baseline), target, output))
        deletion.append(target_probability(net, blend(x, 1 - keep, baseline), target, output))
    return {"insertion": torch.stack(insertion, 1), "deletion": torch.stack(deletion, 1)}


def auc(curve: torch.Tensor, deltas: torch.Tensor = DELTAS) -> torch.Tensor:
    """Area under a (B, K) insertion or deletion curve over delta in [0, 1]; NaN for a curve with a NaN."""
    return trapezoid(curve, deltas.to(curve.device))


def imputation_noise(preprocess, raw_std: float = ROAD_NOISE) -> torch.Tensor:
    """(3, 1, 1) std in the model's normalised space of noise with std ``raw_std`` on raw pixels in
    [0, 1]: ``raw_std / std`` per channel, ``std`` that of the preprocessing's ``Normalize`` step.

    The authors' code (Rong et al. 2022) imputes raw pixels and adds noise of std 0.01 there; the
    imputation itself commutes with the per-channel affine normalisation (its weights sum to 1),
    so imputing normalised images with this noise is the same as imputing raw ones, then
    normalising (except with no pixel kept, where normalised 0 is the mean colour, not black).
    """
    if raw_std < 0:
        raise ValueError(f"raw_std must be >= 0, got {raw_std}")
    return raw_std / normalisation_of(preprocess)[1][:, None, None]


@functools.lru_cache(maxsize=4)
def _unit_noise(channels: int, height: int, width: int, seed: int) -> np.ndarray:
    """The (C, H, W) standard normal float64 field drawn from ``seed`` that ROAD's noise is scaled from
    (read-only): kept for the next calls with the same shape and seed, as ``road_curves`` asks for it at
    every fraction."""
    field = torch.randn(channels, height, width, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64).numpy()
    field.flags.writeable = False
    return field


def _dissection_order(height: int, width: int) -> np.ndarray:
    """(H * W,) the pixels (row-major indices) of an H x W grid in nested-dissection order: a box is cut
    along its longer side by its middle line of pixels, the two halves come first (each dissected the same
    way), the line last; boxes of at most ``_DISSECTION_LEAF`` pixels are taken row by row. With 8
    neighbours one line of pixels separates the halves, so eliminating the unknowns in this order only
    couples pixels of one box and its border: the sparse factor of ROAD's system keeps about ``n log n``
    entries for n unknowns instead of filling up band after band. The removed pixels of any mask, taken
    in this order, are dissected by the same lines."""
    pixels = np.arange(height * width).reshape(height, width)
    order = []

    def dissect(top: int, bottom: int, left: int, right: int) -> None:
        rows, columns = bottom - top, right - left
        if rows <= 0 or columns <= 0:
            return
        if rows * columns <= _DISSECTION_LEAF:
            order.append(pixels[top:bottom, left:right].ravel())
        elif rows >= columns:
            middle = (top + bottom) // 2
            dissect(top, middle, left, right)
            dissect(middle + 1, bottom, left, right)
            order.append(pixels[middle, left:right])
        else:
            middle = (left + right) // 2
            dissect(top, bottom, left, middle)
            dissect(top, bottom, middle + 1, right)
            order.append(pixels[top:bottom, middle])

    dissect(0, height, 0, width)
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)


@functools.lru_cache(maxsize=4)
def _road_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ROAD's system takes from the H x W grid, whatever the mask: the pixels in nested-dissection
    order (:func:`_dissection_order`), and for every pixel its row of the system if all pixels were unknowns,
    as 9 (pixel, coefficient) pairs: the pixel itself with the sum of the weights of its neighbours inside
    the image, each of those neighbours with minus its weight (:data:`ROAD_NEIGHBOURS`), and ``H * W`` (no
    pixel) with 0 for a neighbour outside the image; the 9 sorted by their place in the dissection order."""
    n_pixels = height * width
    order = _dissection_order(height, width)
    rank = np.empty(n_pixels + 1, dtype=np.int64)
    rank[order] = np.arange(n_pixels)
    rank[n_pixels] = n_pixels  # "no pixel" sorts last
    rows, columns = np.divmod(np.arange(n_pixels), width)
    neighbour_rows = rows[:, None] + np.array([row for row, _, _ in ROAD_NEIGHBOURS])
    neighbour_columns = columns[:, None] + np.array([column for _, column, _ in ROAD_NEIGHBOURS])
    inside = (neighbour_rows >= 0) & (neighbour_rows < height) & (neighbour_columns >= 0) & (neighbour_columns < width)
    weights = np.where(inside, np.array([weight for _, _, weight in ROAD_NEIGHBOURS]), 0.0)
    stencil = np.concatenate([np.arange(n_pixels)[:, None],
                              np.where(inside, neighbour_rows * width + neighbour_columns, n_pixels)], 1)
    coefficients = np.concatenate([weights.sum(1, keepdims=True), -weights], 1)
    by_rank = np.argsort(rank[stencil], axis=1, kind="stable")
    stencil = np.take_along_axis(stencil, by_rank, 1).astype(np.int32 if n_pixels < 2**31 - 1 else np.int64)
    coefficients = np.take_along_axis(coefficients, by_rank, 1)
    for table in (order, stencil, coefficients):
        table.flags.writeable = False
    return order, stencil, coefficients


def _row_starts(entries: np.ndarray) -> np.ndarray:
    """The ``indptr`` of a compressed sparse matrix whose row i holds the true entries of row i of ``entries``."""
    starts = np.zeros(len(entries) + 1, dtype=np.int32 if entries.size < 2**31 - 1 else np.int64)
    np.cumsum(entries.sum(1), out=starts[1:])
    return starts


class _RoadSystem:
    """ROAD's linear system (Rong et al., ICML 2022) for one (H, W) mask of removed pixels, factorised once
    and solved for any number of images (channels) that share the mask.

    Only the n removed pixels are unknowns. For removed pixel i with neighbours N(i) inside the image,

        (sum_{j in N(i)} w_ij) x_i - sum_{j in N(i), removed} w_ij x_j = sum_{j in N(i), kept} w_ij x_j,

    with ``w_ij`` of :data:`ROAD_NEIGHBOURS`: the kept pixels are known and move to the right-hand side,
    which is one sparse (n, H * W) matrix of the mask times the images, all channels in one product. The
    (n, n) matrix on the left is a weighted graph Laplacian with the kept pixels as boundary: symmetric,
    and positive definite whenever one pixel is kept (every connected group of removed pixels then
    touches a kept one). Both are gathered with NumPy from the mask-independent tables of
    :func:`_road_grid` (no loop over pixels), the unknowns numbered in nested-dissection order, and the
    matrix is factorised by SuperLU (``scipy.sparse.linalg.splu``) in that order, in symmetric mode with
    pivots on the diagonal (safe for a positive-definite matrix): an exact sparse LU, the same solution as
    any other exact solver up to rounding. On the large removed regions that dominate ROAD's cost (70 to
    90 % of a 224 x 224 image) it takes 2 to 5 times fewer operations than with a general-purpose column
    ordering (COLAMD, the default of ``splu`` and ``spsolve``). With no pixel kept there is nothing to
    interpolate from (the system is singular): every removed value is 0.
    """

    def __init__(self, removed: np.ndarray):
        height, width = removed.shape
        n_pixels = height * width
        flat = np.asarray(removed, dtype=bool).ravel()
        self.removed = np.flatnonzero(flat)  # row-major
        self.lu = None
        if len(self.removed) in (0, n_pixels):
            return
        grid_order, stencil, coefficients = _road_grid(height, width)
        order = grid_order[flat[grid_order]]  # the removed pixels in dissection order: the unknowns
        n_removed = len(order)
        unknown = np.full(n_pixels + 1, -1, dtype=stencil.dtype)  # -1: kept, or no pixel
        unknown[order] = np.arange(n_removed)
        self.position = unknown[self.removed]  # the unknown of each removed pixel, row-major
        pixels, coefficients = stencil[order], coefficients[order]  # (n, 9) rows of the full system
        variables = unknown[pixels]
        coupled = variables >= 0  # the pixel itself and its removed neighbours, in increasing unknown order
        # symmetric: row i of the system is also its column i, as SuperLU takes it (CSC)
        system = sparse.csc_matrix((coefficients[coupled], variables[coupled], _row_starts(coupled)),
                                   shape=(n_removed, n_removed))
        known = ~coupled & (pixels < n_pixels)  # kept neighbours: the right-hand side, w_ij x_j
        self.kept = sparse.csr_matrix((-coefficients[known], pixels[known], _row_starts(known)),
                                      shape=(n_removed, n_pixels))
        self.lu = splu(system, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})

    def solve(self, images: np.ndarray) -> np.ndarray:
        """(K, n) values of the removed pixels (row-major) for ``images`` (K, H * W), float64: one row per
        image channel, all solved in one call."""
        if self.lu is None:
            return np.zeros((len(images), len(self.removed)))
        solution = self.lu.solve(np.asarray(self.kept @ images.T, order="F"))
        return solution[self.position].T


def _interpolated_values(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """(C, n) values of the n removed pixels of ``image`` (C, H, W), in row-major order, that solve
    ROAD's linear system exactly (:class:`_RoadSystem`); zeros when no pixel is kept (nothing to interpolate)."""
    return _RoadSystem(removed).solve(image.reshape(image.shape[0], -1).astype(np.float64))


def noisy_linear_imputation(x: torch.Tensor, removed: torch.Tensor, noise: float | torch.Tensor = ROAD_NOISE,
                            seed: int = 0, workers: int | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al., ICML 2022): ``x`` (B, C, H, W) with the pixels
    where ``removed`` (B, H, W; bool or 0 / 1) is true replaced, channel by channel, by

        x_i = sum_{j in N(i)} w_ij x_j / sum_{j in N(i)} w_ij,   then   x_i + eps_i,  eps_i ~ N(0, noise^2),

    where ``N(i)`` are the (up to 8) neighbours of pixel ``i`` inside the image, ``w_ij = 1/6`` for
    the 4 direct and ``1/12`` for the 4 diagonal ones. The kept pixels are fixed to their values
    and unchanged; the removed ones are the unknowns of one sparse linear system, solved exactly
    (inside the image the weights sum to 1, the paper's equation; at the border the weights of the
    neighbours that exist are renormalised, as in the authors' code). Its matrix is a weighted graph
    Laplacian with the kept pixels as boundary, so it is non-singular whenever one pixel is kept.
    How it is solved (:class:`_RoadSystem`): only the removed pixels are unknowns, the kept ones make
    the right-hand side; the matrix is assembled with vectorised NumPy, its unknowns numbered in
    nested-dissection order, and factorised once per distinct mask of the batch by a sparse LU
    (SuperLU); the channels of every image with that mask are solved in one call. The values are those
    of any exact solver of the same system (pytorch-grad-cam's ``NoisyLinearImputer``, the authors'
    code) up to rounding.
    With no pixel kept there is nothing to interpolate from: the removed pixels become 0, the
    dataset's mean colour in the model's normalised space (``baseline_image(..., "mean")``).

    ``noise``: the std of the Gaussian noise added to the removed pixels only, in the units of
    ``x``, a number or a (C, 1, 1) tensor (per channel); for normalised images
    :func:`imputation_noise` gives the authors' 0.01 on raw pixels. The noise is one (C, H, W) field
    drawn from ``seed``, the same for every image and every mask: the result is deterministic for a
    seed and does not depend on the batch.

    ``workers``: how many of the batch's distinct masks are factorised at the same time, in threads (SuperLU
    runs outside Python's lock); default ``torch.get_num_threads()``, the parallelism torch itself uses in
    this process. The result does not depend on it.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    if tuple(removed.shape) != (batch, height, width):
        raise ValueError(f"mask {tuple(removed.shape)} does not match the images {tuple(x.shape)}: "
                         f"expected {(batch, height, width)}")
    mask = removed.detach().cpu()
    mask = (mask if mask.dtype == torch.bool else mask.double()).numpy()
    if mask.dtype != np.bool_:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must be boolean or 0 / 1 (1: removed)")
        mask = mask != 0
    std = torch.as_tensor(noise, dtype=torch.float64).cpu()
    if std.dim() != 0 and tuple(std.shape) != (channels, 1, 1):
        raise ValueError(f"noise must be a number or a ({channels}, 1, 1) tensor, got shape {tuple(std.shape)}")
    if not (std >= 0).all():
        raise ValueError(f"noise must be >= 0, got {noise}")
    # NumPy from here to the end, with one factorisation per distinct mask: images with the same mask
    # (and all their channels) are solved together
    field = (_unit_noise(channels, height, width, seed) * std.detach().numpy()).reshape(channels, height * width)
    mask = mask.reshape(batch, height * width)
    source = x.detach().cpu()
    as_numpy = source.dtype in (torch.float16, torch.float32, torch.float64)  # cast by NumPy, not torch
    imputed = (source.numpy().astype(np.float64) if as_numpy else source.double().numpy().copy()
               ).reshape(batch, channels, height * width)
    sharing = {}
    for index in np.flatnonzero(mask.any(1)):
        sharing.setdefault(np.packbits(mask[index]).tobytes(), []).append(index)

    def impute(indices: list[int]) -> None:  # writes only the rows of its own images
        where = np.flatnonzero(mask[indices[0]])
        values = _RoadSystem(mask[indices[0]].reshape(height, width)).solve(
            imputed[indices].reshape(len(indices) * channels, height * width))
        for index, image_values in zip(indices, values.reshape(len(indices), channels, -1), strict=True):
            imputed[index][:, where] = image_values + field[:, where]

    workers = min(len(sharing), torch.get_num_threads() if workers is None else workers)
    if workers > 1:  # SuperLU factorises outside Python's lock: distinct masks side by side
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(impute, sharing.values()))
    else:
        for indices in sharing.values():
            impute(indices)
    imputed = imputed.reshape(x.shape)
    imputed = (torch.from_numpy(imputed.astype(source.numpy().dtype)) if as_numpy
               else torch.from_numpy(imputed).to(x.dtype)).to(x.device)
    return imputed


def road_curves(net, x: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor,
                fractions=ROAD_FRACTIONS, noise: float | torch.Tensor = ROAD_NOISE, seed: int = 0,
                *, output: str = "softmax") -> dict[str, torch.Tensor]:
    """ROAD, RemOve And Debias (Rong et al., ICML 2022), without retraining: the target's probability
    (:func:`target_probability` under ``output``, the model's output function) after the ``100 p %`` most
    relevant pixels of the map (MoRF, ``"morf"``) or the ``100 p %`` least relevant ones (LeRF, ``"lerf"``)
    are removed by :func:`noisy_linear_imputation` (``noise``, ``seed``), for each ``p`` of ``fractions``.
    Returns (B, K) curves.

    The paper plots the accuracy over a test set against the fraction removed; per image, the
    target's probability takes its place (the authors' code also reports the mean softmax of the class
    predicted on the original image). A faithful map makes the MoRF curve fall fast and the LeRF
    curve stay high. Pixels of equal saliency are ranked as in :func:`top_fraction_mask` (seeded,
    the same at every fraction; the LeRF pixels are the end of the same ranking,
    :func:`bottom_fraction_mask`).

    An image's curves are NaN where the model gives NaN; a saliency map that is not finite, or not one
    (H, W) map per image, or an unknown ``output``, is refused (``ValueError``).
    """
    check_output(output)
    _check_one_map_per_image(x, saliency, "saliency")
    fractions = [float(p) for p in fractions]
    if not fractions:
        raise ValueError("fractions is empty")
    for fraction in fractions:  # all checked before the first solve
        _check_fraction(fraction)
    ranking = _relevance_ranking(saliency, seed)  # once: every fraction takes its two ends
    morf, lerf = [], []
    for fraction in fractions:
        most, least = _top_of(saliency, ranking, fraction), _bottom_of(saliency, ranking, fraction)
        morf.append(target_probability(net, noisy_linear_imputation(x, most, noise, seed), target, output))
        lerf.append(target_probability(net, noisy_linear_imputation(x, least, noise, seed), target, output))
    return {"morf": torch.stack(morf, 1), "lerf": torch.stack(lerf, 1)}


def road_score(curve: torch.Tensor) -> torch.Tensor:
    """One number per image for a (B, K) ROAD curve: its mean over the fractions. The paper compares
    the curves themselves (accuracy at each fraction); for equally spaced fractions the mean is
    proportional to the area under the curve by the midpoint rule. Lower is better for MoRF,
    higher for LeRF. NaN for a curve with a NaN."""
    return curve.mean(-1)


def energy_pointing_game(saliency: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 14: the share of the map's energy inside the target's box(es), per image,
    ``sum_{p in box} s(p) / sum_p s(p)``, in [0, 1].

    ``saliency`` (B, H, W) must be finite and non-negative (an energy; the maps of ``cam_map`` are in
    [0, 1]) and ``box_mask`` (B, H, W) binary, 1 inside the union of the boxes: anything else is
    refused (``ValueError``), as it would give shares outside [0, 1]. An all-zero map has no energy
    and scores 0; so does an image with no box (an all-zero ``box_mask``).
    """
    if saliency.shape != box_mask.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and box mask {tuple(box_mask.shape)} differ")
    _check_saliency(saliency)
    if (saliency < 0).any():
        raise ValueError(f"saliency has negative values (minimum {saliency.min().item():.4g}); the energy of "
                         "Eq. 14 needs a non-negative map, e.g. s(u(ReLU(...))) of cam_map, in [0, 1]")
    if not ((box_mask == 0) | (box_mask == 1)).all():
        raise ValueError("box_mask must be binary, 0 outside and 1 inside the boxes (box_mask() draws one); "
                         f"got values such as {box_mask[(box_mask != 0) & (box_mask != 1)][0].item():.4g}")
    total = saliency.flatten(1).sum(1)
    inside = (saliency * box_mask.to(saliency.dtype)).flatten(1).sum(1)
    return _ratio(inside, total)


def box_mask(boxes, height: int, width: int) -> torch.Tensor:
    """(H, W) mask of the union of boxes (objects with ``x0, y0, x1, y1``; x1/y1 exclusive,
    coordinates clipped to the image, fractional edges rounded to the nearest pixel)."""
    mask = torch.zeros(height, width)
    for box in boxes:
        x0, x1 = (min(max(round(v), 0), width) for v in (box.x0, box.x1))
        y0, y1 = (min(max(round(v), 0), height) for v in (box.y0, box.y1))
        mask[y0:y1, x0:x1] = 1
    return mask


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of coefficient vectors (Table 2), ``a . b / (|a| |b|)``; 0 if either row is
    zero, NaN if either row has a NaN or infinite entry (no direction to compare)."""
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    cosine = torch.where(norms > 0, (a * b).sum(-1) / torch.where(norms > 0, norms, 1.0), 0.0)
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    return torch.where(finite, cosine, torch.nan)
