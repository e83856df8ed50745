"""Shapley values of the channel game (the paper's Eq. 6) and their estimators.

* ``shapcam``: SHAP-CAM_P, Algorithm 1 (mean marginal contribution over P random orderings), with
  variance-reduced designs of the orderings (antithetic, stratified) and a quadratic control variate.
* ``exact_shap``: Eq. 6 itself; closed form for an affine head, exhaustive for a few channels.
* ``kernelshapcam``: KernelSHAP (Lundberg & Lee 2017, Theorem 2) on the channel players.

All satisfy local accuracy, ``sum_k alpha_k = F^c(A) - F^c(0)`` (footnote 4 of the paper).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator

import torch

from ..engine.cam_input import CamInput
from ..engine.channel_game import ChannelGame, check_positive_int
from ..engine.head_ops import is_affine_head

MAX_EXHAUSTIVE_PLAYERS = 16


def ordering_stream(n_players: int, seed: int) -> Iterator[torch.Tensor]:
    """Seeded random permutations of ``range(n_players)``, one after another, on CPU."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randperm(n_players, generator=generator)


def random_orderings(n_players: int, n_orderings: int, seed: int) -> torch.Tensor:
    """The first ``n_orderings`` of :func:`ordering_stream`, shape (P, N).

    Drawn from ``seed`` alone, so every image, device and batch size sees the same orderings.
    """
    return torch.stack(list(itertools.islice(ordering_stream(n_players, seed), n_orderings)))


def _with_reverses(forward: torch.Tensor, n_orderings: int) -> torch.Tensor:
    """Each row of ``forward`` (P', N) followed by its reverse, cut to ``n_orderings`` rows."""
    return torch.stack([forward, forward.flip(1)], 1).reshape(-1, forward.shape[1])[:n_orderings]


