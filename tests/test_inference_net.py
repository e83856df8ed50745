"""The scoring network: batch norms folded into their convolutions, the same function, or the network itself."""

import pytest
import torch
from conftest import randomise_batch_norms
from torch import nn

import liftcam_utils as lu
from liftcam_utils.engine import inference_net as module
from liftcam_utils.engine.inference_net import inference_net


def _conv_bn_net(shared: bool = False) -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            a = self.conv1(x)
            h = torch.relu(self.bn1(a))
            if shared:  # the convolution's output is read twice: folding the norm would change the other reader
                h = h + a
            h = torch.relu(self.bn2(self.conv2(h)))
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(0)
    return randomise_batch_norms(Net(), torch.Generator().manual_seed(0))


def _norms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_batch_norms_fold_into_their_convolutions_with_the_same_outputs():
    net = _conv_bn_net()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    folded = inference_net(net, x[:1])
    assert folded is not net and _norms(folded) == 0 and _norms(net) == 2  # the network itself is left alone
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_convolution_read_twice_keeps_its_batch_norm():
    net = _conv_bn_net(shared=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    folded = inference_net(net, x[:1])
    assert _norms(folded) == 1  # bn2 folds, bn1 (whose convolution also feeds the skip) does not
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_copy_that_does_not_give_the_networks_outputs_is_not_used(monkeypatch):
    """The probe check can fail: a folding that gets the weights wrong leaves the network in use."""
    def wrong(conv, norm):
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
        fused.weight.data.mul_(1.01)
        return fused

    monkeypatch.setattr(module, "fuse_conv_bn_eval", wrong)
    net = _conv_bn_net()
    assert inference_net(net, torch.randn(1, 3, 16, 16)) is net


def test_networks_with_nothing_to_fold_or_no_graph_are_returned_as_they_are():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(1, 3, 8, 8)
    plain(x)
    assert inference_net(plain, x) is plain

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a value: symbolic tracing cannot follow it
                return self.bn(self.conv(x))
            return self.conv(x)

    net = Untraceable().eval()
    assert inference_net(net, x) is net


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("shapes_vgg", 96)])
def test_the_models_batch_norms_fold(name, size):
    """Every batch norm of EfficientNet-Lite0 and of shapes_vgg follows a convolution of its own; the folded copy
    gives the network's logits (float32 rounding) and the network keeps its modules and mode."""
    loaded = lu.load_model(name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    folded = inference_net(loaded.net, x[:1])
    assert _norms(loaded.net) > 0 and _norms(folded) == 0
    with torch.no_grad():
        torch.testing.assert_close(folded(x), loaded.net(x), rtol=1e-4, atol=1e-4)
