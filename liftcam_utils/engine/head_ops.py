"""The rule table: what each operation of a head ``F`` does to the activation maps ``A``.

Rule-based attribution (DeepLIFT for LIFT-CAM, LRP for LRP-CAM) and the closed-form Shapley values
of a linear head need to know, for every op of ``F`` that depends on ``A``, whether it is

* ``AFFINE``: linear in its ``A``-dependent input plus a constant (conv, linear, batch norm in eval
  mode, average pooling, reshapes, sums, products with a constant);
* ``ELEMENTWISE``: a scalar non-linearity applied to each entry (ReLU, ReLU6, Tanh, Sigmoid, ...);
* ``MAX_POOL``: a max over windows;
* ``PRODUCT``: the product or quotient of two ``A``-dependent tensors (e.g. a VQA image embedding
  divided by its own L2 norm);
* ``NORM``: an L2 norm along given dimensions (the batch dimension excluded);
* ``LAYER_NORM``: layer normalisation (a transformer's LayerNorm);
* ``SOFTMAX``: a softmax along one dimension (a transformer's attention weights);
* ``ATTENTION``: scaled dot-product attention ``softmax(q k^T / sqrt(d)) v``, as one function
  (``F.scaled_dot_product_attention``) or as PyTorch's ``nn.MultiheadAttention`` (projections included),
  without masks; its products ``q k^T`` and ``(.) v`` are bilinear, like a ``PRODUCT``;
* ``METADATA``: a shape query such as ``A.size(0)``, which carries no activation values.

A matrix product of two ``A``-dependent tensors (``q @ k.transpose(-2, -1)``) is a ``PRODUCT``; with one
constant operand it is ``AFFINE``.

``detach`` is ``AFFINE`` (the identity): it changes gradients, never values, and rule-based
attribution follows values. Anything else (a norm other than L2, a norm over the batch, masked attention)
raises :class:`UnsupportedHeadOpError`. Nothing is ever silently treated as linear.

:mod:`liftcam_utils.engine.propagation` gives each kind its rule.
"""

from __future__ import annotations

import enum
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn


class OpKind(enum.Enum):
    AFFINE = "affine"
    ELEMENTWISE = "elementwise"
    MAX_POOL = "max_pool"
    PRODUCT = "product"
    NORM = "norm"
    LAYER_NORM = "layer_norm"
    SOFTMAX = "softmax"
    ATTENTION = "attention"
    METADATA = "metadata"


class UnsupportedHeadOpError(NotImplementedError):
    """A head op that the attribution rules do not cover."""


_AFFINE_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.ZeroPad2d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus,
)
_MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                     nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_TRANSFORMER_MODULES = {nn.LayerNorm: OpKind.LAYER_NORM, nn.Softmax: OpKind.SOFTMAX,
                        nn.MultiheadAttention: OpKind.ATTENTION}

_AFFINE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute,
    torch.cat, torch.mean, torch.sum, torch.add, torch.sub, operator.add, operator.sub,
    operator.neg, operator.pos, operator.getitem, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.avg_pool1d, F.avg_pool2d, F.dropout, F.pad, F.linear, F.conv1d, F.conv2d, torch.unbind,
}
# Products and quotients are affine only with one A-dependent operand (the numerator, for division).
_SCALING_FUNCTIONS = {operator.mul, torch.mul, operator.truediv, torch.div, operator.matmul, torch.matmul, torch.bmm}
_ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    torch.clamp, torch.exp, torch.sqrt, torch.rsqrt, torch.reciprocal,
}
_TRANSFORMER_FUNCTIONS = {F.layer_norm: OpKind.LAYER_NORM, F.softmax: OpKind.SOFTMAX, torch.softmax: OpKind.SOFTMAX,
                          F.scaled_dot_product_attention: OpKind.ATTENTION}
_MAX_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                       torch.max_pool2d}

_AFFINE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose",
                   "contiguous", "clone", "mean", "sum", "__getitem__", "add", "sub", "neg", "detach", "unbind"}
_SCALING_METHODS = {"mul", "div", "matmul", "bmm"}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max", "exp", "sqrt", "rsqrt",
                        "reciprocal"}
_METADATA_METHODS = {"size", "dim"}

