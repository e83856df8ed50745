"""Extra network inputs held fixed (a VQA question), and the attribution rules their heads need:
products of two A-dependent tensors and L2 norms (liftcam_utils.engine.propagation)."""

import pytest
import torch
from conftest import head_values
from torch import nn

import liftcam_utils as lu
from liftcam_utils.models.fixed_inputs import fix_inputs
from liftcam_utils.models.vqa_model import question_vocabulary, shapes_vqa_net

LAYER = "img_encoder.model.features.20"


@pytest.fixture(scope="module")
def vqa_net():
    torch.manual_seed(0)
    net = shapes_vqa_net(len(question_vocabulary())).eval()
    for module in net.modules():  # non-trivial running statistics, as after training
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net


def _question(text="what color is the star?"):
    return question_vocabulary().encode(text, 10)[None]


def _images(n=3, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_fixed_network_equals_the_original_with_the_question_repeated(vqa_net):
    fixed = fix_inputs(vqa_net, _question())
    x = _images()
    torch.testing.assert_close(fixed(x), vqa_net(x, _question().expand(3, -1)), rtol=0, atol=1e-6)


def test_question_encoder_is_computed_once_and_stored(vqa_net):
    fixed = fix_inputs(vqa_net, _question())
    kinds = {type(m) for m in fixed.modules()}
    assert nn.LSTM not in kinds and nn.Embedding not in kinds
    assert not any(n.op == "placeholder" and n.target == "question" for n in fixed.graph.nodes)
    other = fix_inputs(vqa_net, _question("how many objects are there?"))
    x = _images(1)
    assert not torch.allclose(fixed(x), other(x))  # the question matters


def test_fixed_network_keeps_module_names_and_parameters(vqa_net):
    split = lu.split_model(fix_inputs(vqa_net, _question()), LAYER)
    assert LAYER in split.layers() and "img_encoder.model.features" in split.layers()
    assert split.net.get_submodule("fc2").weight is vqa_net.fc2.weight  # shared, not copied
    x = _images()
    torch.testing.assert_close(split.head(split.body(x)), vqa_net(x, _question().expand(3, -1)), rtol=0, atol=1e-6)


def test_bad_fixed_inputs_are_refused(vqa_net):
    with pytest.raises(ValueError, match="batch size 1"):
        fix_inputs(vqa_net, _question().expand(2, -1))
    with pytest.raises(ValueError, match=r"takes 2 inputs \(image, question\)"):
        fix_inputs(vqa_net)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        fix_inputs(vqa_net, "what color is the star?")


def test_splitting_a_two_input_network_says_how_to_fix_the_question(vqa_net):
    with pytest.raises(ValueError, match="fix_inputs"):
        lu.split_model(vqa_net, LAYER)


@pytest.mark.parametrize("layer", [LAYER, "img_encoder.model.features.13"])
def test_liftcam_local_accuracy_through_the_vqa_head(vqa_net, layer):
    """Eq. 8 through conv, max-pool, FC, L2 normalisation, the product with the question and tanh."""
    split = lu.split_model(fix_inputs(vqa_net, _question()), layer)
    x = _images(4)
    full, empty, target = head_values(split, x)
    alpha = lu.coefficients("liftcam", split, x, target)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-4, atol=1e-6)
    assert (full - empty).abs().min() > 1e-4  # not vacuous


def test_every_method_accepts_a_fixed_question(vqa_net):
    split = lu.split_model(fix_inputs(vqa_net, _question()), LAYER)
    x = _images(2)
    for method in lu.METHODS:
        options = {"n_permutations": 2} if method == "shapcam" else {}
        if method in ("exact_shap", "lrpcam"):
            continue  # exact_shap needs an affine head; LRP has no product rule (tested below)
        saliency = lu.saliency(method, split, x, **options)
        assert saliency.shape == (2, 64, 64) and torch.isfinite(saliency).all(), method


class _Gated(nn.Module):
    """A squeeze-and-excitation gate: the maps times a function of themselves."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        a = self.features(x)
        gated = a * torch.sigmoid(a.mean(dim=(2, 3), keepdim=True))
        return self.fc(gated.mean(dim=(2, 3)))


class _Normalised(nn.Module):
    """Division by an L2 norm and by a shifted variable (the quotient rule's two uses)."""

    def __init__(self, detach: bool):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())
        self.fc = nn.Linear(5, 3)
        self.detach = detach

    def forward(self, x):
        v = self.fc(self.features(x).mean(dim=(2, 3))) + 0.5
        norm = v.norm(p=2, dim=1, keepdim=True)
        v = v / (norm.detach() if self.detach else norm)
        return torch.tanh(v) / (1.5 + torch.sigmoid(v))


@pytest.mark.parametrize("net", [_Gated(), _Normalised(detach=True), _Normalised(detach=False)])
def test_product_and_norm_rules_are_exact(net):
    torch.manual_seed(1)
    net = type(net)(*([net.detach] if isinstance(net, _Normalised) else [])).eval()
    split = lu.split_model(net, "features.1")
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    full, empty, target = head_values(split, x)
    alpha = lu.coefficients("liftcam", split, x, target)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-5, atol=1e-6)
    assert (full - empty).abs().min() > 1e-3


class _Bilinear(nn.Module):
    """F = (sum A_0) (sum A_1) + (sum A_2): a two-player product plus a linear player."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())

    def forward(self, x):
        s = self.features(x).sum(dim=(2, 3))
        return (s[:, 0] * s[:, 1] + s[:, 2])[:, None]


def test_product_rule_equals_exhaustive_shapley():
    """v(S) = s0 s1 [0, 1 in S] + s2 [2 in S]: Shapley gives s0 s1 / 2 to each factor, s2 to player 2."""
    torch.manual_seed(0)
    split = lu.split_model(_Bilinear().eval(), "features.1")
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    lift = lu.coefficients("liftcam", split, x, 0)
    shapley = lu.coefficients("exact_shap", split, x, 0)  # all 2^3 coalitions on this non-affine head
    s = split.body(x).sum(dim=(2, 3)).detach()
    torch.testing.assert_close(lift, shapley, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lift[:, 0], s[:, 0] * s[:, 1] / 2, rtol=1e-5, atol=1e-5)


class _L1Normalised(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def forward(self, x):
        v = self.features(x).mean(dim=(2, 3))
        return v / v.norm(p=1, dim=1, keepdim=True)


def test_unsupported_norms_and_lrp_products_raise():
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(lu.UnsupportedHeadOpError, match="L2 norm"):
        lu.coefficients("liftcam", lu.split_model(_L1Normalised().eval(), "features.1"), x)
    with pytest.raises(lu.UnsupportedHeadOpError, match="no rule for the product"):
        lu.coefficients("lrpcam", lu.split_model(_Gated().eval(), "features.1"), x)
