"""Coefficient rules against their papers' equations, on tiny heads computed by hand.

Every expected value here comes from hand arithmetic or from a short, independent formula written
in this file (numpy for the heads' derivatives, explicit subset / ordering loops for the Shapley
values, an explicit interpolate + min-max loop for Score-CAM). Nothing is computed with the
library's own helpers; the model's plain ``nn.Sequential`` head (not the fx-split head) gives the
channel game's values.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import liftcam_utils as lu
from liftcam_utils.engine.cam_input import CamInput
from liftcam_utils.methods.eigen import eigencam
from liftcam_utils.methods.gradient import (
    gradcam,
    gradcam_plus_plus,
    hirescam,
    layercam,
    shapley_taylor_weights,
    shapleycam,
    xgradcam,
)
from liftcam_utils.methods.lime import limecam
from liftcam_utils.methods.perturbation import ablationcam, scorecam
from liftcam_utils.methods.shapley import exact_shap, kernelshapcam, shapcam

# ------------------------------------------------------------------------------------------------
# Tiny models with hand-set weights
# ------------------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """``features`` (1x1 conv + ReLU, cut at ``"features.1"``) followed by ``head`` (the paper's F)."""

    def __init__(self, n_maps: int, head: nn.Module):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, n_maps, 1), nn.ReLU())
        self.head = head

    def forward(self, x):
        return self.head(self.features(x))


def _set(layer: nn.Module, weight, bias) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).reshape(layer.weight.shape))
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def linear_head(w, b) -> nn.Sequential:
    """F(A) = W avgpool(A) + b."""
    w = np.asarray(w, dtype=np.float64)
    fc = nn.Linear(w.shape[1], w.shape[0])
    _set(fc, w, b)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


def mlp_head(w1, b1, w2, b2) -> nn.Sequential:
    """F(A) = W2 ReLU(W1 avgpool(A) + b1) + b2."""
    w1, w2 = np.asarray(w1, dtype=np.float64), np.asarray(w2, dtype=np.float64)
    fc1, fc2 = nn.Linear(w1.shape[1], w1.shape[0]), nn.Linear(w2.shape[1], w2.shape[0])
    _set(fc1, w1, b1)
    _set(fc2, w2, b2)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc1, nn.ReLU(), fc2)


def conv_relu_head(v, d, w, b) -> nn.Sequential:
    """F(A) = W avgpool(ReLU(V * A + d)) + b with a 1x1 conv V: the gradient varies over pixels."""
    v, w = np.asarray(v, dtype=np.float64), np.asarray(w, dtype=np.float64)
    conv, fc = nn.Conv2d(v.shape[1], v.shape[0], 1), nn.Linear(w.shape[1], w.shape[0])
    _set(conv, v, d)
    _set(fc, w, b)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


class Square(nn.Module):
    """z -> z * z, elementwise: makes a head exactly quadratic in A."""

    def forward(self, z):
        return z * z


