"""The widgets' step logic (liftcam_utils.app.explore), by numbers, and the widgets driven without a browser."""

import numpy as np
import pytest
import torch

import liftcam_utils as lu
from liftcam_utils.app import explore, widgets
from liftcam_utils.datasets.synthetic_scenes import make_scenes
from liftcam_utils.evaluation.metrics import DELTAS, cosine_similarity
from liftcam_utils.methods.shapley import random_orderings

NONLINEAR = "_blocks.15._swish@0"


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(3, seed=7).records


def test_explain_matches_the_pipeline(lite0, photo):
    result = explore.explain(lite0, photo, "liftcam")
    x = lite0.preprocess(photo)[None]
    split = lite0.split()
    np.testing.assert_allclose(result.alpha, lu.coefficients("liftcam", split, x)[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.saliency, lu.saliency("liftcam", split, x)[0].numpy(), atol=1e-5)
    with torch.no_grad():
        probabilities = lite0.net(x).softmax(1)[0]
    top = probabilities.topk(3)
    assert [i for i, _, _ in result.top] == top.indices.tolist()
    np.testing.assert_allclose([p for _, _, p in result.top], top.values.numpy(), rtol=1e-4)
    assert result.target == top.indices[0].item()
    assert result.target_name == lite0.categories[result.target]
    assert result.saliency.shape == result.image.shape[:2] == (224, 224)
    assert 0 <= result.image.min() and result.image.max() <= 1
    assert result.target_name in result.describe()


def test_explain_explicit_target_and_layer(lite0, photo):
    result = explore.explain(lite0, photo, "gradcam", layer=NONLINEAR, target=282)
    x = lite0.preprocess(photo)[None]
    expected = lu.coefficients("gradcam", lite0.split(NONLINEAR), x, target=282)[0].numpy()
    assert result.target == 282 and result.layer == NONLINEAR and result.alpha.shape == (1152,)
    np.testing.assert_allclose(result.alpha, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown method"):
        explore.explain(lite0, photo, "nocam")


@pytest.mark.parametrize("model_name, layer, seed, steps", [("shapes", None, 3, (1, 2, 1)),
                                                            ("lite0", None, 1, (2,))])
def test_stepper_reproduces_shapcam(request, photo, scenes, model_name, layer, seed, steps):
    model = request.getfixturevalue(model_name)
    image = scenes[0].image() if model_name == "shapes" else photo
    split = model.split(layer)
    x = model.preprocess(image)[None]
    stepper = explore.ShapleyStepper(split, x, seed=seed)
    assert stepper.n_orderings == 0 and not stepper.alpha.any()
    for k in steps:
        stepper.step(k)
    total = sum(steps)
    assert stepper.n_orderings == total
    expected = lu.coefficients("shapcam", split, x, n_permutations=total, seed=seed)[0].numpy()
    np.testing.assert_allclose(stepper.alpha, expected, rtol=1e-5, atol=1e-6)
    # the last ordering is the total-th of random_orderings, and its marginals satisfy local accuracy
    np.testing.assert_array_equal(stepper.last_ordering, random_orderings(stepper.n_players, total, seed)[-1])
    assert stepper.last_marginals.sum() == pytest.approx(stepper.full - stepper.empty, rel=1e-4, abs=1e-4)
    assert stepper.alpha.sum() == pytest.approx(stepper.full - stepper.empty, rel=1e-4, abs=1e-4)
    expected_map = lu.saliency("shapcam", split, x, n_permutations=total, seed=seed)[0].numpy()
    np.testing.assert_allclose(stepper.map(), expected_map, atol=1e-4)


def test_stepper_history_against_a_reference(shapes, scenes):
    split = shapes.split()
    x = shapes.preprocess(scenes[1].image())[None]
    reference = lu.coefficients("shapcam", split, x, n_permutations=4, seed=5)[0]
    stepper = explore.ShapleyStepper(split, x, seed=5, reference=reference.numpy())
    stepper.step(4)
    assert len(stepper.history) == len(stepper.error_history) == 4
    assert stepper.history[-1] == pytest.approx(1.0, abs=1e-5)
    assert stepper.error_history[-1] == pytest.approx(0.0, abs=1e-4)
    first = stepper.history[0]
    alpha_1 = lu.coefficients("shapcam", split, x, n_permutations=1, seed=5)[0].double()
    assert first == pytest.approx(float(cosine_similarity(alpha_1, reference.double())), abs=1e-5)
    with pytest.raises(ValueError, match="positive integer"):
        stepper.step(0)
    with pytest.raises(ValueError, match="reference"):
        explore.ShapleyStepper(split, x, reference=np.ones(3))


def test_insertion_deletion_at_and_keep_mask():
    curves = {"insertion": DELTAS.numpy() ** 2, "deletion": 1 - DELTAS.numpy()}
    at = explore.insertion_deletion_at(curves, 0.26)  # the grid step is 0.025: nearest 0.25
    assert at["delta"] == pytest.approx(0.25)
    assert at["insertion"] == pytest.approx(0.0625) and at["deletion"] == pytest.approx(0.75)
    assert explore.insertion_deletion_at(curves, 1.7)["delta"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="values"):
        explore.insertion_deletion_at({"insertion": np.zeros(5)}, 0.5)
    saliency = np.arange(16, dtype=np.float32).reshape(4, 4) / 15
    mask = explore.keep_mask(saliency, 0.25)
    assert mask.sum() == 4 and mask[3].all() and not mask[:3].any()  # the 4 largest values: the last row
    assert explore.keep_mask(saliency, 0).sum() == 0 and explore.keep_mask(saliency, 1).sum() == 16


def test_insertion_curves_and_views(shapes, scenes):
    image = scenes[0].image()
    explanation = explore.explain(shapes, image, "liftcam")
    curves = explore.insertion_deletion(shapes, image, explanation)
    assert curves["insertion"].shape == curves["deletion"].shape == (len(DELTAS),)
    with torch.no_grad():
        logits = shapes.net(shapes.preprocess(image)[None])[0]
    # shapes_vgg is multi-label: its curves and its top classes are the sigmoids of the logits, not the softmax
    full = logits[explanation.target].sigmoid().item()
    assert explanation.output == "sigmoid"
    np.testing.assert_allclose([p for _, _, p in explanation.top], logits.sigmoid().topk(3).values, rtol=1e-5)
    assert curves["insertion"][-1] == pytest.approx(full, rel=1e-4)  # everything kept = the image itself
    assert curves["deletion"][0] == pytest.approx(full, rel=1e-4)  # nothing removed
    kept, removed = explore.blended_views(shapes, explanation, 0.5)
    mask = explore.keep_mask(explanation.saliency, 0.5).astype(bool)
    np.testing.assert_allclose(kept[mask], explanation.image[mask])
    np.testing.assert_allclose(removed[~mask], explanation.image[~mask])


def test_method_explorer_is_driven_by_its_dropdowns(shapes, scenes):
    widget = widgets.method_explorer(shapes, scenes, methods=["liftcam", "gradcam", "exact_shap"],
                                     layers=[shapes.layer, "features.7"])
    controls, out = widget.controls, widget.out
    first = widgets.output_text(out)
    assert "Error" not in first and scenes[0].name in first
    assert any(o["output_type"] == "display_data" for o in out.outputs)
    controls["image"].value = 2
    assert scenes[2].name in widgets.output_text(out)
    controls["method"].value = "gradcam"
    assert "Error" not in widgets.output_text(out) and out.outputs
    controls["method"].value = "exact_shap"  # 128 channels and a non-linear head: refused, shown as a message
    assert widgets.output_text(out).startswith(widgets.ERROR_PREFIX)
    assert "exact_shap needs" in widgets.output_text(out)
    controls["method"].value = "gradcam"
    controls["layer"].value = "features.7"
    assert "features.7" in widgets.output_text(out) and "Error" not in widgets.output_text(out)


def test_shapley_stepper_widget_buttons(shapes, scenes):
    split = shapes.split()
    x = shapes.preprocess(scenes[0].image())[None]
    reference = lu.coefficients("shapcam", split, x, n_permutations=20, seed=99)[0]
    stepper = explore.ShapleyStepper(split, x, seed=0, reference=reference)
    widget = widgets.shapley_stepper_widget(stepper, reference_cosine=0.9)
    assert "orderings: 0" in widgets.output_text(widget.out)
    widget.controls["one"].click()
    assert "orderings: 1 " in widgets.output_text(widget.out) and stepper.n_orderings == 1
    widget.controls["ten"].click()
    assert "orderings: 11 " in widgets.output_text(widget.out) and len(stepper.history) == 11
    assert "Error" not in widgets.output_text(widget.out)


def test_insertion_slider_redraws(shapes, scenes):
    widget = widgets.insertion_slider(shapes, scenes[1].image(), method="gradcam")
    before = widgets.output_text(widget.out)
    assert "delta = 0.200" in before and "Error" not in before
    widget.controls["delta"].value = 0.5
    after = widgets.output_text(widget.out)
    assert "delta = 0.500" in after and after != before
    broken = widgets.insertion_slider(shapes, scenes[1].image(), method="nocam")
    assert widgets.output_text(broken.out).startswith(widgets.ERROR_PREFIX)
