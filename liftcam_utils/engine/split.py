"""Cut a CNN at a layer into ``body`` (x -> A) and ``head`` (A -> logits).

The paper writes the model as ``f = F o f^[l]``: ``A = f^[l](x)`` are the activation maps of layer
``l`` and ``F`` (Sec. 3.3) maps them to the logits before the softmax. Every CAM method in this
package only needs ``A`` and ``F``; ``split_model`` derives both from any ``torch.fx``-traceable
network, so VGG16, ResNet50 and EfficientNet-Lite0 share one mechanism.

Layer names are module paths as in ``net.named_modules()`` (``"features.29"``, ``"layer4"``,
``"_blocks.15._swish"``). A module that is called more than once in one forward pass (such as
EfficientNet's ReLU6, applied after the expansion and after the depthwise conv) needs the call
index: ``"_blocks.15._swish@0"`` is the first call, ``"_blocks.15._swish@1"`` the second.
``CamSplit.layers()`` lists every name that can be cut at.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator

import torch
from torch import fx, nn

# Modules traced as single opaque nodes. Subclasses count too: e.g. EfficientNet's
# ``Conv2dStaticSamePadding`` is an ``nn.Conv2d`` with zero padding, computed from sizes that
# symbolic tracing cannot see.
_LEAF_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# Modules whose output is never a stack of activation maps.
_NON_MAP_TYPES = (nn.Linear, nn.Flatten, nn.Dropout, nn.Softmax, nn.LogSoftmax)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own mode afterwards, also on errors."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class CamTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, _LEAF_TYPES) or super().is_leaf_module(module, qualified_name)


def _trace(net: nn.Module) -> fx.Graph:
    """The network's graph, in eval mode. A ``GraphModule`` (e.g. from ``fix_inputs``) is not traced
    again: a copy of its own graph keeps the full module names it was traced with."""
    if isinstance(net, fx.GraphModule):
        graph = fx.Graph()
        graph.output(graph.graph_copy(net.graph, {}))
        return graph
    with eval_mode(net):  # trace in eval mode: train-only branches (drop-connect) are not recorded
        return CamTracer().trace(net)


def _check_single_input(net: nn.Module, graph: fx.Graph) -> None:
    names = [n.target for n in graph.nodes if n.op == "placeholder"]
    if len(names) > 1:
        raise ValueError(
            f"{type(net).__name__} takes {len(names)} inputs ({', '.join(names)}); CAM explains the first with "
            f"the others fixed: cut liftcam_utils.models.fixed_inputs.fix_inputs(net, {', '.join(names[1:])}) instead "
            "(or use LoadedModel.fixed(question))"
        )


def _call_id_to_name(call_id: str, calls_of_module: int) -> str:
    """fx names calls ``path``, ``path@1``, ...; we name them ``path@0``, ``path@1`` when ambiguous."""
    path, _, index = call_id.partition("@")
    if calls_of_module == 1:
        return path
    return f"{path}@{index or 0}"


def _layer_outputs(graph: fx.Graph) -> dict[str, fx.Node]:
    """Map every layer name to the node that carries that module call's output.

    A call's nodes are those whose ``nn_module_stack`` contains its call id; its output is the one
    node among them that is read from outside the call. Calls with several outputs are skipped.
    """
    members: dict[str, set[fx.Node]] = {}
    for node in graph.nodes:
        for call_id in node.meta.get("nn_module_stack") or {}:
            members.setdefault(call_id, set()).add(node)
    calls_per_path: dict[str, int] = {}
    for call_id in members:
        path = call_id.partition("@")[0]
        calls_per_path[path] = calls_per_path.get(path, 0) + 1
    outputs = {}
    for call_id, nodes in members.items():
        leaving = [n for n in nodes if any(user not in nodes for user in n.users)]
        if len(leaving) == 1:
            path = call_id.partition("@")[0]
            outputs[_call_id_to_name(call_id, calls_per_path[path])] = leaving[0]
    return outputs


def _depends_on(node: fx.Node, sources: set[fx.Node]) -> bool:
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current in sources:
            return True
        if current in seen:
            continue
        seen.add(current)
        stack.extend(current.all_input_nodes)
    return False


def _is_batch_size_query(node: fx.Node, sources: set[fx.Node]) -> bool:
    """``t.size(0)`` / ``t.shape[0]`` of some ``t`` in ``sources``: before the cut that is the batch
    size, which ``A`` has too."""
    if node.op == "call_method" and node.target == "size":
        return node.args[0] in sources and (node.args[1:] == (0,) or node.kwargs.get("dim") == 0)
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        shape = node.args[0]
        return isinstance(shape, fx.Node) and (
            (shape.op == "call_function" and shape.target is getattr and shape.args[1] == "shape")
            or (shape.op == "call_method" and shape.target == "size" and len(shape.args) == 1)
        ) and shape.args[0] in sources
    return False


def _graph_module(net: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    module = fx.GraphModule(net, graph, class_name=name)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


class CamSplit:
    """A network cut at one layer: ``body(x) -> A`` and ``head(A) -> logits`` (the paper's F).

    ``head(body(x))`` equals ``net(x)``. Both parts share the network's parameters (no copies).
    ``require_maps=False`` allows cuts at any layer (e.g. a linear one), for cutting heads further.
    """

    def __init__(self, net: nn.Module, layer: str, *, require_maps: bool = True):
        if not isinstance(net, nn.Module):
            raise TypeError(f"split_model expects a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        graph = _trace(net)
        _check_single_input(net, graph)
        self._outputs = _layer_outputs(graph)
        self.layer = self._resolve(layer)
        cut = self._outputs[self.layer]
        if require_maps:
            self._check_maps_layer(cut)
        self.body = _graph_module(net, self._body_graph(graph, cut), "CamBody")
        self.head = _graph_module(net, self._head_graph(graph, cut), "CamHead")

    # -- layer names -------------------------------------------------------------------------
    def layers(self) -> list[str]:
        """Every layer name this network can be cut at, in forward order."""
        return list(self._outputs)

    def _resolve(self, layer: str) -> str:
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a module name (str), got {type(layer).__name__}")
        if layer in self._outputs:
            return layer
        calls = [name for name in self._outputs if name.partition("@")[0] == layer]
        if calls:
            raise ValueError(
                f"layer {layer!r} is called {len(calls)} times in one forward pass; "
                f"say which call: {', '.join(calls)}"
            )
        raise ValueError(
            f"unknown layer {layer!r} for {type(self.net).__name__}. "
            f"Valid layers (module names, '@k' = k-th call): {', '.join(self._outputs)}"
        )

    def _check_maps_layer(self, cut: fx.Node) -> None:
        if cut.op == "call_module":
            module = self.net.get_submodule(cut.target)
            if isinstance(module, _NON_MAP_TYPES):
                raise ValueError(
                    f"layer {self.layer!r} is a {type(module).__name__}, whose output is not a "
                    "stack of activation maps; CAM needs a convolutional layer's (B, C, H, W) output"
                )

    # -- graph surgery -------------------------------------------------------------------------
    @staticmethod
    def _body_graph(graph: fx.Graph, cut: fx.Node) -> fx.Graph:
        body = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in graph.nodes:
            if node.op == "output":
                break
            env[node] = body.node_copy(node, lambda n: env[n])
            if node is cut:
                break
        body.output(env[cut])
        return body

    def _head_graph(self, graph: fx.Graph, cut: fx.Node) -> fx.Graph:
        before_cut: set[fx.Node] = set()
        for node in graph.nodes:
            before_cut.add(node)
            if node is cut:
                break
        inputs = [n for n in graph.nodes if n.op == "placeholder"]
        head = fx.Graph()
        maps = head.placeholder("A")
        after_cut = [n for n in graph.nodes if n not in before_cut]
        if any(self._is_in_place(n) for n in after_cut):
            maps = head.call_method("clone", (maps,))  # in-place ops must never write into the caller's A
        env: dict[fx.Node, fx.Node] = {cut: maps}

        def lookup(node: fx.Node) -> fx.Node:
            if node in env:
                return env[node]
            if node in before_cut:
                if not _depends_on(node, set(inputs)):  # a constant (e.g. a buffer read)
                    env[node] = head.node_copy(node, lookup)
                    return env[node]
                raise ValueError(
                    f"cannot cut at {self.layer!r}: the layers after it also read {node.name!r}, "
                    "computed before the cut (a skip connection around the cut). Cut at the "
                    "output of the enclosing block instead."
                )
            raise AssertionError(f"node {node.name} used before definition")

        for node in graph.nodes:
            if _is_batch_size_query(node, before_cut):
                env[node] = head.call_method("size", (maps, 0))
                continue
            if node in before_cut:
                continue
            if node.op == "output":
                head.output(lookup(node.args[0]))
                break
            env[node] = head.node_copy(node, lookup)
        return head

    def _is_in_place(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return bool(getattr(self.net.get_submodule(node.target), "inplace", False))
        if node.op == "call_method":
            return node.target.endswith("_") and not node.target.startswith("_")
        return node.op == "call_function" and bool(node.kwargs.get("inplace", False))

    # -- convenience -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        first = next(self.net.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def __repr__(self) -> str:
        return f"CamSplit({type(self.net).__name__}, layer={self.layer!r})"


def split_model(net: nn.Module, layer: str) -> CamSplit:
    """Cut ``net`` at ``layer`` into ``.body`` (x -> A) and ``.head`` (A -> logits, the paper's F)."""
    return CamSplit(net, layer)

