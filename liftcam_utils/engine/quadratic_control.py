"""A quadratic control variate for SHAP-CAM: a game of order 2 close to the channel game, with exact Shapley values.

Where the head factors as ``F = R o M o P`` (:mod:`liftcam_utils.engine.head_factoring`) and ``R`` is an elementwise
non-linearity ``f`` followed by affine ops (EfficientNet-Lite0's ``ReLU6``, pooling and fc after
``_blocks.15._swish@0`` or ``_blocks.15``), the channel game is

    v(m) = b + sum_u w_u f(z_u(m)),   z(m) = M(P(0)) + sum_k m_k D_k                                   (1)

over the units ``u`` of ``M``'s output, for coalitions ``m`` in {0, 1}^N. Fit to each ``f`` a quadratic
``Q_u(z) = s_u z^2 / 2 + t_u z``. The game ``sum_u w_u Q_u(z_u(m))`` is a polynomial of degree 2 in ``m``; its affine
part has the same marginal contribution in every coalition (no variance; its Shapley values are those marginals),
so the control is its square part alone,

    g(m) = sum_u w_u s_u z_u(m)^2 / 2,   phi_i(g) = sum_u w_u s_u z_bar_u D_iu,   z_bar = (z(0) + z(1)) / 2.   (2)

(2) is exact: with ``c = z_u(0)`` and ``d_k = D_ku``, for binary ``m``
``z_u^2 = c^2 + sum_k m_k (2 c d_k + d_k^2) + 2 sum_{k < l} m_k m_l d_k d_l``, a game of order 2 whose Shapley value
splits each pair's term equally (Eq. 6): ``2 c d_i + d_i^2 + d_i sum_{l != i} d_l = d_i (z_u(0) + z_u(1))``.
Shapley values are linear in the game, so ``phi(v) = phi(v - g) + phi(g)``: SHAP-CAM on the residual game
``v - g`` plus (2) is an unbiased estimator of ``phi(v)`` for any ``s``, with local accuracy (the residual's
marginals along an ordering sum to ``(v - g)(1) - (v - g)(0)``, and (2) sums to ``g(1) - g(0)``).

``s`` only sets the variance. Channel ``i``'s marginal contribution in a coalition with state ``z`` is
``sum_u w_u (f(z_u + D_iu) - f(z_u)) ~ sum_u w_u f'(z_u) D_iu``, that of ``g`` is
``sum_u w_u s_u (z_u + D_iu / 2) D_iu``: they move together when ``s_u`` is the least-squares slope of ``f'(z_u)``
against ``z_u`` over the states the orderings pass through. A coalition whose players come independently with
probability ``q`` gives ``z_u`` the mean ``z_u(0) + q (z_u(1) - z_u(0))`` and the variance ``q (1 - q) sum_k D_ku^2``;
the fit weights ``q`` uniformly (as a random ordering does) and takes ``z_u`` normal with those moments (midpoint
and Gauss-Hermite quadrature), so it is deterministic and independent of the orderings.

The second-order Taylor expansion, the other natural quadratic, is no use here: for a piecewise linear ``f``
(ReLU, ReLU6) its second derivative vanishes almost everywhere, the expansion is additive and its marginals
are constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from .head_ops import OpKind, UnsupportedHeadOpError, classify_head

# Quadrature of the fit: midpoints in q and Gauss-Hermite nodes in z (a few hundred evaluations of f').
_Q_POINTS = 32
_HERMITE_POINTS = 8


def is_elementwise(rest: fx.GraphModule) -> bool:
    """True when every op of ``rest`` that depends on its input is an elementwise non-linearity (or reads shapes)."""
    try:
        kinds = classify_head(rest)
    except UnsupportedHeadOpError:
        return False
    return any(k is OpKind.ELEMENTWISE for k in kinds.values()) and all(
        k in (OpKind.ELEMENTWISE, OpKind.METADATA) for k in kinds.values())


@dataclass(frozen=True)
class QuadraticControl:
    """``g(m) = sum_u square_weight_u z_u(m)^2`` (``square_weight = w s / 2``) and ``shapley``: Eq. (2), (N,)
    float64 on the CPU."""

    square_weight: torch.Tensor
    shapley: torch.Tensor

    def subtract_from(self, values: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """``values - g`` for the states ``z = mixed`` (B, ...) and their values (B,)."""
        return torch.addmv(values, mixed.flatten(1).square(), self.square_weight, alpha=-1)


@torch.no_grad()
def fit_quadratic_control(rest: fx.GraphModule, base: torch.Tensor, full: torch.Tensor, contributions: torch.Tensor,
                          weight: torch.Tensor) -> QuadraticControl:
    """The control of the module docstring for the game (1): ``rest`` is ``f`` (see :func:`is_elementwise`),
    ``base`` and ``full`` are ``z(0)`` and ``z(1)``, ``contributions`` the rows ``D_k`` (N, units), ``weight`` ``w``."""
    low, high = base.flatten().double(), full.flatten().double()
    spread = torch.linalg.vector_norm(contributions, dim=0).double()  # sqrt(sum_k D_ku^2)
    nodes, weights = np.polynomial.hermite_e.hermegauss(_HERMITE_POINTS)
    nodes = torch.as_tensor(nodes, dtype=torch.float64, device=low.device)[:, None]
    weights = torch.as_tensor(weights / weights.sum() / _Q_POINTS, dtype=torch.float64, device=low.device)
    moments = torch.zeros(4, low.numel(), dtype=torch.float64, device=low.device)  # E z, E z^2, E f', E z f'
    for q in ((j + 0.5) / _Q_POINTS for j in range(_Q_POINTS)):
        z = low + q * (high - low) + math.sqrt(q * (1 - q)) * spread * nodes  # (nodes, units)
        with torch.enable_grad():
            states = z.to(base.dtype).view(-1, *base.shape).requires_grad_()
            (slope,) = torch.autograd.grad(rest(states).sum(), states)
        slope = slope.flatten(1).double()
        moments += torch.stack([weights @ z, weights @ (z * z), weights @ slope, weights @ (z * slope)])
    mean_z, mean_zz, mean_slope, mean_z_slope = moments
    variance = mean_zz - mean_z ** 2
    still = variance <= 1e-12 * (1 + mean_zz)  # a unit that no coalition moves: nothing to fit
    curvature = torch.where(still, 0.0, (mean_z_slope - mean_z * mean_slope) / variance.where(~still, 1.0))
    weighted = weight.double() * curvature  # w_u s_u
    shapley = (contributions @ (weighted * (low + high) / 2).to(contributions.dtype)).double().cpu()
    return QuadraticControl((weighted / 2).to(base.dtype), shapley)
