"""What every method sees: :class:`CamInput`, built by :func:`prepare` (paper Eq. 1's ``A = f^[l](x)``).

:func:`prepare` checks the images, runs the body once to get the activation maps ``A`` of the cut layer,
warns when they are signed (CAM assumes post-ReLU maps), and resolves the targets ``c`` (the predicted class
where none is given). Every method is a function of a :class:`CamInput` and its options
(:mod:`liftcam_utils.methods`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .split import CamSplit


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


def non_finite_images(values: torch.Tensor) -> list[int]:
    """Indices of the images (dimension 0) of ``values`` with a NaN or infinite entry."""
    return (~torch.isfinite(values).flatten(1).all(1)).nonzero()[:, 0].tolist()


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
    bad = non_finite_images(x)
    if bad:
        raise ValueError(f"x has NaN or infinite values in image(s) {bad} of the batch; explanations need finite "
                         "inputs (check the preprocessing)")


def _check_finite(values: torch.Tensor, what: str, where: str) -> None:
    """``ValueError`` naming the images whose ``what`` (maps or logits) has NaN or infinite values, and
    ``where`` to look for the cause. From finite images these come only from the network's weights."""
    bad = non_finite_images(values)
    if bad:
        raise ValueError(f"{what} contain NaN or infinite values for image(s) {bad} of the batch, although the "
                         f"images are finite; check the weights of {where} (e.g. a NaN bias or an infinite "
                         "convolution weight)")


def _check_maps(maps: torch.Tensor, split: CamSplit) -> None:
    """Refuse maps that are not (B, C, H, W) or not finite; warn when they are signed."""
    if maps.dim() != 4:
        raise ValueError(
            f"layer {split.layer!r} outputs shape {tuple(maps.shape)}, not activation maps "
            "(B, C, H, W); choose a convolutional layer. Layers: " + ", ".join(split.layers())
        )
    _check_finite(maps, f"the activation maps A of layer {split.layer!r}", f"the layers up to {split.layer!r}")
    if split.tokens is not None:  # a transformer's tokens are signed by design: no post-activation layer to prefer
        return
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
    """Run the body once and resolve the targets (predicted class where ``target`` is None). A transformer's head
    gets the inputs it holds fixed for these images (:meth:`~liftcam_utils.engine.split.CamSplit.bind`).

    ``ValueError`` when the images, the activation maps or the logits are not finite: every method and
    metric downstream would turn NaN into a plausible number (an all-zero map, a perfect average drop),
    so the message names the images, whether the maps or the logits, and the layers whose weights to check.
    """
    _check_images(x)
    x = x.to(split.device)
    with torch.no_grad():
        maps, held = split.encode(x)
        _check_maps(maps, split)
        split = split.bind(held)
        logits = split.head(maps)
    _check_finite(logits, f"the logits of the head after layer {split.layer!r}",
                  f"the layers after {split.layer!r} (the head)")
    return CamInput(split=split, x=x, maps=maps, target=resolve_target(target, logits))