def square_head(v, d, w, b) -> nn.Sequential:
    """F(A) = W avgpool((V * A + d)^2) + b with a 1x1 conv V: quadratic in A, gradient varies over pixels."""
    v, w = np.asarray(v, dtype=np.float64), np.asarray(w, dtype=np.float64)
    conv, fc = nn.Conv2d(v.shape[1], v.shape[0], 1), nn.Linear(w.shape[1], w.shape[0])
    _set(conv, v, d)
    _set(fc, w, b)
    return nn.Sequential(conv, Square(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


def pooled_square_head(v, d, w, b) -> nn.Sequential:
    """F(A) = W (V avgpool(A) + d)^2 + b: quadratic in A, gradient constant over each map."""
    v, w = np.asarray(v, dtype=np.float64), np.asarray(w, dtype=np.float64)
    fc1, fc2 = nn.Linear(v.shape[1], v.shape[0]), nn.Linear(w.shape[1], w.shape[0])
    _set(fc1, v, d)
    _set(fc2, w, b)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc1, Square(), fc2)


def flatten_linear_head(w, b) -> nn.Sequential:
    """F(A) = W flatten(A) + b (VGG-style, no pooling): linear, with one weight per pixel of each map."""
    w = np.asarray(w, dtype=np.float64)
    fc = nn.Linear(w.shape[1], w.shape[0])
    _set(fc, w, b)
    return nn.Sequential(nn.Flatten(), fc)


def random_mlp_head(n: int, hidden: int, classes: int, seed: int) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return mlp_head(rng.normal(size=(hidden, n)), rng.normal(size=hidden),
                    rng.normal(size=(classes, hidden)), rng.normal(size=classes))


def make_input(head: nn.Module, maps, target, x=None) -> tuple[CamInput, TinyNet]:
    """A CamInput with hand-chosen maps A (x only matters to Score-CAM)."""
    maps = torch.as_tensor(maps, dtype=torch.float32)
    net = TinyNet(maps.shape[1], head).eval()
    split = lu.split_model(net, "features.1")
    if x is None:
        x = torch.zeros(maps.shape[0], 3, 8, 8)
    target = torch.as_tensor(target, dtype=torch.long).reshape(maps.shape[0])
    return CamInput(split, x, maps, target), net


# ------------------------------------------------------------------------------------------------
# Independent references: the channel game, exhaustive Shapley values, marginal contributions
# ------------------------------------------------------------------------------------------------


def game_values(head: nn.Module, maps_b: torch.Tensor, c: int, subsets) -> torch.Tensor:
    """v(S) = F^c(A with every map outside S set to 0), with the model's own head module."""
    n = maps_b.shape[0]
    masks = torch.tensor([[1.0 if k in s else 0.0 for k in range(n)] for s in subsets])
    with torch.no_grad():
        logits = head(maps_b[None] * masks[:, :, None, None])
    return logits[:, c].double()


def shapley_reference(head: nn.Module, maps_b: torch.Tensor, c: int) -> torch.Tensor:
    """Eq. 6 by brute force: phi_k = sum_{S not containing k} |S|!(N-|S|-1)!/N! (v(S+k) - v(S))."""
    n = maps_b.shape[0]
    subsets = [frozenset(s) for r in range(n + 1) for s in itertools.combinations(range(n), r)]
    value = dict(zip(subsets, game_values(head, maps_b, c, subsets).tolist(), strict=True))
    phi = torch.zeros(n, dtype=torch.float64)
    for k in range(n):
        for s in subsets:
            if k not in s:
                weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                phi[k] += weight * (value[s | {k}] - value[s])
    return phi


def marginal_contributions(head: nn.Module, maps_b: torch.Tensor, c: int, ordering) -> torch.Tensor:
    """Contribution of each channel when the channels join one by one in ``ordering``."""
    ordering = [int(k) for k in ordering]
    prefixes = [frozenset(ordering[:i]) for i in range(len(ordering) + 1)]
    values = game_values(head, maps_b, c, prefixes)
    phi = torch.zeros(len(ordering), dtype=torch.float64)
    for i, k in enumerate(ordering):
        phi[k] = values[i + 1] - values[i]
    return phi


def full_minus_empty(head: nn.Module, maps_b: torch.Tensor, c: int) -> float:
    n = maps_b.shape[0]
    empty, full = game_values(head, maps_b, c, [frozenset(), frozenset(range(n))]).tolist()
    return full - empty


def positive_maps(batch: int, n: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, size, size, generator=generator) * 2


# ------------------------------------------------------------------------------------------------
# Numpy derivatives of the conv-ReLU head (no autograd)
# ------------------------------------------------------------------------------------------------


def conv_relu_head_gradient(v, d, w, c, maps_b) -> np.ndarray:
    """dF^c/dA_{k,ij} = (1/hw) sum_m W[c,m] [z_{m,ij} > 0] V[m,k], z = V A + d: shape (N, h, w)."""
    a = np.asarray(maps_b, dtype=np.float64)
    z = np.einsum("mn,nij->mij", v, a) + np.asarray(d)[:, None, None]
    assert np.abs(z).min() > 1e-3  # away from the ReLU's kink: the derivative is unambiguous
    h, wd = a.shape[1:]
    return np.einsum("m,mn,mij->nij", np.asarray(w)[c], v, (z > 0).astype(np.float64)) / (h * wd)


def square_head_derivatives(v, d, w, c, maps_b) -> tuple[np.ndarray, np.ndarray]:
    """For F^c = (1/hw) sum_m,ij W[c,m] z_m,ij^2, z = V A + d: the gradient g = (2/hw) sum_m W[c,m] V[m,k] z_m,ij
    and, as the Hessian is (2/hw) sum_m W[c,m] V[m,k] V[m,l] within a pixel and 0 across pixels,
    H A = (2/hw) sum_m W[c,m] V[m,k] (V A)_m,ij. Both (N, h, w)."""
    a = np.asarray(maps_b, dtype=np.float64)
    va = np.einsum("mn,nij->mij", v, a)
    z = va + np.asarray(d)[:, None, None]
    scale = 2 / (a.shape[1] * a.shape[2])
    coupling = np.asarray(w)[c][:, None] * np.asarray(v)  # W[c,m] V[m,k]
    return (scale * np.einsum("mn,mij->nij", coupling, z), scale * np.einsum("mn,mij->nij", coupling, va))


def _conv_relu_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    n, m, k = 3, 4, 2
    v, d = rng.normal(size=(m, n)), rng.normal(size=m) * 0.5
    w, b = rng.normal(size=(k, m)), rng.normal(size=k)
    maps = rng.uniform(0, 2, size=(2, n, 3, 3))
    maps[1, 2] = 0.0  # an all-zero map in image 1
    target = [1, 0]
    return (v, d, w, b), maps, target


# ------------------------------------------------------------------------------------------------
# 1. Grad-CAM
# ------------------------------------------------------------------------------------------------


def test_gradcam_linear_head_is_fc_weight_over_map_area():
    """Selvaraju Eq. 1 on F = W avgpool(A) + b: dF^c/dA_k,ij = W[c,k]/(hw), so alpha = W[c]/(hw)."""
    w = [[6.0, -12.0, 3.0], [1.0, 2.0, 3.0]]
    maps = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).reshape(2, 3, 2, 3)  # h*w = 6
    inputs, _ = make_input(linear_head(w, [0.5, -0.5]), maps, [0, 1])
    expected = torch.tensor([[1.0, -2.0, 0.5], [1 / 6, 2 / 6, 3 / 6]])
    torch.testing.assert_close(gradcam(inputs), expected)


def test_gradcam_non_linear_head_matches_manual_derivative():
    (v, d, w, b), maps, target = _conv_relu_case()
    inputs, _ = make_input(conv_relu_head(v, d, w, b), maps, target)
    expected = np.stack([conv_relu_head_gradient(v, d, w, c, maps[i]).mean(axis=(1, 2))
                         for i, c in enumerate(target)])
    torch.testing.assert_close(gradcam(inputs), torch.tensor(expected, dtype=torch.float32),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 2. Grad-CAM++
# ------------------------------------------------------------------------------------------------


def test_gradcam_plus_plus_by_hand_on_linear_head():
    """Eq. 19: a_ij = g^2 / (2 g^2 + S g^3) with S = sum_ab A_ab; Eq. 10: alpha = sum_ij a_ij ReLU(g).

    g = W[0,k] / 4 on 2x2 maps = (1, -2, 0.5, 0, 1).
      k=0: S=10, a = 1/12 per pixel, alpha = 4/12 = 1/3
      k=1: g < 0, so ReLU(g) = 0: alpha = 0
      k=2: S=4, a = 0.25 / (0.5 + 0.5) = 0.25, alpha = 4 * 0.25 * 0.5 = 0.5
      k=3: g = 0, denominator 0: alpha = 0 (not NaN)
      k=4: S=-2, g=1, denominator 2 - 2 = 0: alpha = 0 (not inf or NaN)
    """
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],
                          [[1.0, 0.0], [0.0, 1.0]],
                          [[0.0, 1.0], [1.0, 2.0]],
                          [[1.0, 1.0], [1.0, 1.0]],
                          [[-1.0, 0.0], [0.0, -1.0]]]])
    w = [[4.0, -8.0, 2.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0, 1.0]]
    inputs, _ = make_input(linear_head(w, [0.0, 0.0]), maps, [0])
    alpha = gradcam_plus_plus(inputs)
    assert torch.isfinite(alpha).all()
    torch.testing.assert_close(alpha, torch.tensor([[1 / 3, 0.0, 0.5, 0.0, 0.0]]))


