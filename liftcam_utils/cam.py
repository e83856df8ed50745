"""The one pipeline every CAM method shares (paper Eq. 1 and Eq. 10).

Methods differ only in how they weight the activation maps ``A``. Most are a rule for the
coefficients ``alpha`` (one per map, shape (B, N)); a few (HiResCAM, Layer-CAM) weight each map
pixel by pixel, with weights ``W`` of the maps' own shape (B, N, h, w). Everything else is common:
``A = body(x)`` once, ``L = ReLU(sum_k alpha_k A_k)`` (Eq. 1) or ``L = ReLU(sum_k W_k o A_k)``
(``o`` the elementwise product), ``u`` = bilinear upsampling to the input size, ``s`` = per-image
min-max normalisation (Eq. 10).

:func:`map_weights` gives either kind; :func:`coefficients` gives ``alpha`` and refuses per-pixel
methods, which have none (their spatial mean would be another method's ``alpha``: HiResCAM's is
Grad-CAM's), so comparisons of ``alpha`` (e.g. the cosine to the Shapley values) cover alpha rules only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .split import CamSplit, eval_mode


class SignedActivationsWarning(UserWarning):
    """The chosen layer's maps take negative values; CAM assumes non-negative maps."""


@dataclass(frozen=True)
class CamInput:
    """What a coefficient rule sees: the split model, the images, their maps and the targets."""

    split: CamSplit
    x: torch.Tensor  # (B, C, H, W) images, on the model's device
    maps: torch.Tensor  # (B, N, h, w) activation maps A, detached
    target: torch.Tensor  # (B,) class indices c
    # per-image channel games, built once and shared by every method that queries coalitions
    games: dict = field(default_factory=dict, compare=False, repr=False)

    def target_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``F^c`` for each image: (B, K) logits -> (B,)."""
        return logits.gather(1, self.target[:, None])[:, 0]

    @property
    def num_maps(self) -> int:
        return self.maps.shape[1]


def _check_images(x: torch.Tensor) -> None:
    """Refuse anything but a finite floating-point (B, C, H, W) batch, with a message that says what is valid."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor batch of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"x must be a batch of images with shape (B, C, H, W), got shape {tuple(x.shape)}; "
            "use x[None] for a single image"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (preprocessed images), got {x.dtype}")
    finite = torch.isfinite(x).flatten(1).all(1)
    if not finite.all():
        bad = (~finite).nonzero()[:, 0].tolist()
        raise ValueError(f"x has NaN or infinite values in image(s) {bad} of the batch; explanations need finite "
                         "inputs (check the preprocessing)")


def _check_maps(maps: torch.Tensor, split: CamSplit) -> None:
    if maps.dim() != 4:
        raise ValueError(
            f"layer {split.layer!r} outputs shape {tuple(maps.shape)}, not activation maps "
            "(B, C, H, W); choose a convolutional layer. Layers: " + ", ".join(split.layers())
        )
    negative = (maps < 0).float().mean().item()
    if negative > 0.01:
        warnings.warn(
            f"{100 * negative:.0f}% of the activations at layer {split.layer!r} are negative. CAM "
            "assumes non-negative maps (the output of a ReLU): ReLU(sum_k alpha_k A_k) of signed "
            "maps can be unfaithful even when alpha is accurate. Prefer a post-activation layer.",
            SignedActivationsWarning,
            stacklevel=4,
        )


_VALID_TARGETS = ("None (the predicted class), an integer class (a Python int, a NumPy integer or a 0-d integer "
                 "tensor) for every image, or one integer class per image (a sequence, a NumPy integer array or a "
                 "1-d integer tensor)")


def _target_classes(target) -> torch.Tensor:
    """``target`` (anything but None) as an integer tensor; ``TypeError`` naming what is valid otherwise."""
    try:
        classes = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. a string or an object array
        raise TypeError(f"target must be {_VALID_TARGETS}; got {type(target).__name__}") from error
    if classes.dtype == torch.bool or classes.is_floating_point() or classes.is_complex():
        raise TypeError(f"target classes must be integers, got {classes.dtype} from {type(target).__name__}; "
                        f"target must be {_VALID_TARGETS}")
    return classes


