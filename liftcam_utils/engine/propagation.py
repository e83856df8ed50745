"""Rule-based backward passes through a head: DeepLIFT-Rescale and LRP-epsilon.

Both are "gradient x input" with modified local derivatives (multipliers), so both run as one
forward pass of an ``fx.Interpreter`` over the head, in which every non-linear op is replaced by
``y = g(z) + m * (z - stop_grad(z))``: forward value ``g(z)``, backward derivative ``m``. One
ordinary backward pass then yields the multipliers of ``A``; contributions are ``A * multiplier``.

DeepLIFT-Rescale (Shrikumar et al. 2017, Sec. 3.3) with the reference ``A = 0`` (LIFT-CAM, Eq. 7):
the head runs on the stacked batch ``[A; 0]``, so every op sees its input ``z`` and reference
input ``z_ref`` at once. Elementwise ``g`` gets ``m = (g(z) - g(z_ref)) / (z - z_ref)`` (the
derivative where ``|z - z_ref|`` is tiny); affine ops keep their own derivative; a max pool whose
reference input is constant in each window routes the difference to the arg-max, which is exact.
Two ops of several inputs get exact rules of the same kind (secant multipliers, so that
``Delta out = sum_i m_i Delta in_i`` holds exactly):

* a product ``c = a b`` of two ``A``-dependent tensors: ``m_a = (b + b_ref) / 2`` and
  ``m_b = (a + a_ref) / 2`` (the Shapley values of the two-player game of ``a`` and ``b``); a quotient
  ``a / b`` is the product of ``a`` and the elementwise non-linearity ``1 / b``;
* an L2 norm ``r = ||v||``: ``m_v = (v + v_ref) / (r + r_ref)``, since
  ``r^2 - r_ref^2 = sum_j (v_j + v_ref_j)(v_j - v_ref_j)``.

A matrix product ``a @ b`` is bilinear like ``a b``: ``Delta (a @ b) = Delta a @ (b + b_ref) / 2 +
(a + a_ref) / 2 @ Delta b`` exactly. A transformer head's ops are compositions of these rules, each
step exact, so their composition is exact too:

* LayerNorm ``y = c r * gamma + beta`` with ``c = z - mean(z)`` and the normaliser ``r = 1 / sqrt(mean(c^2) +
  eps)``: ``c`` and the means are affine, ``c^2`` a product, ``1 / sqrt(.)`` elementwise, and ``c r`` splits as
  ``Delta(c r) = r Delta c + c_ref Delta r`` (exact). The normaliser acts as a gate: each channel's change passes
  scaled by the input's normaliser, and the normaliser's own change counts at the reference's ``c``, which is 0
  for a patch token whose channels are all absent. (The symmetric product rule would credit half of ``Delta y``
  to the normaliser, whose reference value ``1 / sqrt(eps)`` is about 1000 there: two terms of opposite sign and
  that size per channel, cancelling up to float32 rounding of the logit's scale times 1000.) Ali et al. (2022)
  treat LayerNorm's normaliser as a constant for the same reason;
* softmax ``exp(z - s - log S)`` with ``S = sum exp(z - s)``: ``exp`` elementwise, the sum affine, ``log S``
  the secant of the log. The shift ``s`` (the row's largest entry over input and reference, the same for
  both) keeps ``exp`` from overflowing; every multiplier stays bounded (the quotient ``e / S`` as a product
  would multiply by ``1 / S`` of a half whose scores are far below the other's: huge, cancelling terms);
* attention ``softmax(q k^T * scale) v``: two matrix products and a softmax; PyTorch's
  ``nn.MultiheadAttention`` adds its input and output projections (affine).

``detach`` passes multipliers through: it only changes gradients. Then the contributions of all
neurons sum to ``F^c(A) - F^c(0)`` exactly (summation-to-delta, Eq. 4, hence local accuracy, Eq. 8).

LRP-epsilon (Bach et al. 2015) runs on ``A`` alone: relevance passes elementwise non-linearities
unchanged (``m = g(z) / z``), and every parametrised affine layer ``y = W x + b`` redistributes
with ``R_x = x * W^T (R_y / (y + eps * sign(y)))``, i.e. ``m_y`` is scaled by
``y / (y + eps * sign(y))``. Max pooling is winner-takes-all (its ordinary gradient).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .head_ops import OpKind, UnsupportedHeadOpError, classify_head, norm_arguments

_FLAT_TOLERANCE = 1e-6  # in float32; scaled by the machine epsilon for other dtypes (float64: about 2e-15)


def _flat_tolerance(dtype: torch.dtype) -> float:
    """Input differences at most this size count as none (the derivative stands in for the secant)."""
    return _FLAT_TOLERANCE * torch.finfo(dtype).eps / torch.finfo(torch.float32).eps


def _with_multiplier(value: torch.Tensor, z: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
    """Forward ``value``; backward ``d value / d z = multiplier`` (elementwise)."""
    return value.detach() + multiplier.detach() * (z - z.detach())


class _RuleInterpreter(fx.Interpreter):
    """Runs a head, replacing each op's local derivative according to ``classify_head``."""

    def __init__(self, head: fx.GraphModule):
        super().__init__(head)
        self.kinds = classify_head(head)

    def run_node(self, node: fx.Node) -> Any:
        kind = self.kinds.get(node)
        if kind is OpKind.ELEMENTWISE:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            z, rest = args[0], args[1:]

            def g(t: torch.Tensor) -> torch.Tensor:  # clone: in-place ReLUs must not touch z
                return getattr(self, node.op)(node.target, (t.clone(), *rest), kwargs)

            return self.elementwise(z, g)
        if kind is OpKind.AFFINE and node.op == "call_method" and node.target == "detach":
            return self.env[node.args[0]]  # the identity on values; multipliers pass through
        if kind is OpKind.PRODUCT:
            return self.product(node, *self.fetch_args_kwargs_from_env(node)[0])
        if kind is OpKind.NORM:
            return self.norm(node, self.env[node.args[0]])
        if kind is OpKind.LAYER_NORM:
            return self.layer_norm(*_layer_norm_arguments(node, *self.fetch_args_kwargs_from_env(node), self.module))
        if kind is OpKind.SOFTMAX:
            return self.softmax(*_softmax_arguments(node, *self.fetch_args_kwargs_from_env(node), self.module))
        if kind is OpKind.ATTENTION:
            return self.attention_op(node, *self.fetch_args_kwargs_from_env(node))
        out = super().run_node(node)
        if kind is OpKind.MAX_POOL:
            self.max_pool(node, self.fetch_args_kwargs_from_env(node)[0][0])
        elif kind is OpKind.AFFINE and node.op == "call_module":
            out = self.affine_module(self.module.get_submodule(node.target), out)
        return out

    def elementwise(self, z: torch.Tensor, g, value: torch.Tensor | None = None) -> torch.Tensor:
        """``g(z)`` with the rule's multiplier; ``value``: ``g(z)`` where computed more stably than by ``g``."""
        raise NotImplementedError

    def max_pool(self, node: fx.Node, z: torch.Tensor) -> None:
        """Max pooling keeps its gradient; subclasses may check its preconditions."""

    def product(self, node: fx.Node, a, b) -> torch.Tensor:
        raise UnsupportedHeadOpError(f"{type(self).__name__} has no rule for the product {node.name!r}")

    def norm(self, node: fx.Node, v: torch.Tensor) -> torch.Tensor:
        raise UnsupportedHeadOpError(f"{type(self).__name__} has no rule for the norm {node.name!r}")

    def affine_module(self, module: nn.Module, out: torch.Tensor) -> torch.Tensor:
        return out

    def bilinear(self, multiply, a, b) -> torch.Tensor:
        raise UnsupportedHeadOpError(f"{type(self).__name__} has no rule for products of A-dependent tensors")

    def layer_norm(self, z: torch.Tensor, dims: tuple[int, ...], weight, bias, eps: float) -> torch.Tensor:
        """LayerNorm from the rules of its steps (module docstring)."""
        c = z - z.mean(dims, keepdim=True)
        variance = self.bilinear(torch.mul, c, c).mean(dims, keepdim=True)
        y = self.gate(c, self.elementwise(variance + eps, torch.rsqrt))
        if weight is not None:
            y = y * weight
        return y if bias is None else y + bias

    def gate(self, a, g) -> torch.Tensor:
        raise UnsupportedHeadOpError(f"{type(self).__name__} has no rule for LayerNorm")

    def softmax(self, z: torch.Tensor, dim: int) -> torch.Tensor:
        raise UnsupportedHeadOpError(f"{type(self).__name__} has no rule for a softmax")

    def attention(self, q, k, v, scale: float) -> torch.Tensor:
        """``softmax(q k^T * scale) v`` from the rules of its steps (module docstring)."""
        weights = self.softmax(self.bilinear(torch.matmul, q, k.transpose(-2, -1)) * scale, -1)
        return self.bilinear(torch.matmul, weights, v)

    def attention_op(self, node: fx.Node, args, kwargs):
        """An ``ATTENTION`` node: ``F.scaled_dot_product_attention`` or an ``nn.MultiheadAttention`` call."""
        if node.op == "call_function":
            q, k, v = args[:3]
            scale = kwargs.get("scale")
            return self.attention(q, k, v, 1 / math.sqrt(q.shape[-1]) if scale is None else scale)
        module = self.module.get_submodule(node.target)
        query, key, value = args[:3]
        if not module.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        embed, heads = module.embed_dim, module.num_heads
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.split(embed)
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        biases = (None,) * 3 if module.in_proj_bias is None else module.in_proj_bias.split(embed)
        q, k, v = (F.linear(t, w, b).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, heads, T, d)
                   for t, w, b in zip((query, key, value), weights, biases, strict=True))
        out = self.attention(q, k, v, 1 / math.sqrt(q.shape[-1])).transpose(1, 2).flatten(2)
        out = F.linear(out, module.out_proj.weight, module.out_proj.bias)
        return (out if module.batch_first else out.transpose(0, 1)), None