def test_gradcam_plus_plus_non_linear_head_matches_manual_formula():
    """The same Eqs. 19 and 10 with the pixel-wise gradient of a conv-ReLU head."""
    (v, d, w, b), maps, target = _conv_relu_case()
    inputs, _ = make_input(conv_relu_head(v, d, w, b), maps, target)
    expected = []
    for i, c in enumerate(target):
        g = conv_relu_head_gradient(v, d, w, c, maps[i])
        total = maps[i].sum(axis=(1, 2))[:, None, None]
        denominator = 2 * g**2 + total * g**3
        a = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
        expected.append((a * np.maximum(g, 0)).sum(axis=(1, 2)))
    expected = torch.tensor(np.stack(expected), dtype=torch.float32)
    assert expected.abs().max() > 1e-2  # not vacuous: some channels have positive weight
    torch.testing.assert_close(gradcam_plus_plus(inputs), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 3. XGrad-CAM
# ------------------------------------------------------------------------------------------------


def test_xgradcam_by_hand_and_zero_map():
    """alpha_k = sum_ij A_k,ij / sum(A_k) * dF^c/dA_k,ij; an all-zero map gives 0."""
    maps = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]],
                          [[0.0, 0.0], [0.0, 0.0]],
                          [[2.0, 2.0], [2.0, 2.0]]]])
    w = [[4.0, 8.0, -2.0]]  # linear head: g = (1, 2, -0.5), alpha = g where S != 0
    inputs, _ = make_input(linear_head(w, [0.0]), maps, [0])
    alpha = xgradcam(inputs)
    assert torch.isfinite(alpha).all()
    torch.testing.assert_close(alpha, torch.tensor([[1.0, 0.0, -0.5]]))


def test_xgradcam_non_linear_head_matches_manual_formula():
    (v, d, w, b), maps, target = _conv_relu_case()
    inputs, _ = make_input(conv_relu_head(v, d, w, b), maps, target)
    expected = []
    for i, c in enumerate(target):
        g = conv_relu_head_gradient(v, d, w, c, maps[i])
        total = maps[i].sum(axis=(1, 2))
        expected.append([(maps[i, k] * g[k]).sum() / total[k] if total[k] != 0 else 0.0
                         for k in range(len(total))])
    expected = torch.tensor(expected, dtype=torch.float32)
    alpha = xgradcam(inputs)
    assert alpha[1, 2] == 0  # the all-zero map
    # not Grad-CAM: the A-weighted mean of a varying gradient differs from its plain mean
    assert not torch.allclose(alpha, gradcam(inputs), atol=1e-4)
    torch.testing.assert_close(alpha, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 4. Ablation-CAM
# ------------------------------------------------------------------------------------------------

# F(A) = W2 ReLU(W1 p + b1) + b2 with p = avgpool(A); class 0.
_ABLATION_HEAD = ([[1.0, -1.0, 2.0], [-1.0, 1.0, 1.0]], [0.0, 0.5], [[1.0, 2.0], [0.5, -1.0]],
                  [0.5, 0.0])


def _mlp_logit(w1, b1, w2, b2, c, p) -> float:
    hidden = np.maximum(np.asarray(w1) @ p + np.asarray(b1), 0)
    return float(np.asarray(w2)[c] @ hidden + b2[c])


def test_ablationcam_by_hand_on_non_linear_head():
    """Eq. 9: alpha_k = (F^c(A) - F^c(A with map k zeroed)) / F^c(A).

    p = (2, 1, 1): z = (3, 0.5), F = 3 + 1 + 0.5 = 4.5.
      k=0 zeroed: p = (0, 1, 1), z = (1, 2.5),   F = 6.5 -> alpha = -2 / 4.5 = -4/9
      k=1 zeroed: p = (2, 0, 1), z = (4, -0.5),  F = 4.5 -> alpha = 0
      k=2 zeroed: p = (2, 1, 0), z = (1, -0.5),  F = 1.5 -> alpha = 3 / 4.5 = 2/3
    """
    maps = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]],
                          [[0.0, 2.0], [2.0, 0.0]],
                          [[4.0, 0.0], [0.0, 0.0]]]])
    inputs, _ = make_input(mlp_head(*_ABLATION_HEAD), maps, [0])
    expected = torch.tensor([[-4 / 9, 0.0, 2 / 3]])
    torch.testing.assert_close(ablationcam(inputs), expected)
    torch.testing.assert_close(ablationcam(inputs, batch_size=1), expected)


def test_ablationcam_runs_the_body_once():
    """Only the head is re-evaluated per ablation; the body (x -> A) runs once per call."""
    torch.manual_seed(0)
    net = TinyNet(3, mlp_head(*_ABLATION_HEAD)).eval()
    split = lu.split_model(net, "features.1")
    x = torch.rand(2, 3, 5, 5)
    with torch.no_grad():
        maps = net.features(x).double().numpy()
    target = [0, 1]
    expected = []
    for i, c in enumerate(target):
        p = maps[i].mean(axis=(1, 2))
        full = _mlp_logit(*_ABLATION_HEAD, c, p)
        ablated = [_mlp_logit(*_ABLATION_HEAD, c, p * (np.arange(3) != k)) for k in range(3)]
        expected.append([(full - a) / full for a in ablated])

    # The split's body is an fx.GraphModule that calls the net's own conv object, so a hook on
    # that conv sees every body run (a hook on the Sequential ``net.features`` would not fire).
    body_runs = []
    handle = net.features[0].register_forward_hook(lambda *_: body_runs.append(1))
    try:
        for batch_size in (256, 1):
            before = len(body_runs)
            alpha = lu.coefficients("ablationcam", split, x, target=target, batch_size=batch_size)
            assert len(body_runs) - before == 1
            torch.testing.assert_close(alpha, torch.tensor(expected, dtype=torch.float32),
                                       rtol=1e-5, atol=1e-6)
    finally:
        handle.remove()
    assert not net.features[0]._forward_hooks