# node.op -> (target -> kind, targets that are affine with one A-dependent operand)
_CALL_RULES = {
    "call_function": (
        {**dict.fromkeys(_AFFINE_FUNCTIONS, OpKind.AFFINE),
         **dict.fromkeys(_ELEMENTWISE_FUNCTIONS, OpKind.ELEMENTWISE),
         **dict.fromkeys(_MAX_POOL_FUNCTIONS, OpKind.MAX_POOL),
         **_TRANSFORMER_FUNCTIONS},
        _SCALING_FUNCTIONS,
    ),
    "call_method": (
        {**dict.fromkeys(_AFFINE_METHODS, OpKind.AFFINE),
         **dict.fromkeys(_ELEMENTWISE_METHODS, OpKind.ELEMENTWISE),
         **dict.fromkeys(_METADATA_METHODS, OpKind.METADATA),
         "softmax": OpKind.SOFTMAX},
        _SCALING_METHODS,
    ),
}


def _describe(node: fx.Node, head: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(head.get_submodule(node.target)).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target!r} (node {node.name!r})"


def _classify(node: fx.Node, head: fx.GraphModule, depends: set[fx.Node]) -> OpKind:
    if node.op == "call_module":
        module = head.get_submodule(node.target)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and module.training:
            raise UnsupportedHeadOpError(
                f"{_describe(node, head)} is in training mode; put the model in eval mode"
            )
        for kinds, kind in ((_AFFINE_MODULES, OpKind.AFFINE),
                            (_ELEMENTWISE_MODULES, OpKind.ELEMENTWISE),
                            (_MAX_POOL_MODULES, OpKind.MAX_POOL)):
            if isinstance(module, kinds):
                return kind
        if type(module) in _TRANSFORMER_MODULES:
            return _checked_transformer_op(node, head, _TRANSFORMER_MODULES[type(module)])
    elif node.op in _CALL_RULES:
        rules, scaling = _CALL_RULES[node.op]
        if node.target in scaling:
            return _scaling_kind(node, head, depends)
        if node.target in rules:
            return _checked_transformer_op(node, head, rules[node.target])
        if node.target is getattr and node.args[1] == "shape":
            return OpKind.METADATA
        if _is_unmasked(node):
            return OpKind.METADATA if _qualified_name(node.target) == _TIMM_MASK_FUNCTIONS[0] else OpKind.AFFINE
        if node.target in _NORM_TARGETS[node.op]:
            return _norm_kind(node, head)
    raise UnsupportedHeadOpError(
        f"the head contains {_describe(node, head)}, which has no attribution rule. "
        "Supported: affine ops (conv, linear, eval-mode batch norm, average pooling, reshapes, "
        "sums, products with a constant), elementwise non-linearities "
        f"({', '.join(sorted(m.__name__ for m in _ELEMENTWISE_MODULES))}), max pooling, products and L2 norms of "
        "A-dependent tensors, LayerNorm, softmax and unmasked attention. "
        "Cut the network at a later layer, or add a rule to liftcam_utils.engine.head_ops."
    )


# timm's attention without fused kernels resolves its (absent) mask, then adds it to the scores when there is one
_TIMM_MASK_FUNCTIONS = ("timm.layers.attention.resolve_self_attn_mask", "timm.layers.attention.maybe_add_mask")


def _qualified_name(target) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"


def _is_unmasked(node: fx.Node) -> bool:
    """timm's mask of no mask (``resolve_self_attn_mask(n, scores, None, False)``, which is None), or the addition
    of that mask to the scores (the identity)."""
    if node.op != "call_function":
        return False
    resolve, add = _TIMM_MASK_FUNCTIONS
    name = _qualified_name(node.target)
    if name == resolve:
        values = dict(zip(("seq_len", "attn", "attn_mask", "is_causal"), node.args, strict=False)) | node.kwargs
        return values.get("attn_mask") is None and not values.get("is_causal", False)
    if name == add:
        mask = node.kwargs.get("attn_mask", node.args[1] if len(node.args) > 1 else None)
        return mask is None or (isinstance(mask, fx.Node) and _is_unmasked(mask)
                                and _qualified_name(mask.target) == resolve)
    return False


