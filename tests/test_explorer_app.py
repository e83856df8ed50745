"""The course explorer without a browser: its numbers against the metrics computed directly, uploads and bad
input answered in the app, and the SHAP-CAM stepper it builds (liftcam_utils.widgets.explorer_app and the
explore functions behind it)."""

import datetime
import io

import numpy as np
import pytest
import torch
from PIL import Image

import liftcam_utils as lu
from liftcam_utils import explore, widgets
from liftcam_utils.datasets.synthetic_scenes import make_scenes
from liftcam_utils.metrics import DELTAS, baseline_image

NONLINEAR = "_blocks.15._swish@0"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The app runs many small forward passes; on a CPU shared with other jobs two threads that wait for each
    other are ten times slower than one (measured: 0.8 s against 9-17 s per redraw), so this module uses one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(2, seed=3).records


@pytest.fixture
def app(scenes):
    return widgets.explorer_app(records=scenes, models=("shapes_vgg", "efficientnet_lite0", "no_such_model"),
                                device="cpu")


def upload(app, name: str, content: bytes) -> None:
    """What the browser sends when a file is chosen."""
    app.controls["upload"].value = ({"name": name, "type": "", "size": len(content), "content": memoryview(content),
                                     "last_modified": datetime.datetime.now(datetime.UTC)},)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_faithfulness_by_its_definitions(shapes, scenes):
    image = scenes[0].image()
    explanation = explore.explain(shapes, image, "gradcam")
    curves = explore.insertion_deletion(shapes, image, explanation)
    numbers = explore.faithfulness(shapes, image, explanation, curves=curves)
    assert numbers == explore.faithfulness(shapes, image, explanation)  # the curves are computed when not given
    y, o, d = numbers["Y"], numbers["O"], numbers["D"]
    assert numbers["IC"] == (100.0 if o > y else 0.0)
    assert numbers["AD"] == pytest.approx(100 * max(0.0, y - o) / y, rel=1e-5)
    assert numbers["ADD"] == pytest.approx(100 * (y - d) / y, rel=1e-5)
    deltas = DELTAS.numpy().astype(np.float64)
    for name in ("insertion", "deletion"):
        curve = curves[name].astype(np.float64)
        by_hand = ((curve[1:] + curve[:-1]) / 2 * np.diff(deltas)).sum()
        assert numbers[f"{name}_auc"] == pytest.approx(by_hand, rel=1e-5)
    # a map of ones keeps the whole image (O = Y) and deletes all of it (D = the softmax of the baseline image)
    everything = explore.Explanation(**{**explanation.__dict__, "saliency": np.ones_like(explanation.saliency)})
    whole = explore.faithfulness(shapes, image, everything, curves=curves)
    x = shapes.preprocess(image)[None]
    with torch.no_grad():
        y_direct = shapes.net(x).softmax(1)[0, explanation.target].item()
        d_direct = shapes.net(torch.zeros_like(x) + baseline_image(shapes.preprocess)).softmax(1)[0, explanation.target]
    assert whole["Y"] == pytest.approx(y_direct, rel=1e-5) and whole["O"] == pytest.approx(y_direct, rel=1e-5)
    assert whole["IC"] == 0 and whole["AD"] == pytest.approx(0, abs=1e-3)
    assert whole["D"] == pytest.approx(d_direct.item(), rel=1e-4)


def test_shapley_stepper_against_the_exact_values(lite0, photo):
    stepper, cosine = explore.shapley_stepper(lite0, photo, seed=2)
    x = lite0.preprocess(photo)[None]
    exact = lu.coefficients("exact_shap", lite0.split(), x)[0].numpy()
    np.testing.assert_allclose(stepper.reference.numpy(), exact, rtol=1e-6)
    assert cosine == pytest.approx(1.0, abs=1e-5)  # affine head: LIFT-CAM is exact (Eq. 8)
    stepper.step(1)
    assert stepper.history[0] == pytest.approx(1.0, abs=1e-4)  # and one ordering already gives the Shapley values
    expected = lu.coefficients("shapcam", lite0.split(), x, n_permutations=1, seed=2)[0].numpy()
    np.testing.assert_allclose(stepper.alpha, expected, rtol=1e-5, atol=1e-6)
    stepper, cosine = explore.shapley_stepper(lite0, photo, layer=NONLINEAR)
    assert stepper.reference is None and cosine is None  # exact_shap refuses 1152 maps on a non-linear head


