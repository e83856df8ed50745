"""The channel game: factored evaluation (R o M o P) equals full head evaluation."""

import itertools

import pytest
import torch
from conftest import randomise_batch_norms
from torch import nn

import liftcam_utils as lu
from liftcam_utils.engine import head_factoring
from liftcam_utils.engine.cam_input import CamInput, prepare
from liftcam_utils.engine.channel_game import ChannelGame
from liftcam_utils.engine.head_factoring import factor_head
from liftcam_utils.methods.shapley import exact_shap, exhaustive_shapley, random_orderings, shapcam


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
    split = lu.split_model(randomise_batch_norms(net, torch.Generator().manual_seed(seed)), "1")
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


def _admit_subclasses(monkeypatch):
    """The former rule, to exercise the additivity check behind it: a module subclass taken for its base."""
    monkeypatch.setattr(head_factoring, "_acts_as", lambda module, types: isinstance(module, types), raising=False)


def test_a_one_by_one_convolution_that_moves_values_falls_back_to_evaluated_contributions(monkeypatch):
    """A subclass of a 1 x 1 convolution is an opaque op: the head is evaluated in full. Were it taken for a
    pointwise convolution, its outer-product rows would not add up, and evaluated rows would replace them."""
    split, x = _random_split(channelwise=True, first_mixing=_ShiftedConv)
    assert factor_head(split.head) is None
    inputs = prepare(split, x)
    coalitions = torch.rand(20, 40, generator=torch.Generator().manual_seed(2)) < 0.5
    torch.testing.assert_close(ChannelGame(inputs, 1).values(coalitions), _full_head_values(inputs, 1, coalitions),
                               rtol=0, atol=1e-6)
    _admit_subclasses(monkeypatch)
    split, x = _random_split(channelwise=True, first_mixing=_ShiftedConv)
    factors = factor_head(split.head)
    assert factors.pointwise is not None  # its type and sizes look pointwise ...
    maps = prepare(split, x).maps[0]
    base, full, rows = factors.contributions(maps, batch_size=7)
    outer = factors._outer_product_rows(maps, base)  # ... but its rows do not add up: evaluated ones replace them
    assert (base.flatten() + outer.sum(0) - full.flatten()).abs().max() > 1e-2 * full.abs().max()
    torch.testing.assert_close(base.flatten() + rows.sum(0), full.flatten(), rtol=1e-5, atol=1e-5)
    inputs = prepare(split, x)
    game = ChannelGame(inputs, 1, batch_size=7)
    coalitions = torch.rand(20, 40, generator=torch.Generator().manual_seed(2)) < 0.5
    torch.testing.assert_close(game.values(coalitions), _full_head_values(inputs, 1, coalitions),
                               rtol=1e-5, atol=1e-5)


def test_a_spatial_mixing_convolution_is_not_pointwise():
    def spatial(channels_in, channels_out, _):
        return nn.Conv2d(channels_in, channels_out, 3, padding=1)

    split, _ = _random_split(channelwise=True, first_mixing=spatial)
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
    assert game._factored is not None  # the additivity check accepts the real head's rows
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
    assert game._factored is not None
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


@pytest.mark.parametrize("kind", ["all but one", "one alone", "mixed with both ends", "a few each"])
def test_coalitions_one_or_a_few_channels_from_an_end_take_rows_exactly(lite0, images, kind):
    """Ablation-style coalitions (all but one channel), their mirror (one channel alone), both in one batch with
    the empty and the full coalition (rows taken from the contributions, not summed), and coalitions of three
    channels (the sparse product) against the full head."""
    inputs = prepare(lite0.split("_blocks.15._swish@0"), images[:1])
    game = ChannelGame(inputs, 0, batch_size=32)
    one = torch.eye(game.n)[:40]
    coalitions = {"all but one": 1 - one, "one alone": one,
                  "mixed with both ends": torch.cat([1 - one[:20], torch.zeros(1, game.n), one[20:],
                                                     torch.ones(1, game.n)]),
                  "a few each": one + one.roll(1, 1) + one.roll(7, 1)}[kind]
    torch.testing.assert_close(game.values(coalitions), _full_head_values(inputs, 0, coalitions),
                               rtol=1e-4, atol=1e-4)


