"""Shapley values of the channel game (Eq. 6), SHAP-CAM (Algorithm 1) and local accuracy."""

import itertools
import math

import pytest
import torch
from conftest import head_values
from torch import nn

import liftcam_utils as lu
from liftcam_utils.engine.cam_input import prepare
from liftcam_utils.engine.channel_game import ChannelGame
from liftcam_utils.methods import shapley
from liftcam_utils.methods.shapley import random_orderings


class _TinyNonLinear(nn.Module):
    """6 channels, a ReLU + max-pool + MLP head: small enough for all 2^6 coalitions."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.mlp = nn.Sequential(nn.Linear(6 * 3 * 3, 10), nn.Tanh(), nn.Linear(10, 4))

    def forward(self, x):
        return self.mlp(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture
def tiny():
    torch.manual_seed(2)
    return lu.split_model(_TinyNonLinear().eval(), "features.1")


@pytest.fixture
def x():
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(5))


def _shapley_by_orderings(split, x, target):
    """Eq. 6 as the mean marginal over all N! orderings, written independently of the library."""
    with torch.no_grad():
        maps = split.body(x)
    n = maps.shape[1]
    phi = torch.zeros(x.shape[0], n, dtype=torch.float64)
    for b in range(x.shape[0]):
        cache = {}

        def value(coalition, b=b, cache=cache):
            key = tuple(sorted(coalition))
            if key not in cache:
                mask = torch.zeros(n)
                mask[list(key)] = 1
                cache[key] = split.head(maps[b:b + 1] * mask[None, :, None, None])[0, target[b]].item()
            return cache[key]

        for order in itertools.permutations(range(n)):
            for i, k in enumerate(order):
                phi[b, k] += value(order[:i + 1]) - value(order[:i])
    return (phi / math.factorial(n)).float()


def test_exhaustive_exact_shap_matches_all_orderings(tiny, x):
    target = torch.tensor([1, 3])
    with torch.no_grad():
        expected = _shapley_by_orderings(tiny, x, target)
    alpha = lu.coefficients("exact_shap", tiny, x, target=target)
    torch.testing.assert_close(alpha, expected, rtol=1e-4, atol=1e-5)
    full, empty, _ = head_values(tiny, x, target)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-5, atol=1e-5)
    # LIFT-CAM is only an approximation on this non-linear head, but a close one
    lift = lu.coefficients("liftcam", tiny, x, target=target)
    assert not torch.allclose(lift, alpha, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(lift, alpha).min() > 0.9


@pytest.mark.parametrize("n_permutations", [1, 2, 7, 50])
def test_shapcam_local_accuracy_for_every_p(tiny, x, n_permutations):
    alpha = lu.coefficients("shapcam", tiny, x, n_permutations=n_permutations, seed=3)
    full, empty, _ = head_values(tiny, x)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-5, atol=1e-5)


def test_shapcam_converges_to_exact_shapley(tiny, x):
    exact = lu.coefficients("exact_shap", tiny, x)
    errors = [
        (lu.coefficients("shapcam", tiny, x, n_permutations=p, seed=0) - exact).norm()
        for p in (2, 2000)
    ]
    assert errors[1] < errors[0] / 5
    assert errors[1] < 0.02 * exact.norm()


def test_shapcam_is_seeded_and_independent_of_batch_size(lite0, images):
    split = lite0.split("_blocks.15._swish@0")  # non-linear head, 1152 channels
    first = lu.coefficients("shapcam", split, images[:1], n_permutations=2, seed=11)
    again = lu.coefficients("shapcam", split, images[:1], n_permutations=2, seed=11, batch_size=5)
    # batch_size=5: prefix chunks of 5 steps instead of 16. The running sums are the same float operations;
    # the readout of 5 rows instead of 16 may round a logit (|F| ~ 10, float32 spacing ~1e-6) differently.
    torch.testing.assert_close(first, again, rtol=1e-5, atol=4e-6)
    other = lu.coefficients("shapcam", split, images[:1], n_permutations=2, seed=12)
    assert not torch.allclose(first, other)
    full, empty, _ = head_values(split, images[:1])
    torch.testing.assert_close(first.sum(1), full - empty, rtol=1e-4, atol=1e-4)


def test_orderings_are_seeded_permutations():
    orderings = random_orderings(5, 3, seed=4)
    assert torch.equal(orderings, random_orderings(5, 3, seed=4))
    assert all(sorted(o.tolist()) == list(range(5)) for o in orderings)


def test_exact_shap_closed_form_on_affine_head(resnet50, images):
    """On an affine head all marginals of k are equal: alpha_k = F^c(A_k alone) - F^c(0)."""
    split = resnet50.split()
    alpha = lu.coefficients("exact_shap", split, images[:1])
    with torch.no_grad():
        maps = split.body(images[:1])
        c = split.head(maps).argmax(1)
        k = int(alpha.abs().argmax())
        only_k = torch.zeros_like(maps)
        only_k[:, k] = maps[:, k]
        by_hand = split.head(only_k)[0, c] - split.head(torch.zeros_like(maps))[0, c]
    torch.testing.assert_close(alpha[0, k], by_hand[0], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Variance-reduced SHAP-CAM: ordering designs and the quadratic control variate
# ------------------------------------------------------------------------------------------------


class _SmallReLU6(nn.Module):
    """8 channels; head: 1 x 1 conv, ReLU6, average pool, fc (EfficientNet-Lite0's head after its last block, with
    its elementwise R): cheap, and small enough for all 2^8 coalitions."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(8, 16, 1)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.mix(self.features(x)))), 1))


