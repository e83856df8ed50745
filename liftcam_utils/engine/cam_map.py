"""The map every CAM method draws from its weights (paper Eqs. 1 and 10).

Methods differ only in how they weight the activation maps ``A``. Most are a rule for the
coefficients ``alpha`` (one per map, shape (B, N)); a few (HiResCAM, Layer-CAM) weight each map
pixel by pixel, with weights ``W`` of the maps' own shape (B, N, h, w). The rest is common:
``L = ReLU(sum_k alpha_k A_k)`` (Eq. 1) or ``L = ReLU(sum_k W_k o A_k)`` (``o`` the elementwise
product), ``u`` = bilinear upsampling to the input size, ``s`` = per-image min-max normalisation (Eq. 10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cam_input import non_finite_images


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

    ``ValueError`` when the weights, the maps or their weighted sum have a NaN or infinite value: the
    min-max would turn such a map into zeros, a map that looks like an answer.
    """
    if weights.shape not in (maps.shape[:2], maps.shape):
        raise ValueError(f"weights must be alpha of shape {tuple(maps.shape[:2])} or per-pixel weights of the "
                         f"maps' shape {tuple(maps.shape)}, got {tuple(weights.shape)}")
    _refuse_non_finite(weights, "the method's weights (alpha or per-pixel weights) have NaN or infinite values "
                       "for image(s) {}; a map needs finite weights (check the method's options and the model)")
    _refuse_non_finite(maps, "the activation maps A have NaN or infinite values for image(s) {}; check the "
                       "network's weights (prepare refuses such maps)")
    weighted = torch.einsum(_WEIGHTED_SUM[weights.dim()], weights.to(maps.dtype), maps).clamp_min(0)
    _refuse_non_finite(weighted, f"sum_k alpha_k A_k overflows {maps.dtype} for image(s) {{}} although the weights "
                       "and maps are finite; scale the weights down")
    return upsample_and_normalise(weighted[:, None], size)[:, 0]


def _refuse_non_finite(values: torch.Tensor, message: str) -> None:
    """``ValueError(message)`` with the images (dimension 0) where ``values`` has a NaN or infinite entry."""
    bad = non_finite_images(values)
    if bad:
        raise ValueError(message.format(bad))
