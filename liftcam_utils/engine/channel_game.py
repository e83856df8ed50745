"""The cooperative game of the paper's framework (Sec. 3.2-3.3): channels are the players.

A coalition ``a'`` in {0, 1}^N keeps the maps ``A_k`` with ``a'_k = 1`` and sets the others to 0
(``h_A``, Sec. 3.3); its value is the head's target logit ``v(a') = F^c(h_A(a'))``. SHAP-CAM,
exact Shapley values, Ablation-CAM, KernelSHAP-CAM and LIME-CAM all query this one game.

Only the head is evaluated, never the body. Where the head factors as ``R o M o P``
(:mod:`liftcam_utils.engine.head_factoring`), each channel's contribution ``D_k`` to the first mixing
op's output is computed once per image, and a coalition costs a sum of ``D_k`` plus one
evaluation of ``R``; along an ordering, the prefixes are running sums, several orderings at a time.
The sums rest on the additivity of ``M``'s output over channels, which is checked once per game, on
the full coalition and 4 random coalitions drawn for the image; where it fails, the game evaluates the
full head instead.
Where ``R`` is elementwise, :meth:`ChannelGame.quadratic_control` and :meth:`ChannelGame.minus` give SHAP-CAM its
control variate (:mod:`liftcam_utils.engine.quadratic_control`).
"""

from __future__ import annotations

import copy
import functools

import torch

from .cam_input import CamInput
from .head_factoring import factor_head
from .quadratic_control import QuadraticControl, fit_quadratic_control, is_elementwise

