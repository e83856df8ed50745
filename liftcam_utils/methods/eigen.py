"""Eigen-CAM: a coefficient rule from the activation maps alone (no head, no gradient, no class)."""

from __future__ import annotations

import torch

from ..engine.cam_input import CamInput


def eigencam(inputs: CamInput) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): ``alpha = v_1``, the first right singular vector of the
    (hw x N) matrix ``O`` whose column k is the map ``A_k`` flattened, so that the map ``O v_1 =
    sum_k alpha_k A_k`` is the projection of the maps on their first principal direction.

    As in the paper, ``O = U S V^T`` factorises the maps themselves, not centred: centring each column
    (PCA proper, as some implementations do) gives another direction and subtracts a constant from the
    map, which is not of the form ``sum_k alpha_k A_k``. A singular vector has no sign of its own; the
    sign is fixed so that ``sum_k alpha_k mean(A_k) >= 0``: the map is positive on average, i.e. where
    the activations are largest (for non-negative maps ``v_1`` is then non-negative). ``|alpha| = 1``.

    Class-agnostic: the target is ignored. Where the two largest singular values are equal, ``v_1`` is
    not unique.
    """
    flat = inputs.maps.flatten(2).double()  # (B, N, hw): row k is A_k, so O = flat^T
    _, _, right = torch.linalg.svd(flat.transpose(1, 2), full_matrices=False)
    alpha = right[:, 0]  # (B, N): v_1 of each image
    positive_on_average = (alpha * flat.mean(2)).sum(1, keepdim=True) >= 0
    alpha = torch.where(positive_on_average, alpha, -alpha)
    return alpha.to(inputs.maps.dtype)
