"""Shapley values of the channel game (Eq. 6), SHAP-CAM (Algorithm 1) and local accuracy."""

import itertools
import math

import pytest
import torch
from conftest import head_values
from torch import nn

import liftcam_utils as lu
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


def test_antithetic_orderings_reach_the_shapley_values_with_fewer_orderings(tiny, x):
    """Same estimator, less variance: over 20 seeds the mean error with P antithetic orderings is
    below that of P independent ones; local accuracy holds either way."""
    exact = lu.coefficients("exact_shap", tiny, x)
    errors = {False: [], True: []}
    for seed in range(20):
        for antithetic in (False, True):
            alpha = lu.coefficients("shapcam", tiny, x, n_permutations=6, seed=seed, antithetic=antithetic)
            errors[antithetic].append((alpha - exact).norm().item())
    assert sum(errors[True]) < 0.8 * sum(errors[False])
    full, empty, _ = head_values(tiny, x)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-5, atol=1e-5)
    pairs = lu.methods.shapley.antithetic_orderings(5, 3, seed=1)
    assert torch.equal(pairs[1], pairs[0].flip(0)) and pairs.shape == (3, 5)
