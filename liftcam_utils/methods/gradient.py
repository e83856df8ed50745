"""Gradient-based rules: Grad-CAM, Grad-CAM++, XGrad-CAM and ShapleyCAM (one ``alpha`` per map), and
HiResCAM and Layer-CAM (one weight per pixel of each map, shape (B, N, h, w)).

Each needs ``F^c`` and its gradient ``dF^c/dA``: one forward and one backward pass of the head;
ShapleyCAM also needs a Hessian-vector product (a second backward pass through the first).
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..engine.cam_input import CamInput


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


def gradient_and_hessian_product(inputs: CamInput) -> tuple[torch.Tensor, torch.Tensor]:
    """``g = dF^c/dA`` and ``H A``, the Hessian ``H = d^2 F^c / dA^2`` times the maps ``A``, each of shape
    (B, N, h, w): double backward through the head (``H A = d(g . A)/dA`` with ``A`` held fixed).

    Images do not interact in the head, so ``H`` is block-diagonal over the batch and ``H A`` is each
    image's own product. A head whose gradient does not depend on ``A`` (an affine head, or one that is
    piecewise linear in ``A``: ReLU, max-pool) has ``H A = 0``. Attention runs on PyTorch's reference kernel
    here: its fused CPU kernels have no second derivative.
    """
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        maps = inputs.maps.detach().requires_grad_(True)
        score = inputs.target_logits(inputs.split.head(maps)).sum()
        (grad,) = torch.autograd.grad(score, maps, create_graph=True)
        if not grad.requires_grad:  # g depends on nothing that requires grad (an affine head, frozen): H = 0
            return grad, torch.zeros_like(grad)
        (hessian_product,) = torch.autograd.grad(grad, maps, grad_outputs=maps.detach(), allow_unused=True,
                                                 materialize_grads=True)
    return grad.detach(), hessian_product.detach()


def shapley_taylor_weights(inputs: CamInput) -> torch.Tensor:
    """``w = dF^c/dA - H A / 2`` per activation, shape (B, N, h, w) (Cai 2025, ShapleyCAM).

    The game of the activations ``v(S) = F^c(A o 1_S)`` (the others set to 0), with ``F^c`` replaced by
    its second-order Taylor expansion about ``A``, has the Shapley values ``phi_ij = A_ij w_ij``: a
    quadratic ``F(z) = F(0) + b . z + z^T H z / 2`` gives ``phi_i = A_i (b_i + (H A)_i / 2)`` (each
    pairwise term ``H_ij A_i A_j`` is split equally), and its gradient at 0 is ``b = g - H A``. The channel
    game of Eq. 6 groups the activations by map, so ``phi_k = sum_ij A_k,ij w_k,ij``; both are exact when
    ``F^c`` is quadratic in ``A``.
    """
    grad, hessian_product = gradient_and_hessian_product(inputs)
    return grad - hessian_product / 2


def shapleycam(inputs: CamInput) -> torch.Tensor:
    """ShapleyCAM (Cai 2025, "CAMs as Shapley Value-based Explainers", arXiv:2501.06261):
    ``alpha_k = mean_ij (dF^c/dA - H A / 2)_k,ij``, the mean over each map of
    :func:`shapley_taylor_weights`, as Grad-CAM averages ``dF^c/dA`` (the author's reference
    implementation pools the same way). ``F^c`` is the logit, the pipeline's utility (the paper's ReST
    utility, a softmax variant, is not used).

    With the paper's pooling ``alpha_k`` is a Shapley value per unit of activation only where ``w`` is
    constant over map ``k`` (a head that pools first): then ``alpha_k sum_ij A_k,ij = phi_k``. On an
    affine or piecewise-linear head (``H A = 0``) ShapleyCAM is Grad-CAM.
    """
    return shapley_taylor_weights(inputs).mean(dim=(2, 3))


def hirescam(inputs: CamInput) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): the map ``sum_k dF^c/dA_k o A_k``, i.e. the per-pixel weights
    ``W = dF^c/dA``, shape (B, N, h, w), where Grad-CAM first averages them over each map.

    The two maps are the same when the gradient is constant over each map (a head that begins with
    global average pooling, e.g. ResNet's), and differ otherwise (e.g. VGG16's flatten + fc). The
    pipeline's ReLU (Eq. 1) then keeps the positive part.
    """
    return head_gradient(inputs)


def layercam(inputs: CamInput) -> torch.Tensor:
    """Layer-CAM (Jiang et al. 2021): the map ``ReLU(sum_k ReLU(dF^c/dA_k) o A_k)``, i.e. the per-pixel
    weights ``W = ReLU(dF^c/dA)``, shape (B, N, h, w): only the positive gradient of each pixel counts."""
    return head_gradient(inputs).clamp_min(0)
