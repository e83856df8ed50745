"""Gradient-based coefficient rules: Grad-CAM, Grad-CAM++, XGrad-CAM.

Each needs ``F^c`` and its gradient ``dF^c/dA``: one forward and one backward pass of the head.
"""

from __future__ import annotations

import torch

from ..cam import CamInput


def head_gradient(inputs: CamInput) -> torch.Tensor:
    """``dF^c / dA`` for every image, shape (B, N, h, w)."""
    with torch.enable_grad():
        maps = inputs.maps.detach().requires_grad_(True)
        score = inputs.target_logits(inputs.split.head(maps)).sum()
        (grad,) = torch.autograd.grad(score, maps)
    return grad


def gradcam(inputs: CamInput) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017, Eq. 1): ``alpha_k = mean_ij dF^c / dA_k,ij``."""
    return head_gradient(inputs).mean(dim=(2, 3))


def gradcam_plus_plus(inputs: CamInput) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, Eqs. 19 and 10).

    With the exponential of the score as output, Eq. 19 gives the pixel weights from the first
    derivative ``g = dF^c/dA`` alone: ``a_ij = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (0 where the
    denominator is 0), and Eq. 10 ``alpha_k = sum_ij a_ij ReLU(dY^c/dA_ij)``. ``dY^c/dA =
    exp(F^c) g``; the positive per-image factor ``exp(F^c)`` is left out (it does not change the
    map or any cosine similarity, and it overflows float32 for large logits).
    """
    grad = head_gradient(inputs)
    g2 = grad.pow(2)
    denominator = 2 * g2 + inputs.maps.sum(dim=(2, 3), keepdim=True) * grad.pow(3)
    nonzero = denominator != 0
    pixel_weights = torch.where(nonzero, g2 / torch.where(nonzero, denominator, 1.0), 0.0)
    return (pixel_weights * grad.clamp_min(0)).sum(dim=(2, 3))


def xgradcam(inputs: CamInput) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020, Sec. 3.3): ``alpha_k = sum_ij (A_k,ij / sum_ab A_k,ab) dF^c/dA_k,ij``.

    A map that is zero everywhere gets ``alpha_k = 0``.
    """
    grad = head_gradient(inputs)
    totals = inputs.maps.sum(dim=(2, 3), keepdim=True)
    share = torch.where(totals != 0, inputs.maps / torch.where(totals != 0, totals, 1.0), 0.0)
    return (share * grad).sum(dim=(2, 3))