class _Quadratic(nn.Module):
    """A head quadratic in the maps, so the channel game has order 2: ``fc2((fc1(mean A))^2)``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.fc1 = nn.Linear(6, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        hidden = self.fc1(self.features(x).mean((2, 3)))
        return self.fc2(hidden * hidden)


@pytest.fixture
def small_inputs(x):
    torch.manual_seed(2)
    split = lu.split_model(_SmallReLU6().eval(), "features.1")
    return prepare(split, x)


_DESIGNS = list(shapley.ESTIMATORS)
_ESTIMATORS = [(design, control) for design in _DESIGNS for control in shapley.CONTROLS]


@pytest.mark.parametrize("estimator, control", _ESTIMATORS)
@pytest.mark.parametrize("n_permutations", [1, 5])
def test_every_estimator_keeps_local_accuracy(small_inputs, estimator, control, n_permutations):
    alpha = shapley.shapcam(small_inputs, n_permutations, seed=3, estimator=estimator, control=control)
    full, empty, _ = head_values(small_inputs.split, small_inputs.x)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator, control", _ESTIMATORS)
def test_every_estimator_is_unbiased(small_inputs, estimator, control):
    """Over 300 seeds the mean estimate is within 4.5 standard errors of the exhaustive Shapley values on every
    channel of both images (P = 3: an odd P leaves one ordering of an antithetic design unpaired)."""
    exact = shapley.exact_shap(small_inputs).double()
    estimates = torch.stack([shapley.shapcam(small_inputs, 3, seed=seed, estimator=estimator, control=control)
                             for seed in range(300)]).double()
    error = (estimates.mean(0) - exact).abs()
    standard_error = estimates.std(0) / 300 ** 0.5
    assert standard_error.max() > 0
    assert (error <= 4.5 * standard_error + 1e-6).all(), (error / standard_error).max()


def test_variance_reduced_estimators_have_less_error_at_equal_cost(small_inputs):
    """Same P, hence the same head evaluations: the mean squared error to the exhaustive Shapley values over
    100 seeds is below plain sampling's for every other estimator, and the control variate reduces the
    stratified design's."""
    exact = shapley.exact_shap(small_inputs).double()

    def mean_squared_error(estimator, control=None):
        return sum(((shapley.shapcam(small_inputs, 8, seed=seed, estimator=estimator, control=control).double()
                     - exact) ** 2).sum().item() for seed in range(100)) / 100

    plain = mean_squared_error("plain")
    errors = {(design, control): mean_squared_error(design, control) for design, control in _ESTIMATORS}
    assert errors["plain", None] == plain
    for (design, control), error in errors.items():
        if (design, control) != ("plain", None):
            assert error < 0.7 * plain, (design, control, error / plain)
    assert errors["stratified", "quadratic"] < 0.5 * errors["stratified", None]


def test_antithetic_pairs_are_exact_on_a_game_of_order_two(x):
    torch.manual_seed(0)
    split = lu.split_model(_Quadratic().eval(), "features.1")
    exact = lu.coefficients("exact_shap", split, x)
    for estimator in ("antithetic", "stratified_antithetic"):
        alpha = lu.coefficients("shapcam", split, x, n_permutations=2, seed=4, estimator=estimator)
        torch.testing.assert_close(alpha, exact, rtol=1e-5, atol=1e-6)
    plain = lu.coefficients("shapcam", split, x, n_permutations=2, seed=4)
    assert (plain - exact).abs().max() > 1e-3


def test_the_control_has_no_effect_on_antithetic_pairs(small_inputs):
    """g has order 2, so each antithetic pair's mean of its marginals is exactly phi(g)."""
    for design in ("antithetic", "stratified_antithetic"):
        plain = shapley.shapcam(small_inputs, 4, seed=1, estimator=design)
        controlled = shapley.shapcam(small_inputs, 4, seed=1, estimator=design, control="quadratic")
        torch.testing.assert_close(controlled, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator, control", [("stratified", None), ("stratified_antithetic", None),
                                                ("stratified", "quadratic")])
