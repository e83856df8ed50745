"""The shared pipeline: targets, batches, modes, hooks, normalisation and input errors."""

import numpy as np
import pytest
import torch
from torch import nn

import liftcam_utils as lu
from liftcam_utils.engine.cam_map import cam_map
from liftcam_utils.engine.head_ops import is_affine_head

FAST_OPTIONS = {"shapcam": {"n_permutations": 3}, "kernelshapcam": {"n_samples": 64},
                "limecam": {"n_samples": 64}}
PER_PIXEL_METHODS = ("hirescam", "layercam")  # weights of the maps' shape (B, N, h, w) instead of alpha (B, N)


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.Dropout(0.5))
        self.pool = nn.MaxPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(6 * 4 * 4, 8), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(8, 4))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture
def small():
    torch.manual_seed(0)
    net = _Small()
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.fixture
def batch():
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", list(lu.METHODS))
def test_each_image_of_a_batch_is_explained_alone(small, batch, method):
    """No method mixes images: the weights (alpha, or per-pixel weights) of image i in a batch equal those of
    image i alone."""
    split = lu.split_model(small, "features.2")
    options = FAST_OPTIONS.get(method, {})
    together = lu.map_weights(method, split, batch, target=[0, 1, 2], **options)
    assert together.shape == ((3, 6, 8, 8) if method in PER_PIXEL_METHODS else (3, 6))
    assert torch.isfinite(together).all()
    for i in range(3):
        alone = lu.map_weights(method, split, batch[i:i + 1], target=i, **options)
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", PER_PIXEL_METHODS)
def test_coefficients_refuse_per_pixel_methods(small, batch, method):
    """A per-pixel method has no alpha: coefficients says so and where to look; its map is still there."""
    split = lu.split_model(small, "features.2")
    with pytest.raises(ValueError, match=rf"'{method}' weights each map pixel by pixel.*map_weights\(\).*saliency"):
        lu.coefficients(method, split, batch)
    assert lu.saliency(method, split, batch).shape == (3, 8, 8)


