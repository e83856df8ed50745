"""Factor a head as ``F = R o M o P`` to evaluate many channel coalitions cheaply (SPEC sec. 6).

``P`` acts on each channel alone (elementwise non-linearities, batch norm, pooling, depthwise
convolution, reshapes), ``M`` starts at the first op that mixes channels, which must be affine
(a convolution or a linear layer), and takes in every affine op after it (batch norm, further
convolutions) up to the next non-linearity; ``R`` is the rest. Zeroing channel ``k`` of ``A`` then changes only channel
``k`` of ``P``'s output, so for any coalition ``S``

    M(P(A * 1_S)) = M(P(0)) + sum_{k in S} D_k,   D_k = M(P(A * e_k)) - M(P(0)),

and ``F^c(h_A(S)) = R(base + sum_{k in S} D_k)[c]``. The ``D_k`` are computed once per image;
each coalition then costs a sum and one evaluation of ``R`` only. Heads without this structure
(e.g. a squeeze-and-excitation gate before the first mixing op) are evaluated in full.

When ``M`` is pointwise (1 x 1 convolutions, batch norms: the same affine map ``z = W' u + b'`` of
the channel vector ``u`` at every position ``p``), ``D_k(j, p) = W'_{jk} (P(A)_k(p) - P(0)_k(p))``
is one outer product: ``W'`` comes from one evaluation of ``M`` on the N unit vectors, ``P`` runs
twice, and the N evaluations of ``M o P`` are never needed. The affine ops after ``R``'s last
non-linearity (average pooling, the final linear layer) fold into one vector per target class, so
the end of ``R`` is one matrix-vector product.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import fx, nn

from .head_ops import OpKind, UnsupportedHeadOpError, classify_head
from .split import CamSplit

_CHANNELWISE_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.ZeroPad2d, nn.Flatten,
)
_MIXING_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_POINTWISE_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Identity, nn.Dropout, nn.Dropout1d,
                      nn.Dropout2d, nn.Dropout3d)
# A power of two: probing M with it and dividing by it is exact.
_PROBE = 2.0**12
# Float32 sums of N rows stay far inside this fraction of their magnitude; moved values do not.
_POINTWISE_TOLERANCE = 1e-4
_CHANNELWISE_CALLS = {"flatten", "view", "reshape", "contiguous", "clone", "adaptive_avg_pool2d", "avg_pool2d",
                      "dropout"}

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1


def _mixing_end(head: fx.GraphModule) -> str | None:
    """The module name of ``M``'s last op, or None when ``P`` is not a chain of channelwise ops
    followed by an affine mixing op."""
    try:
        kinds = classify_head(head)
    except UnsupportedHeadOpError:
        return None
    mixing_end = None
    for node, kind in kinds.items():
        if kind is OpKind.METADATA:
            continue
        variable_users = [u for u in node.users if kinds.get(u, OpKind.METADATA) is not OpKind.METADATA]
        if mixing_end is not None:  # extend M over the affine ops that follow it
            if kind is not OpKind.AFFINE or len(variable_users) != 1:
                return mixing_end
            if node.op == "call_module":
                mixing_end = node.target
            continue
        if node.op == "call_module":
            module = head.get_submodule(node.target)
            if isinstance(module, _MIXING_MODULES) and not _is_depthwise(module):
                mixing_end = node.target
                if len(variable_users) != 1:
                    return mixing_end
                continue
            channelwise = isinstance(module, _CHANNELWISE_MODULES) or _is_depthwise(module) or kind in (
                OpKind.ELEMENTWISE, OpKind.MAX_POOL)
        else:
            name = getattr(node.target, "__name__", node.target)
            channelwise = kind in (OpKind.ELEMENTWISE, OpKind.MAX_POOL) or name in _CHANNELWISE_CALLS
        if not channelwise or len(variable_users) != 1:
            return None
    return mixing_end


def _is_pointwise(module: nn.Module) -> bool:
    """True for modules that apply one affine map to the channel vector at every position."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        no_padding = isinstance(module.padding, str) or not any(module.padding)  # 'same' of a 1 x 1 kernel is 0
        return (module.groups == 1 and no_padding and all(k == 1 for k in module.kernel_size)
                and all(s == 1 for s in module.stride))
    return isinstance(module, _POINTWISE_MODULES)


def _pointwise_parts(mix: fx.GraphModule) -> tuple[fx.GraphModule | None, fx.GraphModule] | None:
    """``(P, M)`` as two modules when ``M`` is pointwise (``P`` is None when it is the identity), else None."""
    nodes = [n for n in mix.graph.nodes if n.op not in ("placeholder", "output")]
    first = next(i for i, n in enumerate(nodes) if n.op == "call_module"
                 and isinstance(mix.get_submodule(n.target), _MIXING_MODULES)
                 and not _is_depthwise(mix.get_submodule(n.target)))
    if not all(n.op == "call_module" and _is_pointwise(mix.get_submodule(n.target)) for n in nodes[first:]):
        return None
    feed = nodes[first].args[0]
    if feed.op == "placeholder":
        return None, mix
    if feed.op != "call_module":
        return None
    try:
        cut = CamSplit(mix, feed.target, require_maps=False)
    except ValueError:  # e.g. the module is called twice
        return None
    return cut.body, cut.head


