"""The paper's evaluation metrics (Sec. 4), for saliency maps ``s(u(L))`` in [0, 1].

Which image counts as "nothing"? The paper multiplies the map with ``x`` (Eq. 10) without saying
whether ``x`` is the raw or the normalised image. Here every metric blends towards a
``baseline`` image: ``e = s * x + (1 - s) * baseline``. ``baseline_image(model, "mean")`` is 0 in
the model's normalised space (the dataset's mean colour, the usual choice); ``"black"`` is the
raw black image, i.e. ``s * x`` on raw pixels. Tables must say which one was used.
"""

from __future__ import annotations

import torch

DELTAS = torch.linspace(0, 1, 41)  # delta in [0 : 0.025 : 1]
ABSENT_CHOICES = ("mean", "black")


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


def blend(x: torch.Tensor, keep: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """``keep * x + (1 - keep) * baseline``; ``keep`` is (B, H, W) in [0, 1]."""
    keep = keep[:, None].to(x.dtype)
    return keep * x + (1 - keep) * baseline.to(x)


def _target_softmax(net, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(images).softmax(1).gather(1, target[:, None])[:, 0]


def confidence_scores(net, x, saliency, target, baseline) -> dict[str, torch.Tensor]:
    """Per image: ``Y`` (softmax of ``x``), ``O`` (of ``e = s o x``, Eq. 10) and ``D`` (of
    ``e_inv = (1 - s) o x``, Sec. 4.1) for the target class."""
    return {
        "Y": _target_softmax(net, x, target),
        "O": _target_softmax(net, blend(x, saliency, baseline), target),
        "D": _target_softmax(net, blend(x, 1 - saliency, baseline), target),
    }


def _ratio(numerator: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """numerator / Y, with 0 where Y = 0 (no confidence to lose or gain)."""
    return torch.where(y > 0, numerator / torch.where(y > 0, y, 1.0), 0.0)


def increase_in_confidence(y: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Per-image term of IC (Eq. 11): ``100 * 1[Y < O]``. Average over images for the metric."""
    return (y < o).to(torch.float32) * 100


def average_drop(y: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Per-image term of AD (Eq. 12): ``100 * max(0, Y - O) / Y`` (0 where Y = 0)."""
    return _ratio((y - o).clamp_min(0), y) * 100


def average_drop_in_deletion(y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per-image term of ADD (Eq. 13): ``100 * (Y - D) / Y`` (0 where Y = 0)."""
    return _ratio(y - d, y) * 100


def top_fraction_mask(saliency: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """1 on the ``round(fraction * H * W)`` most salient pixels of each map, 0 elsewhere.

    Ties are broken at random: the pixels are put in an order drawn from ``seed`` (one permutation
    for every map and every fraction) and stably sorted by saliency, so the mask always has exactly
    that many ones, is the same on every call with the same ``seed``, and grows by nesting as the
    fraction grows. Breaking ties by pixel index instead would favour the top rows of every flat
    region of the map (a ReLU's zeros, a saturated plateau) and bias insertion / deletion AUCs by where
    the object happens to sit in the image.
    """
    batch, height, width = saliency.shape
    count = int(round(fraction * height * width))
    shuffle = torch.randperm(height * width, generator=torch.Generator().manual_seed(seed)).to(saliency.device)
    order = shuffle[saliency.flatten(1)[:, shuffle].argsort(dim=1, descending=True, stable=True)]
    mask = torch.zeros(batch, height * width, dtype=saliency.dtype, device=saliency.device)
    mask.scatter_(1, order[:, :count], 1.0)
    return mask.view(batch, height, width)


def trapezoid(values: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Area under ``values`` (..., K) sampled at ``xs`` (K,) by the trapezoidal rule."""
    widths = xs.diff().to(values)
    return ((values[..., 1:] + values[..., :-1]) / 2 * widths).sum(-1)


def insertion_deletion_curves(net, x, saliency, target, baseline, deltas: torch.Tensor = DELTAS, seed: int = 0
                              ) -> dict[str, torch.Tensor]:
    """Softmax of the target when the top ``100 delta %`` pixels are kept (insertion, the rest at
    the baseline) or removed (deletion), for each delta (Table 4). Returns (B, K) curves.

    Pixels of equal saliency are ranked in a random order drawn from ``seed``
    (:func:`top_fraction_mask`), the same at every delta: the curves are deterministic for a seed,
    and a flat region of the map is inserted or deleted in no particular spatial order."""
    insertion, deletion = [], []
    for delta in deltas.tolist():
        keep = top_fraction_mask(saliency, delta, seed)
        insertion.append(_target_softmax(net, blend(x, keep, baseline), target))
        deletion.append(_target_softmax(net, blend(x, 1 - keep, baseline), target))
    return {"insertion": torch.stack(insertion, 1), "deletion": torch.stack(deletion, 1)}


def auc(curve: torch.Tensor, deltas: torch.Tensor = DELTAS) -> torch.Tensor:
    """Area under a (B, K) insertion or deletion curve over delta in [0, 1]."""
    return trapezoid(curve, deltas.to(curve.device))


def energy_pointing_game(saliency: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 14: the share of the map's energy inside the target's box(es), per image.

    ``box_mask`` (B, H, W) is 1 inside the union of the boxes. An all-zero map has no energy and
    scores 0; so does an image with no box (an all-zero ``box_mask``).
    """
    if saliency.shape != box_mask.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and box mask {tuple(box_mask.shape)} differ")
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
    """Row-wise cosine similarity of coefficient vectors (Table 2); 0 if either row is zero."""
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(norms > 0, (a * b).sum(-1) / torch.where(norms > 0, norms, 1.0), 0.0)
