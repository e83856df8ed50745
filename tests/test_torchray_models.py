"""The paper's VOC/COCO VGG16 models load from Caffe-converted (TorchRay) checkpoints."""

import pytest
import torch

import liftcam_utils as lu
from liftcam_utils.models.registry import from_caffe_vgg16


def _caffe_layout(state):
    """Write a torchvision-layout VGG16 state dict the way the Caffe conversion stores it."""
    caffe = {}
    for key, value in state.items():
        module, _, name = key.rpartition(".")
        module = {"classifier.3": "classifier.2", "classifier.6": "classifier.4"}.get(module, module)
        if key == "features.0.weight":
            value = value[:, [2, 1, 0]]  # RGB -> BGR
        if key == "classifier.0.weight":
            value = value.reshape(4096, 512, 7, 7)
        elif module in ("classifier.2", "classifier.4") and name == "weight":
            value = value.reshape(value.shape[0], value.shape[1], 1, 1)
        caffe[f"{module}.{name}"] = value.clone()
    return caffe


@pytest.mark.parametrize("name, classes", [("vgg16_voc", 20), ("vgg16_coco", 80)])
def test_caffe_checkpoint_gives_the_same_network(tmp_path, name, classes):
    torch.manual_seed(0)
    reference = lu.load_model(name, weights=None, device="cpu")
    path = tmp_path / "caffe.pth.tar"
    torch.save(_caffe_layout(reference.net.state_dict()), path)
    loaded = lu.load_model(name, weights=str(path), device="cpu")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), reference.net(x))
    assert len(loaded.categories) == classes and loaded.layer == "features.29"
    assert loaded.output == reference.output == "sigmoid"  # multi-label: one independent sigmoid per class
    assert all(m.ceil_mode for m in loaded.net.modules() if isinstance(m, torch.nn.MaxPool2d))


def test_torchvision_layout_passes_unchanged_and_mismatch_is_named(tmp_path):
    state = {"classifier.3.weight": torch.zeros(1)}
    assert from_caffe_vgg16(state) is state
    bad = tmp_path / "coco_as_voc.pth"
    torch.manual_seed(0)
    torch.save(_caffe_layout(lu.load_model("vgg16_coco", weights=None).net.state_dict()), bad)
    with pytest.raises(ValueError, match=r"'classifier.6.weight' has shape \(80, 4096\)"):
        lu.load_model("vgg16_voc", weights=str(bad))


def test_caffe_preprocessing_scales_to_0_255_minus_mean():
    from PIL import Image

    model = lu.load_model("vgg16_voc", weights=None)
    x = model.preprocess(Image.new("RGB", (300, 250), (123, 117, 104)))
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([-0.68, 0.221, 0.061]), atol=1e-3, rtol=0)
