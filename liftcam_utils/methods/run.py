"""Run a method by name: the one CAM pipeline every method shares (paper Eq. 1 and Eq. 10).

``A = body(x)`` once (:func:`~liftcam_utils.engine.cam_input.prepare`), the method's weights from the
registry (:data:`~liftcam_utils.methods.registry.METHODS`), then the map
(:func:`~liftcam_utils.engine.cam_map.cam_map`). :func:`map_weights` gives either kind of weights;
:func:`coefficients` gives ``alpha`` and refuses per-pixel methods, which have none (their spatial mean
would be another method's ``alpha``: HiResCAM's is Grad-CAM's), so comparisons of ``alpha`` (e.g. the
cosine to the Shapley values) cover alpha rules only.
"""

from __future__ import annotations

import torch

from ..engine.cam_input import prepare
from ..engine.cam_map import cam_map
from ..engine.split import CamSplit, eval_mode
from .registry import METHODS


def _method(name: str):
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


def saliency(method: str, split: CamSplit, x: torch.Tensor, target=None, **options) -> torch.Tensor:
    """The explanation map of ``method``: shape (B, H, W), values in [0, 1]."""
    rule = _method(method)
    with eval_mode(split.net):
        inputs = prepare(split, x, target)
        weights = rule(inputs, **options)
    return cam_map(weights, inputs.maps, tuple(x.shape[-2:]))
