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

A Vision Transformer cut where it outputs tokens (B, T, D) (torchvision's and timm's, whose token layout
:func:`~liftcam_utils.engine.tokens.token_layout` knows) gives its patch tokens as the maps ``A``
(B, D, h, w) (:mod:`liftcam_utils.engine.tokens`). Its head also reads the prefix tokens at the cut, and
any value computed before the cut that the layers after it read (the residual stream around a cut
inside a block): these are held fixed at the image's values. ``split.encode(x)`` gives the maps and the
held values, ``split.bind(held)`` the split whose ``head`` is ``F(A)`` for those images, and
``split.for_image(i)`` the head of image ``i`` alone.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import operator
from collections.abc import Iterator

import torch
from torch import fx, nn

from .tokens import TokenLayout, compute_read_rows_only, prefix_tokens, tile_to_batch, token_layout, tokens_to_maps

# Modules traced as single opaque nodes. Subclasses count too: e.g. EfficientNet's
# ``Conv2dStaticSamePadding`` is an ``nn.Conv2d`` with zero padding, computed from sizes that
# symbolic tracing cannot see.
_LEAF_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# What fx adds to check an input traced at its default value (``_assert_is_none``, ``_assert(eq(...))``).
_SPECIALISATION_CHECKS = (fx._symbolic_trace._assert_is_none, torch._assert, operator.eq)

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


def trace(net: nn.Module) -> fx.Graph:
    """The network's graph, in eval mode. A ``GraphModule`` (e.g. from ``fix_inputs``) is not traced
    again: a copy of its own graph keeps the full module names it was traced with."""
    if isinstance(net, fx.GraphModule):
        graph = fx.Graph()
        graph.output(graph.graph_copy(net.graph, {}))
        return graph
    later = list(inspect.signature(net.forward).parameters.items())[1:]
    optional = {name: value.default for name, value in later if value.default is not inspect.Parameter.empty}
    with eval_mode(net):  # trace in eval mode: train-only branches (drop-connect) are not recorded
        graph = CamTracer().trace(net, concrete_args=optional or None)
    _drop_optional_inputs(graph)
    return graph