def resolve_target(target: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor
                   ) -> torch.Tensor:
    """Class index per image: ``None`` = the predicted class; an integer = that class for all images;
    a sequence, array or tensor of integers = one class per image (its length must equal the batch size).
    Booleans and floats are refused (``TypeError``), even integral ones: ``True`` or ``2.0`` is likely a mistake."""
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(1)
    target = _target_classes(target)
    if target.dim() == 0:
        target = target.reshape(1).repeat(batch)
    elif target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(
            f"target must be None, an int, or one class per image: got shape "
            f"{tuple(target.shape)} for a batch of {batch} images"
        )
    target = target.to(device=logits.device, dtype=torch.long)
    bad = (target < 0) | (target >= num_classes)
    if bad.any():
        raise ValueError(
            f"target {target[bad][0].item()} is out of range: the model has {num_classes} classes, "
            f"valid targets are 0 .. {num_classes - 1}"
        )
    return target


def prepare(split: CamSplit, x: torch.Tensor, target=None) -> CamInput:
    """Run the body once and resolve the targets (predicted class where ``target`` is None)."""
    _check_images(x)
    x = x.to(split.device)
    with torch.no_grad():
        maps = split.body(x)
        _check_maps(maps, split)
        logits = split.head(maps)
    return CamInput(split=split, x=x, maps=maps, target=resolve_target(target, logits))


def _method(name: str):
    from .methods import METHODS

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def map_weights(method: str, split: CamSplit, x: torch.Tensor, target=None, **options) -> torch.Tensor:
    """How ``method`` weights the activation maps of each image: ``alpha`` of shape (B, N) for an
    alpha rule, per-pixel weights ``W`` of shape (B, N, h, w) for HiResCAM and Layer-CAM."""
    rule = _method(method)
    with eval_mode(split.net):
        return rule(prepare(split, x, target), **options)


def coefficients(method: str, split: CamSplit, x: torch.Tensor, target=None, **options
                 ) -> torch.Tensor:
    """``alpha`` of ``method`` for each image: shape (B, N), N = number of activation maps.

    A method that weights each map pixel by pixel has no ``alpha``: ``ValueError``.
    """
    weights = map_weights(method, split, x, target, **options)
    if weights.dim() != 2:
        raise ValueError(f"{method!r} weights each map pixel by pixel (weights of shape {tuple(weights.shape)}), so "
                         "it has no coefficients alpha (one per map); use map_weights() for its weights or "
                         "saliency() for its map")
    return weights


def upsample_and_normalise(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``s(u(.))`` of Eq. 10 for each map: bilinear upsampling to ``size``, then min-max to [0, 1].

    (B, M, h, w) -> (B, M, H, W). A map that is constant before upsampling becomes 0, never NaN
    (deciding after upsampling would stretch float rounding of a constant into a 0-1 pattern).
    """
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    flat, source = up.flatten(-2), maps.flatten(-2)
    low, high = flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]
    varies = (source.amax(-1) > source.amin(-1))[..., None, None] & (high > low)
    return torch.where(varies, (up - low) / torch.where(varies, high - low, 1.0), 0.0)


# sum_k of the weighted maps, by the weights' number of dimensions
_WEIGHTED_SUM = {
    2: "bn,bnhw->bhw",  # alpha_k A_k: one coefficient per map (Eq. 1)
    4: "bnhw,bnhw->bhw",  # W_k o A_k: one weight per pixel of each map
}


def cam_map(weights: torch.Tensor, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``s(u(ReLU(sum_k alpha_k A_k)))`` (Eqs. 1 and 10): (B, N), (B, N, h, w) -> (B, H, W) in [0, 1].

    ``weights`` is ``alpha`` (B, N), or per-pixel weights ``W`` (B, N, h, w), the maps' shape, for
    ``s(u(ReLU(sum_k W_k o A_k)))``. A map that is constant (e.g. all zero after the ReLU) normalises
    to zeros, never NaN.
    """
    if weights.shape not in (maps.shape[:2], maps.shape):
        raise ValueError(f"weights must be alpha of shape {tuple(maps.shape[:2])} or per-pixel weights of the "
                         f"maps' shape {tuple(maps.shape)}, got {tuple(weights.shape)}")
    weighted = torch.einsum(_WEIGHTED_SUM[weights.dim()], weights.to(maps.dtype), maps).clamp_min(0)
    return upsample_and_normalise(weighted[:, None], size)[:, 0]


def saliency(method: str, split: CamSplit, x: torch.Tensor, target=None, **options) -> torch.Tensor:
    """The explanation map of ``method``: shape (B, H, W), values in [0, 1]."""
    rule = _method(method)
    with eval_mode(split.net):
        inputs = prepare(split, x, target)
        weights = rule(inputs, **options)
    return cam_map(weights, inputs.maps, tuple(x.shape[-2:]))
