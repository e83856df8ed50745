"""Factor a head as ``F = R o M o P`` to evaluate many channel coalitions cheaply (SHAP-CAM's cost model).

``P`` acts on each channel alone, ``M`` starts at the first op that mixes channels, which must be
affine (a convolution or a linear layer), and takes in every affine op after it (batch norm,
further convolutions) up to the next non-linearity; ``R`` is the rest. Zeroing channel ``k`` of ``A``
then changes only the entries of ``P``'s output that come from channel ``k``, so for any coalition ``S``

    M(P(A * 1_S)) = M(P(0)) + sum_{k in S} D_k,   D_k = M(P(A * e_k)) - M(P(0)),          (*)

and ``F^c(h_A(S)) = R(base + sum_{k in S} D_k)[c]``. The ``D_k`` are computed once per image;
each coalition then costs a sum and one evaluation of ``R`` only.

``P`` admits only ops known to keep the channels apart. On the head's input ``A`` (B, N, h, w):
entrywise ops (elementwise non-linearities, eval-mode batch norm, dropout, identity) anywhere,
reshapes (``flatten``, ``view``, ``reshape``), and ops that act on each ``h x w`` map alone (2-d average
and max pooling, zero padding, depthwise convolution), the last only while no reshape has come
before them: after one, dimension 1 need not hold the channels, and e.g. a max-pool over a
flattened vector takes maxima across channel borders, which (*) does not model. Heads without
this structure (such a pool, a squeeze-and-excitation gate before the first mixing op) are
evaluated in full. A module counts as one of these ops only when its class is exactly PyTorch's
(``type(m) is nn.Conv2d``, not ``isinstance``), or when it subclasses ``nn.Conv2d`` and computes
its zero-padded convolution all the same (EfficientNet's ``Conv2dStaticSamePadding``, checked on a
probe: :func:`_acts_as`). Any other subclass may move or mix channels in its own ``forward`` (swap
two maps, say), so it is an opaque op: a head with one before ``M`` is evaluated in full, and in
``M``'s run of affine ops it ends ``M`` (``R`` is evaluated as it is). As a guard against ops that
only look channelwise all the same, (*) is checked on every image's rows
(:meth:`HeadFactors.contributions`).

When ``M`` is pointwise (1 x 1 convolutions, batch norms: the same affine map ``z = W' u + b'`` of
the channel vector ``u`` at every position ``p``), ``D_k(j, p) = W'_{jk} (P(A)_k(p) - P(0)_k(p))``
is one outer product: ``W'`` comes from one evaluation of ``M`` on the N unit vectors, ``P`` runs
twice, and the N evaluations of ``M o P`` are never needed. The affine ops after ``R``'s last
non-linearity (average pooling, the final linear layer) fold into one vector per target class, so
the end of ``R`` is one matrix-vector product.
"""

from __future__ import annotations

import enum
import itertools
import weakref
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .head_ops import _AFFINE_MODULES, _ELEMENTWISE_MODULES, OpKind, UnsupportedHeadOpError, classify_head
from .split import CamSplit

# P's ops by what they do to the channels of A (B, N, h, w). Entrywise: each output entry is a
# function of one input entry, whatever the layout (in eval mode). These also apply one affine map
# to the channel vector at every position, i.e. they are pointwise.
_ENTRYWISE_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Identity, nn.Dropout, nn.Dropout1d,
                      nn.Dropout2d, nn.Dropout3d)