def test_coefficients_are_the_map_weights_of_alpha_rules(small, batch):
    split = lu.split_model(small, "features.2")
    for method in ("gradcam", "eigencam", "shapleycam"):
        torch.testing.assert_close(lu.coefficients(method, split, batch), lu.map_weights(method, split, batch),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("method", list(lu.METHODS))
def test_methods_leave_the_grad_mode_as_they_found_it(small, batch, method):
    """Gradient methods enable autograd inside (ShapleyCAM a double backward); under a caller's no_grad they
    still work, and no_grad is still on afterwards."""
    split = lu.split_model(small, "features.2")
    options = FAST_OPTIONS.get(method, {})
    expected = lu.saliency(method, split, batch, **options)
    assert torch.is_grad_enabled()
    with torch.no_grad():
        torch.testing.assert_close(lu.saliency(method, split, batch, **options), expected)
        assert not torch.is_grad_enabled()
    assert all(p.grad is None for p in small.parameters())


@pytest.mark.parametrize("method", list(lu.METHODS))
def test_saliency_is_normalised_and_leaves_no_state(small, batch, method):
    small.train()  # a caller's training mode must come back unchanged
    small.classifier.eval()  # ... including mixed modes
    split = lu.split_model(small, "features.2")
    maps = lu.saliency(method, split, batch, **FAST_OPTIONS.get(method, {}))
    assert maps.shape == (3, 8, 8)
    assert maps.min() >= 0 and maps.max() <= 1 and torch.isfinite(maps).all()
    assert small.training and small.features[1].training and not small.classifier.training
    for module in small.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    assert all(p.grad is None for p in small.parameters())


def test_eval_mode_is_used_and_restored_on_error(small, batch):
    split = lu.split_model(small, "features.2")
    expected = lu.coefficients("gradcam", split, batch)
    small.train()
    torch.testing.assert_close(lu.coefficients("gradcam", split, batch), expected)  # dropout off
    with pytest.raises(ValueError):
        lu.coefficients("gradcam", split, batch, target=99)
    assert small.training and small.features[3].training


def test_predicted_class_is_the_default_target(small, batch):
    split = lu.split_model(small, "features.2")
    predicted = small(batch).argmax(1)
    torch.testing.assert_close(lu.coefficients("liftcam", split, batch),
                               lu.coefficients("liftcam", split, batch, target=predicted))


def test_target_errors_name_what_is_valid(small, batch):
    split = lu.split_model(small, "features.2")
    with pytest.raises(ValueError, match=r"valid targets are 0 \.\. 3"):
        lu.coefficients("gradcam", split, batch, target=4)
    with pytest.raises(ValueError, match="one class per image"):
        lu.coefficients("gradcam", split, batch, target=[0, 1])  # never silently truncated
    with pytest.raises(ValueError, match="one class per image"):
        lu.coefficients("gradcam", split, batch, target=[0, 1, 2, 3])
    with pytest.raises(TypeError, match="integers"):
        lu.coefficients("gradcam", split, batch, target=torch.tensor([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("target, dtype", [
    (True, "torch.bool"), (np.bool_(False), "torch.bool"), (torch.tensor(True), "torch.bool"),
    ([True, False, True], "torch.bool"), (1.0, "torch.float"), (np.float32(2), "torch.float"),
    (torch.tensor(1.0), "torch.float"), (np.array([0.0, 1.0, 2.0]), "torch.float"), ([0, 1.5, 2], "torch.float"),
])
def test_bool_and_float_targets_are_refused(small, batch, target, dtype):
    split = lu.split_model(small, "features.2")
    with pytest.raises(TypeError, match=rf"target classes must be integers, got {dtype}.*a NumPy integer"):
        lu.coefficients("gradcam", split, batch, target=target)
    with pytest.raises(TypeError, match=r"target must be None \(the predicted class\), an integer class"):
        lu.coefficients("gradcam", split, batch, target="cat")


@pytest.mark.parametrize("target", [np.int64(2), np.int32(2), np.array(2), np.uint8(2), torch.tensor(2)])
def test_numpy_and_tensor_integer_scalars_are_one_class_for_all(small, batch, target):
    split = lu.split_model(small, "features.2")
    torch.testing.assert_close(lu.coefficients("gradcam", split, batch, target=target),
                               lu.coefficients("gradcam", split, batch, target=2))


@pytest.mark.parametrize("target", [np.array([0, 1, 2]), np.array([0, 1, 2], dtype=np.int32),
                                    [np.int64(0), np.int64(1), np.int64(2)],
                                    torch.tensor([0, 1, 2], dtype=torch.int16)])
def test_integer_arrays_are_one_class_per_image(small, batch, target):
    split = lu.split_model(small, "features.2")
    torch.testing.assert_close(lu.coefficients("gradcam", split, batch, target=target),
                               lu.coefficients("gradcam", split, batch, target=[0, 1, 2]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_are_refused(small, batch, bad):
    split = lu.split_model(small, "features.2")
    batch = batch.clone()
    batch[1, 2, 3, 4] = bad
    for explain in (lu.coefficients, lu.saliency):
        with pytest.raises(ValueError, match=r"x has NaN or infinite values in image\(s\) \[1\] of the batch"):
            explain("liftcam", split, batch)


@pytest.mark.parametrize("explain", [lu.coefficients, lu.saliency])
def test_a_nan_bias_is_refused_not_scored(small, batch, explain):
    """A NaN in the last linear layer's bias makes every logit of that class NaN: refused where the pipeline
    prepares the logits, naming the layer, the images and where to look, never a map or a score."""
    split = lu.split_model(small, "features.2")
    with torch.no_grad():
        small.classifier[3].bias[2] = torch.nan
    with pytest.raises(ValueError, match=r"the logits of the head after layer 'features.2' contain NaN or infinite "
                                         r"values for image\(s\) \[0, 1, 2\].*check the weights of the layers "
                                         r"after 'features.2' \(the head\)"):
        explain("liftcam", split, batch)


@pytest.mark.parametrize("explain", [lu.coefficients, lu.saliency])
def test_an_infinite_convolution_weight_is_refused_not_drawn(small, batch, explain):
    """An infinite weight of the body's convolution makes the maps infinite (or NaN after the batch norm):
    refused as the maps are prepared, naming the layer; never the all-zero map min-max would draw."""
    split = lu.split_model(small, "features.2")
    with torch.no_grad():
        small.features[0].weight[1, 0, 1, 1] = torch.inf
    with pytest.raises(ValueError, match=r"the activation maps A of layer 'features.2' contain NaN or infinite "
                                         r"values for image\(s\) \[0, 1, 2\].*check the weights of the layers up "
                                         r"to 'features.2'"):
        explain("gradcam", split, batch)


def test_non_finite_logits_name_the_images_they_come_from(small, batch):
    """Finite weights and images whose logits overflow float32 for one image only: that image is named."""
    split = lu.split_model(small, "features.2")
    with torch.no_grad():
        small.classifier[3].weight.mul_(1e30)
    batch = batch.clone()
    batch[1] *= 1e12
    assert torch.isfinite(split.body(batch)).all()
    with pytest.raises(ValueError, match=r"the logits .* for image\(s\) \[1\] of the batch"):
        lu.coefficients("liftcam", split, batch)


def test_cam_map_refuses_non_finite_weights_and_maps():
    """NaN or infinite weights (alpha or per-pixel), maps or a weighted sum that overflows: refused with the
    images named, never the all-zero map that min-max makes of a NaN."""
    maps = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    alpha = torch.ones(2, 3)
    alpha[1, 2] = torch.nan
    with pytest.raises(ValueError, match=r"the method's weights \(alpha or per-pixel weights\) have NaN or infinite "
                                         r"values for image\(s\) \[1\]"):
        cam_map(alpha, maps, (8, 8))
    per_pixel = torch.ones_like(maps)
    per_pixel[0, 0, 1, 1] = -torch.inf
    with pytest.raises(ValueError, match=r"the method's weights .* for image\(s\) \[0\]"):
        cam_map(per_pixel, maps, (8, 8))
    bad_maps = maps.clone()
    bad_maps[1, 0, 0, 0] = torch.nan
    with pytest.raises(ValueError, match=r"the activation maps A have NaN or infinite values for image\(s\) \[1\]"):
        cam_map(torch.ones(2, 3), bad_maps, (8, 8))
    with pytest.raises(ValueError, match=r"sum_k alpha_k A_k overflows torch.float32 for image\(s\) \[0, 1\]"):
        cam_map(torch.full((2, 3), 3e38), maps + 1, (8, 8))


def test_input_errors_name_what_is_valid(small, batch):
    split = lu.split_model(small, "features.2")
    with pytest.raises(ValueError, match=r"unknown method 'gradcam\+'.*gradcam\+\+.*liftcam"):
        lu.coefficients("gradcam+", split, batch)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*x\[None\]"):
        lu.coefficients("liftcam", split, batch[0])
    with pytest.raises(TypeError, match="floating-point"):
        lu.coefficients("liftcam", split, batch.to(torch.uint8))
    with pytest.raises(ValueError, match="n_permutations must be a positive integer"):
        lu.coefficients("shapcam", split, batch, n_permutations=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        lu.coefficients("liftcam", split, batch, n_permutations=3)


def test_exact_shap_refuses_large_non_linear_heads(vgg16, images):
    with pytest.raises(ValueError, match="affine head or at most 16 channels.*512 channels"):
        lu.coefficients("exact_shap", vgg16.split(), images[:1])


def test_cam_map_by_hand():
    """Eq. 1 and 10 on a 1x2 map: ReLU, bilinear upsampling, min-max."""
    maps = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2)
    alpha = torch.tensor([[1.0, -1.0]])  # weighted map [1, -2] -> ReLU -> [1, 0]
    out = cam_map(alpha, maps, (1, 4))
    # bilinear (align_corners=False) of [1, 0] to width 4: [1, 0.75, 0.25, 0]; min-max keeps it
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.75, 0.25, 0.0]]]))


def test_constant_map_normalises_to_zero_not_nan():
    maps = torch.ones(2, 3, 4, 4)
    out = cam_map(torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]]), maps, (8, 8))
    assert torch.equal(out, torch.zeros(2, 8, 8))