@dataclass(frozen=True)
class HeadFactors:
    """``F = R o M o P`` with ``mix = M o P``. When the ops after ``R``'s last non-linearity are affine
    (average pooling, reshapes, the final linear layer), ``rest`` stops at that non-linearity and
    ``tail`` holds the affine ops, which :meth:`readout` folds into one vector per target class.
    ``pointwise`` holds ``(P, M)`` apart when ``M`` is pointwise (``P`` None for the identity)."""

    mix: fx.GraphModule
    rest: fx.GraphModule
    tail: fx.GraphModule | None
    pointwise: tuple[fx.GraphModule | None, fx.GraphModule] | None

    def readout(self, mixed: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(w, b)`` with ``tail(h)[c] = w . h + b`` for every output ``h`` of ``rest`` (``mixed``: one of
        ``M``'s outputs, for the shape), or None without a tail. ``w`` is the gradient of the affine
        tail, ``b`` its value at 0."""
        if self.tail is None:
            return None
        with torch.enable_grad():
            hidden = torch.zeros_like(self.rest(mixed[None])).requires_grad_()
            logit = self.tail(hidden)[0, target]
            (weight,) = torch.autograd.grad(logit, hidden)
        return weight.flatten(), logit.detach()

    def target_logits(self, mixed: torch.Tensor, target: int,
                      readout: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """``F^c`` for a batch of ``M``'s outputs: (B, ...) -> (B,), with ``readout`` from :meth:`readout`."""
        hidden = self.rest(mixed)
        if readout is None:
            return hidden[:, target]
        weight, bias = readout
        return torch.addmv(bias, hidden.flatten(1), weight)

    @torch.no_grad()
    def contributions(self, maps: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``M(P(0))``, ``M(P(A))`` and the rows ``D_k`` (N, size of M's output) for the maps ``A`` (N, ...).

        From one outer product per channel when ``M`` is pointwise, else from N evaluations of
        ``M o P``, ``batch_size`` at a time.
        """
        base = self.mix(torch.zeros_like(maps)[None])[0]
        full = self.mix(maps[None])[0]
        rows = None if self.pointwise is None else self._outer_product_rows(maps, base, full)
        if rows is None:
            rows = self._evaluated_rows(maps, base, batch_size)
        return base, full, rows

    def _evaluated_rows(self, maps: torch.Tensor, base: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``D_k = M(P(A e_k)) - M(P(0))``, evaluated."""
        n = maps.shape[0]
        units = torch.eye(n, device=maps.device, dtype=maps.dtype).view(n, n, *[1] * (maps.dim() - 1))
        return torch.cat([(self.mix(maps[None] * units[start:start + batch_size]) - base).flatten(1)
                          for start in range(0, n, batch_size)])

    def _outer_product_rows(self, maps: torch.Tensor, base: torch.Tensor, full: torch.Tensor) -> torch.Tensor | None:
        """``D_k(j, p) = W'_{jk} (P(A)_k(p) - P(0)_k(p))`` for a pointwise ``M``, or None when the rows
        do not add up to ``M(P(A)) - M(P(0))`` (a 1 x 1 convolution whose own forward moves values
        between positions is not pointwise)."""
        channelwise, pointwise = self.pointwise
        zeros = torch.zeros_like(maps)[None]
        change = maps if channelwise is None else (channelwise(maps[None]) - channelwise(zeros))[0]
        n = maps.shape[0]
        # M(s e_k) - M(0) = s W'[:, k]; a large s keeps the rounding of M's constant b' out of W'
        probes = torch.eye(n, device=maps.device, dtype=maps.dtype).view(n, n, *[1] * (change.dim() - 1)) * _PROBE
        weights = ((pointwise(probes) - pointwise(torch.zeros_like(probes[:1]))) / _PROBE).flatten(1)  # row k: W'[:, k]
        rows = (weights[:, :, None] * change.flatten(1)[:, None, :]).flatten(1)
        if rows.shape[1] != base.numel():
            return None
        scale = (base.abs().flatten() + rows.abs().sum(0)).max()
        error = (base.flatten() + rows.sum(0) - full.flatten()).abs().max()
        return rows if error <= _POINTWISE_TOLERANCE * scale else None


def _split_off_affine_tail(rest: fx.GraphModule) -> tuple[fx.GraphModule, fx.GraphModule | None]:
    """``rest`` cut after its last non-linear op (a module call), if the ops after it are affine."""
    kinds = classify_head(rest)
    nonlinear = [node for node, kind in kinds.items() if kind not in (OpKind.AFFINE, OpKind.METADATA)]
    if not nonlinear or nonlinear[-1].op != "call_module":
        return rest, None
    try:
        cut = CamSplit(rest, nonlinear[-1].target, require_maps=False)
    except ValueError:  # e.g. the module is called twice
        return rest, None
    return cut.body, cut.head


def factor_head(head: fx.GraphModule) -> HeadFactors | None:
    """The factors of ``head``, or None when it does not factor. Cached per head."""
    if head not in _cache:
        name = _mixing_end(head)
        factors = None
        if name is not None:
            try:
                cut = CamSplit(head, name, require_maps=False)
                factors = HeadFactors(cut.body, *_split_off_affine_tail(cut.head), _pointwise_parts(cut.body))
            except ValueError:  # e.g. M is called twice, or R reads values from before M
                factors = None
        _cache[head] = factors
    return _cache[head]
