"""split_model: one mechanism for every architecture; head(body(x)) == net(x)."""

import pytest
import torch
from torch import nn

import liftcam_utils as lu
from liftcam_utils.engine.head_ops import is_affine_head


@pytest.mark.parametrize("layer, channels", [
    ("_swish@1", 1280),             # default: after head conv + BN + ReLU6, linear head
    ("_blocks.15._swish@0", 1152),  # inside the last MBConv block: after its expansion ReLU6
    ("_blocks.15", 320),            # block output, signed maps
])
def test_lite0_cuts_reproduce_the_network(lite0, images, layer, channels):
    split = lite0.split(layer)
    with torch.no_grad():
        maps = split.body(images)
        assert maps.shape == (2, channels, 7, 7)
        torch.testing.assert_close(split.head(maps), lite0.net(images), rtol=0, atol=0)


def test_vgg16_and_resnet50_default_layers(vgg16, resnet50, images):
    for model, shape in ((vgg16, (512, 14, 14)), (resnet50, (2048, 7, 7))):
        split = model.split()
        with torch.no_grad():
            maps = split.body(images)
            assert maps.shape[1:] == shape
            assert (maps >= 0).all()
            torch.testing.assert_close(split.head(maps), model.net(images), rtol=0, atol=0)


def test_expansion_cut_is_non_negative_and_non_linear(lite0, images):
    split = lite0.split("_blocks.15._swish@0")
    with torch.no_grad():
        assert (split.body(images) >= 0).all()
    assert not is_affine_head(split.head)
    assert is_affine_head(lite0.split().head)


def test_ambiguous_layer_lists_the_calls(lite0):
    with pytest.raises(ValueError, match=r"_blocks\.15\._swish@0, _blocks\.15\._swish@1"):
        lite0.split("_blocks.15._swish")


def test_unknown_layer_lists_valid_layers(vgg16):
    with pytest.raises(ValueError, match=r"unknown layer 'features\.99'.*features\.29"):
        vgg16.split("features.99")


def test_linear_layer_is_refused(vgg16):
    with pytest.raises(ValueError, match="not a stack of activation maps"):
        vgg16.split("classifier.0")


def test_cut_inside_a_residual_block_is_refused(resnet50):
    with pytest.raises(ValueError, match="skip connection"):
        resnet50.split("layer4.2.conv2")


def test_layers_lists_every_cut_in_forward_order(vgg16):
    layers = vgg16.split().layers()
    assert layers.index("features.28") < layers.index("features.29") < layers.index("classifier.6")
    assert "features" in layers and "classifier" in layers


def test_split_shares_parameters_and_leaves_no_hooks(vgg16):
    split = vgg16.split()
    conv = vgg16.net.features[28]
    assert split.body.get_submodule("features.28") is conv
    assert not conv._forward_hooks and not conv._backward_hooks


def test_split_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        lu.split_model(lambda x: x, "features")


def test_flatten_layer_output_is_refused_at_call_time():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    split = lu.split_model(net, "2")
    # AdaptiveAvgPool2d(1) gives (B, 4, 1, 1): still maps, accepted
    assert lu.coefficients("gradcam", split, torch.randn(1, 3, 8, 8)).shape == (1, 4)
    with pytest.raises(ValueError, match="not a stack of activation maps"):
        lu.split_model(net, "3")


def test_in_place_ops_in_the_head_never_write_into_a(vgg16, images):
    """Cut before VGG16's in-place ReLU: the head must not rectify the caller's A."""
    split = vgg16.split("features.28")  # the last conv, before ReLU(inplace=True)
    with torch.no_grad():
        maps = split.body(images)
        before = maps.clone()
        split.head(maps)
    assert (before < 0).any() and torch.equal(maps, before)