def test_load_model_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'vgg17'.*efficientnet_lite0.*vgg16"):
        lu.load_model("vgg17")
    with pytest.raises(FileNotFoundError, match="neither 'default', None, nor an existing"):
        lu.load_model("resnet50", weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pth.*lacks key 'features.0.weight'"):
        lu.load_model("vgg16", weights=str(bad))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr("torch.hub.load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth.*not cached"):
        lu.load_model("vgg16")


def test_checkpoint_with_wrong_shape_names_the_key(tmp_path, resnet50):
    state = resnet50.net.state_dict()
    state["fc.weight"] = torch.zeros(10, 2048)
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(10, 2048\)"):
        lu.load_model("resnet50", weights=str(path))
    ok = tmp_path / "ok.pth"
    torch.save(resnet50.net.state_dict(), ok)
    loaded = lu.load_model("resnet50", weights=str(ok), device="cpu")
    torch.testing.assert_close(loaded.net.fc.weight, resnet50.net.fc.weight)


def test_lite0_model_card(lite0):
    assert lite0.layer == "_swish@1" and len(lite0.categories) == 1000
    assert lite0.device.type == "cpu" and not lite0.net.training


def test_shapes_vgg_model_card():
    model = lu.load_model("shapes_vgg", device="cpu")
    assert model.layer == "features.14" and model.categories[0] == "red circle"
    assert not is_affine_head(model.split().head)  # VGG16's non-linear head structure
