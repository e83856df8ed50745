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


@dataclass(frozen=True)
class HeadFactors:
    """``F = R o M o P`` with ``mix = M o P``; when ``R`` ends in a linear layer, ``rest`` stops before
    it and ``readout`` holds it, so that only the target's row of its weight is ever applied."""

    mix: fx.GraphModule
    rest: fx.GraphModule
    readout: nn.Linear | None

    def target_logits(self, mixed: torch.Tensor, target: int) -> torch.Tensor:
        """``F^c`` for a batch of ``M``'s outputs: (B, ...) -> (B,)."""
        hidden = self.rest(mixed)
        if self.readout is None:
            return hidden[:, target]
        logit = hidden @ self.readout.weight[target]
        return logit if self.readout.bias is None else logit + self.readout.bias[target]


def _split_off_readout(rest: fx.GraphModule) -> tuple[fx.GraphModule, nn.Linear | None]:
    output = next(n for n in rest.graph.nodes if n.op == "output").args[0]
    if output.op != "call_module" or not isinstance(rest.get_submodule(output.target), nn.Linear):
        return rest, None
    before = output.args[0]
    if not isinstance(before, fx.Node) or before.op != "call_module":
        return rest, None
    try:
        hidden = CamSplit(rest, before.target, require_maps=False)
    except ValueError:
        return rest, None
    return hidden.body, rest.get_submodule(output.target)


def factor_head(head: fx.GraphModule) -> HeadFactors | None:
    """The factors of ``head``, or None when it does not factor. Cached per head."""
    if head not in _cache:
        name = _mixing_end(head)
        factors = None
        if name is not None:
            try:
                cut = CamSplit(head, name, require_maps=False)
                factors = HeadFactors(cut.body, *_split_off_readout(cut.head))
            except ValueError:  # e.g. M is called twice, or R reads values from before M
                factors = None
        _cache[head] = factors
    return _cache[head]
