"""The channel game: factored evaluation (R o M o P) equals full head evaluation."""

import pytest
import torch
from torch import nn

import liftcam_utils as lu
from liftcam_utils.cam import prepare
from liftcam_utils.channel_game import ChannelGame
from liftcam_utils.head_factoring import factor_head


@pytest.mark.parametrize("model_name, layer, mixing_end, pointwise, tail", [
    ("lite0", None, "_fc", False, None),  # avgpool, view, dropout, fc: M is the fc; R is empty
    # dw-conv, BN, ReLU6 before the project conv; M = project, BN, head conv, BN (1 x 1 convs); then ReLU6
    ("lite0", "_blocks.15._swish@0", "_bn1", True, ["_avg_pooling", "_dropout", "_fc"]),
    ("lite0", "_blocks.15", "_bn1", True, ["_avg_pooling", "_dropout", "_fc"]),  # M = head conv + BN
    # max-pool, avgpool, flatten before it; ReLU, dropout, fc, ReLU after it
    ("vgg16", None, "classifier.0", False, ["classifier.5", "classifier.6"]),
    ("resnet50", None, "fc", False, None),
])
def test_heads_factor_after_their_first_mixing_layer(request, model_name, layer, mixing_end, pointwise, tail):
    split = request.getfixturevalue(model_name).split(layer)
    factors = factor_head(split.head)
    assert factors is not None
    names = [n.target for n in factors.mix.graph.nodes if n.op == "call_module"]
    assert names[-1] == mixing_end
    assert (factors.pointwise is not None) == pointwise
    if tail is None:
        assert factors.tail is None
    else:
        assert [n.target for n in factors.tail.graph.nodes if n.op == "call_module"] == tail


def test_the_affine_tail_folds_into_one_readout_vector(lite0):
    """After ReLU6 come avgpool, view, dropout and fc: F^c = w . ReLU6(z) + b with w = fc.weight[c] / 49
    at every position of channel j."""
    factors = factor_head(lite0.split("_blocks.15").head)
    weight, bias = factors.readout(torch.zeros(1280, 7, 7), 3)
    fc = lite0.net._fc
    expected = fc.weight[3].detach()[:, None].expand(1280, 49) / 49
    torch.testing.assert_close(weight.view(1280, 49), expected, rtol=1e-6, atol=1e-9)
    assert bias.item() == pytest.approx(fc.bias[3].item(), abs=1e-7)


def test_a_gate_before_the_first_mixing_layer_prevents_factoring():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            a = self.features(x)
            return self.fc((a * torch.sigmoid(a.mean((2, 3), keepdim=True))).mean((2, 3)))

    assert factor_head(lu.split_model(Gated().eval(), "features.1").head) is None


class _ShiftedConv(nn.Conv2d):
    """A 1 x 1 convolution whose forward also moves every map one row down: affine, not pointwise."""

    def forward(self, x):
        return super().forward(x.roll(1, dims=-2))


def _randomise_batch_norms(net: nn.Module, generator: torch.Generator) -> nn.Module:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(size, generator=generator))
            module.bias.data.copy_(torch.randn(size, generator=generator))
    return net.eval()


def _random_split(channelwise: bool, first_mixing: type = nn.Conv2d, seed: int = 0):
    """body: conv + ReLU (40 maps); head: [dw-conv, BN, ReLU6] (P), 1 x 1 conv, BN, 1 x 1 conv, BN (M),
    ReLU6, avgpool, fc (R); random weights and batch-norm statistics."""
    torch.manual_seed(seed)
    p = [nn.Conv2d(40, 40, 3, padding=1, groups=40), nn.BatchNorm2d(40), nn.ReLU6()] if channelwise else []
    net = nn.Sequential(
        nn.Conv2d(3, 40, 3, padding=1), nn.ReLU(), *p,
        first_mixing(40, 24, 1), nn.BatchNorm2d(24), nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32),
        nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )
    split = lu.split_model(_randomise_batch_norms(net, torch.Generator().manual_seed(seed)), "1")
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    return split, x


@pytest.mark.parametrize("channelwise", [True, False])
def test_outer_product_contributions_equal_evaluated_ones(channelwise):
    """A pointwise M (1 x 1 convs and batch norms): D_k = W'[:, k] (x) (P(A)_k - P(0)_k) equals
    M(P(A e_k)) - M(P(0)), with and without channelwise ops P before M."""
    split, x = _random_split(channelwise)
    factors = factor_head(split.head)
    assert factors.pointwise is not None and (factors.pointwise[0] is None) == (not channelwise)
    maps = prepare(split, x).maps[0]
    base, full, rows = factors.contributions(maps, batch_size=7)
    assert rows.shape == (40, 32 * 6 * 6)
    torch.testing.assert_close(rows, factors._evaluated_rows(maps, base, batch_size=7), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base.flatten() + rows.sum(0), full.flatten(), rtol=1e-5, atol=1e-5)
    # against float64 evaluations of M o P: within a few float32 roundings of each entry
    split.net.double()
    exact = factors._evaluated_rows(maps.double(), factors.mix(torch.zeros_like(maps.double())[None])[0], 7)
    assert (rows.double() - exact).abs().max() <= 1e-6 * exact.abs().max()