def test_games_of_the_same_maps_share_their_contributions(lite0, images):
    """One image with two targets (a mosaic's quadrants): the second game takes the first's contributions and
    gives the values of a game built on its own; another image's game does not take them."""
    x = torch.cat([images[:1], images[:1], images[1:2]])
    inputs = prepare(lite0.split("_blocks.15._swish@0"), x, torch.tensor([3, 7, 3]))
    first, second, other = (ChannelGame.of(inputs, i) for i in range(3))
    assert second._contributions is first._contributions
    assert other._contributions is not first._contributions
    alone = ChannelGame(prepare(lite0.split("_blocks.15._swish@0"), x[1:2], torch.tensor([7])), 0)
    coalitions = 1 - torch.eye(first.n)[:24]
    torch.testing.assert_close(second.values(coalitions), alone.values(coalitions), rtol=0, atol=0)
    assert not torch.equal(second.values(coalitions), first.values(coalitions))  # the targets differ


# ------------------------------------------------------------------------------------------------
# What may stand before M: ops that keep the channels apart, and nothing that merely looks like one
# ------------------------------------------------------------------------------------------------


class _Reshape(nn.Module):
    """(B, N, h, w) -> (B, N h w) by a method or function call (``nn.Flatten`` is the module form)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, a):
        if self.how == "view":
            return a.view(a.size(0), -1)
        if self.how == "reshape":
            return a.reshape(a.size(0), -1)
        if self.how == "torch.flatten":
            return torch.flatten(a, 1)
        return a.flatten(1)


class _AsPixel(nn.Module):
    """(B, N, h, w) -> (B, N h w, 1, 1), then a ReLU module: P reshapes before a 1 x 1 convolution."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, a):
        return self.relu(a.view(a.size(0), -1, 1, 1))


class _ChannelMax(nn.Conv2d):
    """Looks like a depthwise convolution, but its forward first takes the max of each map and the
    previous channel's map."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1, groups=channels)

    def forward(self, a):
        return super().forward(torch.maximum(a, a.roll(1, dims=1)))


_RESHAPES = ["nn.Flatten", "view", "reshape", "torch.flatten", "method flatten"]


def _reshape(how: str) -> nn.Module:
    return nn.Flatten() if how == "nn.Flatten" else _Reshape(how)


def _game_input(head: nn.Sequential, n: int, seed: int = 0) -> CamInput:
    """Two images' dense positive 2 x 2 maps (N = ``n``) before ``head`` (random weights), targets 0 and 2."""
    torch.manual_seed(seed)
    split = lu.split_model(nn.Sequential(nn.Conv2d(3, n, 1), nn.ReLU(), head).eval(), "1")
    maps = torch.rand(2, n, 2, 2, generator=torch.Generator().manual_seed(seed)) + 0.1
    return CamInput(split, torch.zeros(2, 3, 2, 2), maps, torch.tensor([0, 2]))


def _all_coalitions(n: int) -> torch.Tensor:
    """Every coalition, coalition S at row sum_{k in S} 2^k."""
    return (torch.arange(2 ** n)[:, None] >> torch.arange(n)) & 1


def _mean_marginals(values: list[float], orderings) -> torch.Tensor:
    """Each player's marginal contribution averaged over ``orderings``, from all 2^N coalition values
    (:func:`_all_coalitions` order): exhaustive Shapley values (Eq. 6) over all N! orderings."""
    orderings = [list(o) for o in orderings]
    phi = torch.zeros(len(orderings[0]), dtype=torch.float64)
    for ordering in orderings:
        code = 0
        for k in ordering:
            phi[k] += values[code | 1 << k] - values[code]
            code |= 1 << k
    return phi / len(orderings)