def test_estimators_are_seeded_and_independent_of_the_batch(small_inputs, estimator, control):
    alpha = shapley.shapcam(small_inputs, 4, seed=7, estimator=estimator, control=control)
    assert torch.equal(alpha, shapley.shapcam(small_inputs, 4, seed=7, estimator=estimator, control=control))
    assert not torch.allclose(alpha, shapley.shapcam(small_inputs, 4, seed=8, estimator=estimator, control=control))
    alone = shapley.shapcam(prepare(small_inputs.split, small_inputs.x[1:]), 4, seed=7, estimator=estimator,
                            control=control)
    torch.testing.assert_close(alone[0], alpha[1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(shapley.shapcam(small_inputs, 4, seed=7, batch_size=3, estimator=estimator,
                                               control=control), alpha, rtol=1e-6, atol=1e-7)


def test_variance_reduced_estimators_on_lite0(lite0, images):
    """The real non-linear head (1152 channels): seeded, batch-size independent, locally accurate."""
    split = lite0.split("_blocks.15._swish@0")
    inputs = prepare(split, images[:1])
    full, empty, _ = head_values(split, images[:1])
    for estimator, control in (("stratified_antithetic", None), ("stratified", "quadratic")):
        first = shapley.shapcam(inputs, 2, seed=11, estimator=estimator, control=control)
        again = shapley.shapcam(inputs, 2, seed=11, batch_size=5, estimator=estimator, control=control)
        # as in test_shapcam_is_seeded_and_independent_of_batch_size, the readout of 5 rows instead of 16 may round
        # a logit differently, and with the control so may that of z^2: a few float32 spacings of |F| ~ 10
        torch.testing.assert_close(first, again, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(first.sum(1), full - empty, rtol=1e-4, atol=1e-4)


def test_the_quadratic_control_has_exact_shapley_values(small_inputs, x):
    """Eq. (2) of liftcam_utils.engine.quadratic_control against the exhaustive Shapley values of g on all 2^8
    coalitions; the residual game is v - g on each of them. A head whose R is not elementwise gets no control."""
    game = ChannelGame.of(small_inputs, 0)
    control = game.quadratic_control
    assert control.square_weight.abs().max() > 0
    coalitions = shapley._all_coalitions(8)
    states = (game._base.flatten() + coalitions.float() @ game._contributions).double()
    g = states.square() @ control.square_weight.double()
    torch.testing.assert_close(control.shapley, shapley.exhaustive_shapley(g, 8), rtol=1e-5, atol=1e-7)
    residual = game.minus(control).values(coalitions).double()
    torch.testing.assert_close(residual, game.values(coalitions).double() - g, rtol=1e-5, atol=1e-5)

    class TwoLayerRest(nn.Module):  # R = ReLU, fc, ReLU before the last fc: not elementwise
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(4 * 36, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                     nn.Linear(8, 2))

        def forward(self, images):
            return self.mlp(self.features(images))

    inputs = prepare(lu.split_model(TwoLayerRest().eval(), "features.1"), x)
    assert ChannelGame.of(inputs, 0)._factored is not None and ChannelGame.of(inputs, 0).quadratic_control is None


def test_stratified_orderings_spread_each_players_positions():
    """Each ordering is a permutation; with P = 4, a player's 4 positions fall in 4 different quarters of the
    ordering far more often than with independent orderings (2.7 distinct quarters expected)."""
    def distinct_quarters(orderings):
        positions = orderings.argsort(1)  # (P, N): position of each player
        return torch.stack([(positions // 50 == q).any(0) for q in range(4)]).sum(0).double().mean().item()

    for antithetic in (False, True):
        orderings = shapley.stratified_orderings(200, 4, seed=2, antithetic=antithetic)
        assert torch.equal(orderings.sort(1).values, torch.arange(200).expand(4, 200))
        assert torch.equal(orderings, shapley.stratified_orderings(200, 4, seed=2, antithetic=antithetic))
        assert distinct_quarters(orderings) > 3.5
    assert distinct_quarters(random_orderings(200, 4, seed=2)) < 3
    pairs = shapley.stratified_orderings(7, 5, seed=1, antithetic=True)
    assert pairs.shape == (5, 7) and torch.equal(pairs[1], pairs[0].flip(0)) and torch.equal(pairs[3], pairs[2].flip(0))
    pairs = shapley.antithetic_orderings(5, 3, seed=1)
    assert torch.equal(pairs[1], pairs[0].flip(0)) and pairs.shape == (3, 5)


def test_plain_is_the_default_and_bad_options_are_refused(small_inputs, resnet50, images):
    assert torch.equal(shapley.shapcam(small_inputs, 3, seed=2), shapley.shapcam(small_inputs, 3, seed=2,
                                                                                  estimator="plain"))
    with pytest.raises(ValueError, match="unknown estimator 'latin'; valid: plain, antithetic"):
        shapley.shapcam(small_inputs, 3, estimator="latin")
    with pytest.raises(ValueError, match="unknown control 'linear'"):
        shapley.shapcam(small_inputs, 3, control="linear")
    with pytest.raises(ValueError, match="control='quadratic' needs a head"):  # an affine head: no elementwise R
        lu.coefficients("shapcam", resnet50.split(), images[:1], n_permutations=1, control="quadratic")