# Prefix states held at once along orderings (float32 entries of M's output): 4 MiB stays in this
# CPU's last-level cache; a GPU takes 256 MiB. Each chunk advances every ordering of a batch by
# _STEPS_PER_CHUNK players, so a batch holds as many orderings as the budget allows.
_PREFIX_BUDGET = {"cpu": 2**20, "cuda": 2**26}
_STEPS_PER_CHUNK = 16


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class ChannelGame:
    """``v(a') = F^c(h_A(a'))`` for image ``index`` of ``inputs``; ``batch_size`` head inputs at a time.

    Through the head's factors where it has them and their contributions add up on this image's maps
    (:meth:`~liftcam_utils.engine.head_factoring.HeadFactors.contributions`), else by evaluating the full head.
    """

    def __init__(self, inputs: CamInput, index: int, batch_size: int = 256):
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.maps = inputs.maps[index]
        self.target = int(inputs.target[index])
        self.n = self.maps.shape[0]
        self._head = inputs.split.for_image(index).head
        self._control: QuadraticControl | None = None  # set on the residual games of :meth:`minus`
        self._factored = factor_head(self._head)
        twin = self._twin(inputs)
        if twin is not None:  # the same maps through the same head (e.g. one image with several targets)
            parts = None if twin._factored is None else (twin._base, twin._full, twin._contributions)
        else:
            parts = None if self._factored is None else self._factored.contributions(self.maps, batch_size)
        if parts is None:  # no factors, or their contributions do not add up on these maps
            self._factored = None
            self.orderings_per_batch = max(1, batch_size // self.n)
        else:
            self._base, self._full, self._contributions = parts
            self._readout = self._factored.readout(self._base, self.target)
            size = self._contributions.shape[1]
            budget = _PREFIX_BUDGET.get(self.maps.device.type, _PREFIX_BUDGET["cpu"])
            rows = max(1, min(batch_size, budget // size))
            self._steps = min(_STEPS_PER_CHUNK, rows)
            self.orderings_per_batch = rows // self._steps

    def _twin(self, inputs: CamInput) -> ChannelGame | None:
        """A game of ``inputs`` built before on equal maps, the same head and batch size: its contributions (read
        only) serve this one too."""
        return next((game for game in inputs.games.values() if game._head is self._head
                     and game.batch_size == self.batch_size and torch.equal(game.maps, self.maps)), None)

    @classmethod
    def of(cls, inputs: CamInput, index: int, batch_size: int = 256) -> ChannelGame:
        """The game of image ``index``, built once per ``inputs`` (methods evaluated on the same maps share it)."""
        key = (index, batch_size)
        if key not in inputs.games:
            inputs.games[key] = cls(inputs, index, batch_size)
        return inputs.games[key]

    @functools.cached_property
    def quadratic_control(self) -> QuadraticControl | None:
        """The quadratic control variate of :mod:`liftcam_utils.engine.quadratic_control` for this game, or None where
        the head does not factor with an elementwise ``R`` and an affine readout (the game (1) of that module)."""
        if self._factored is None or self._readout is None or not is_elementwise(self._factored.rest):
            return None
        return fit_quadratic_control(self._factored.rest, self._base, self._full, self._contributions,
                                     self._readout[0])

    def minus(self, control: QuadraticControl) -> ChannelGame:
        """The residual game ``v - g`` of ``control`` (from :attr:`quadratic_control`): the same contributions,
        orderings per batch and chunks, with ``g`` of each prefix state subtracted from ``R``'s value."""
        if self._factored is None or self._readout is None:
            raise ValueError("a residual game needs a head factored with an affine readout (see quadratic_control)")
        residual = copy.copy(self)
        residual.__dict__.pop("ends", None)
        residual.__dict__.pop("quadratic_control", None)
        residual._control = control
        return residual

    @torch.no_grad()
    def _rest(self, mixed: torch.Tensor) -> torch.Tensor:
        shape = self._base.shape
        values = []
        for chunk in mixed.split(self.batch_size):
            value = self._factored.target_logits(chunk.view(-1, *shape), self.target, self._readout)
            values.append(value if self._control is None else self._control.subtract_from(value, chunk))
        return torch.cat(values)

    @torch.no_grad()
    def values(self, coalitions: torch.Tensor) -> torch.Tensor:
        """``v`` of every row of ``coalitions`` (M, N), as (M,) on the maps' device."""
        if coalitions.dim() != 2 or coalitions.shape[1] != self.n:
            raise ValueError(f"coalitions must have shape (M, {self.n}), got {tuple(coalitions.shape)}")
        coalitions = coalitions.to(device=self.maps.device, dtype=self.maps.dtype)
        if self._factored is None:
            return torch.cat([self._head(self.maps[None] * chunk[:, :, None, None])[:, self.target]
                              for chunk in coalitions.split(self.batch_size)])
        return torch.cat([self._rest(self._mixed(chunk)) for chunk in coalitions.split(self.batch_size)])

    def _mixed(self, coalitions: torch.Tensor) -> torch.Tensor:
        """``M(P(A * 1_S))`` (flattened) for each 0/1 row ``S`` of ``coalitions``: the fewer terms are summed, from
        ``M(P(0))`` up for sparse coalitions, from ``M(P(A))`` down for dense ones."""
        sparse = coalitions.sum(1, keepdim=True) <= self.n / 2
        terms = torch.where(sparse, coalitions, 1 - coalitions)
        counts = terms.sum(1, keepdim=True)
        if counts.max() <= 1:  # e.g. Ablation-CAM: each coalition one channel away from an end, a row taken
            sums = self._contributions[terms.argmax(1)]
            if not bool(counts.all()):
                sums.mul_(counts)
        elif terms.mean() < 0.05 and terms.device.type == "cpu":  # a few terms per coalition
            sums = torch.sparse.mm(terms.to_sparse(), self._contributions)
        else:
            sums = terms @ self._contributions
        base, full = self._base.flatten(), self._full.flatten()
        if bool(sparse.all()):  # in place where all rows go one way: fewer passes over the (rows, size) sums
            return sums.add_(base)
        if not bool(sparse.any()):
            return torch.sub(full, sums, out=sums)
        return torch.where(sparse, base + sums, full - sums)

    @functools.cached_property
    def ends(self) -> torch.Tensor:
        """``(F^c(0), F^c(A))``: the empty and the full coalition's values, float64 on the CPU."""
        return self.values(torch.stack([torch.zeros(self.n), torch.ones(self.n)])).double().cpu()

    @torch.no_grad()
    def marginals(self, orderings: torch.Tensor) -> torch.Tensor:
        """Algorithm 1's inner loop: each player's marginal contribution along each ordering, float64
        on the CPU, (B, N) for orderings (B, N) and (N,) for one ordering; each row sums to
        ``F^c(A) - F^c(0)`` (local accuracy)."""
        batch = orderings.reshape(-1, self.n).cpu()
        empty, full = self.ends.expand(len(batch), 2).split(1, 1)
        path = torch.cat([empty, self.ordering_values(batch).double().cpu(), full], 1)
        marginals = torch.zeros(batch.shape, dtype=torch.float64).scatter_(1, batch, path.diff(dim=1))
        return marginals.view(orderings.shape)

    @torch.no_grad()
    def ordering_values(self, orderings: torch.Tensor) -> torch.Tensor:
        """``v`` of the N - 1 proper, non-empty prefixes of each ordering: (B, N) -> (B, N - 1), or
        (N,) -> (N - 1,), on the maps' device; ``orderings_per_batch`` orderings at a time.

        Factored heads: running sums of the ``D_k``, the first half up from ``M(P(0))``, the second
        half down from ``M(P(A))`` (fewer float additions per prefix); each ordering's sums are the
        same float operations whatever the batch.
        """
        batch = orderings.reshape(-1, self.n).to(self.maps.device)
        values = torch.cat([self._batch_ordering_values(group) for group in batch.split(self.orderings_per_batch)])
        return values.view(*orderings.shape[:-1], self.n - 1)

    def _batch_ordering_values(self, batch: torch.Tensor) -> torch.Tensor:
        if self._factored is None:
            positions = torch.arange(self.n, device=batch.device)
            rank = torch.empty_like(batch).scatter_(1, batch, positions.expand_as(batch))
            prefixes = rank[:, None, :] < positions[None, 1:, None]  # (B, N - 1, N)
            return self.values(prefixes.flatten(0, 1)).view(len(batch), self.n - 1)
        half = self.n // 2
        return torch.cat([self._prefix_values(self._base, batch[:, :half], torch.add),
                          self._prefix_values(self._full, batch[:, half + 1:].flip(1), torch.sub).flip(1)], 1)

    def _prefix_values(self, start: torch.Tensor, players: torch.Tensor, step) -> torch.Tensor:
        """``R`` of ``start`` advanced by ``step`` (add or subtract) the ``D_k`` of ``players`` (B, L), one
        player after another: (B, L) values. Chained in-place adds in a reused buffer of
        ``orderings_per_batch * _steps`` rows, never a fresh allocation per chunk."""
        count, length = players.shape
        size = start.numel()
        values = torch.empty(count, length, device=start.device, dtype=start.dtype)
        buffer = torch.empty(count * min(self._steps, length) * size, device=start.device, dtype=start.dtype)
        state = start.flatten().expand(count, size)
        for first in range(0, length, self._steps):
            chunk = players[:, first:first + self._steps]
            steps = chunk.shape[1]
            sums = buffer[:count * steps * size].view(count, steps, size)
            torch.index_select(self._contributions, 0, chunk.flatten(), out=sums.view(count * steps, size))
            step(state, sums[:, 0], out=sums[:, 0])
            for t in range(1, steps):
                step(sums[:, t - 1], sums[:, t], out=sums[:, t])
            values[:, first:first + steps] = self._rest(sums.flatten(0, 1)).view(count, steps)
            state = sums[:, -1].clone()
        return values
