"""ShapesVGG: trains on the synthetic scenes, splits with a non-linear head, LIFT-CAM is exact there."""

import numpy as np
import pytest
import torch
from conftest import head_values

import liftcam_utils as lu
from liftcam_utils.datasets.synthetic_scenes import SCENE_CLASSES, generate_scene
from liftcam_utils.engine.head_ops import is_affine_head
from liftcam_utils.models.checkpoints import load_state_dict_file
from liftcam_utils.models.scene_classifiers import (
    VAL_SEED_OFFSET,
    average_precision,
    evaluate,
    mean_average_precision,
    predict_logits,
    scene_tensors,
    shapes_preprocess,
)
from liftcam_utils.models.shapes_vgg import (
    DEFAULT_WEIGHTS,
    SHAPES_VGG_LAYER,
    ShapesVGG,
    load_shapes_vgg,
    train_shapes_vgg,
)
from liftcam_utils.models.training import normalise_uint8

SMALL = {"n_train": 600, "n_val": 200, "epochs": 2, "seed": 1, "image_size": 48}
FRESH_SEED = 424_242  # neither a training (0) nor a validation (10_000) seed of the committed weights


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights") / "small.pt"
    net, metrics = train_shapes_vgg(**SMALL, out_path=out, log=None)
    return net, metrics, out


def test_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, np.array([0, 0, 0, 1])) == pytest.approx(1 / 4)
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    assert mean_average_precision(targets * 2.0 - 1, targets) == 1.0


def test_reduced_training_learns(small_run):
    net, metrics, out = small_run
    assert metrics["losses"][-1] < metrics["losses"][0]
    # Chance level: scores independent of the image rank positives at random, so each class's
    # expected AP is about its prevalence (~1/3 here: 2 of 6 classes per scene on average); with
    # ~70 positives among 200 scenes a random ranking's AP has a standard deviation of ~0.04.
    # Demanding 0.2 above the mean prevalence (~5 standard deviations) rules out luck.
    _, targets = scene_tensors(SMALL["n_val"], SMALL["seed"] + VAL_SEED_OFFSET, SMALL["image_size"])
    chance = targets.numpy().mean(0).mean()
    assert 0.25 < chance < 0.45
    assert metrics["mAP"] > chance + 0.2
    assert not net.training
    # the checkpoint was written atomically (no temporary file left) and loads back
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    again = ShapesVGG(len(SCENE_CLASSES), image_size=SMALL["image_size"])
    load_state_dict_file(again, out)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)


def test_reduced_training_is_deterministic(small_run):
    """The same seed gives the same weights (checked after one epoch on a few scenes)."""
    settings = {**SMALL, "n_train": 64, "n_val": 0, "epochs": 1}
    first, _ = train_shapes_vgg(**settings, log=None)
    second, _ = train_shapes_vgg(**settings, log=None)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[key], value, rtol=0, atol=0)


def _scene_batch(seed, n, size=96):
    """Preprocessed scenes; ``shapes_preprocess`` resizes to 96, so other sizes are normalised alike."""
    if size == 96:
        return torch.stack([shapes_preprocess(generate_scene(seed, i)[0]) for i in range(n)])
    return normalise_uint8(scene_tensors(n, seed, size)[0])


def test_splits_at_the_default_layer_with_a_non_linear_head():
    torch.manual_seed(0)
    net = ShapesVGG(len(SCENE_CLASSES)).eval()
    assert isinstance(net.get_submodule(SHAPES_VGG_LAYER), torch.nn.ReLU)
    split = lu.split_model(net, SHAPES_VGG_LAYER)
    x = _scene_batch(FRESH_SEED, 3)
    with torch.no_grad():
        maps = split.body(x)
        assert maps.shape == (3, 128, 12, 12) and (maps >= 0).all()
        torch.testing.assert_close(split.head(maps), net(x), rtol=0, atol=0)
    assert not is_affine_head(split.head)


def test_liftcam_local_accuracy_on_the_trained_head(small_run):
    net = small_run[0]
    split = lu.split_model(net, SHAPES_VGG_LAYER)
    x = _scene_batch(FRESH_SEED, 4, size=SMALL["image_size"])
    for target in (None, torch.tensor([0, 1, 2, 3])):
        full, empty, _ = head_values(split, x, target)
        alpha = lu.coefficients("liftcam", split, x, target)
        torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-4, atol=1e-4)
        assert (full - empty).abs().min() > 1e-3  # the check is not vacuous


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"{DEFAULT_WEIGHTS} not trained yet")
def test_committed_weights_on_fresh_scenes():
    net = load_shapes_vgg(DEFAULT_WEIGHTS, device="cpu")
    assert not net.training
    images, targets = scene_tensors(200, FRESH_SEED)
    metrics = evaluate(net, images, targets)
    assert metrics["mAP"] >= 0.95, metrics
    # preprocess + net agrees with the batched evaluation path
    with torch.no_grad():
        logits = net(_scene_batch(FRESH_SEED, 2))
        batched = predict_logits(net, images[:2])
        torch.testing.assert_close(logits, batched, atol=1e-4, rtol=1e-4)