# ------------------------------------------------------------------------------------------------
# 5. Score-CAM
# ------------------------------------------------------------------------------------------------


def _scorecam_case():
    torch.manual_seed(0)
    head = random_mlp_head(3, 4, 3, seed=1)
    maps = positive_maps(2, 3, 4, seed=2)
    maps[0, 2] = 2.0  # a constant map: its mask is 0, i.e. the baseline image itself
    maps[1, 0, 0, 0] = 5.0  # a peaked map
    x = torch.randn(2, 3, 8, 8)
    inputs, net = make_input(head, maps, [1, 2], x=x)
    with torch.no_grad():
        net.features[0].weight.normal_()
    return inputs, net


def test_scorecam_matches_definition_2():
    """alpha_k = softmax(f(x o s(up(A_k))))_c - softmax(f(0))_c, with an explicit loop."""
    inputs, net = _scorecam_case()
    x, maps = inputs.x, inputs.maps
    expected = torch.empty(maps.shape[:2])
    with torch.no_grad():
        baseline = net(torch.zeros(1, 3, 8, 8)).softmax(1)[0]
        for b in range(maps.shape[0]):
            c = int(inputs.target[b])
            for k in range(maps.shape[1]):
                up = F.interpolate(maps[b, k][None, None], size=(8, 8), mode="bilinear",
                                   align_corners=False)[0, 0]
                low, high = up.min(), up.max()
                mask = (up - low) / (high - low) if high > low else torch.zeros_like(up)
                expected[b, k] = net(x[b:b + 1] * mask).softmax(1)[0, c] - baseline[c]
    assert expected.abs().min() < 1e-12 and expected.abs().max() > 1e-3  # varied, not vacuous
    torch.testing.assert_close(scorecam(inputs), expected, rtol=1e-5, atol=1e-7)


