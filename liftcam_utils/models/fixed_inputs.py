"""Fix a network's extra inputs, so that CAM sees a function of the image alone.

A VQA model computes ``f(x, q)``; the paper explains it "with fixed question embeddings" (Sec. 4.4).
``fix_inputs(net, q)`` returns ``x -> f(x, q)`` as a ``torch.fx.GraphModule``: the network is
traced, its extra inputs become constants, and every op that depends on them alone (the whole
question encoder: embedding, LSTM, projection) is evaluated once; its results are stored as
buffers. The image side keeps the network's own modules (shared, not copied) and module names, so
``split_model(fixed, layer)`` takes the same layer names as the original network, and the head
``F`` it cuts off reads the question embedding as a constant: ``F(A) = head(A, q)``.

Each fixed input must have batch size 1; it is broadcast to any batch of images, as the model's
own ops broadcast it (e.g. the element-wise product of image and question embeddings).
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from ..engine.split import CamTracer, eval_mode


def _check_fixed(names: list[str], fixed: tuple) -> None:
    if len(fixed) != len(names) - 1:
        raise ValueError(
            f"the network takes {len(names)} inputs ({', '.join(names)}); fix_inputs needs a value for "
            f"every input after the first ({', '.join(names[1:]) or 'none'}), got {len(fixed)}"
        )
    for name, value in zip(names[1:], fixed, strict=True):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"the fixed input {name!r} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() == 0 or value.shape[0] != 1:
            raise ValueError(
                f"the fixed input {name!r} must have batch size 1 (one value broadcast to every image), "
                f"got shape {tuple(value.shape)}; fix one question at a time"
            )


@torch.no_grad()
def fix_inputs(net: nn.Module, *fixed: torch.Tensor) -> fx.GraphModule:
    """``x -> net(x, *fixed)`` with everything that depends on ``fixed`` alone computed once (eval mode)."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"fix_inputs expects a torch.nn.Module, got {type(net).__name__}")
    with eval_mode(net):
        graph = CamTracer().trace(net)
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        _check_fixed([n.target for n in placeholders], fixed)
        image, extra = placeholders[0], placeholders[1:]
        interpreter = fx.Interpreter(fx.GraphModule(net, graph))
        interpreter.env = constants = dict(zip(extra, fixed, strict=True))
        on_image = {image}
        for node in graph.nodes:  # in topological order: a node's inputs are classified before it
            inputs = node.all_input_nodes
            if any(i in on_image for i in inputs):
                on_image.add(node)
            elif node.op != "output" and any(i in constants for i in inputs):
                constants[node] = interpreter.run_node(node)

    folded = fx.Graph()  # a copy owned by no module yet, so that new buffers can be referenced
    copies: dict[fx.Node, fx.Node] = {}
    folded.output(folded.graph_copy(graph, copies))
    constants = {copies[node]: value for node, value in constants.items()}
    buffers: dict[str, torch.Tensor] = {}
    for node, value in constants.items():
        readers = [user for user in node.users if user not in constants]
        if not readers:
            continue
        if isinstance(value, torch.Tensor):
            name = f"_fixed_input_{len(buffers)}"
            buffers[name] = value.detach()
            with folded.inserting_before(readers[0]):
                replacement = folded.get_attr(name)
            node.replace_all_uses_with(replacement, delete_user_cb=lambda user: user not in constants)
        else:  # a Python value, e.g. a size: written into the graph as a literal
            def literal(n: fx.Node, node=node, value=value):
                return value if n is node else n

            for reader in readers:
                reader.args = fx.node.map_arg(reader.args, literal)
                reader.kwargs = fx.node.map_arg(reader.kwargs, literal)
    root = {n.target: net.get_submodule(n.target) for n in folded.nodes if n.op == "call_module"}
    root.update({n.target: buffers[n.target] if n.target in buffers else operator.attrgetter(n.target)(net)
                 for n in folded.nodes if n.op == "get_attr"})
    fixed_net = fx.GraphModule(root, folded, class_name=f"Fixed{type(net).__name__}")
    fixed_net.graph.eliminate_dead_code()
    for node in extra:
        fixed_net.graph.erase_node(copies[node])
    fixed_net.delete_all_unused_submodules()
    fixed_net.recompile()
    fixed_net.train(net.training)
    return fixed_net