_ENTRYWISE_CALLS = {"contiguous", "clone", "dropout"}
# Mapwise: each output map is a function of one input map, while dimension 1 holds the channels.
# (A 3-d pool of (B, N, h, w) reads it as an unbatched (C, D, H, W) and pools across channels.)
_MAPWISE_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.ZeroPad2d)
_MAPWISE_CALLS = {"adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "adaptive_max_pool2d"}
# Reshapes: they move entries, never combine them, but dimension 1 no longer holds the channels.
_RESHAPE_MODULES = (nn.Flatten,)
_RESHAPE_CALLS = {"flatten", "view", "reshape"}
_MIXING_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# A power of two: probing M with it and dividing by it is exact.
_PROBE = 2.0**12
# Float32 sums of N rows stay far inside this fraction of their magnitude; moved or mixed values do not.
_ADDITIVITY_TOLERANCE = 1e-4
# Random coalitions on which (*) is checked, beside the full one, per image. A wrong row pair (two
# channels' rows exchanged) passes one coalition with probability 1/2, all of them with 1/16.
_CHECK_COALITIONS = 4


class _Role(enum.Enum):
    ENTRYWISE = "entrywise"
    MAPWISE = "mapwise"
    RESHAPE = "reshape"


_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_padded_convolutions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _acts_as(module: nn.Module, types: tuple[type, ...]) -> bool:
    """Whether the factoring may take ``module`` for one of the ops ``types``: its class is exactly one of
    them, or ``nn.Conv2d`` is one of them and ``module`` is a subclass that computes a zero-padded
    ``nn.Conv2d`` convolution (:func:`_is_zero_padded_convolution`). Any other subclass is never taken for
    its base: its own ``forward`` may move or mix channels where the base's keeps them apart."""
    if type(module) in types:
        return True
    return nn.Conv2d in types and isinstance(module, nn.Conv2d) and _is_zero_padded_convolution(module)


def _is_zero_padded_convolution(module: nn.Conv2d) -> bool:
    """Whether ``module`` maps a seeded random probe to ``conv2d(pad(probe), weight, bias)`` with its own
    stride, dilation and groups, for zero padding of less than the (dilated) kernel size on each side.
    Both are linear, so agreeing on a random input is agreeing on every input (almost surely): the
    module keeps ``nn.Conv2d``'s channel structure. Probed once per module."""
    if module not in _padded_convolutions:
        _padded_convolutions[module] = _matches_a_padded_convolution(module)
    return _padded_convolutions[module]


@torch.no_grad()
def _matches_a_padded_convolution(module: nn.Conv2d) -> bool:
    """The probe of :func:`_is_zero_padded_convolution`, uncached."""
    spans = [d * (k - 1) + 1 for d, k in zip(module.dilation, module.kernel_size, strict=True)]  # (height, width)
    size = [2 * span + 1 for span in spans]
    probe = torch.randn(1, module.in_channels, *size, generator=torch.Generator().manual_seed(0)).to(module.weight)
    try:
        output = module(probe)
    except (RuntimeError, ValueError, TypeError):  # a forward that refuses the probe is opaque
        return False
    # (top, bottom) and (left, right) pads that give the output's size
    pads = [[(a, b) for a, b in itertools.product(range(span), repeat=2) if (n + a + b - span) // s + 1 == out]
            for span, n, s, out in zip(spans, size, module.stride, output.shape[-2:], strict=True)]
    for (top, bottom), (left, right) in itertools.product(*pads):
        reference = F.conv2d(F.pad(probe, (left, right, top, bottom)), module.weight, module.bias, module.stride,
                             0, module.dilation, module.groups)
        if reference.shape == output.shape and (reference - output).abs().max() <= 1e-5 * reference.abs().max():
            return True
    return False


def _is_depthwise(module: nn.Module) -> bool:
    """A convolution with one filter per channel (no channel multiplier: output map k reads map k only)."""
    return _acts_as(module, (nn.Conv2d,)) and module.groups == module.in_channels == module.out_channels > 1


def _is_mixing(module: nn.Module) -> bool:
    """A convolution or linear layer (:func:`_acts_as`) that combines channels: ``M``'s first op."""
    return _acts_as(module, _MIXING_MODULES) and not _is_depthwise(module)


def _role(node: fx.Node, kind: OpKind, head: fx.GraphModule) -> _Role | None:
    """What an op before ``M`` does to the channels, or None when it may mix them."""
    if node.op == "call_module":
        module = head.get_submodule(node.target)
        if _acts_as(module, _ELEMENTWISE_MODULES + _ENTRYWISE_MODULES):
            return _Role.ENTRYWISE
        if _acts_as(module, _MAPWISE_MODULES) or _is_depthwise(module):
            return _Role.MAPWISE
        return _Role.RESHAPE if _acts_as(module, _RESHAPE_MODULES) else None
    name = getattr(node.target, "__name__", node.target)
    if kind is OpKind.ELEMENTWISE or name in _ENTRYWISE_CALLS:
        return _Role.ENTRYWISE
    if name in _MAPWISE_CALLS:
        return _Role.MAPWISE
    return _Role.RESHAPE if name in _RESHAPE_CALLS else None


def _mixing_end(head: fx.GraphModule) -> tuple[str, bool] | None:
    """The module name of ``M``'s last op and whether ``P`` reshapes, or None when ``P`` is not a
    chain of ops that keep the channels apart (module docstring) followed by an affine mixing op."""
    try:
        kinds = classify_head(head)
    except UnsupportedHeadOpError:
        return None
    mixing_end, reshaped = None, False
    for node, kind in kinds.items():
        if kind is OpKind.METADATA:
            continue
        variable_users = [u for u in node.users if kinds.get(u, OpKind.METADATA) is not OpKind.METADATA]
        if mixing_end is not None:  # extend M over the affine ops that follow it
            opaque = node.op == "call_module" and not _acts_as(head.get_submodule(node.target), _AFFINE_MODULES)
            if kind is not OpKind.AFFINE or len(variable_users) != 1 or opaque:
                return mixing_end, reshaped
            if node.op == "call_module":
                mixing_end = node.target
            continue
        if node.op == "call_module":
            if _is_mixing(head.get_submodule(node.target)):
                mixing_end = node.target
                if len(variable_users) != 1:
                    return mixing_end, reshaped
                continue
        role = _role(node, kind, head)
        if role is None or (role is _Role.MAPWISE and reshaped) or len(variable_users) != 1:
            return None
        reshaped = reshaped or role is _Role.RESHAPE
    return None if mixing_end is None else (mixing_end, reshaped)


def _is_pointwise(module: nn.Module) -> bool:
    """True for modules that apply one affine map to the channel vector at every position."""
    if _acts_as(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        no_padding = isinstance(module.padding, str) or not any(module.padding)  # 'same' of a 1 x 1 kernel is 0
        return (module.groups == 1 and no_padding and all(k == 1 for k in module.kernel_size)
                and all(s == 1 for s in module.stride))
    return _acts_as(module, _ENTRYWISE_MODULES)


def _pointwise_parts(mix: fx.GraphModule) -> tuple[fx.GraphModule | None, fx.GraphModule] | None:
    """``(P, M)`` as two modules when ``M`` is pointwise (``P`` is None when it is the identity), else None."""
    nodes = [n for n in mix.graph.nodes if n.op not in ("placeholder", "output")]
    first = next(i for i, n in enumerate(nodes) if n.op == "call_module" and _is_mixing(mix.get_submodule(n.target)))
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
    def contributions(self, maps: torch.Tensor, batch_size: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``M(P(0))``, ``M(P(A))`` and the rows ``D_k`` (N, size of M's output) for the maps ``A`` (N, ...),
        or None when the rows do not satisfy (*) of the module docstring: then the head must be
        evaluated in full.

        From one outer product per channel when ``M`` is pointwise, else (or when those rows do not add
        up) from N evaluations of ``M o P``, ``batch_size`` at a time. Rows are accepted when (*) holds
        (:func:`_adds_up`) on the full coalition and on ``_CHECK_COALITIONS`` = 4 random coalitions of this
        image (:func:`_random_coalitions`); the empty one holds by construction (``D_k`` are differences
        from ``M(P(0))``). The check costs one evaluation of ``M o P`` on a batch of 4 per image.
        """
        n = maps.shape[0]
        base = self.mix(torch.zeros_like(maps)[None])[0]
        full = self.mix(maps[None])[0]
        drawn = _random_coalitions(maps)
        coalitions = torch.cat([torch.ones(1, n, device=maps.device, dtype=maps.dtype), drawn])
        values = torch.cat([full[None], self.mix(maps[None] * drawn.view(*drawn.shape, *[1] * (maps.dim() - 1)))])
        rows = None if self.pointwise is None else self._outer_product_rows(maps, base)
        if rows is None or not _adds_up(base, rows, coalitions, values):
            rows = self._evaluated_rows(maps, base, batch_size)
            if not _adds_up(base, rows, coalitions, values):
                return None
        return base, full, rows

    def _evaluated_rows(self, maps: torch.Tensor, base: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``D_k = M(P(A e_k)) - M(P(0))``, evaluated."""
        n = maps.shape[0]
        units = torch.eye(n, device=maps.device, dtype=maps.dtype).view(n, n, *[1] * (maps.dim() - 1))
        return torch.cat([(self.mix(maps[None] * units[start:start + batch_size]) - base).flatten(1)
                          for start in range(0, n, batch_size)])

    def _outer_product_rows(self, maps: torch.Tensor, base: torch.Tensor) -> torch.Tensor | None:
        """``D_k(j, p) = W'_{jk} (P(A)_k(p) - P(0)_k(p))`` for a pointwise ``M``, or None when their size
        is not that of ``M``'s output ``base``."""
        channelwise, pointwise = self.pointwise
        zeros = torch.zeros_like(maps)[None]
        change = maps if channelwise is None else (channelwise(maps[None]) - channelwise(zeros))[0]
        n = maps.shape[0]
        # M(s e_k) - M(0) = s W'[:, k]; a large s keeps the rounding of M's constant b' out of W'
        probes = torch.eye(n, device=maps.device, dtype=maps.dtype).view(n, n, *[1] * (change.dim() - 1)) * _PROBE
        weights = ((pointwise(probes) - pointwise(torch.zeros_like(probes[:1]))) / _PROBE).flatten(1)  # row k: W'[:, k]
        rows = (weights[:, :, None] * change.flatten(1)[:, None, :]).flatten(1)
        return rows if rows.shape[1] == base.numel() else None


def _random_coalitions(maps: torch.Tensor) -> torch.Tensor:
    """``_CHECK_COALITIONS`` coalitions (rows of 0 / 1, each channel in with probability 1/2) for the
    maps ``A`` (N, ...) of one image, drawn from a seed that is a checksum of the maps' values: each
    image gets its own, the same on every call with the same maps, wherever the image sits in a batch."""
    seed = zlib.crc32(maps.detach().float().cpu().numpy().tobytes())
    drawn = torch.rand(_CHECK_COALITIONS, maps.shape[0], generator=torch.Generator().manual_seed(seed)) < 0.5
    return drawn.to(device=maps.device, dtype=maps.dtype)


def _adds_up(base: torch.Tensor, rows: torch.Tensor, coalitions: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether ``M(P(A * 1_S)) = M(P(0)) + sum_{k in S} D_k`` (*) holds for each 0/1 row ``S`` of
    ``coalitions`` (C, N), ``values`` (C, ...) being the evaluated left-hand sides, up to float32
    rounding: within ``_ADDITIVITY_TOLERANCE`` of ``max_j (|M(P(0))_j| + sum_k |D_kj|)``, the magnitude
    of every term of every such sum."""
    error = (base.flatten() + coalitions @ rows - values.flatten(1)).abs().max()
    scale = (base.abs().flatten() + torch.linalg.vector_norm(rows, 1, dim=0)).max()
    return bool(error <= _ADDITIVITY_TOLERANCE * scale)


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
        found = _mixing_end(head)
        factors = None
        if found is not None:
            name, reshaped = found
            try:
                cut = CamSplit(head, name, require_maps=False)
                # the outer product reads P's output channel k as channel k's: not after a reshape
                pointwise = None if reshaped else _pointwise_parts(cut.body)
                factors = HeadFactors(cut.body, *_split_off_affine_tail(cut.head), pointwise)
            except ValueError:  # e.g. M is called twice, or R reads values from before M
                factors = None
        _cache[head] = factors
    return _cache[head]
