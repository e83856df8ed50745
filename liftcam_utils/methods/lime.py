"""LIME-CAM (supplementary framework): LIME (Ribeiro et al. 2016) on the channel players."""

from __future__ import annotations

import torch

from ..engine.cam_input import CamInput
from ..engine.channel_game import ChannelGame, check_positive_int


def limecam(inputs: CamInput, n_samples: int = 1000, kernel_width: float = 0.25,
            ridge: float = 1.0, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """LIME-CAM: a weighted ridge regression ``g(a') = alpha_0 + sum_k alpha_k a'_k`` (Eq. 5) fitted
    to ``F^c(h_A(a'))`` on random coalitions.

    Coalitions keep each channel with probability 1/2 (plus the full coalition, as LIME includes
    the original instance). Sample weights are the LIME paper's exponential kernel
    ``pi(a') = exp(-D(a', 1)^2 / kernel_width^2)`` (the ``lime`` package uses its square root)
    with the cosine distance ``D`` to the full coalition; ``ridge`` is the L2 penalty on
    ``alpha_1..N`` (LIME's default 1.0; 0 = least squares).
    """
    check_positive_int("n_samples", n_samples)
    if not kernel_width > 0 or not ridge >= 0:
        raise ValueError(f"kernel_width must be > 0 and ridge >= 0, got {kernel_width}, {ridge}")
    n = inputs.num_maps
    generator = torch.Generator().manual_seed(seed)
    coalitions = torch.cat([torch.ones(1, n, dtype=torch.bool),
                            torch.rand(n_samples - 1, n, generator=generator) < 0.5])
    z = coalitions.double()
    cosine = z.sum(1) / (z.norm(dim=1) * n ** 0.5).clamp_min(1e-12)
    weights = torch.exp(-((1 - cosine) ** 2) / kernel_width ** 2)
    design = torch.cat([torch.ones(n_samples, 1, dtype=torch.float64), z], 1)
    gram = design.T @ (weights[:, None] * design)
    gram[1:, 1:] += ridge * torch.eye(n, dtype=torch.float64)
    alpha = torch.empty(inputs.maps.shape[:2], dtype=torch.float64)
    for b in range(inputs.maps.shape[0]):
        values = ChannelGame.of(inputs, b, batch_size).values(coalitions).double().cpu()
        solution = torch.linalg.lstsq(gram, (design.T @ (weights * values))[:, None]).solution
        alpha[b] = solution[1:, 0]
    return alpha.to(device=inputs.maps.device, dtype=inputs.maps.dtype)