def test_app_shows_the_explanation_and_its_numbers(app, shapes, scenes):
    text = widgets.output_text(app.out)
    image = scenes[0].image()
    explanation = explore.explain(shapes, image, "liftcam")
    numbers = explore.faithfulness(shapes, image, explanation)
    assert text.startswith(f"{scenes[0].name} at {shapes.layer}, target {explanation.target_name}")
    assert (f"IC {numbers['IC']:.0f}  AD {numbers['AD']:.1f}  ADD {numbers['ADD']:.1f}" in text
            and f"insertion AUC {numbers['insertion_auc']:.3f}  deletion AUC {numbers['deletion_auc']:.3f}" in text)
    assert sum(o["output_type"] == "display_data" for o in app.out.outputs) == 1
    (stepper,) = app.stepper_box.children
    assert "orderings: 0" in widgets.output_text(stepper.out)
    stepper.controls["one"].click()
    assert "orderings: 1 " in widgets.output_text(stepper.out)
    app.controls["method"].value = "gradcam"
    assert "Error" not in widgets.output_text(app.out) and app.stepper_box.children == (stepper,)  # same stepper
    app.controls["image"].value = scenes[1].name
    assert widgets.output_text(app.out).startswith(scenes[1].name) and app.stepper_box.children != (stepper,)


@pytest.mark.parametrize("method", ["hirescam", "layercam"])
def test_app_shows_per_pixel_methods(app, method):
    app.controls["method"].value = method
    text = widgets.output_text(app.out)
    assert "Error" not in text and "IC " in text
    assert sum(o["output_type"] == "display_data" for o in app.out.outputs) == 1


def test_app_uploads(app, scenes):
    before = app.out.outputs
    upload(app, "notes.txt", b"not an image at all")
    assert widgets.output_text(app.messages).startswith(widgets.ERROR_PREFIX)
    assert "'notes.txt' is not an image" in widgets.output_text(app.messages)
    assert app.controls["image"].value == scenes[0].name and app.out.outputs == before  # nothing else changed
    assert app.controls["upload"].value == ()  # cleared, ready for the next file
    upload(app, "huge.png", png(Image.new("L", (9000, 10))))
    assert "'huge.png' is 9000 x 10 pixels" in widgets.output_text(app.messages)

    rgba = Image.new("RGBA", (120, 90), (0, 128, 0, 255))
    upload(app, "leaf.png", png(rgba))
    assert widgets.output_text(app.messages) == ("upload: leaf.png: 120 x 90 pixels\n"
                                                 "  RGBA image: transparent pixels composited on white, "
                                                 "converted to RGB\n")
    assert app.controls["image"].value == "upload: leaf.png"
    assert widgets.output_text(app.out).startswith("upload: leaf.png at features.14")
    upload(app, "leaf.png", png(rgba))  # the same name again: a second entry
    assert app.controls["image"].value == "upload: leaf.png (2)"
    assert list(app.controls["image"].options)[-2:] == ["upload: leaf.png", "upload: leaf.png (2)"]


def test_app_bad_layer_and_model(app, scenes):
    app.controls["layer"].value = "no_such_layer"
    text = widgets.output_text(app.out)
    assert text.startswith(widgets.ERROR_PREFIX + "ValueError: unknown layer 'no_such_layer'")
    assert "Valid layers" in text and app.stepper_box.children == ()
    app.controls["method"].value = "gradcam"  # LIFT-CAM refuses features.7: a max-pool whose reference varies
    app.controls["layer"].value = "features.7"  # the app keeps running
    assert widgets.output_text(app.out).startswith(f"{scenes[0].name} at features.7, target ")
    assert len(app.stepper_box.children) == 1

    app.controls["model"].value = "efficientnet_lite0"
    assert app.controls["layer"].value == "_swish@1"
    assert list(app.controls["layer"].options) == ["_swish@1", NONLINEAR, "_blocks.15"]
    assert " at _swish@1, target " in widgets.output_text(app.out)
    assert "Warning" not in widgets.output_text(app.out)
    app.controls["layer"].value = "_blocks.15"  # signed maps: the pipeline's warning is shown with the map
    text = widgets.output_text(app.out)
    assert "\nSignedActivationsWarning: " in text and "of the activations at layer '_blocks.15' are negative" in text
    assert len(app.stepper_box.children) == 1 and not widgets.output_text(app.stepper_box.children[0].out).startswith(
        widgets.ERROR_PREFIX)
    app.controls["model"].value = "no_such_model"
    assert "unknown model 'no_such_model'" in widgets.output_text(app.out) and app.stepper_box.children == ()
