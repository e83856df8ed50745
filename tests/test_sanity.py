"""Sanity checks (Adebayo et al. 2018): layer re-initialisation, cascading and independent randomisation, the
similarity measures, logit randomisation and bad input, on a small hand-made network."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import liftcam_utils as lu
from liftcam_utils.evaluation import sanity

CUT = "blocks.1.1"  # the ReLU after the last conv of the body
METHODS = ["gradcam", "liftcam", "eigencam", "hirescam", "random"]


class _Net(nn.Module):
    """stem conv, two blocks in a ModuleList (conv-BN-ReLU, conv-ReLU), then the head: 1 x 1 conv, ReLU, mean, FC."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
                                     nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.ReLU())])
        self.head_conv = nn.Conv2d(5, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.fc(torch.relu(self.head_conv(x)).mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():  # trained-looking statistics, so that a reset changes them
        net.blocks[0][1].running_mean.uniform_(-0.5, 0.5)
        net.blocks[0][1].running_var.uniform_(0.5, 2.0)
        net.head_conv.weight.abs_()  # logits that grow with the maps: the trained maps are not all zero
        net.fc.weight.abs_()
    return net.eval()


@pytest.fixture
def x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


TARGET = [0, 2]


def _run(net, x, **kwargs):
    return sanity.parameter_randomisation(net, CUT, x, METHODS, TARGET, **kwargs)


def test_layers_top_down_and_their_side_of_the_cut(net):
    split = lu.split_model(net, CUT)
    assert sanity.randomisation_layers(split) == ["fc", "head_conv", "blocks.1.0", "blocks.0.1", "blocks.0.0", "stem"]
    assert sanity.randomisation_layers(split, blocks=True) == ["fc", "head_conv", "blocks.1", "blocks.0", "stem"]
    assert [sanity.layer_part(split, n) for n in ("fc", "head_conv", "blocks.1", "stem")] == ["head", "head", "body",
                                                                                             "body"]


def test_the_callers_model_is_untouched(net, x):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    _run(net, x)
    assert net.training and all(m.training for m in net.modules())
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_depth_zero_is_the_trained_model_with_similarity_one(net, x):
    """At depth 0 SSIM is 1 and Spearman 1, or NaN exactly where the trained map is constant (here: random's
    coefficients happen to give an all-zero map, which has no ranking)."""
    rows, kept = _run(net, x, keep_maps=[0, 1])
    zero = rows[rows.depth == 0]
    assert len(zero) == 2 * len(METHODS) * len(x) and set(zero.layer) == {"none"}
    np.testing.assert_allclose(zero.ssim, 1.0, rtol=0, atol=1e-12)
    constant = [bool(kept[("cascading", 0)][m][int(i)].amax() == kept[("cascading", 0)][m][int(i)].amin())
                for m, i in zip(zero.method, zero.image, strict=True)]
    assert zero.spearman.isna().tolist() == constant and not all(constant)
    np.testing.assert_allclose(zero.spearman.dropna(), 1.0, rtol=0, atol=1e-12)


def test_a_head_layer_changes_alpha_but_not_the_maps(net, x):
    """Randomising a layer above the cut leaves A = body(x) as it was and changes alpha; one below changes A."""
    trained = lu.split_model(net, CUT)
    head = lu.split_model(sanity.randomised_copy(net, ["head_conv"]), CUT)
    body = lu.split_model(sanity.randomised_copy(net, ["blocks.0"]), CUT)
    with torch.no_grad():
        maps = trained.body(x)
        assert torch.equal(head.body(x), maps)
        assert not torch.allclose(body.body(x), maps)
    for method in ("gradcam", "liftcam"):
        assert not torch.allclose(lu.coefficients(method, head, x, TARGET), lu.coefficients(method, trained, x, TARGET))
    # class- and head-agnostic rules do not see the head at all
    torch.testing.assert_close(lu.coefficients("eigencam", head, x), lu.coefficients("eigencam", trained, x))


def test_reinitialise_draws_each_layers_own_initialisation(net):
    """A conv gets new weights from its reset_parameters; a batch norm goes back to 1, 0, mean 0, variance 1; the
    global random state is left as it was."""
    state = torch.random.get_rng_state()
    copy = sanity.randomised_copy(net, ["blocks.0"], seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    conv, norm = copy.blocks[0][0], copy.blocks[0][1]
    assert not torch.equal(conv.weight, net.blocks[0][0].weight)
    bound = 1 / math.sqrt(4 * 3 * 3)  # Kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
    assert torch.equal(norm.weight, torch.ones(6)) and torch.equal(norm.bias, torch.zeros(6))
    assert torch.equal(norm.running_mean, torch.zeros(6)) and torch.equal(norm.running_var, torch.ones(6))
    assert torch.equal(copy.stem.weight, net.stem.weight)  # only the layers named


def test_cascading_depth_d_is_the_top_d_layers_randomised(net, x):
    layers = sanity.randomisation_layers(lu.split_model(net, CUT), blocks=True)
    _, kept = _run(net, x, layers=layers, keep_maps=[0, 1], seed=5)
    for depth in range(len(layers) + 1):
        split = lu.split_model(sanity.randomised_copy(net, layers[:depth], seed=5), CUT)
        expected = sanity.method_maps(split, x, TARGET, METHODS)
        for method in METHODS:
            torch.testing.assert_close(kept[("cascading", depth)][method], expected[method], rtol=0, atol=0)
        if depth:
            split = lu.split_model(sanity.randomised_copy(net, [layers[depth - 1]], seed=5), CUT)
            for method, maps in sanity.method_maps(split, x, TARGET, METHODS).items():
                torch.testing.assert_close(kept[("independent", depth)][method], maps, rtol=0, atol=0)


def test_rows_are_tidy_and_head_randomisation_moves_only_head_dependent_maps(net, x):
    rows, _ = _run(net, x, layers=["fc", "head_conv", "blocks.1"], images=["a", "b"])
    assert list(rows.columns) == ["image", "method", "mode", "depth", "layer", "part", "ssim", "spearman"]
    assert len(rows) == 2 * 4 * len(METHODS) * 2 and set(rows.image) == {"a", "b"}
    head = rows[rows.part == "head"]
    # eigencam and random ignore the head, so their maps stay exactly the trained ones
    agnostic = head[head.method.isin(["eigencam", "random"])]
    np.testing.assert_allclose(agnostic.ssim, 1.0, atol=1e-12)
    assert (head[head.method == "gradcam"].ssim < 1 - 1e-6).any()
    assert (rows[rows.part == "body"].query("method == 'eigencam'").ssim < 1 - 1e-6).all()


def test_seeded_and_deterministic(net, x):
    first, _ = _run(net, x, seed=1)
    again, _ = _run(net, x, seed=1)
    other, _ = _run(net, x, seed=2)
    assert first.equals(again)
    assert not np.allclose(first.ssim, other.ssim)


def test_ssim_against_hand_computed_values():
    zeros, ones = np.zeros((7, 7)), np.ones((7, 7))
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    # means 0 and 1, no variance: SSIM = C1 C2 / ((0 + 1 + C1) C2)
    assert sanity.map_ssim(zeros, ones) == pytest.approx(c1 / (1 + c1), rel=1e-12)
    assert sanity.map_ssim(ones, ones) == 1.0
    # a 7 x 7 map is one window of skimage's 7 x 7 uniform filter: SSIM from the sample moments of the whole map
    a = np.random.default_rng(0).random((7, 7))
    b = np.clip(a ** 2 + 0.1, 0, 1)
    mu_a, mu_b = a.mean(), b.mean()
    var_a, var_b = a.var(ddof=1), b.var(ddof=1)
    cov = ((a - mu_a) * (b - mu_b)).sum() / 48
    expected = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    assert sanity.map_ssim(a, b) == pytest.approx(expected, rel=1e-10)
    assert sanity.map_ssim(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, rel=1e-10)


def test_spearman_against_hand_computed_values():
    # ranks 1 2 3 4 vs 1 3 2 4: rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert sanity.map_spearman([[0.1, 0.2], [0.3, 0.4]], [[0.0, 0.5], [0.2, 0.9]]) == pytest.approx(0.8)
    assert sanity.map_spearman([[0.1, 0.2], [0.3, 0.4]], [[0.4, 0.3], [0.2, 0.1]]) == pytest.approx(-1.0)
    # ties share their mean rank: (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): Pearson of the ranks
    ranks = np.array([1, 2.5, 2.5, 4])
    assert sanity.map_spearman([[0, 1], [1, 2]], [[0, 1], [2, 3]]) == pytest.approx(
        np.corrcoef(ranks, [1, 2, 3, 4])[0, 1])
    assert math.isnan(sanity.map_spearman(np.zeros((2, 2)), [[0, 1], [2, 3]]))  # a constant map has no ranking


def test_logit_randomisation(net, x):
    split = lu.split_model(net, CUT)
    rows, other = sanity.logit_randomisation(split, x, TARGET, METHODS, seed=0)
    assert (other != torch.tensor(TARGET)).all() and ((other >= 0) & (other < 3)).all()
    assert torch.equal(other, sanity.logit_randomisation(split, x, TARGET, METHODS, seed=0)[1])
    assert rows.other.tolist() == other.repeat(len(METHODS)).tolist()
    agnostic = rows[rows.method.isin(["eigencam", "random"])]
    np.testing.assert_allclose(agnostic.ssim, 1.0, atol=1e-12)  # they ignore the class
    for i in range(len(x)):  # each row compares the map of the target with the map of the other class
        own = lu.saliency("liftcam", split, x[i:i + 1], TARGET[i])[0]
        drawn = lu.saliency("liftcam", split, x[i:i + 1], int(other[i]))[0]
        row = rows[(rows.method == "liftcam") & (rows.image == str(i))].iloc[0]
        assert row.ssim == pytest.approx(sanity.map_ssim(own, drawn), abs=1e-6)
    drawn = sanity.random_other_classes(torch.zeros(1000, dtype=torch.long), 4, seed=0)
    assert set(drawn.tolist()) == {1, 2, 3}


def test_model_comparison(net, x):
    split = lu.split_model(net, CUT)
    same = sanity.model_comparison(split, split, x, TARGET, METHODS)
    np.testing.assert_allclose(same.ssim, 1.0, atol=1e-12)
    other = lu.split_model(sanity.randomised_copy(net, ["blocks.1", "head_conv", "fc"]), CUT)
    assert (sanity.model_comparison(split, other, x, TARGET, ["liftcam"]).ssim < 1 - 1e-6).all()
    with pytest.raises(ValueError, match="target must be given"):
        sanity.model_comparison(split, other, x, None, METHODS)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"modes": ["cascade"]}, "modes must be a list of"),
    ({"modes": "cascading"}, "modes must be a list of"),
    ({"layers": ["nope"]}, "unknown layer 'nope'.*fc, head_conv"),
    ({"layers": ["blocks.1.1"]}, "no parameters"),
    ({"layers": ["fc", "fc"]}, "must not repeat"),
    ({"layers": "fc"}, "non-empty list"),
    ({"images": ["a"]}, "name each of the 2 images"),
])
def test_bad_input_is_refused_clearly(net, x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _run(net, x, **kwargs)


def test_unknown_methods_and_maps_out_of_range_are_refused(net, x):
    with pytest.raises(ValueError, match="unknown method.*'nope'.*valid methods: gradcam"):
        sanity.parameter_randomisation(net, CUT, x, ["gradcam", "nope"])
    with pytest.raises(ValueError, match="unknown method"):
        sanity.parameter_randomisation(net, CUT, x, [])
    with pytest.raises(ValueError, match="unknown layer"):
        sanity.parameter_randomisation(net, "nowhere", x, ["gradcam"])
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        sanity.map_ssim(np.full((7, 7), 2.0), np.zeros((7, 7)))
    with pytest.raises(ValueError, match="same shape"):
        sanity.map_ssim(np.zeros((7, 7)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="one map of shape"):
        sanity.map_spearman(np.zeros(4), np.zeros(4))