def _drop_optional_inputs(graph: fx.Graph) -> None:
    """Remove the inputs after the first that took their default values while tracing (timm's ``attn_mask=None``):
    placeholders read only by the checks that fx adds for such a value."""
    for placeholder in [n for n in graph.nodes if n.op == "placeholder"][1:]:
        checks, stack = [], [placeholder]
        while stack:
            node = stack.pop()
            for user in node.users:
                if user not in checks:
                    checks.append(user)
                    stack.append(user)
        asserting = all(n.op == "call_function" and n.target in _SPECIALISATION_CHECKS for n in checks)
        if placeholder.args and asserting:
            for node in sorted(checks, key=lambda n: -list(graph.nodes).index(n)):
                graph.erase_node(node)
            graph.erase_node(placeholder)


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

    A transformer cut at its tokens (``tokens`` is then its :class:`~liftcam_utils.engine.tokens.TokenLayout`)
    holds inputs of the head fixed (module docstring): its ``head`` exists once they are bound
    (:meth:`bind`, :meth:`for_image`; :func:`~liftcam_utils.engine.cam_input.prepare` binds them).
    """

    def __init__(self, net: nn.Module, layer: str, *, require_maps: bool = True):
        if not isinstance(net, nn.Module):
            raise TypeError(f"split_model expects a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        graph = trace(net)
        _check_single_input(net, graph)
        self._outputs = _layer_outputs(graph)
        self.layer = self._resolve(layer)
        cut = self._outputs[self.layer]
        self.tokens, self._channels = self._token_cut(graph, cut)
        if require_maps and self.tokens is None:
            self._check_maps_layer(cut)
        held = self._held_nodes(graph, cut)
        self.body = _graph_module(net, self._body_graph(graph, cut), "CamBody")
        self._encoder = _graph_module(net, self._body_graph(graph, cut, held), "CamEncoder")
        # ``(A, *held) -> logits``: the head with its held inputs as arguments (the same as ``head`` for other cuts)
        self.open_head = _graph_module(net, self._head_graph(graph, cut, held), "CamHead")
        self._held_count = len(held) + (self.tokens is not None and self.tokens.prefix > 0)
        self.held: tuple[torch.Tensor, ...] = ()
        self._bound_head: fx.GraphModule | None = None

    # -- the head and its held inputs ---------------------------------------------------------
    @property
    def head(self) -> fx.GraphModule:
        """``F``: the activation maps (B, N, h, w) -> logits (B, K). For a cut that holds inputs fixed, the head
        of the images bound by :meth:`bind` (a batch of maps of those images, or of a multiple of them)."""
        if self._held_count == 0:
            return self.open_head
        if self._bound_head is None:
            raise ValueError(
                f"the head after {self.layer!r} also reads {self._held_count} input(s) held fixed per image (the "
                "prefix tokens at the cut, the residual stream around it): bind them first, "
                "maps, held = split.encode(x); split.bind(held).head(maps) "
                "(liftcam_utils.engine.cam_input.prepare does this)")
        return self._bound_head

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(A, held)``: the activation maps of ``x`` and the head's inputs held fixed for these images
        (empty where the head reads nothing but ``A``)."""
        if self._held_count == 0:
            return self.body(x), ()
        maps, *held = self._encoder(x)
        return maps, tuple(held)

    def bind(self, held: tuple[torch.Tensor, ...]) -> CamSplit:
        """This split with its head's held inputs fixed at ``held`` (from :meth:`encode`): its ``head`` takes maps
        of those images (or of one image, broadcast, when ``held`` has one row). Shares every module."""
        held = tuple(held)
        if len(held) != self._held_count:
            raise ValueError(f"the head after {self.layer!r} holds {self._held_count} input(s) fixed, got "
                             f"{len(held)}; pass the second value of split.encode(x)")
        if not held:
            return self
        if len({value.shape[0] for value in held}) != 1:
            raise ValueError(f"held inputs of different batch sizes: {[tuple(v.shape) for v in held]}")
        bound = copy.copy(self)
        bound.held = tuple(value.detach() for value in held)
        head = _bind_placeholders(self.open_head, bound.held)
        if self.tokens is not None:  # a classifier reading the class token alone: compute that row alone
            probe = torch.randn(held[0].shape[0], self._channels, *self.tokens.grid,
                                generator=torch.Generator().manual_seed(0)).to(held[0])
            head = compute_read_rows_only(head, probe)
        bound._bound_head = head
        return bound

    def for_image(self, index: int) -> CamSplit:
        """The split bound to image ``index`` of the bound images alone (its head broadcasts that image's held
        inputs to any batch of its maps); this split itself where the head holds nothing fixed."""
        if self._held_count == 0:
            return self
        if not self.held:
            raise ValueError("for_image needs a bound split (split.bind(held))")
        return self.bind(tuple(value[index:index + 1] for value in self.held))

    def _token_cut(self, graph: fx.Graph, cut: fx.Node) -> tuple[TokenLayout | None, int | None]:
        """The network's token layout and the tokens' dimension D where the cut outputs its tokens (B, T, D), else
        ``(None, None)``. The output's shape comes from one run up to the cut on a zero image of the model's input
        size."""
        layout = token_layout(self.net)
        if layout is None:
            return None, None
        channels = next(m.in_channels for m in self.net.modules() if isinstance(m, nn.Conv2d))
        probe_net = _graph_module(self.net, _graph_up_to(graph, cut), "CamProbe")
        parameter = next(self.net.parameters())
        with torch.no_grad(), eval_mode(self.net):
            probe = probe_net(torch.zeros(1, channels, *layout.image_size, device=parameter.device,
                                          dtype=parameter.dtype))
        if isinstance(probe, torch.Tensor) and probe.dim() == 3 and probe.shape[1] == layout.tokens:
            return layout, probe.shape[2]
        return None, None

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
    def _body_graph(self, graph: fx.Graph, cut: fx.Node, held: list[fx.Node] | None = None) -> fx.Graph:
        """The graph up to the cut. With ``held`` (a token cut's encoder): it outputs the maps, the prefix tokens
        and the ``held`` values; else the maps alone (for a token cut, the patch tokens as maps)."""
        if self.tokens is None:
            return _graph_up_to(graph, cut)
        env: dict[fx.Node, fx.Node] = {}
        body = _graph_up_to(graph, cut, env)
        tokens = env[cut]
        body.erase_node(next(iter(reversed(body.nodes))))  # its output, the tokens: the maps instead
        maps = body.call_function(tokens_to_maps, (tokens, self.tokens.prefix, self.tokens.grid))
        if held is None:
            body.output(maps)
            return body
        prefix = [body.call_function(prefix_tokens, (tokens, self.tokens.prefix))] if self.tokens.prefix else []
        body.output((maps, *prefix, *(env[node] for node in held)))
        return body

    def _held_nodes(self, graph: fx.Graph, cut: fx.Node) -> list[fx.Node]:
        """Values computed before a token cut that the layers after it read (e.g. the residual stream around a cut
        at ``ln_1``), held fixed; empty for other cuts, whose head must read nothing from before the cut."""
        if self.tokens is None:
            return []
        before_cut = _nodes_up_to(graph, cut)
        inputs = {n for n in graph.nodes if n.op == "placeholder"}
        held: list[fx.Node] = []
        for node in graph.nodes:
            if node in before_cut or node.op == "output":
                continue
            for source in node.all_input_nodes:
                if (source in before_cut and source is not cut and source not in held
                        and not _is_batch_size_query(source, before_cut) and _depends_on(source, inputs)):
                    held.append(source)
        return held

    def _head_graph(self, graph: fx.Graph, cut: fx.Node, held: list[fx.Node]) -> fx.Graph:
        before_cut = _nodes_up_to(graph, cut)
        inputs = [n for n in graph.nodes if n.op == "placeholder"]
        head = fx.Graph()
        maps = head.placeholder("A")
        fixed = [head.placeholder(f"held_{i}") for i in range(len(held) + bool(self.tokens and self.tokens.prefix))]
        after_cut = [n for n in graph.nodes if n not in before_cut]
        if any(self._is_in_place(n) for n in after_cut):
            maps = head.call_method("clone", (maps,))  # in-place ops must never write into the caller's A
        rows = head.call_method("size", (maps, 0))
        fixed = [head.call_function(tile_to_batch, (value, rows)) for value in fixed]
        if self.tokens is None:
            env: dict[fx.Node, fx.Node] = {cut: maps}
        else:  # tokens = [prefix tokens, the patch tokens of A]; then the values held around the cut
            patches = head.call_method("transpose", (head.call_method("flatten", (maps, 2)), 1, 2))
            prefix = fixed[:1] if self.tokens.prefix else []
            env = {cut: head.call_function(torch.cat, ([*prefix, patches], 1))}
            env.update(zip(held, fixed[len(prefix):], strict=True))

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


