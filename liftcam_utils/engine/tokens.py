"""A Vision Transformer's patch tokens as CAM's activation maps ``A``.

A transformer block outputs tokens ``(B, T, D)``: ``prefix`` tokens first (the class token, a
distillation or register tokens), then one token per patch of the ``h x w`` patch grid, row by row.
Cut there, the patch tokens are the activation maps ``A`` of shape ``(B, D, h, w)``: channel ``k`` is
embedding dimension ``k`` of every patch token, and the paper's game (Sec. 3.2-3.3) is unchanged: a
coalition keeps channel ``k`` of every patch token or sets it to the baseline 0 in every patch token.

The prefix tokens at the cut are not players. They are inputs of the head held at their values for
the image, as the paper holds the question embedding of a VQA model fixed (Sec. 4.4): ``F(A) =
head(A; prefix)``, and so are the values computed before the cut that the head reads besides the
tokens (the residual stream around a cut inside a block, e.g. at ``ln_1``). :class:`TokenLayout`
describes where the patch tokens are; :func:`token_layout` reads it from torchvision's and timm's
``VisionTransformer``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn


@dataclass(frozen=True)
class TokenLayout:
    """``prefix`` tokens before the patch tokens of a ``grid`` = (h, w) patch grid, for inputs of
    ``image_size`` = (H, W)."""

    prefix: int
    grid: tuple[int, int]
    image_size: tuple[int, int]

    @property
    def tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def token_layout(net: nn.Module) -> TokenLayout | None:
    """The token layout of torchvision's or timm's ``VisionTransformer`` (timm's only when its image size
    is fixed: ``dynamic_img_size=False``), or None for any other network."""
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(net, VisionTransformer):
        side = net.image_size // net.patch_size
        return TokenLayout(prefix=1, grid=(side, side), image_size=(net.image_size, net.image_size))
    patch_embed = getattr(net, "patch_embed", None)
    if (type(net).__name__ == "VisionTransformer" and hasattr(net, "num_prefix_tokens")
            and hasattr(patch_embed, "grid_size") and not getattr(net, "dynamic_img_size", False)):
        return TokenLayout(prefix=int(net.num_prefix_tokens), grid=_pair(patch_embed.grid_size),
                           image_size=_pair(patch_embed.img_size))
    return None


def tokens_to_maps(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens (B, prefix + h w, D) -> activation maps (B, D, h, w)."""
    batch, count, dims = tokens.shape
    if count != prefix + grid[0] * grid[1]:
        raise ValueError(f"the cut outputs {count} tokens, but the model's layout has {prefix} prefix tokens and a "
                         f"{grid[0]} x {grid[1]} patch grid ({prefix + grid[0] * grid[1]} tokens); give images of "
                         "the size the model was built for")
    return tokens[:, prefix:].transpose(1, 2).reshape(batch, dims, *grid)


def prefix_tokens(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """The prefix tokens (B, prefix, D) of tokens (B, T, D)."""
    return tokens[:, :prefix]


def tile_to_batch(value: torch.Tensor, batch: int) -> torch.Tensor:
    """A held input of ``n`` images, for a head batch of ``batch`` rows: ``n = 1`` broadcasts to every row;
    otherwise ``batch`` must be a multiple of ``n`` and the rows repeat image by image in blocks
    (``[A; 0]`` of DeepLIFT's stacked reference gets ``[held; held]``)."""
    count = value.shape[0]
    if count == batch:
        return value
    if count == 1:
        return value.expand(batch, *value.shape[1:])
    if batch % count:
        raise ValueError(f"the head holds inputs of {count} images fixed, but got a batch of {batch} maps; give "
                         f"a multiple of {count} (the same images, in the same order), or take one image's head "
                         "with split.for_image(index)")
    return value.repeat(batch // count, *[1] * (value.dim() - 1))


# Modules that act on each token alone (along the last dimension), so that rows of their output come from the same
# rows of their input.
_TOKENWISE_MODULES = (nn.LayerNorm, nn.Linear, nn.Dropout, nn.Identity, nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh)
_TOKENWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, torch.add, torch.mul, F.gelu, F.dropout}
_ROW_TOLERANCE = 1e-5


def _read_row(node: fx.Node) -> int | None:
    """``k`` where ``node`` is ``tokens[:, k]`` (the class token of a classifier head), else None."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    index = node.args[1]
    if (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None) and isinstance(index[1], int)
            and not isinstance(index[1], bool)):
        return index[1]
    return None


def compute_read_rows_only(head: fx.GraphModule, probe: torch.Tensor) -> fx.GraphModule:
    """``head`` computing only the token row it reads, where it reads one (``tokens[:, 0]``: the class token).

    The row selection moves up through the ops that act on each token alone (LayerNorm, linear layers, GELU,
    dropout, residual adds) to the last attention, ``nn.MultiheadAttention``, whose query it then takes alone (its
    keys and values stay every token): the last block of a ViT classifier costs its key and value projections
    and one row of everything else, several times less than the full block. The result must give ``head``'s
    logits on ``probe`` (maps) and on zero maps, to float32 rounding; otherwise ``head`` is returned as it is.
    """
    graph = fx.Graph()
    graph.output(graph.graph_copy(head.graph, {}))
    selects = [(node, row) for node in graph.nodes if (row := _read_row(node)) is not None]
    if len(selects) != 1:
        return head
    select, row = selects[0]
    sliced: dict[fx.Node, fx.Node] = {}

    def rows_of(node: fx.Node) -> fx.Node:
        """A node computing ``node[:, row:row + 1]``, built from the rows of its inputs where that is exact."""
        if node in sliced:
            return sliced[node]
        module = head.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, _TOKENWISE_MODULES) or (node.op == "call_function" and node.target
                                                      in _TOKENWISE_FUNCTIONS):
            args = fx.node.map_arg(node.args, lambda a: a if a.op == "get_attr" else rows_of(a))
            with graph.inserting_before(select):
                new = graph.create_node(node.op, node.target, args, node.kwargs)
        elif (node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0
              and node.args[0].op == "call_module"
              and isinstance(head.get_submodule(node.args[0].target), nn.MultiheadAttention)
              and head.get_submodule(node.args[0].target).batch_first):
            attention = node.args[0]
            query, *rest = attention.args
            with graph.inserting_before(select):
                call = graph.create_node("call_module", attention.target, (rows_of(query), *rest), attention.kwargs)
                new = graph.call_function(operator.getitem, (call, 0))
        else:
            with graph.inserting_before(select):
                new = graph.call_function(operator.getitem, (node, (slice(None), slice(row, row + 1))))
        sliced[node] = new
        return new

    with graph.inserting_before(select):
        replacement = graph.call_function(operator.getitem, (rows_of(select.args[0]), (slice(None), 0)))
    select.replace_all_uses_with(replacement)
    graph.erase_node(select)
    pruned = fx.GraphModule(head, graph, class_name=type(head).__name__)
    pruned.graph.eliminate_dead_code()
    pruned.recompile()
    with torch.no_grad():
        for maps in (probe, torch.zeros_like(probe)):
            expected = head(maps)
            try:
                got = pruned(maps)
            except (RuntimeError, IndexError, ValueError):  # a row taken of a tensor that has no token rows
                return head
            if got.shape != expected.shape or (got - expected).abs().max() > _ROW_TOLERANCE * (
                    1 + expected.abs().max()):
                return head
    return pruned