@pytest.mark.parametrize("how", _RESHAPES)
def test_a_max_pool_across_channel_borders_after_a_reshape_is_not_factored(how):
    """Flatten, then a max over windows of 3 entries (stride 2) of the 4N-vector: the window of entries
    2..4 holds the last two of channel 0 and the first of channel 1, so the head is not additive over
    channels. Coalition values, exact Shapley values and SHAP-CAM equal brute force on the head itself."""
    n = 6
    inputs = _game_input(nn.Sequential(_reshape(how), nn.MaxPool1d(3, stride=2), nn.Linear(11, 3)), n)
    assert factor_head(inputs.split.head) is None
    coalitions = _all_coalitions(n)
    for index in range(2):
        expected = _full_head_values(inputs, index, coalitions)
        # not vacuous: factored values v(0) + sum_{k in S} (v({k}) - v(0)) (R is empty here) miss by up to 0.12
        additive = expected[0] + coalitions.float() @ (expected[2 ** torch.arange(n)] - expected[0])
        assert (additive - expected).abs().max() > 0.1
        torch.testing.assert_close(ChannelGame(inputs, index).values(coalitions), expected, rtol=0, atol=1e-6)
    values = [_full_head_values(inputs, index, coalitions).double().tolist() for index in range(2)]
    exact = torch.stack([_mean_marginals(v, itertools.permutations(range(n))) for v in values])
    torch.testing.assert_close(exact_shap(inputs).double(), exact, rtol=0, atol=1e-6)
    orderings = random_orderings(n, 7, seed=3)
    sampled = torch.stack([_mean_marginals(v, orderings.tolist()) for v in values])
    torch.testing.assert_close(shapcam(inputs, n_permutations=7, seed=3).double(), sampled, rtol=0, atol=1e-6)


def test_a_three_dimensional_pool_of_the_maps_is_not_factored():
    """MaxPool3d reads (B, N, h, w) as an unbatched (C, D, H, W): it pools across channels."""
    n = 6
    inputs = _game_input(nn.Sequential(nn.MaxPool3d((2, 1, 1), stride=1), nn.Conv2d(n - 1, 4, 1), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)), n)
    assert factor_head(inputs.split.head) is None
    coalitions = _all_coalitions(n)
    torch.testing.assert_close(ChannelGame(inputs, 1).values(coalitions), _full_head_values(inputs, 1, coalitions),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["entrywise ops after a reshape", "reshape before a 1 x 1 convolution",
                                  "depthwise convolution with a channel multiplier"])
def test_heads_that_keep_channels_apart_stay_factored(case):
    """After a reshape, entrywise ops (ReLU, dropout, batch norm) still act on each channel's entries
    alone; a reshape before a 1 x 1 convolution rules out the outer product (it reads P's output
    channel k as channel k), not the factoring; a depthwise convolution with a channel multiplier
    (N -> 2N maps) is the first mixing op, an affine M. The game takes the factored path (no
    full-head evaluation per coalition) and equals brute force. None of them has a pointwise M."""
    n = 6
    head, mixing_end = {
        "entrywise ops after a reshape": (
            [_reshape("view"), nn.ReLU(), nn.Dropout(), nn.BatchNorm1d(4 * n), nn.Linear(4 * n, 5), nn.ReLU(),
             nn.Linear(5, 3)], "2.4"),
        "reshape before a 1 x 1 convolution": (
            [_AsPixel(), nn.Conv2d(4 * n, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(5, 3)], "2.1"),
        "depthwise convolution with a channel multiplier": (
            [nn.Conv2d(n, 2 * n, 3, padding=1, groups=n), nn.Conv2d(2 * n, 5, 1), nn.ReLU(),
             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)], "2.1"),
    }[case]
    inputs = _game_input(nn.Sequential(*head), n)
    factors = factor_head(inputs.split.head)
    assert factors is not None and factors.pointwise is None
    assert [m.target for m in factors.mix.graph.nodes if m.op == "call_module"][-1] == mixing_end
    coalitions = _all_coalitions(n)
    for index in range(2):
        game = ChannelGame(inputs, index)
        assert game._factored is factors
        torch.testing.assert_close(game.values(coalitions), _full_head_values(inputs, index, coalitions),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [1, 3])
