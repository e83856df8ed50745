"""The cooperative game of the paper's framework (Sec. 3.2-3.3): channels are the players.

A coalition ``a'`` in {0, 1}^N keeps the maps ``A_k`` with ``a'_k = 1`` and sets the others to 0
(``h_A``, Sec. 3.3); its value is the head's target logit ``v(a') = F^c(h_A(a'))``. SHAP-CAM,
exact Shapley values, Ablation-CAM, KernelSHAP-CAM and LIME-CAM all query this one function.
"""

from __future__ import annotations

import torch

from .cam import CamInput


def coalition_values(inputs: CamInput, index: int, coalitions: torch.Tensor,
                     batch_size: int = 256) -> torch.Tensor:
    """``F^c(h_A(a'))`` for image ``index`` and every row ``a'`` of ``coalitions`` (M, N).

    Evaluates only the head, ``batch_size`` coalitions at a time. Returns (M,) on the maps' device.
    """
    check_positive_int("batch_size", batch_size)
    maps = inputs.maps[index]
    if coalitions.dim() != 2 or coalitions.shape[1] != maps.shape[0]:
        raise ValueError(
            f"coalitions must have shape (M, {maps.shape[0]}), got {tuple(coalitions.shape)}"
        )
    target = inputs.target[index]
    values = torch.empty(coalitions.shape[0], device=maps.device, dtype=maps.dtype)
    with torch.no_grad():
        for start in range(0, coalitions.shape[0], batch_size):
            chunk = coalitions[start:start + batch_size].to(device=maps.device, dtype=maps.dtype)
            logits = inputs.split.head(maps[None] * chunk[:, :, None, None])
            values[start:start + chunk.shape[0]] = logits[:, target]
    return values


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
