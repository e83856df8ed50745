"""LIFT-CAM = DeepLIFT-Rescale on the head with reference A = 0 (paper Eqs. 7-8)."""

import copy

import pytest
import torch
from captum.attr import DeepLift
from conftest import head_values
from torch import nn

import liftcam_utils as lu


@pytest.mark.parametrize("model_name, layer", [
    ("vgg16", None), ("resnet50", None),
    ("lite0", None), ("lite0", "_blocks.15._swish@0"),
])
def test_local_accuracy(request, images, model_name, layer):
    """Eq. 8: sum_k alpha_k = F^c(A) - F^c(0), on linear and non-linear heads."""
    model = request.getfixturevalue(model_name)
    split = model.split(layer)
    full, empty, _ = head_values(split, images)
    alpha = lu.coefficients("liftcam", split, images)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-4, atol=1e-4)
    assert (full - empty).abs().min() > 1e-3  # the check is not vacuous


def test_lite0_real_weights_local_accuracy_signed_layer(lite0, images):
    split = lite0.split("_blocks.15")
    full, empty, _ = head_values(split, images)
    with pytest.warns(lu.SignedActivationsWarning, match="negative"):
        alpha = lu.coefficients("liftcam", split, images)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-4, atol=1e-4)


def test_equals_exact_shapley_on_resnet50_linear_head(resnet50, images):
    split = resnet50.split()
    lift = lu.coefficients("liftcam", split, images)
    exact = lu.coefficients("exact_shap", split, images)  # N + 1 head evaluations, no gradients
    torch.testing.assert_close(lift, exact, rtol=1e-4, atol=1e-5)


def test_matches_captum_deeplift_on_vgg16_head(vgg16, images):
    """Independent reference: Captum's DeepLift agrees on a ReLU + max-pool head."""
    split = vgg16.split()
    head = copy.deepcopy(split.head)
    for module in head.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    with torch.no_grad():
        maps = split.body(images)
    target = head(maps).argmax(1)
    reference = DeepLift(head).attribute(maps, baselines=torch.zeros_like(maps), target=target)
    ours = lu.coefficients("liftcam", split, images, target=target)
    torch.testing.assert_close(ours, reference.sum(dim=(2, 3)), rtol=1e-3, atol=1e-5)


class _Head(nn.Module):
    """Conv -> BN -> activation -> max-pool -> linear: every rule of the engine at once."""

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(6, 5, 1)
        self.bn = nn.BatchNorm2d(5)
        self.act = activation
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.mix(self.features(x)))))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("activation", [
    nn.ReLU6(), nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.1), nn.SiLU(), nn.Hardswish(), nn.GELU(),
])
def test_local_accuracy_for_each_elementwise_rule(activation):
    torch.manual_seed(1)
    net = _Head(activation).eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    split = lu.split_model(net, "features.1")
    x = torch.randn(3, 3, 8, 8)
    full, empty, _ = head_values(split, x)
    alpha = lu.coefficients("liftcam", split, x)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-5, atol=1e-5)
    # Rescale differs from gradient x input on a non-linear head: the check is not vacuous.
    grad_input = lu.coefficients("gradcam", split, x) * split.body(x).sum(dim=(2, 3))
    assert not torch.allclose(alpha, grad_input, atol=1e-3)


class _CumulativeSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def forward(self, x):
        return torch.cumsum(self.features(x).mean(dim=(2, 3)), dim=1)


def test_unknown_head_op_raises():
    split = lu.split_model(_CumulativeSum().eval(), "features.1")
    with pytest.raises(lu.UnsupportedHeadOpError, match="cumsum"):
        lu.coefficients("liftcam", split, torch.randn(1, 3, 6, 6))


class _ShiftedPool(nn.Module):
    """Adds a spatially varying constant before a max-pool: the reference varies in a window."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
        self.register_buffer("ramp", torch.linspace(0, 1, 16).reshape(1, 1, 4, 4))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x) + self.ramp), 1))


def test_max_pool_with_varying_reference_raises_instead_of_guessing():
    split = lu.split_model(_ShiftedPool().eval(), "features.1")
    with pytest.raises(NotImplementedError, match="reference input varies"):
        lu.coefficients("liftcam", split, torch.randn(1, 3, 4, 4))


def test_flat_points_use_the_derivative():
    """Where z == z_ref the Rescale multiplier falls back to g'(z): no 0/0, no NaN."""
    net = _Head(nn.Tanh()).eval()
    with torch.no_grad():
        net.features[0].bias.fill_(-1.0)  # with x = 0 every map is 0: A equals its reference
    split = lu.split_model(net, "features.1")
    alpha = lu.coefficients("liftcam", split, torch.zeros(1, 3, 8, 8))
    torch.testing.assert_close(alpha, torch.zeros_like(alpha), rtol=0, atol=0)
