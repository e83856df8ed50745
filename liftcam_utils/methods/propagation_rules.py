"""Coefficient rules from one modified backward pass of the head: LIFT-CAM and LRP-CAM."""

from __future__ import annotations

import torch

from ..engine.cam_input import CamInput
from ..engine.propagation import deeplift_rescale_channel_contributions, lrp_epsilon_channel_relevance


def liftcam(inputs: CamInput) -> torch.Tensor:
    """LIFT-CAM (the paper's Eq. 7): DeepLIFT-Rescale contributions of each map, reference A = 0.

    One forward and one backward pass of the head. Satisfies local accuracy (Eq. 8) and equals
    the exact Shapley values of Eq. 6 when the head is affine.
    """
    return deeplift_rescale_channel_contributions(inputs.split.head, inputs.maps, inputs.target)


def lrpcam(inputs: CamInput, epsilon: float = 1e-6) -> torch.Tensor:
    """LRP-CAM (supplementary framework): LRP-epsilon relevance (Bach et al. 2015) of each map for
    ``F^c``, summed over the map. Biases absorb relevance, so local accuracy holds only
    approximately; with zero biases and ReLUs it equals gradient x input."""
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    return lrp_epsilon_channel_relevance(inputs.split.head, inputs.maps, inputs.target, epsilon)