def _checked_transformer_op(node: fx.Node, head: fx.GraphModule, kind: OpKind) -> OpKind:
    """``kind``, once the op's arguments are those its rule covers: attention without masks, dropout or extra
    key/value biases, whose attention weights (``nn.MultiheadAttention``'s second output) the head does not read."""
    if kind is not OpKind.ATTENTION:
        return kind
    if node.op == "call_module":
        module = head.get_submodule(node.target)
        masks = {k: node.kwargs.get(k) for k in ("key_padding_mask", "attn_mask", "is_causal")}
        extras = module.bias_k is not None or module.add_zero_attn or (module.dropout and module.training)
        weights_read = any(user.target is operator.getitem and user.args[1] == 1 and user.users for user in node.users)
        if any(v not in (None, False) for v in masks.values()) or len(node.args) > 3 or extras or weights_read:
            raise UnsupportedHeadOpError(
                f"the head contains {_describe(node, head)} with masks, extra key/value biases, dropout in training "
                "mode or its attention weights read; the attention rule covers unmasked attention's output")
        return kind
    options = dict(zip(("attn_mask", "dropout_p", "is_causal"), node.args[3:], strict=False)) | node.kwargs
    if options.get("attn_mask") is not None or options.get("dropout_p", 0.0) or options.get("is_causal", False) \
            or set(options) - {"attn_mask", "dropout_p", "is_causal", "scale"}:
        raise UnsupportedHeadOpError(f"the head contains {_describe(node, head)} with {options}; the attention "
                                     "rule covers unmasked attention without dropout")
    return kind


def _scaling_kind(node: fx.Node, head: fx.GraphModule, depends: set[fx.Node]) -> OpKind:
    operands = [a for a in node.args[:2] if isinstance(a, fx.Node) and a in depends]
    if len(node.args) != 2 or node.kwargs:
        raise UnsupportedHeadOpError(f"the head contains {_describe(node, head)} with extra arguments "
                                     f"{node.args[2:]} {node.kwargs}; only plain products and quotients have a rule")
    if len(operands) == 1 and operands[0] is node.args[0]:
        return OpKind.AFFINE
    is_division = node.target in (operator.truediv, torch.div, "div")
    return OpKind.AFFINE if len(operands) == 1 and not is_division else OpKind.PRODUCT


# node.op -> targets computing a norm; only the L2 norm along given non-batch dimensions has a rule
_NORM_TARGETS = {"call_function": {torch.norm, torch.linalg.vector_norm}, "call_method": {"norm"},
                 "call_module": set()}


def norm_arguments(node: fx.Node) -> tuple[object, object, bool]:
    """``(p, dim, keepdim)`` of a norm node, read from its positional or keyword arguments."""
    names = ("input", "p", "dim", "keepdim") if node.target is not torch.linalg.vector_norm \
        else ("input", "ord", "dim", "keepdim")
    values = dict(zip(names, node.args, strict=False)) | node.kwargs
    return values.get(names[1], 2), values.get("dim"), bool(values.get("keepdim", False))


def _norm_kind(node: fx.Node, head: fx.GraphModule) -> OpKind:
    p, dim, _keepdim = norm_arguments(node)
    dims = (dim,) if isinstance(dim, int) else tuple(dim or ())
    if p not in (2, 2.0, "fro") or not dims or 0 in dims:
        raise UnsupportedHeadOpError(
            f"the head contains {_describe(node, head)} with p={p!r}, dim={dim!r}; the rule covers the L2 norm "
            "along given dimensions other than the batch dimension 0"
        )
    return OpKind.NORM


def classify_head(head: fx.GraphModule) -> dict[fx.Node, OpKind]:
    """Kind of every head node that depends on the activation maps (the placeholder ``A``).

    Raises :class:`UnsupportedHeadOpError` on the first op without a rule.
    """
    kinds: dict[fx.Node, OpKind] = {}
    depends: set[fx.Node] = set()
    for node in head.graph.nodes:
        if node.op == "placeholder":
            depends.add(node)
            continue
        if node.op == "output" or not any(a in depends for a in node.all_input_nodes):
            continue
        kind = _classify(node, head, depends)
        kinds[node] = kind
        if kind is not OpKind.METADATA:
            depends.add(node)
    return kinds


def is_affine_head(head: fx.GraphModule) -> bool:
    """True when ``F`` is affine in ``A`` (e.g. ResNet's avgpool + fc), so Shapley values are exact
    marginals; False when it has non-linear ops or ops without a rule."""
    try:
        kinds = classify_head(head)
    except UnsupportedHeadOpError:
        return False
    return all(k in (OpKind.AFFINE, OpKind.METADATA) for k in kinds.values())