def _graph_up_to(graph: fx.Graph, cut: fx.Node, env: dict[fx.Node, fx.Node] | None = None) -> fx.Graph:
    """A copy of ``graph`` up to ``cut``, whose output is ``cut``'s; ``env`` (if given) maps each node to its copy."""
    env = {} if env is None else env
    body = fx.Graph()
    for node in graph.nodes:
        if node.op == "output":
            break
        env[node] = body.node_copy(node, lambda n: env[n])
        if node is cut:
            break
    body.output(env[cut])
    return body


def _nodes_up_to(graph: fx.Graph, cut: fx.Node) -> set[fx.Node]:
    """The nodes of ``graph`` up to and including ``cut``, in the order they run."""
    nodes: set[fx.Node] = set()
    for node in graph.nodes:
        nodes.add(node)
        if node is cut:
            break
    return nodes


def _bind_placeholders(head: fx.GraphModule, held: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """``head`` with its placeholders after ``A`` replaced by buffers holding ``held`` (same modules, no copies)."""
    graph = fx.Graph()
    copies: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(head.graph, copies))
    placeholders = [copies[n] for n in head.graph.nodes if n.op == "placeholder"][1:]
    root: dict[str, object] = {n.target: head.get_submodule(n.target) for n in graph.nodes if n.op == "call_module"}
    root.update({n.target: operator.attrgetter(n.target)(head) for n in graph.nodes if n.op == "get_attr"})
    for i, (node, value) in enumerate(zip(placeholders, held, strict=True)):
        root[f"_held_{i}"] = value
        with graph.inserting_before(node):
            buffer = graph.get_attr(f"_held_{i}")
        node.replace_all_uses_with(buffer)
        graph.erase_node(node)
    bound = fx.GraphModule(root, graph, class_name="CamHead")
    bound.train(head.training)
    return bound


def split_model(net: nn.Module, layer: str) -> CamSplit:
    """Cut ``net`` at ``layer`` into ``.body`` (x -> A) and ``.head`` (A -> logits, the paper's F)."""
    return CamSplit(net, layer)