def test_contributions_that_do_not_add_up_fall_back_to_the_full_head(monkeypatch, kernel):
    """A subclass of a depthwise convolution that mixes neighbouring channels: an opaque op, so the head
    is not factored. Were it taken for its base, the additivity check on the full and random coalitions
    would refuse its rows, and the game would evaluate the full head. With a 1 x 1 convolution next (a
    pointwise M), the outer-product rows even add up on the full coalition; only random ones expose them."""
    n = 8

    def head():
        torch.manual_seed(kernel)
        return nn.Sequential(_ChannelMax(n), nn.ReLU(), nn.Conv2d(n, 4, kernel, padding=kernel // 2), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    assert factor_head(_game_input(head(), n).split.head) is None
    _admit_subclasses(monkeypatch)
    inputs = _game_input(head(), n)
    factors = factor_head(inputs.split.head)
    assert factors is not None and (factors.pointwise is not None) == (kernel == 1)
    maps = inputs.maps[0]
    if kernel == 1:
        base, full = factors.mix(torch.zeros_like(maps)[None])[0], factors.mix(maps[None])[0]
        rows = factors._outer_product_rows(maps, base)
        torch.testing.assert_close(base.flatten() + rows.sum(0), full.flatten(), rtol=1e-5, atol=1e-5)
    assert factors.contributions(maps, batch_size=3) is None
    coalitions = _all_coalitions(n)
    for index in range(2):
        game = ChannelGame(inputs, index)
        assert game._factored is None
        torch.testing.assert_close(game.values(coalitions), _full_head_values(inputs, index, coalitions),
                                   rtol=0, atol=1e-6)


class _SwappedDepthwise(nn.Conv2d):
    """A depthwise convolution whose forward first exchanges maps 0 and 2: linear, channelwise in all but
    the channels' order, which the outer product of a pointwise M reads as the players' order."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1, groups=channels)

    def forward(self, a):
        order = list(range(a.shape[1]))
        order[0], order[2] = 2, 0
        return super().forward(a[:, order])


def _swapped_depthwise_input() -> CamInput:
    """8 maps through the swapping depthwise convolution, ReLU, a 1 x 1 convolution (a pointwise M), ReLU,
    average pooling and a linear layer; seeded weights, the depthwise filters scaled apart."""
    torch.manual_seed(0)
    head = nn.Sequential(_SwappedDepthwise(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        head[0].weight.mul_(torch.arange(1.0, 9.0).view(8, 1, 1, 1))  # map k's filter k + 1 times as strong
    return _game_input(head, 8)


def test_a_channel_swapping_convolution_subclass_gives_the_full_heads_shapley_values():
    """A Conv2d subclass that is not a zero-padded convolution is an opaque op: SHAP-CAM and the exact Shapley
    values are those of the full head, against exhaustive Shapley values (Eq. 6) of its 2^8 coalition values.
    Taken for a depthwise convolution, its outer-product rows gave channels 0 and 2 each other's values (22 %
    and 3 % off the exhaustive values here), and the former check (the full coalition and one fixed random one,
    where channels 0 and 2 are both in) passed them."""
    inputs = _swapped_depthwise_input()
    assert factor_head(inputs.split.head) is None
    coalitions = _all_coalitions(8)
    values = [_full_head_values(inputs, index, coalitions) for index in range(2)]
    exhaustive = torch.stack([exhaustive_shapley(v, 8) for v in values])
    assert (exhaustive[:, 0] - exhaustive[:, 2]).abs().min() > 1e-3  # a swap would show, far beyond the tolerance
    torch.testing.assert_close(exact_shap(inputs).double(), exhaustive, rtol=1e-5, atol=1e-7)
    orderings = random_orderings(8, 5, seed=1)
    sampled = torch.stack([_mean_marginals(v.double().tolist(), orderings.tolist()) for v in values])
    torch.testing.assert_close(shapcam(inputs, n_permutations=5, seed=1).double(), sampled, rtol=1e-5, atol=1e-7)


def test_several_random_coalitions_expose_exchanged_rows(monkeypatch):
    """Were the swapping subclass taken for a depthwise convolution, its outer-product rows (channels 0 and 2
    exchanged) add up on the full coalition and on any coalition holding both or neither; the random
    coalitions of each image expose them, and the evaluated rows, correct for this linear P, replace them."""
    _admit_subclasses(monkeypatch)
    inputs = _swapped_depthwise_input()
    factors = factor_head(inputs.split.head)
    assert factors is not None and factors.pointwise is not None
    for index in range(2):
        maps = inputs.maps[index]
        base, _, rows = factors.contributions(maps, batch_size=3)
        outer = factors._outer_product_rows(maps, base)
        assert not torch.allclose(rows, outer, rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(rows, factors._evaluated_rows(maps, base, batch_size=3), rtol=0, atol=0)
        drawn = head_factoring._random_coalitions(maps)
        assert drawn.shape == (4, 8) and torch.equal(drawn, head_factoring._random_coalitions(maps.clone()))
        assert (drawn[:, 0] != drawn[:, 2]).any()
    assert not torch.equal(head_factoring._random_coalitions(inputs.maps[0]),
                           head_factoring._random_coalitions(inputs.maps[1]))  # each image draws its own
    coalitions = _all_coalitions(8)
    truth = torch.stack([exhaustive_shapley(_full_head_values(inputs, index, coalitions), 8) for index in range(2)])
    torch.testing.assert_close(exact_shap(inputs).double(), truth, rtol=1e-5, atol=1e-7)


class _StaticSamePadding(nn.Conv2d):
    """A convolution that zero-pads its input itself, one more row and column at the end than at the start,
    as EfficientNet's ``Conv2dStaticSamePadding`` does for an even kernel; ``mode="replicate"`` repeats the
    border instead."""

    def __init__(self, channels_in: int, channels_out: int, groups: int = 1, mode: str = "constant"):
        super().__init__(channels_in, channels_out, 4, groups=groups)
        self.mode = mode

    def forward(self, x):
        return super().forward(torch.nn.functional.pad(x, (1, 2, 1, 2), mode=self.mode))


@pytest.mark.parametrize("mode, factored", [("constant", True), ("replicate", False)])
def test_a_subclass_that_zero_pads_before_its_convolution_is_still_a_convolution(mode, factored):
    """A Conv2d subclass that zero-pads, then convolves, computes nn.Conv2d's convolution of a padded input:
    the factoring takes it for a depthwise convolution (P) and a 4 x 4 mixing convolution (M) and the game
    equals the full head. Padding by repeating the border is no zero-padded convolution: the subclass is opaque."""
    n = 6
    torch.manual_seed(0)
    head = nn.Sequential(_StaticSamePadding(n, n, groups=n, mode=mode), nn.ReLU(), _StaticSamePadding(n, 4, mode=mode),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    inputs = _game_input(head, n)
    factors = factor_head(inputs.split.head)
    assert (factors is not None) == factored
    if factored:
        assert [m.target for m in factors.mix.graph.nodes if m.op == "call_module"][-1] == "2.2"
    coalitions = _all_coalitions(n)
    for index in range(2):
        game = ChannelGame(inputs, index)
        assert (game._factored is not None) == factored
        torch.testing.assert_close(game.values(coalitions), _full_head_values(inputs, index, coalitions),
                                   rtol=1e-5, atol=1e-6)
