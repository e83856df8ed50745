"""Grid mosaics: distinct confident classes, exact quadrant boxes, seeded."""

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from liftcam_utils.datasets import ImageRecord
from liftcam_utils.datasets.embedded import foolbox_imagenet
from liftcam_utils.datasets.grids import confident_records, make_grids
from liftcam_utils.models import LoadedModel


@pytest.fixture(scope="module")
def confident(lite0):
    return confident_records(lite0, foolbox_imagenet(), min_confidence=0.5)


def test_only_correct_confident_photos_are_kept(confident, lite0):
    assert 8 <= len(confident) <= 17  # 17/20 are correct; some of those are not confident
    names = {r.name for r in confident}
    assert "imagenet_06_609" not in names  # misclassified as 436


def test_grids_have_four_distinct_classes_in_exact_quadrants(confident):
    grids = make_grids(confident, n_grids=5, seed=1, cell=112)
    for grid in grids:
        assert grid.image().size == (224, 224)
        assert len(set(grid.labels)) == 4
        assert [(b.x0, b.y0, b.x1, b.y1) for b in grid.boxes] == [
            (0, 0, 112, 112), (112, 0, 224, 112), (0, 112, 112, 224), (112, 112, 224, 224)]
        assert [b.label for b in grid.boxes] == list(grid.labels)
        # each quadrant's source photo, in box order: its label is the quadrant's
        by_name = {r.name: r for r in confident}
        assert [by_name[name].label for name in grid.sources] == list(grid.labels)
    again = make_grids(confident, n_grids=5, seed=1, cell=112)
    assert [g.labels for g in grids] == [g.labels for g in again]
    assert grids[0].image().tobytes() == again[0].image().tobytes()
    assert [g.labels for g in make_grids(confident, 5, seed=2)] != [g.labels for g in grids]


def test_too_few_classes_is_an_error(confident):
    with pytest.raises(ValueError, match="4 distinct classes, got 3"):
        make_grids([r for r in confident if r.label in {r.label for r in confident[:3]}], 1)


class _SureOfTwo(nn.Module):
    """Logits [2, 2, -1] for every image: classes 0 and 1 both present (sigmoid 0.88), softmax 0.49 each."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([2.0, 2.0, -1.0]))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


@pytest.mark.parametrize(("output", "kept"), [("softmax", []), ("sigmoid", ["zero", "zero and one"])])
def test_confidence_is_under_the_models_output_function(output, kept):
    """A multi-label model sure of classes 0 and 1 gives each a softmax below 0.5: the sigmoid, its own
    confidence, keeps the photos whose labels hold its top-1 class 0, relabelled with that class."""
    model = LoadedModel(name="sure_of_two", net=_SureOfTwo(), layer="", preprocess=transforms.ToTensor(),
                        categories=["a", "b", "c"], weights=None, output=output)
    records = [ImageRecord(name=name, labels=labels, pixels=Image.new("RGB", (4, 4)))
               for name, labels in (("zero", (0,)), ("one", (1,)), ("zero and one", (1, 0)))]
    confident = confident_records(model, records, min_confidence=0.5)
    assert [r.name for r in confident] == kept and all(r.labels == (0,) for r in confident)
