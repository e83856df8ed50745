"""The cooperative game of the paper's framework (Sec. 3.2-3.3): channels are the players.

A coalition ``a'`` in {0, 1}^N keeps the maps ``A_k`` with ``a'_k = 1`` and sets the others to 0
(``h_A``, Sec. 3.3); its value is the head's target logit ``v(a') = F^c(h_A(a'))``. SHAP-CAM,
exact Shapley values, Ablation-CAM, KernelSHAP-CAM and LIME-CAM all query this one game.

Only the head is evaluated, never the body. Where the head factors as ``R o M o P``
(:mod:`liftcam_utils.head_factoring`), each channel's contribution ``D_k`` to the first mixing
op's output is computed once per image, and a coalition costs a sum of ``D_k`` plus one
evaluation of ``R``; along an ordering, the prefixes are running sums.
"""

from __future__ import annotations

import functools

import torch

from .cam import CamInput
from .head_factoring import factor_head


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class ChannelGame:
    """``v(a') = F^c(h_A(a'))`` for image ``index`` of ``inputs``; ``batch_size`` head inputs at a time."""

    def __init__(self, inputs: CamInput, index: int, batch_size: int = 256):
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.maps = inputs.maps[index]
        self.target = int(inputs.target[index])
        self.n = self.maps.shape[0]
        self._head = inputs.split.head
        self._factored = factor_head(self._head)
        if self._factored is not None:
            self._precompute_contributions()

    @classmethod
    def of(cls, inputs: CamInput, index: int, batch_size: int = 256) -> ChannelGame:
        """The game of image ``index``, built once per ``inputs`` (methods evaluated on the same maps share it)."""
        key = (index, batch_size)
        if key not in inputs.games:
            inputs.games[key] = cls(inputs, index, batch_size)
        return inputs.games[key]

    @torch.no_grad()
    def _precompute_contributions(self) -> None:
        """``base = M(P(0))``, ``full = M(P(A))`` and ``D_k = M(P(A e_k)) - base`` (N rows)."""
        mix = self._factored.mix
        self._base = mix(torch.zeros_like(self.maps)[None])[0]
        self._full = mix(self.maps[None])[0]
        rows = []
        eye = torch.eye(self.n, device=self.maps.device, dtype=self.maps.dtype)
        for start in range(0, self.n, self.batch_size):
            single = self.maps[None] * eye[start:start + self.batch_size, :, None, None]
            rows.append((mix(single) - self._base).flatten(1))
        self._contributions = torch.cat(rows)  # (N, size of M's output)

    @torch.no_grad()
    def _rest(self, mixed: torch.Tensor) -> torch.Tensor:
        shape = self._base.shape
        return torch.cat([self._factored.target_logits(chunk.view(-1, *shape), self.target)
                          for chunk in mixed.split(self.batch_size)])

    @torch.no_grad()
    def values(self, coalitions: torch.Tensor) -> torch.Tensor:
        """``v`` of every row of ``coalitions`` (M, N), as (M,) on the maps' device."""
        if coalitions.dim() != 2 or coalitions.shape[1] != self.n:
            raise ValueError(f"coalitions must have shape (M, {self.n}), got {tuple(coalitions.shape)}")
        coalitions = coalitions.to(device=self.maps.device, dtype=self.maps.dtype)
        if self._factored is None:
            return torch.cat([self._head(self.maps[None] * chunk[:, :, None, None])[:, self.target]
                              for chunk in coalitions.split(self.batch_size)])
        # Sum the fewer terms: from M(P(0)) up for sparse coalitions, from M(P(A)) down for dense ones.
        sparse = coalitions.sum(1, keepdim=True) <= self.n / 2
        terms = torch.where(sparse, coalitions, 1 - coalitions)
        if terms.mean() < 0.05 and terms.device.type == "cpu":  # e.g. Ablation-CAM: one term per coalition
            sums = torch.sparse.mm(terms.to_sparse(), self._contributions)
        else:
            sums = terms @ self._contributions
        return self._rest(torch.where(sparse, self._base.flatten() + sums, self._full.flatten() - sums))

    @functools.cached_property
    def ends(self) -> torch.Tensor:
        """``(F^c(0), F^c(A))``: the empty and the full coalition's values, float64 on the CPU."""
        return self.values(torch.stack([torch.zeros(self.n), torch.ones(self.n)])).double().cpu()

    @torch.no_grad()
    def marginals(self, ordering: torch.Tensor) -> torch.Tensor:
        """Algorithm 1's inner loop: each player's marginal contribution along ``ordering``, (N,) float64
        on the CPU; they sum to ``F^c(A) - F^c(0)`` (local accuracy)."""
        path = torch.cat([self.ends[:1], self.ordering_values(ordering).double().cpu(), self.ends[1:]])
        marginals = torch.zeros(self.n, dtype=torch.float64)
        marginals[ordering.cpu()] = path.diff()
        return marginals

    @torch.no_grad()
    def ordering_values(self, ordering: torch.Tensor) -> torch.Tensor:
        """``v`` of the N - 1 proper, non-empty prefixes of ``ordering``, as (N - 1,).

        Factored heads: running sums of the ``D_k``, the first half up from ``M(P(0))``, the second
        half down from ``M(P(A))`` (fewer float additions per prefix), in chunks small enough to
        stay in the CPU cache.
        """
        if self._factored is None:
            rank = torch.empty_like(ordering)
            rank[ordering] = torch.arange(self.n)
            prefixes = rank[None, :] < torch.arange(1, self.n)[:, None]
            return self.values(prefixes)
        ordering = ordering.to(self.maps.device)
        rows = max(1, min(self.batch_size, 2**20 // self._contributions.shape[1]))
        half = self.n // 2
        lower, state = [], self._base.flatten()
        for start in range(0, half, rows):  # prefixes of start+1 .. players
            prefixes = state + self._contributions[ordering[start:min(start + rows, half)]].cumsum(0)
            lower.append(self._rest(prefixes))
            state = prefixes[-1]
        upper, state = [], self._full.flatten()
        for end in range(self.n, half + 1, -rows):  # prefixes of end-1 down to lo players
            lo = max(half + 1, end - rows)
            prefixes = state - self._contributions[ordering[lo:end].flip(0)].cumsum(0)
            upper.append(self._rest(prefixes).flip(0))
            state = prefixes[-1]
        return torch.cat(lower + upper[::-1])