def _layer_norm_arguments(node: fx.Node, args, kwargs, root: nn.Module):
    """``(z, normalised dims, weight, bias, eps)`` of an ``nn.LayerNorm`` call or ``F.layer_norm``."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
    else:
        values = dict(zip(("input", "normalized_shape", "weight", "bias", "eps"), args, strict=False)) | kwargs
        shape, weight, bias, eps = (values["normalized_shape"], values.get("weight"), values.get("bias"),
                                    values.get("eps", 1e-5))
    return args[0], tuple(range(-len(shape), 0)), weight, bias, eps


def _softmax_arguments(node: fx.Node, args, kwargs, root: nn.Module):
    """``(z, dim)`` of an ``nn.Softmax`` call, ``F.softmax`` / ``torch.softmax`` or ``z.softmax(dim)``."""
    if node.op == "call_module":
        return args[0], root.get_submodule(node.target).dim
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dim is None:
        raise UnsupportedHeadOpError(f"softmax {node.name!r} without an explicit dim")
    return args[0], dim


def _derivative(g, z: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        t = z.detach().requires_grad_(True)
        return torch.autograd.grad(g(t).sum(), t)[0]


class _RescaleInterpreter(_RuleInterpreter):
    """DeepLIFT-Rescale on a stacked batch: first half the input, second half the reference."""

    def elementwise(self, z, g, value=None):
        out = g(z) if value is None else value
        half = z.shape[0] // 2
        dz = z[:half] - z[half:]
        dy = out[:half] - out[half:]
        flat = dz.abs() <= _flat_tolerance(dz.dtype)
        m = torch.where(flat, _derivative(g, z[:half]), dy / torch.where(flat, 1.0, dz))
        return _with_multiplier(out, z, torch.cat([m, m]))

    @staticmethod
    def _halves_mean(t) -> torch.Tensor:
        """``(t + t_ref) / 2`` for both halves of a stacked ``A``-dependent tensor (one that requires
        grad here); a constant stays itself."""
        if not isinstance(t, torch.Tensor) or not t.requires_grad:
            return t
        half = t.shape[0] // 2
        mean = (t[:half] + t[half:]).detach() / 2
        return torch.cat([mean, mean])

    def product(self, node, a, b):
        if node.target in (operator.truediv, torch.div, "div"):
            b = self.elementwise(b, torch.reciprocal)  # a quotient's divisor is A-dependent, else it is AFFINE
        matrix = node.target in (operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm")
        return self.bilinear(torch.matmul if matrix else torch.mul, a, b)

    def bilinear(self, multiply, a, b):
        """``multiply(a, b)`` with the secant multipliers of a bilinear map: ``(b + b_ref) / 2`` for ``a``, ``(a +
        a_ref) / 2`` for ``b`` (a constant operand is its own mean)."""
        value = multiply(a, b).detach()
        if isinstance(a, torch.Tensor) and a.requires_grad:
            value = value + multiply(a - a.detach(), self._halves_mean(b))
        if isinstance(b, torch.Tensor) and b.requires_grad:
            value = value + multiply(self._halves_mean(a), b - b.detach())
        return value

    def gate(self, a, g):
        """``a * g`` with ``Delta(a g) = g Delta a + a_ref Delta g`` (exact): ``a`` passes its change scaled by the
        gate's value at the input, and the gate's own change counts at the reference's ``a``."""
        half = a.shape[0] // 2
        gate = g[:half].detach()
        reference = a[half:].detach()
        return (a * g).detach() + torch.cat([gate, gate]) * (a - a.detach()) + torch.cat([reference, reference]) * (
            g - g.detach())

    def softmax(self, z, dim):
        """``exp(z - s - log S)`` with ``S = sum exp(z - s)``: ``exp`` elementwise, the sum affine, ``log S`` the
        secant of the log, each exact. The shift ``s`` (the row's largest entry over input and reference) is the
        same in both halves; the log of the sum is ``logsumexp`` per half, so that a sum that underflows in one
        half (scores far below the other half's) still gives a finite, bounded secant."""
        half = z.shape[0] // 2
        shift = torch.maximum(*z.detach().amax(dim, keepdim=True).split(half))
        shift = torch.cat([shift, shift])
        total = self.elementwise(z - shift, torch.exp).sum(dim, keepdim=True)
        log_total = self.elementwise(total, torch.log, torch.logsumexp(z.detach() - shift, dim, keepdim=True))
        return self.elementwise(z - shift - log_total, torch.exp)

    def norm(self, node, v):
        _, dim, keepdim = norm_arguments(node)
        r = torch.linalg.vector_norm(v, 2, dim, keepdim=True)
        half = v.shape[0] // 2
        total = (r[:half] + r[half:]).detach()
        m = torch.where(total > 0, (v[:half] + v[half:]).detach() / torch.where(total > 0, total, 1.0), 0.0)
        value = torch.linalg.vector_norm(v, 2, dim, keepdim=keepdim).detach()
        return value + ((v - v.detach()) * torch.cat([m, m])).sum(dim, keepdim=keepdim)

    def max_pool(self, node, z):
        reference = z[z.shape[0] // 2:].flatten(2)
        spread = (reference.amax(-1) - reference.amin(-1)).abs().max()
        if spread > _flat_tolerance(reference.dtype) * max(1.0, reference.abs().max().item()):
            raise NotImplementedError(
                f"max pool {node.name!r}: its reference input varies within the image "
                f"(spread {spread.item():.3g}); DeepLIFT's max-pool rule here assumes a reference "
                "that is constant per channel, as it is when the pool acts on A (reference 0)"
            )


class _EpsilonInterpreter(_RuleInterpreter):
    """LRP-epsilon on the input alone."""

    def __init__(self, head: fx.GraphModule, epsilon: float):
        super().__init__(head)
        self.epsilon = epsilon

    def elementwise(self, z, g, value=None):
        out = g(z) if value is None else value
        safe_z = torch.where(z == 0, 1.0, z)
        m = torch.where(z == 0, 0.0, out / safe_z)
        return _with_multiplier(out, z, m)

    def affine_module(self, module, out):
        if not any(True for _ in module.parameters(recurse=False)):
            return out
        stabilised = out + self.epsilon * torch.where(out >= 0, 1.0, -1.0)
        return _with_multiplier(out, out, out / stabilised)


def _contributions(interpreter: _RuleInterpreter, maps: torch.Tensor, target: torch.Tensor,
                   stacked_reference: bool) -> torch.Tensor:
    batch = maps.shape[0]
    with torch.enable_grad():
        a = maps.detach().requires_grad_(True)
        inputs = torch.cat([a, torch.zeros_like(a)]) if stacked_reference else a
        logits = interpreter.run(inputs)
        selected = logits[:batch].gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(selected, a)
    return (a.detach() * grad).flatten(2).sum(-1)


def deeplift_rescale_channel_contributions(head: fx.GraphModule, maps: torch.Tensor,
                                           target: torch.Tensor) -> torch.Tensor:
    """``C_{Delta A_k Delta F^c}`` of Eq. 7: DeepLIFT-Rescale contributions of each map, reference 0.

    Returns shape (B, N); each row sums to ``F^c(A) - F^c(0)`` (Eq. 8).
    """
    return _contributions(_RescaleInterpreter(head), maps, target, stacked_reference=True)


def lrp_epsilon_channel_relevance(head: fx.GraphModule, maps: torch.Tensor, target: torch.Tensor,
                                  epsilon: float) -> torch.Tensor:
    """LRP-epsilon relevance of each activation map for ``F^c``, summed over the map. (B, N)."""
    return _contributions(_EpsilonInterpreter(head, epsilon), maps, target, stacked_reference=False)