def test_a_one_by_one_convolution_that_moves_values_falls_back_to_evaluated_contributions():
    split, x = _random_split(channelwise=True, first_mixing=_ShiftedConv)
    factors = factor_head(split.head)
    assert factors.pointwise is not None  # its type and sizes look pointwise ...
    maps = prepare(split, x).maps[0]
    base, full, _ = factors.contributions(maps, batch_size=7)
    assert factors._outer_product_rows(maps, base, full) is None  # ... but the rows do not add up
    inputs = prepare(split, x)
    game = ChannelGame(inputs, 1, batch_size=7)
    coalitions = torch.rand(20, 40, generator=torch.Generator().manual_seed(2)) < 0.5
    torch.testing.assert_close(game.values(coalitions), _full_head_values(inputs, 1, coalitions),
                               rtol=1e-5, atol=1e-5)


def test_a_spatial_mixing_convolution_is_not_pointwise():
    class Spatial(nn.Conv2d):
        def __init__(self, channels_in, channels_out, _):
            super().__init__(channels_in, channels_out, 3, padding=1)

    split, _ = _random_split(channelwise=True, first_mixing=Spatial)
    assert factor_head(split.head).pointwise is None


def _full_head_values(inputs, index, coalitions):
    maps = inputs.maps[index]
    with torch.no_grad():
        return inputs.split.head(maps[None] * coalitions[:, :, None, None].float())[:, inputs.target[index]]


@pytest.mark.parametrize("layer", ["_blocks.15._swish@0", "_blocks.15"])
def test_factored_values_equal_full_head_values(lite0, images, layer):
    split = lite0.split(layer)
    inputs = prepare(split, images[:1])
    game = ChannelGame(inputs, 0, batch_size=64)
    n = game.n
    generator = torch.Generator().manual_seed(0)
    coalitions = torch.rand(12, n, generator=generator) < torch.linspace(0.05, 0.95, 12)[:, None]
    coalitions = torch.cat([coalitions, torch.zeros(1, n, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)])
    expected = _full_head_values(inputs, 0, coalitions)
    # float32 sums of up to N/2 contribution rows: logits (|F| ~ 10) agree to ~3e-5 relative
    torch.testing.assert_close(game.values(coalitions), expected, rtol=1e-4, atol=1e-3)
    # the empty and full coalitions take the same path as the full head: exact
    torch.testing.assert_close(game.values(coalitions[-2:]), expected[-2:], rtol=1e-6, atol=1e-6)


def _prefixes(ordering):
    rank = torch.empty_like(ordering)
    rank[ordering] = torch.arange(len(ordering))
    return rank[None, :] < torch.arange(1, len(ordering))[:, None]


def test_ordering_values_are_the_prefix_values(vgg16, images):
    inputs = prepare(vgg16.split(), images[:1])
    game = ChannelGame(inputs, 0, batch_size=128)
    orderings = torch.stack([torch.randperm(game.n, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    expected = torch.stack([_full_head_values(inputs, 0, _prefixes(o)) for o in orderings])
    torch.testing.assert_close(game.ordering_values(orderings), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(game.ordering_values(orderings[1]), expected[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channelwise", [True, False])
def test_batches_of_orderings_give_each_ordering_the_same_values(channelwise):
    """Whatever the batch size (prefix chunks of 3 to 16 steps, 1 to 4 orderings at a time), every
    ordering gets the prefix values of the full head, and the same ones: the running sums are the
    same float operations; only R's reductions over a batch of a different size may round the last bit
    differently."""
    split, x = _random_split(channelwise)
    inputs = prepare(split, x)
    orderings = torch.stack([torch.randperm(40, generator=torch.Generator().manual_seed(s)) for s in range(5)])
    expected = torch.stack([_full_head_values(inputs, 1, _prefixes(o)) for o in orderings])
    results = []
    for batch_size in (3, 16, 64):
        game = ChannelGame(inputs, 1, batch_size=batch_size)
        values = game.ordering_values(orderings)
        torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(game.ordering_values(orderings[3]), values[3], rtol=1e-6, atol=1e-6)
        results.append(values)
    assert [ChannelGame(inputs, 1, batch_size=b).orderings_per_batch for b in (3, 16, 64)] == [1, 1, 4]
    for values in results[1:]:
        torch.testing.assert_close(values, results[0], rtol=1e-6, atol=1e-6)
    marginals = game.marginals(orderings)
    torch.testing.assert_close(marginals[3], game.marginals(orderings[3]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(marginals.sum(1), (game.ends[1] - game.ends[0]).expand(5), rtol=1e-6, atol=1e-6)


def test_bad_coalitions_are_refused(resnet50, images):
    game = ChannelGame(prepare(resnet50.split(), images[:1]), 0)
    with pytest.raises(ValueError, match=r"shape \(M, 2048\)"):
        game.values(torch.ones(3, 7))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ChannelGame(prepare(resnet50.split(), images[:1]), 0, batch_size=0)


def test_one_term_coalitions_take_the_sparse_path_exactly(lite0, images):
    """Ablation-style coalitions (all but one channel) against the full head."""
    inputs = prepare(lite0.split("_blocks.15._swish@0"), images[:1])
    game = ChannelGame(inputs, 0)
    without_one = 1 - torch.eye(game.n)[:40]
    torch.testing.assert_close(game.values(without_one), _full_head_values(inputs, 0, without_one),
                               rtol=1e-4, atol=1e-4)