def antithetic_orderings(n_players: int, n_orderings: int, seed: int) -> torch.Tensor:
    """``ceil(P / 2)`` seeded random orderings, each followed by its reverse, cut to P rows.

    A channel that comes early in one ordering comes late in the other, so their marginal
    contributions are negatively correlated and their mean varies less than that of two
    independent orderings (antithetic sampling). For a game of order 2,
    ``v(S) = v_0 + sum_{i in S} b_i + sum_{i < j in S} c_ij``, the pair is exact: channel ``i``'s two
    marginals are ``b_i + sum_{j before i} c_ij`` and ``b_i + sum_{j after i} c_ij``, whose mean is
    ``b_i + sum_{j != i} c_ij / 2``, its Shapley value (Eq. 6). A term of order 3, ``c_ijk``, counts
    ``(1[j, k before i] + 1[j, k after i]) / 2`` instead of ``1/3``: not exact beyond order 2.
    """
    return _with_reverses(random_orderings(n_players, (n_orderings + 1) // 2, seed), n_orderings)


def stratified_orderings(n_players: int, n_orderings: int, seed: int, antithetic: bool = False) -> torch.Tensor:
    """P seeded orderings in which every player's position is stratified: (P, N).

    Ordering ``t`` sorts N keys ``q_ti = (sigma_i(t) + U_ti) / P``, with ``sigma_i`` a random permutation
    of the P strata for each player and ``U`` uniform on [0, 1): a Latin hypercube sample of each
    player's key across the orderings, one key in each ``[t / P, (t + 1) / P)``. Within one ordering the
    keys of different players are independent and uniform, so every ordering is a uniformly random
    permutation (each is Algorithm 1's ordering, and the estimator is unbiased with local accuracy,
    whatever the dependence between orderings). Given its key ``q``, the players before ``i`` are the
    others, each independently with probability ``q``: the coalition of Owen's multilinear extension,
    ``phi_i = int_0^1 E[v(S_q u {i}) - v(S_q)] dq`` (Owen 1972), so the mean over the P orderings is that
    integral sampled with one ``q`` per stratum of width ``1 / P`` and per player: stratified by the
    expected position ``q (N - 1)`` (Okhrati & Lipani 2021 sample the same integral on a grid of ``q``),
    with proportional allocation (Castro et al. 2017: one sample in each stratum of probability
    ``1 / P``, so the mean over strata of the per-stratum means is the mean over orderings). Unlike
    sampling each (player, coalition size) stratum on its own (Maleki et al. 2013; Castro et al. 2017),
    which costs two head evaluations per marginal, an ordering still gives all N marginals for N - 1.

    ``antithetic``: ``ceil(P / 2)`` orderings from keys folded into ``[0, 1/2)`` strata and flipped to
    ``1 - q`` with probability 1/2 (uniform again), each followed by its reverse (keys ``1 - q``): the
    strata of ``[0, 1)`` once each, and the pairs of :func:`antithetic_orderings` (exact on games of
    order 2). The design depends on P: unlike :func:`random_orderings` the first P' of P orderings are
    not the design of P'.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = (n_orderings + 1) // 2 if antithetic else n_orderings
    strata = torch.rand(rows, n_players, generator=generator, dtype=torch.float64).argsort(0)
    keys = (strata + torch.rand(rows, n_players, generator=generator, dtype=torch.float64)) / rows
    if not antithetic:
        return keys.argsort(1)
    flip = torch.rand(rows, n_players, generator=generator) < 0.5
    keys = torch.where(flip, 1 - keys / 2, keys / 2)
    return _with_reverses(keys.argsort(1), n_orderings)


# The ordering designs of ``shapcam(estimator=...)``.
ESTIMATORS = {
    "plain": random_orderings,
    "antithetic": antithetic_orderings,
    "stratified": stratified_orderings,
    "stratified_antithetic": functools.partial(stratified_orderings, antithetic=True),
}
CONTROLS = (None, "quadratic")


def shapcam(inputs: CamInput, n_permutations: int = 10, seed: int = 0, batch_size: int = 256,
            estimator: str = "plain", control: str | None = None) -> torch.Tensor:
    """SHAP-CAM_P (Algorithm 1): average over P orderings of the marginal contributions.

    Along an ordering ``pi`` the prefixes ``{pi(1..i)}`` are evaluated once each, so one ordering
    costs N - 1 head evaluations (the empty and full coalitions are shared by all orderings), not
    the 2N of a literal reading of Algorithm 1; ``ChannelGame.orderings_per_batch`` orderings are
    evaluated together. Every estimator evaluates P orderings, at the same cost, each a uniformly
    random permutation, so each is unbiased for Eq. 6 and keeps local accuracy; they differ in how
    the orderings depend on each other:

    * ``estimator="plain"`` (default): Algorithm 1's independent orderings (:func:`random_orderings`);
    * ``"antithetic"``: each ordering followed by its reverse (:func:`antithetic_orderings`), exact on
      games of order 2 with an even P;
    * ``"stratified"``: each player's position stratified across the orderings (:func:`stratified_orderings`);
    * ``"stratified_antithetic"``: both.

    ``control="quadratic"``: the orderings run on the residual game ``v - g`` of a quadratic control
    variate ``g`` with exact Shapley values, added back (:mod:`liftcam_utils.engine.quadratic_control`):
    unbiased, locally accurate, for heads whose part after the channel-mixing op is elementwise
    then affine (else ``ValueError``). Its fit costs a few hundred evaluations of that elementwise
    op, no head evaluation; each prefix state is then also read out as ``g``, one more pass over it.
    An antithetic pair is already exact on ``g`` (order 2), so with the antithetic designs the control
    changes nothing (up to rounding).
    """
    check_positive_int("n_permutations", n_permutations)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; valid: None, 'quadratic'")
    orderings = ESTIMATORS[estimator](inputs.num_maps, n_permutations, seed)
    alpha = torch.zeros(inputs.maps.shape[:2], dtype=torch.float64)
    exact = torch.zeros_like(alpha)
    for b in range(inputs.maps.shape[0]):
        game = ChannelGame.of(inputs, b, batch_size)
        if control is not None:
            if game.quadratic_control is None:
                raise ValueError(f"control='quadratic' needs a head that factors as R o M o P with an elementwise "
                                 f"R and an affine readout; layer {inputs.split.layer!r} does not")
            game, exact[b] = game.minus(game.quadratic_control), game.quadratic_control.shapley
        for group in orderings.split(game.orderings_per_batch):
            alpha[b] += game.marginals(group).sum(0)
    alpha = alpha / n_permutations
    if control is not None:
        alpha += exact
    return alpha.to(device=inputs.maps.device, dtype=inputs.maps.dtype)


def _all_coalitions(n: int) -> torch.Tensor:
    codes = torch.arange(2 ** n)
    return (codes[:, None] >> torch.arange(n)) & 1


def exhaustive_shapley(values: torch.Tensor, n: int) -> torch.Tensor:
    """Eq. 6 from the values of all 2^N coalitions (coalition ``S`` at index ``sum_{k in S} 2^k``)."""
    codes = torch.arange(2 ** n)
    sizes = ((codes[:, None] >> torch.arange(n)) & 1).sum(1)
    weight = torch.tensor([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                           for s in range(n)], dtype=torch.float64)
    phi = torch.empty(n, dtype=torch.float64)
    values = values.double()
    for k in range(n):
        without = codes[(codes >> k) & 1 == 0]
        phi[k] = (weight[sizes[without]] * (values[without | (1 << k)] - values[without])).sum()
    return phi


def exact_shap(inputs: CamInput, batch_size: int = 256) -> torch.Tensor:
    """The exact Shapley values of Eq. 6.

    For an affine head (e.g. ResNet's avgpool + fc) every marginal contribution of channel ``k``
    is the same, so ``alpha_k = F^c(A_k alone) - F^c(0)`` (N + 1 head evaluations). Otherwise all
    2^N coalitions are evaluated, which is allowed for N <= 16 channels.
    """
    n = inputs.num_maps
    alpha = torch.empty(inputs.maps.shape[:2], dtype=torch.float64)
    if is_affine_head(inputs.split.head):
        singles = torch.cat([torch.zeros(1, n), torch.eye(n)])
        for b in range(inputs.maps.shape[0]):
            values = ChannelGame.of(inputs, b, batch_size).values(singles).double()
            alpha[b] = (values[1:] - values[0]).cpu()
    elif n <= MAX_EXHAUSTIVE_PLAYERS:
        coalitions = _all_coalitions(n)
        for b in range(inputs.maps.shape[0]):
            alpha[b] = exhaustive_shapley(ChannelGame.of(inputs, b, batch_size).values(coalitions).cpu(), n)
    else:
        raise ValueError(
            f"exact_shap needs an affine head or at most {MAX_EXHAUSTIVE_PLAYERS} channels; layer "
            f"{inputs.split.layer!r} has {n} channels and a non-linear head. Use 'shapcam' "
            "(sampled orderings) or 'liftcam' instead."
        )
    return alpha.to(device=inputs.maps.device, dtype=inputs.maps.dtype)


def shapley_kernel_weight(n: int, size: torch.Tensor) -> torch.Tensor:
    """The Shapley kernel ``(M - 1) / (C(M, |z|) |z| (M - |z|))`` of Theorem 2 (for 0 < |z| < M)."""
    binom = torch.tensor([math.comb(n, int(s)) for s in size], dtype=torch.float64)
    size = size.double()
    return (n - 1) / (binom * size * (n - size))


def _sample_kernel_coalitions(n: int, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Coalitions with sizes drawn proportional to the kernel mass ``(M-1) / (s (M - s))`` of each
    size, members uniform given the size, each followed by its complement (paired sampling)."""
    sizes = torch.arange(1, n)
    mass = (n - 1) / (sizes * (n - sizes)).double()
    half = (n_samples + 1) // 2
    drawn = sizes[torch.multinomial(mass / mass.sum(), half, replacement=True, generator=generator)]
    scores = torch.rand(half, n, generator=generator)
    rank = scores.argsort(1).argsort(1)
    coalitions = rank < drawn[:, None]
    return torch.cat([coalitions, ~coalitions])[:n_samples]


def kernelshapcam(inputs: CamInput, n_samples: int = 2048, seed: int = 0,
                  batch_size: int = 256) -> torch.Tensor:
    """KernelSHAP-CAM: the weighted linear regression of Lundberg & Lee (2017, Theorem 2) on the
    channel game, with local accuracy imposed exactly (``alpha_0 = F^c(0)`` and
    ``sum_k alpha_k = F^c(A) - F^c(0)``).

    If ``n_samples`` covers all 2^N - 2 proper coalitions they are enumerated with their exact
    kernel weights and the result is the exact Shapley value; otherwise coalitions are sampled
    from the kernel (paired with their complements) and weighted equally.
    """
    check_positive_int("n_samples", n_samples)
    n = inputs.num_maps
    if n < 2:
        raise ValueError("kernelshapcam needs at least 2 channels")
    enumerate_all = n <= 30 and n_samples >= 2 ** n - 2
    if enumerate_all:
        coalitions = _all_coalitions(n)[1:-1].bool()
        weights = shapley_kernel_weight(n, coalitions.sum(1))
    else:
        coalitions = _sample_kernel_coalitions(n, n_samples, torch.Generator().manual_seed(seed))
        weights = torch.ones(coalitions.shape[0], dtype=torch.float64)
    z = coalitions.double()
    alpha = torch.empty(inputs.maps.shape[:2], dtype=torch.float64)
    for b in range(inputs.maps.shape[0]):
        game = ChannelGame.of(inputs, b, batch_size)
        empty, full = game.ends
        values = game.values(coalitions).double().cpu()
        # Eliminate the last coefficient with sum(alpha) = full - empty, then solve for the rest.
        target = values - empty - z[:, -1] * (full - empty)
        design = z[:, :-1] - z[:, -1:]
        root_w = weights.sqrt()[:, None]
        head = torch.linalg.lstsq(design * root_w, target[:, None] * root_w).solution[:, 0]
        alpha[b] = torch.cat([head, (full - empty - head.sum())[None]])
    return alpha.to(device=inputs.maps.device, dtype=inputs.maps.dtype)
