"""A network for scoring forward passes: the same function with each batch norm folded into its convolution.

The metrics (:mod:`liftcam_utils.evaluation.metrics`) run a network on hundreds of perturbed images per image
and method and never need a gradient. In eval mode a ``BatchNorm2d`` right after a convolution is an affine map
per channel, ``y = (conv(x) - mu) * gamma / sqrt(var + eps) + beta``, which folds into that convolution's
weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): one pass over the activations fewer per layer.
EfficientNet-Lite0, whose every convolution has its batch norm, runs its forward pass 1.35 times faster on a 2-core
CPU, ``shapes_vgg`` 1.10 times (``benchmarks/scoring.py``). Only the rounding changes.

:func:`inference_net` builds the folded copy from the network's graph (:func:`~liftcam_utils.engine.split.trace`)
and checks it against the network on a probe batch before using it; where nothing folds, the graph cannot be
traced, or the copy does not give the network's outputs, the network itself is returned.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .split import eval_mode, trace

# the folded copy must give the network's logits to within this share of their largest magnitude (float32 rounding
# of a reordered sum over the network's depth; a wrongly folded layer is off by the order of the logits)
_FOLDING_TOLERANCE = 1e-4


def _fold_batch_norms(net: nn.Module) -> fx.GraphModule | None:
    """A copy of ``net`` (in eval mode) with every batch norm that reads only a convolution's output, called once,
    where that output goes nowhere else, folded into the convolution; None when there is none to fold."""
    graph = trace(net)
    folded = fx.GraphModule(copy.deepcopy(net), graph)
    modules = dict(folded.named_modules())
    calls = Counter(node.target for node in folded.graph.nodes if node.op == "call_module")  # calls per module
    count = 0
    for node in list(folded.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        norm = modules[node.target]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(node.args) == 1
                and isinstance(modules[source.target], nn.Conv2d) and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1 and norm.track_running_stats):
            continue
        fused = fuse_conv_bn_eval(modules[source.target].eval(), norm.eval())
        folded.set_submodule(source.target, fused)
        modules[source.target] = fused
        node.replace_all_uses_with(source)
        folded.graph.erase_node(node)
        count += 1
    if not count:
        return None
    folded.graph.lint()
    folded.delete_all_unused_submodules()
    folded.recompile()
    return folded.eval()


def inference_net(net: nn.Module, probe: torch.Tensor) -> nn.Module:
    """``net`` for forward passes without gradients: a copy with its batch norms folded into their convolutions
    where that gives the network's outputs on ``probe`` (a batch of its inputs, on its device), else ``net``
    itself. The copy holds the weights as they are now: build another after changing them."""
    with eval_mode(net), torch.no_grad():
        try:
            folded = _fold_batch_norms(net)
        except (fx.proxy.TraceError, TypeError, ValueError, RuntimeError, NotImplementedError):
            return net  # not traceable: the network itself
        if folded is None:
            return net
        expected, got = net(probe), folded(probe)
    scale = expected.abs().max().clamp_min(1.0)
    if got.shape != expected.shape or not bool(((got - expected).abs() <= _FOLDING_TOLERANCE * scale).all()):
        return net
    return folded
