"""The channel game: factored evaluation (R o M o P) equals full head evaluation."""

import pytest
import torch
from torch import nn

import liftcam_utils as lu
from liftcam_utils.cam import prepare
from liftcam_utils.channel_game import ChannelGame
from liftcam_utils.head_factoring import factor_head


@pytest.mark.parametrize("model_name, layer, mixing_end", [
    ("lite0", None, "_fc"),  # avgpool, view, dropout, fc: M is the fc
    # dw-conv, BN, ReLU6 before the project conv; M = project, BN, head conv, BN; then ReLU6
    ("lite0", "_blocks.15._swish@0", "_bn1"),
    ("lite0", "_blocks.15", "_bn1"),  # M = head conv + BN
    ("vgg16", None, "classifier.0"),  # max-pool, avgpool, flatten before it; ReLU after it
    ("resnet50", None, "fc"),
])
def test_heads_factor_after_their_first_mixing_layer(request, model_name, layer, mixing_end):
    split = request.getfixturevalue(model_name).split(layer)
    factors = factor_head(split.head)
    assert factors is not None
    names = [n.target for n in factors.mix.graph.nodes if n.op == "call_module"]
    assert names[-1] == mixing_end


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


def test_ordering_values_are_the_prefix_values(vgg16, images):
    inputs = prepare(vgg16.split(), images[:1])
    game = ChannelGame(inputs, 0, batch_size=128)
    ordering = torch.randperm(game.n, generator=torch.Generator().manual_seed(1))
    rank = torch.empty_like(ordering)
    rank[ordering] = torch.arange(game.n)
    prefixes = rank[None, :] < torch.arange(1, game.n)[:, None]
    expected = _full_head_values(inputs, 0, prefixes)
    torch.testing.assert_close(game.ordering_values(ordering), expected, rtol=1e-4, atol=1e-5)


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
