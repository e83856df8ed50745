"""Perturbation-based coefficient rules: Score-CAM and Ablation-CAM."""

from __future__ import annotations

import torch

from ..engine.cam_input import CamInput
from ..engine.cam_map import upsample_and_normalise
from ..engine.channel_game import ChannelGame, check_positive_int


def scorecam(inputs: CamInput, batch_size: int | None = None, *, baseline: bool = True) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020) with the masks ``H_k = s(Up(A_k))`` (Eq. 10's upsampling and min-max).

    ``baseline=True`` (the default) follows the paper's Definition 2, the Channel-wise Increase of
    Confidence ``C(A_k) = f(X o H_k) - f(X_b)``: ``alpha_k = softmax(f(x o H_k))_c - softmax(f(x_b))_c``,
    the softmax gain over the baseline ``x_b = 0`` (the zero image in the model's normalised input
    space, i.e. the dataset's mean colour), as in the masks ``x o H_k``. The authors' official code
    (``cam/scorecam.py`` of the Score-CAM repository) subtracts nothing: its weights are the raw
    ``alpha_k = softmax(f(x o H_k))_c``, and it skips maps whose upsampling is constant.
    ``baseline=False`` computes those weights (it weights the upsampled maps, which is Eq. 1 upsampled
    afterwards: bilinear upsampling is linear). Either way a constant map gets ``alpha_k = 0``: its
    mask is 0, so ``x o H_k = x_b`` and its gain is 0 by definition. ``baseline`` must be a bool
    (``TypeError`` otherwise: a string such as ``"no"`` would read as True).

    The confidence is the target's softmax, as Score-CAM's paper defines it, for every model: a multi-label
    model's own output function (``LoadedModel.output``, its sigmoid) is used by the metrics, not here.

    On every non-constant map the two differ by the same ``beta = softmax(f(x_b))_c > 0`` per image,
    so their maps before the ReLU of Eq. 1 differ by ``beta * sum_k A_k`` (over the non-constant
    maps). After the ReLU and min-max they agree when that sum is constant over the map and neither
    ReLU clips (min-max removes a constant), and in general they do not: when every gain is
    negative, for one, the gains' map is all zero and the raw scores' is not.

    Runs N full forward passes per image, ``batch_size`` masked images at a time; only that many
    masks exist at once. By default 32 on a GPU and 1 on a CPU, where batched convolutions
    (EfficientNet's depthwise ones above all) were measured slower per image than single ones.
    """
    if not isinstance(baseline, bool):
        raise TypeError(f"baseline must be a bool: True (subtract the softmax of the baseline image, Definition 2) "
                        f"or False (the raw softmax of the official code), got {baseline!r}")
    if batch_size is None:
        batch_size = 32 if inputs.x.device.type == "cuda" else 1
    check_positive_int("batch_size", batch_size)
    net = inputs.split.net
    x, maps = inputs.x, inputs.maps
    size = tuple(x.shape[-2:])
    alpha = torch.empty(maps.shape[:2], device=maps.device, dtype=maps.dtype)
    with torch.no_grad():
        reference = net(torch.zeros_like(x[:1])).softmax(1)[0] if baseline else None
        for b in range(x.shape[0]):
            c = inputs.target[b]
            for start in range(0, maps.shape[1], batch_size):
                chunk = maps[b, start:start + batch_size]
                masks = upsample_and_normalise(chunk[:, None], size)
                scores = net(x[b:b + 1] * masks).softmax(1)[:, c]
                if baseline:
                    scores = scores - reference[c]
                constant = masks.flatten(1).amax(1) == 0  # min-max makes a non-constant map reach 1
                alpha[b, start:start + chunk.shape[0]] = torch.where(constant, 0.0, scores)
    return alpha


def ablationcam(inputs: CamInput, batch_size: int = 256) -> torch.Tensor:
    """Ablation-CAM (Desai & Ramaswamy 2020; the paper's Eq. 9).

    ``alpha_k = (F^c(A) - F^c(A without k)) / F^c(A)``: N head evaluations per image, batched; the
    body is never rerun. ``F^c`` is the target's logit, as Eq. 9 defines it, whatever the model's output
    function (``LoadedModel.output``, softmax or sigmoid, which the metrics use).
    """
    alpha = torch.empty(inputs.maps.shape[:2], device=inputs.maps.device, dtype=inputs.maps.dtype)
    n = inputs.num_maps
    without_one = 1 - torch.eye(n, device=inputs.maps.device)
    full = torch.ones(1, n, device=inputs.maps.device)
    for b in range(inputs.maps.shape[0]):
        game = ChannelGame.of(inputs, b, batch_size)
        score = game.values(full)[0]
        if score == 0:
            raise ValueError(
                f"Ablation-CAM divides by F^c(A), which is exactly 0 for image {b}; "
                "its coefficients are undefined there"
            )
        alpha[b] = (score - game.values(without_one)) / score
    return alpha


def random_coefficients(inputs: CamInput, seed: int = 0) -> torch.Tensor:
    """A sanity floor, not a method: ``alpha_k ~ N(0, 1)`` drawn from ``seed``, ignoring the model
    and the target. Every image gets the same draw, so an image's map never depends on its batch."""
    generator = torch.Generator().manual_seed(seed)
    alpha = torch.randn(inputs.num_maps, generator=generator, dtype=torch.float64)
    return alpha.expand(inputs.maps.shape[0], -1).to(device=inputs.maps.device, dtype=inputs.maps.dtype)