def test_scorecam_batch_size_does_not_change_results():
    inputs, _ = _scorecam_case()
    reference = scorecam(inputs, batch_size=1)
    for batch_size in (2, 3, 32):  # 2 leaves a partial last chunk, 3 = N
        torch.testing.assert_close(scorecam(inputs, batch_size=batch_size), reference,
                                   rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("baseline", ["no", 0, None, 1.0])
def test_scorecam_baseline_must_be_a_bool(baseline):
    """A string such as "no" is truthy: taken as True, it would silently compute Definition 2's gains."""
    inputs, _ = _scorecam_case()
    with pytest.raises(TypeError, match=rf"baseline must be a bool: True \(.*\) or False \(.*\), got {baseline!r}"):
        scorecam(inputs, baseline=baseline)
    with pytest.raises(TypeError, match="baseline must be a bool"):
        lu.coefficients("scorecam", inputs.split, inputs.x, [1, 2], baseline=baseline)


@pytest.mark.parametrize("map_size, image_size", [(4, 8), (7, 224), (3, 10), (7, 225)])
def test_scorecam_constant_map_gives_exactly_zero(map_size, image_size):
    """Up(constant) is constant, so its min-max mask is 0 and x o 0 is the baseline image itself.

    4 -> 8 and 7 -> 224 are integer scale factors, where float32 bilinear weights are exact; at
    3 -> 10 and 7 -> 225 they are not, and Up(A_k) carries 1-ulp noise that min-max must not blow
    up into a 0/1 mask.
    """
    torch.manual_seed(0)
    maps = positive_maps(1, 3, map_size, seed=2)
    maps[0, 1] = 2.0
    inputs, _ = make_input(random_mlp_head(3, 4, 3, seed=1), maps, [1],
                           x=torch.randn(1, 3, image_size, image_size))
    for batch_size in (1, 3):
        assert scorecam(inputs, batch_size=batch_size)[0, 1].item() == 0.0


def _scorecam_hand_case():
    """Two copies of a 3-channel 2 x 2 image x with x_0 = [[1, 0], [.5, .25]], x_1 = 1 - x_0, x_2 = 1,
    targets 0 and 1. The body (identity 1 x 1 conv, ReLU) gives A = x, so the masks are H_0 = x_0,
    H_1 = x_1 and H_2 = 0 (a constant map; upsampling 2 x 2 to 2 x 2 is the identity). The head
    F = (mean over pixels of the channel sum + 1, 0) and x_0 + x_1 + x_2 = 2 give
    f(x o H)_0 = sum_p H(p) / 2 + 1: 1.875 for H_0, 2.125 for H_1, and 1 for the baseline x_b = 0."""
    x0 = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    x = torch.stack([x0, 1 - x0, torch.ones(2, 2)])[None].repeat(2, 1, 1, 1)
    inputs, net = make_input(linear_head([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [1.0, 0.0]), x, [0, 1], x=x)
    _set(net.features[0], np.eye(3), np.zeros(3))
    return inputs


def test_scorecam_without_baseline_gives_the_raw_softmax_of_the_official_code():
    """baseline=False: softmax(f(x o H_k))_c, 0 for the constant map (the official code skips it);
    baseline=True: the gains over softmax(f(x_b))_c (Definition 2). The options reach the rule through
    ``coefficients(method, split, x, target, **options)``."""
    inputs = _scorecam_hand_case()
    sigmoid = torch.sigmoid
    logits = torch.tensor([1.875, 2.125])
    raw = torch.stack([torch.cat([sigmoid(logits), torch.zeros(1)]), torch.cat([sigmoid(-logits), torch.zeros(1)])])
    beta = sigmoid(torch.tensor([1.0, -1.0]))  # softmax(f(x_b))_c for c = 0 and c = 1
    gains = torch.where(raw > 0, raw - beta[:, None], 0.0)
    for baseline, expected in ((False, raw), (True, gains)):
        torch.testing.assert_close(scorecam(inputs, baseline=baseline), expected, rtol=1e-6, atol=1e-7)
        through = lu.coefficients("scorecam", inputs.split, inputs.x, [0, 1], baseline=baseline)
        torch.testing.assert_close(through, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(scorecam(inputs), gains, rtol=1e-6, atol=1e-7)  # the default is Definition 2
    # sum_k A_k over the non-constant maps is 1 everywhere, so the maps before the ReLU differ by beta:
    # image 0 (positive gains, nothing clipped) gets the same map; image 1's gains are all negative,
    # so its gains' map is all zero and the raw scores' is not
    maps = {b: lu.cam_map(scorecam(inputs, baseline=b), inputs.maps, (2, 2)) for b in (False, True)}
    torch.testing.assert_close(maps[False][0], maps[True][0], rtol=1e-5, atol=1e-6)
    assert maps[True][1].abs().max() == 0 and maps[False][1].max() == 1


def test_scorecam_with_and_without_baseline_differ_by_a_constant_per_image():
    """On the random case: alpha(False) - alpha(True) = softmax(f(0))_c on every non-constant map, 0 on
    the constant one; sum_k A_k is not constant, so the normalised maps differ."""
    inputs, net = _scorecam_case()
    with torch.no_grad():
        beta = net(torch.zeros(1, 3, 8, 8)).softmax(1)[0, inputs.target]
    difference = scorecam(inputs, baseline=False) - scorecam(inputs)
    constant = torch.zeros(2, 3, dtype=torch.bool)
    constant[0, 2] = True
    torch.testing.assert_close(difference, torch.where(constant, 0.0, beta[:, None].expand(2, 3)),
                               rtol=1e-5, atol=1e-7)
    size = tuple(inputs.x.shape[-2:])
    raw, gains = (lu.cam_map(scorecam(inputs, baseline=b), inputs.maps, size) for b in (False, True))
    assert (raw - gains).abs().max() > 0.05


# ------------------------------------------------------------------------------------------------
# The shared map: s(u(ReLU(sum_k alpha_k A_k))) (paper Eqs. 1 and 10)
# ------------------------------------------------------------------------------------------------


def test_cam_map_by_hand():
    """L = ReLU(1 * A_0 - 2 * A_1) = [[1, 0], [0, 2]]; bilinear 2 -> 4 (align_corners=False) is
    U = R L R^T with R = [[1, 0], [.75, .25], [.25, .75], [0, 1]]; min 0, max 2, so s(U) = U / 2."""
    maps = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    r = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    expected = r @ np.array([[1.0, 0.0], [0.0, 2.0]]) @ r.T / 2
    result = lu.cam_map(torch.tensor([[1.0, -2.0]]), maps, (4, 4))
    torch.testing.assert_close(result, torch.tensor(expected[None], dtype=torch.float32))


def test_cam_map_with_per_pixel_weights_by_hand():
    """Weights of the maps' shape: L = ReLU(W_0 o A_0 + W_1 o A_1) = ReLU([1 + 0, 0 - 2]) = [1, 0], then the
    same upsampling and min-max as for alpha: bilinear 1x2 -> 1x4 gives [1, .75, .25, 0]. Any other shape is
    refused."""
    maps = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    weights = torch.tensor([[[[1.0, 5.0]], [[3.0, -1.0]]]])
    torch.testing.assert_close(lu.cam_map(weights, maps, (1, 4)), torch.tensor([[[1.0, 0.75, 0.25, 0.0]]]))
    with pytest.raises(ValueError, match=r"alpha of shape \(1, 2\) or per-pixel weights.*got \(1, 2, 1, 1\)"):
        lu.cam_map(torch.ones(1, 2, 1, 1), maps, (1, 4))


@pytest.mark.parametrize("alpha", [[-1.0, 0.0], [0.0, 1.0]])  # all zero after ReLU; constant 0.7
@pytest.mark.parametrize("map_size, image_size", [(2, 4), (3, 10)])
def test_cam_map_constant_map_is_zero(alpha, map_size, image_size):
    """cam_map's contract: a constant map normalises to zeros (3 -> 10 is a non-integer scale)."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.stack([torch.rand(map_size, map_size, generator=generator) + 0.1,
                        torch.full((map_size, map_size), 0.7)])[None]
    result = lu.cam_map(torch.tensor([alpha]), maps, (image_size, image_size))
    assert torch.equal(result, torch.zeros(1, image_size, image_size))


# ------------------------------------------------------------------------------------------------
# 6. KernelSHAP-CAM
# ------------------------------------------------------------------------------------------------


def _shapley_case(n: int, seed: int, batch: int = 2):
    head = random_mlp_head(n, 6, 3, seed=seed)
    maps = positive_maps(batch, n, 3, seed=seed + 100)
    target = [c % 3 for c in range(batch)]
    inputs, net = make_input(head, maps, target)
    exact = torch.stack([shapley_reference(net.head, maps[b], target[b]) for b in range(batch)])
    singles = torch.stack([
        game_values(net.head, maps[b], target[b], [{k} for k in range(n)])
        - game_values(net.head, maps[b], target[b], [set()]) for b in range(batch)])
    # Non-linear game: the Shapley values are not the single-channel marginals.
    assert (exact - singles).abs().max() > 0.05
    return inputs, net, exact


@pytest.mark.parametrize("n_samples", [30, 2048])  # 2^5 - 2 = 30: the enumeration threshold
def test_kernelshapcam_enumeration_is_exact_shapley(n_samples):
    inputs, _, exact = _shapley_case(5, seed=0)
    alpha = kernelshapcam(inputs, n_samples=n_samples)
    torch.testing.assert_close(alpha.double(), exact, rtol=0, atol=1e-5)


def test_kernelshapcam_sampled_local_accuracy_seeds_and_accuracy():
    n = 8  # 2^8 - 2 = 254 proper coalitions; 64 samples forces the sampling branch
    inputs, net, exact = _shapley_case(n, seed=3)
    alpha = kernelshapcam(inputs, n_samples=64, seed=0)
    for b in range(2):
        total = full_minus_empty(net.head, inputs.maps[b], int(inputs.target[b]))
        assert alpha[b].sum().item() == pytest.approx(total, abs=1e-5)
    # Tolerance, measured on this game (Shapley values up to 3 in magnitude): over seeds 0..199 the
    # relative error ||alpha - phi|| / ||phi|| of 64 samples had median 0.065, 99th percentile 0.19
    # and maximum 0.26 (it shrinks roughly like 1/sqrt(n_samples)). 0.3 passes for every seed seen;
    # the single-channel marginals F^c(A_k alone) - F^c(0), the answer of a method that ignores the
    # interactions, are off by 0.44 and 0.91 here, so the bound still tells KernelSHAP from them.
    relative_error = (alpha.double() - exact).norm(dim=1) / exact.norm(dim=1)
    assert (relative_error < 0.3).all(), relative_error
    torch.testing.assert_close(kernelshapcam(inputs, n_samples=64, seed=0), alpha, rtol=0, atol=0)
    other = kernelshapcam(inputs, n_samples=64, seed=1)
    assert not torch.allclose(other, alpha, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# 7. LIME-CAM
# ------------------------------------------------------------------------------------------------


def _affine_case():
    w = [[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0]]
    maps = positive_maps(2, 4, 3, seed=7)
    inputs, _ = make_input(linear_head(w, [0.3, -0.2]), maps, [0, 1])
    # Affine head: F^c(A_k alone) - F^c(0) = W[c,k] mean(A_k).
    expected = torch.tensor(w)[inputs.target] * maps.mean(dim=(2, 3))
    return inputs, expected


def test_limecam_without_ridge_recovers_the_affine_head():
    inputs, expected = _affine_case()
    for seed in (0, 1):
        torch.testing.assert_close(limecam(inputs, ridge=0.0, seed=seed), expected,
                                   rtol=0, atol=1e-4)


def test_limecam_ridge_shrinks_and_is_seeded():
    inputs, expected = _affine_case()
    alpha = limecam(inputs)  # ridge = 1.0
    assert (alpha.norm(dim=1) < 0.99 * expected.norm(dim=1)).all()
    torch.testing.assert_close(limecam(inputs), alpha, rtol=0, atol=0)
    assert not torch.allclose(limecam(inputs, seed=1), alpha, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 8. SHAP-CAM
# ------------------------------------------------------------------------------------------------


def test_shapcam_is_the_mean_over_the_seeded_orderings():
    """Algorithm 1: alpha = mean over P orderings of the marginal contributions.

    The orderings are ``torch.randperm`` draws from a generator seeded with ``seed`` (documented:
    drawn from the seed alone); P=24 with N=4 repeats some of the 4! = 24 orderings, so the mean
    differs from the exact Shapley value and the check is not vacuous.
    """
    n, seed, n_permutations = 4, 5, 24
    head = random_mlp_head(n, 6, 3, seed=11)
    maps = positive_maps(2, n, 3, seed=12)
    inputs, net = make_input(head, maps, [0, 2])
    generator = torch.Generator().manual_seed(seed)
    orderings = [torch.randperm(n, generator=generator) for _ in range(n_permutations)]
    assert len({tuple(o.tolist()) for o in orderings}) < math.factorial(n)
    expected = torch.stack([
        torch.stack([marginal_contributions(net.head, maps[b], c, o) for o in orderings]).mean(0)
        for b, c in enumerate([0, 2])])
    alpha = shapcam(inputs, n_permutations=n_permutations, seed=seed)
    torch.testing.assert_close(alpha.double(), expected, rtol=0, atol=1e-5)
    exact = torch.stack([shapley_reference(net.head, maps[b], c) for b, c in enumerate([0, 2])])
    assert (expected - exact).abs().max() > 1e-3


def test_shapcam_single_ordering_is_one_ordering_marginals():
    """Seed-agnostic: with P = 1 the result is the marginal-contribution vector of some ordering."""
    n = 4
    inputs, net, _ = _shapley_case(n, seed=4, batch=1)
    candidates = torch.stack([marginal_contributions(net.head, inputs.maps[0], 0, o)
                              for o in itertools.permutations(range(n))])
    for seed in range(3):
        alpha = shapcam(inputs, n_permutations=1, seed=seed)[0].double()
        assert (candidates - alpha).abs().max(1).values.min() < 1e-5


@pytest.mark.parametrize("n_permutations", [1, 3, 10])
def test_shapcam_local_accuracy(n_permutations):
    inputs, net, _ = _shapley_case(6, seed=6)
    alpha = shapcam(inputs, n_permutations=n_permutations, seed=2)
    for b in range(2):
        total = full_minus_empty(net.head, inputs.maps[b], int(inputs.target[b]))
        assert alpha[b].sum().item() == pytest.approx(total, abs=1e-5)


def test_shapcam_converges_to_exact_shapley():
    inputs, _, exact = _shapley_case(6, seed=6)
    error = {p: (shapcam(inputs, n_permutations=p, seed=0).double() - exact).abs().max().item()
             for p in (5, 1000)}
    # The error of a mean of P orderings shrinks like 1/sqrt(P) (about 14x from P=5 to P=1000).
    # Measured on this game (Shapley values up to 2.8) over seeds 0..99: max |alpha - phi| for
    # P=1000 had median 0.040 and maximum 0.094; for P=5 median 0.52 and minimum 0.13. So 0.12
    # holds for every seed seen, and P=1000 beats P=5 for any pair of seeds seen.
    assert error[1000] < error[5], error
    assert error[1000] < 0.12, error


# ------------------------------------------------------------------------------------------------
# 9. Eigen-CAM
# ------------------------------------------------------------------------------------------------


def test_eigencam_by_hand_on_maps_with_a_known_dominant_direction():
    """The pixels of image 0 are the rows of O = [(3, 4, 0), (3, 4, 0), (0, 0, 2), (0, 0, 2)], so O^T O has
    the blocks [[18, 24], [24, 32]] (eigenvalues 50, 0; eigenvector (0.6, 0.8)) and [8]: v_1 = (0.6, 0.8, 0)
    and the map O v_1 = (5, 5, 0, 0). (Centring each column first, as PCA would, gives (1.5, 2, -1) / sqrt(7.25)
    instead.) Image 1 is -A: the same v_1 up to its sign, which is fixed by sum_k alpha_k mean(A_k) >= 0, so
    alpha = -v_1 and the map is again (5, 5, 0, 0). The targets are ignored."""
    a = torch.tensor([[[3.0, 3.0], [0.0, 0.0]], [[4.0, 4.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 2.0]]])
    maps = torch.stack([a, -a])
    inputs, _ = make_input(linear_head([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], [0.0, 0.0]), maps, [0, 1])
    alpha = eigencam(inputs)
    torch.testing.assert_close(alpha, torch.tensor([[0.6, 0.8, 0.0], [-0.6, -0.8, 0.0]]), rtol=0, atol=1e-6)
    expected_map = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).expand(2, 2, 2)
    torch.testing.assert_close(lu.cam_map(alpha, maps, (2, 2)), expected_map, rtol=0, atol=1e-6)
    other_targets, _ = make_input(linear_head([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], [0.0, 0.0]), maps, [1, 0])
    torch.testing.assert_close(eigencam(other_targets), alpha, rtol=0, atol=0)


def test_eigencam_is_the_top_eigenvector_of_the_uncentred_maps():
    """On random maps (image 2 signed) alpha is the unit eigenvector of O^T O with the largest eigenvalue
    (numpy), with the sign that makes the map's mean O v / hw non-negative."""
    maps = positive_maps(3, 5, 4, seed=21)
    maps[2] -= 1.0
    inputs, _ = make_input(linear_head(np.ones((2, 5)), [0.0, 0.0]), maps, [0, 1, 0])
    expected = []
    for b in range(3):
        o = maps[b].double().numpy().reshape(5, -1).T  # (hw, N)
        eigenvalues, eigenvectors = np.linalg.eigh(o.T @ o)
        assert eigenvalues[-1] > 1.5 * eigenvalues[-2]  # a clear first direction: v_1 is well defined
        v = eigenvectors[:, -1]
        expected.append(v if (o @ v).mean() >= 0 else -v)
    alpha = eigencam(inputs)
    torch.testing.assert_close(alpha, torch.tensor(np.array(expected), dtype=torch.float32), rtol=0, atol=1e-5)
    torch.testing.assert_close(alpha.norm(dim=1), torch.ones(3))
    assert (alpha[:2] > 0).all()  # non-negative maps: a non-negative v_1


# ------------------------------------------------------------------------------------------------
# 10. ShapleyCAM
# ------------------------------------------------------------------------------------------------


def _square_case(head_of, n: int, seed: int):
    rng = np.random.default_rng(seed)
    m = 3
    v, d = rng.normal(size=(m, n)), rng.normal(size=m) * 0.5
    w, b = rng.normal(size=(2, m)), rng.normal(size=2)
    maps = rng.uniform(0, 2, size=(2, n, 3, 3))
    target = [0, 1]
    inputs, net = make_input(head_of(v, d, w, b), maps, target)
    return (v, d, w, b), maps, target, inputs, net


def test_shapleycam_by_hand_on_a_quadratic_head():
    """Per activation w = g - H A / 2 with the hand derivatives of F^c = W avgpool((V A + d)^2) + b, and
    alpha_k = mean_ij w_k,ij: Grad-CAM's alpha plus the Hessian term -mean_ij (H A)_k,ij / 2."""
    (v, d, w, _), maps, target, inputs, _ = _square_case(square_head, n=4, seed=30)
    derivatives = [square_head_derivatives(v, d, w, c, maps[i]) for i, c in enumerate(target)]
    grad = np.stack([g for g, _ in derivatives])
    hessian_product = np.stack([ha for _, ha in derivatives])
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32)
    torch.testing.assert_close(shapley_taylor_weights(inputs), as_tensor(grad - hessian_product / 2),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shapleycam(inputs), as_tensor((grad - hessian_product / 2).mean(axis=(2, 3))),
                               rtol=1e-5, atol=1e-6)
    hessian_term = -hessian_product.mean(axis=(2, 3)) / 2
    assert np.abs(hessian_term).max() > 1e-2  # not vacuous: ShapleyCAM is not Grad-CAM here
    torch.testing.assert_close(shapleycam(inputs) - gradcam(inputs), as_tensor(hessian_term), rtol=1e-4, atol=1e-6)


def test_shapleycam_weights_give_the_exact_shapley_values_of_a_quadratic_head():
    """A quadratic F^c is its own second-order Taylor expansion, so phi_k = sum_ij A_k,ij w_k,ij is the exact
    Shapley value of the channel game (brute force over the 2^6 coalitions, and exact_shap). The paper's
    pooling alpha_k = mean_ij w_k,ij loses that where w varies over the pixels of a map (it does here, the
    square comes before the pooling): alpha_k sum_ij A_k,ij is not phi_k."""
    _, maps, target, inputs, net = _square_case(square_head, n=6, seed=31)
    phi = torch.stack([shapley_reference(net.head, inputs.maps[b], c) for b, c in enumerate(target)])
    element_sum = (inputs.maps * shapley_taylor_weights(inputs)).sum(dim=(2, 3))
    torch.testing.assert_close(element_sum.double(), phi, rtol=0, atol=1e-5)
    torch.testing.assert_close(exact_shap(inputs).double(), phi, rtol=0, atol=1e-5)
    pooled = shapleycam(inputs) * inputs.maps.sum(dim=(2, 3))
    assert (pooled.double() - phi).abs().max() > 0.05


def test_shapleycam_is_exact_shapley_per_unit_activation_on_a_pooled_quadratic_head():
    """F^c = W (V p + d)^2 + b with p = avgpool(A): w is constant over each map, the paper's mean loses nothing,
    and alpha_k sum_ij A_k,ij = phi_k exactly (8 channels, 2^8 coalitions). By hand,
    phi_k = p_k sum_m W[c,m] V[m,k] ((V p)_m + 2 d_m) and alpha_k = phi_k / (hw p_k)."""
    (v, d, w, _), maps, target, inputs, net = _square_case(pooled_square_head, n=8, seed=32)
    p = maps.mean(axis=(2, 3))
    by_hand = np.stack([p[i] * np.einsum("m,mk,m->k", w[c], v, v @ p[i] + 2 * d) for i, c in enumerate(target)])
    phi = torch.stack([shapley_reference(net.head, inputs.maps[b], c) for b, c in enumerate(target)])
    torch.testing.assert_close(phi, torch.tensor(by_hand), rtol=0, atol=1e-5)
    torch.testing.assert_close(exact_shap(inputs).double(), phi, rtol=0, atol=1e-5)
    alpha = shapleycam(inputs)
    torch.testing.assert_close(alpha.double(), torch.tensor(by_hand / (9 * p)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((alpha * inputs.maps.sum(dim=(2, 3))).double(), phi, rtol=0, atol=1e-5)


@pytest.mark.parametrize("frozen", [False, True])  # frozen weights: the gradient's graph holds nothing
def test_shapleycam_is_gradcam_on_piecewise_linear_heads(frozen):
    """H A = 0 on an affine head (alpha = W[c] / hw, as Grad-CAM) and on a conv-ReLU head (ReLU is piecewise
    linear): ShapleyCAM is Grad-CAM exactly."""
    w = [[6.0, -12.0, 3.0], [1.0, 2.0, 3.0]]
    linear, _ = make_input(linear_head(w, [0.5, -0.5]), positive_maps(2, 3, 3, seed=8)[:, :, :2], [0, 1])
    (v, d, w2, b2), maps, target = _conv_relu_case()
    conv_relu, _ = make_input(conv_relu_head(v, d, w2, b2), maps, target)
    for inputs in (linear, conv_relu):
        for parameter in inputs.split.net.parameters():
            parameter.requires_grad_(not frozen)
        torch.testing.assert_close(shapleycam(inputs), gradcam(inputs), rtol=0, atol=0)
    torch.testing.assert_close(shapleycam(linear), torch.tensor(w) / 6)


# ------------------------------------------------------------------------------------------------
# 11. HiResCAM and Layer-CAM: per-pixel weights
# ------------------------------------------------------------------------------------------------


def test_hirescam_and_layercam_by_hand_on_a_flatten_linear_head():
    """F^0 = W[0] flatten(A): dF^0/dA_k,ij = W[0, k, ij], W[0] = ((2, -1, 0), (-1, 3, 2)) on 1x3 maps
    A_0 = (1, 2, 1), A_1 = (2, 1, 1).
      HiResCAM:  sum_k W_k o A_k             = (2 - 2, -2 + 3, 0 + 2)  = (0, 1, 2) -> min-max (0, .5, 1)
      Layer-CAM: sum_k ReLU(W_k) o A_k       = (2 + 0, 0 + 3, 0 + 2)   = (2, 3, 2) -> (0, 1, 0)
      Grad-CAM:  alpha = mean W_k = (1/3, 4/3): (1/3 + 8/3, 2/3 + 4/3, 1/3 + 4/3) = (3, 2, 5/3) -> (1, .25, 0)
    """
    maps = torch.tensor([[[[1.0, 2.0, 1.0]], [[2.0, 1.0, 1.0]]]])
    w = [[2.0, -1.0, 0.0, -1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]
    inputs, _ = make_input(flatten_linear_head(w, [0.5, 0.0]), maps, [0])
    torch.testing.assert_close(hirescam(inputs), torch.tensor(w[0]).reshape(1, 2, 1, 3))
    torch.testing.assert_close(layercam(inputs), torch.tensor(w[0]).clamp_min(0).reshape(1, 2, 1, 3))
    for weights, expected in ((hirescam(inputs), [0.0, 0.5, 1.0]), (layercam(inputs), [0.0, 1.0, 0.0]),
                              (gradcam(inputs), [1.0, 0.25, 0.0])):
        torch.testing.assert_close(lu.cam_map(weights, maps, (1, 3)), torch.tensor([[expected]]))


def test_hirescam_map_is_gradcam_map_on_a_pooling_head():
    """After global average pooling the gradient is constant over each map, so HiResCAM's weights are Grad-CAM's
    alpha at every pixel and the two maps are the same."""
    maps = positive_maps(2, 3, 4, seed=9)
    inputs, _ = make_input(linear_head([[2.0, -1.0, 0.5], [1.0, 1.0, -3.0]], [0.0, 0.0]), maps, [0, 1])
    torch.testing.assert_close(hirescam(inputs), gradcam(inputs)[:, :, None, None].expand(2, 3, 4, 4))
    torch.testing.assert_close(lu.cam_map(hirescam(inputs), maps, (8, 8)), lu.cam_map(gradcam(inputs), maps, (8, 8)))


def test_hirescam_and_layercam_on_a_non_linear_head_match_manual_derivative():
    (v, d, w, b), maps, target = _conv_relu_case()
    inputs, _ = make_input(conv_relu_head(v, d, w, b), maps, target)
    grad = torch.tensor(np.stack([conv_relu_head_gradient(v, d, w, c, maps[i]) for i, c in enumerate(target)]),
                        dtype=torch.float32)
    assert (grad < 0).any() and (grad > 0).any()  # Layer-CAM's ReLU matters
    torch.testing.assert_close(hirescam(inputs), grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(layercam(inputs), grad.clamp_min(0), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# 12. The new methods explain each image alone, on a head with a non-zero Hessian
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [eigencam, shapleycam, hirescam, layercam])
def test_new_methods_do_not_mix_images_of_a_batch(method):
    """The pipeline test checks every method on a ReLU head, where H A = 0; here the head is quadratic."""
    _, maps, target, inputs, net = _square_case(square_head, n=4, seed=33)
    together = method(inputs)
    for b in range(2):
        alone, _ = make_input(net.head, maps[b:b + 1], target[b:b + 1])
        torch.testing.assert_close(together[b:b + 1], method(alone), rtol=1e-5, atol=1e-7)
