"""The course explorer without a browser: its numbers against the metrics computed directly, uploads and bad
input answered in the app, the VQA model with a question, and the SHAP-CAM stepper it builds at its own layer
(liftcam_utils.app.widgets.explorer_app and the explore functions behind it)."""

import datetime
import gc
import io
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

import liftcam_utils as lu
from liftcam_utils.app import explore, widgets
from liftcam_utils.app.uploads import FORMATS, read_uploaded_image
from liftcam_utils.datasets.synthetic_scenes import make_scenes
from liftcam_utils.datasets.synthetic_vqa import make_vqa
from liftcam_utils.engine.head_ops import is_affine_head
from liftcam_utils.evaluation.metrics import DELTAS, baseline_image

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


@pytest.fixture(scope="module")
def vqa():
    return lu.load_model("shapes_vqa", device="cpu")


@pytest.fixture(scope="module")
def questions():
    """The questions of two generated VQA scenes (about five each)."""
    return make_vqa(2, seed=7).records


@pytest.fixture
def app(scenes):
    return widgets.explorer_app(records=scenes, models=("shapes_vgg", "efficientnet_lite0", "no_such_model"),
                                device="cpu")


def map_png(out) -> str:
    """The PNG (base64) an Output shows: the map over the image and its panels."""
    (figure,) = [o["data"]["image/png"] for o in out.outputs if o["output_type"] == "display_data"]
    return figure


def answer_probabilities(vqa, image, question: str) -> torch.Tensor:
    """The model's softmax over the answers for (image, question), from the two-input network itself."""
    vocabulary, length = vqa.questions
    with torch.no_grad():
        return vqa.net(vqa.preprocess(image)[None], vocabulary.encode(question, length)[None]).softmax(1)[0]


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
    # a map of ones keeps the whole image (O = Y) and deletes all of it (D = the target's probability on the
    # baseline image); shapes_vgg is multi-label, so the probability is the sigmoid of the target's logit
    everything = explore.Explanation(**{**explanation.__dict__, "saliency": np.ones_like(explanation.saliency)})
    whole = explore.faithfulness(shapes, image, everything, curves=curves)
    x = shapes.preprocess(image)[None]
    with torch.no_grad():
        y_direct = shapes.net(x)[0, explanation.target].sigmoid().item()
        d_direct = shapes.net(torch.zeros_like(x) + baseline_image(shapes.preprocess))[0, explanation.target].sigmoid()
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
    assert text.splitlines()[0].endswith("(sigmoid probabilities)")  # shapes_vgg is multi-label
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
    upload(app, "leaf.png", png(rgba))  # the same file again: it replaces the first, in the list and in memory
    assert app.controls["image"].value == "upload: leaf.png"
    assert [o for o in app.controls["image"].options if o.startswith("upload:")] == ["upload: leaf.png"]


def test_only_the_current_upload_is_kept_in_memory(app, monkeypatch):
    pictures = []

    def remembered(content, name):
        picture, notes = read_uploaded_image(content, name)
        pictures.append(weakref.ref(picture))
        return picture, notes

    monkeypatch.setattr(widgets, "read_uploaded_image", remembered)
    for colour in ("red", "green", "blue"):
        upload(app, f"{colour}.png", png(Image.new("RGB", (64, 48), colour)))
    gc.collect()
    assert [picture() is not None for picture in pictures] == [False, False, True]
    assert [o for o in app.controls["image"].options if o.startswith("upload:")] == ["upload: blue.png"]


def test_the_upload_button_offers_exactly_the_accepted_formats(app):
    accept = app.controls["upload"].accept.split(",")
    assert sorted(s for s in accept if s.startswith(".")) == [".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff",
                                                             ".webp"]
    assert sorted(s for s in accept if s.startswith("image/")) == [f"image/{f.lower()}" for f in sorted(FORMATS)]


def test_app_bad_layer_and_model(app, scenes):
    stepper = app.stepper_box.children
    app.controls["layer"].value = "no_such_layer"
    text = widgets.output_text(app.out)
    assert text.startswith(widgets.ERROR_PREFIX + "ValueError: unknown layer 'no_such_layer'")
    assert "Valid layers" in text and app.stepper_box.children == stepper  # the stepper has a layer of its own
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


def test_explain_question_against_the_two_input_model(vqa, questions):
    record = questions[0]
    image = record.image()
    result = explore.explain_question(vqa, image, record.question, "liftcam")
    probabilities = answer_probabilities(vqa, image, record.question)
    assert result.question == record.question and result.target == int(probabilities.argmax())
    assert [i for i, _, _ in result.top] == probabilities.topk(3).indices.tolist()
    np.testing.assert_allclose([p for _, _, p in result.top], probabilities.topk(3).values.numpy(), rtol=1e-5)
    fixed = vqa.fixed(record.question)
    x = vqa.preprocess(image)[None]
    np.testing.assert_allclose(result.saliency, lu.saliency("liftcam", fixed.split(), x)[0].numpy(), atol=1e-6)
    other = next(r.question for r in questions if r.question != record.question)
    assert np.abs(explore.explain_question(vqa, image, other, "liftcam").saliency - result.saliency).max() > 0.05
    # the metrics fix the explanation's question themselves: the same numbers as with the fixed model
    numbers = explore.faithfulness(vqa, image, result)
    assert numbers == explore.faithfulness(fixed, image, result)
    assert numbers["Y"] == pytest.approx(float(probabilities.max()), rel=1e-5)
    chosen = explore.explain_question(vqa, image, record.question, "gradcam", target=3)
    assert chosen.target == 3 and chosen.target_name == vqa.categories[3]
    assert explore.faithfulness(vqa, image, chosen)["Y"] == pytest.approx(float(probabilities[3]), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize(("question", "message"), [
    ("", "the question is empty: type a question of 1 to 10 words"),
    ("  ?! ", "has words 'shapes_vqa' does not know: '?!'"),
    ("what colour is the star?", "has words 'shapes_vqa' does not know: 'colour'; its vocabulary: ?, a, are, blue"),
    ("is there a <unk>?", "does not know: '<', 'unk', '>?'"),  # the unknown-word id is no word
    ("is there a red star" + " a blue star" * 2 + "?",
     "has 12 words and punctuation marks; 'shapes_vqa' reads at most 10"),
])
def test_questions_the_model_cannot_encode(vqa, questions, question, message):
    with pytest.raises(ValueError) as error:
        explore.explain_question(vqa, questions[0].image(), question, "liftcam")
    assert message in str(error.value)


def test_question_for_an_image_model(shapes, scenes, vqa, questions):
    with pytest.raises(ValueError, match="model 'shapes_vgg' takes no question"):
        explore.explain_question(shapes, scenes[0].image(), "what color is the star?", "liftcam")
    with pytest.raises(ValueError, match="answers a question about the image: explain it with explain_question"):
        explore.explain(vqa, questions[0].image(), "liftcam")


def test_app_asks_the_vqa_model(vqa, questions, scenes):
    app = widgets.explorer_app(records=scenes, models=("shapes_vqa", "shapes_vgg"), device="cpu",
                               vqa_records=questions)
    controls = app.controls
    scene = questions[0].name.rsplit("_q", 1)[0]
    own = [r for r in questions if r.name.startswith(scene + "_q")]
    assert app.question_row.layout.display is None and controls["image"].value == scene
    assert [value for _, value in controls["examples"].options] == [r.question for r in own]
    assert controls["question"].value == own[0].question
    text = widgets.output_text(app.out)
    probabilities = answer_probabilities(vqa, own[0].image(), own[0].question)
    answer = vqa.categories[int(probabilities.argmax())]
    assert text.startswith(f"{scene} at {vqa.layer}, target {answer}")
    assert f"question: {own[0].question!r} -> the model answers {answer} ({float(probabilities.max()):.3f})" in text
    assert f"true answer (the generated data): {vqa.categories[own[0].label]}" in text and "insertion AUC" in text
    assert "at img_encoder.model.features.20, 128 maps, non-linear head" in widgets.output_text(
        app.stepper_box.children[0].out)

    before = map_png(app.out)
    controls["examples"].value = own[-1].question  # an example fills the question box
    assert controls["question"].value == own[-1].question and controls["examples"].value is None
    assert map_png(app.out) != before and f"question: {own[-1].question!r}" in widgets.output_text(app.out)
    result = explore.explain_question(vqa, own[-1].image(), own[-1].question, "liftcam")
    assert f"\n> {result.top[0][1]:<24} {result.top[0][2]:.3f}" in widgets.output_text(app.out)

    controls["question"].value = "what colour is the star?"
    text = widgets.output_text(app.out)
    assert text.startswith(widgets.ERROR_PREFIX + "ValueError: the question 'what colour is the star?' has words "
                                                  "'shapes_vqa' does not know: 'colour'; its vocabulary: ?, a, are")
    assert app.stepper_box.children == ()
    controls["question"].value = ""
    assert "the question is empty" in widgets.output_text(app.out)
    controls["question"].value = "how many objects are there?"  # the app keeps running
    assert "Error" not in widgets.output_text(app.out) and len(app.stepper_box.children) == 1
    controls["answer"].value = "3"  # explain a chosen answer
    assert widgets.output_text(app.out).startswith(f"{scene} at {vqa.layer}, target 3")
    assert app.stepper_box.children[0].out.outputs  # the stepper follows, for the same answer
    other = questions[-1].name.rsplit("_q", 1)[0]
    controls["image"].value = other  # the question stays; the examples are the new scene's own questions
    assert [value for _, value in controls["examples"].options] == [
        r.question for r in questions if r.name.startswith(other + "_q")]
    assert widgets.output_text(app.out).startswith(f"{other} at {vqa.layer}, target 3")
    upload(app, "red.png", png(Image.new("RGB", (90, 70), (200, 30, 30))))  # an upload: the data's questions
    assert [value for _, value in controls["examples"].options] == list(dict.fromkeys(r.question for r in questions))
    text = widgets.output_text(app.out)
    assert text.startswith("upload: red.png at ") and "question: 'how many objects are there?'" in text
    assert "true answer" not in text

    controls["model"].value = "shapes_vgg"
    assert app.question_row.layout.display == "none"
    assert list(controls["image"].options) == [*(r.name for r in scenes), "upload: red.png"]  # uploads stay
    text = widgets.output_text(app.out)
    assert text.startswith("upload: red.png at features.14") and "question" not in text
    controls["model"].value = "shapes_vqa"
    assert app.question_row.layout.display is None and controls["question"].value == "how many objects are there?"


def test_stepper_defaults_to_the_non_linear_cut(lite0, scenes):
    app = widgets.explorer_app(records=scenes[:1], models=("efficientnet_lite0",), device="cpu")
    assert app.controls["layer"].value == "_swish@1" and app.controls["stepper-layer"].value == NONLINEAR
    (stepper,) = app.stepper_box.children
    assert widgets.output_text(stepper.out).startswith(
        f"SHAP-CAM (plain) at {NONLINEAR}, 1152 maps, non-linear head: orderings differ")
    stepper.controls["one"].click()
    stepper.controls["one"].click()
    assert "orderings: 2 " in widgets.output_text(stepper.out)
    app.controls["stepper-layer"].value = "_swish@1"
    (stepper,) = app.stepper_box.children
    assert widgets.output_text(stepper.out).startswith(
        "SHAP-CAM (plain) at _swish@1, 1280 maps, affine head: every ordering gives the same, exact")
    app.controls["estimator"].value = "antithetic"
    assert widgets.output_text(app.stepper_box.children[0].out).startswith("SHAP-CAM (antithetic) at _swish@1")
    app.controls["stepper-layer"].value = "no_such_layer"
    assert "unknown layer 'no_such_layer'" in widgets.output_text(app.stepper_box.children[0])
    assert "Error" not in widgets.output_text(app.out)  # the map above is untouched


def test_the_non_linear_cuts_are_where_orderings_differ(lite0, shapes, vqa, photo, scenes, questions):
    """Why the stepper's table holds: at Lite0's default cut every ordering gives the same marginals (an affine
    head), at its non-linear cut two orderings give different ones; the VGG-style and VQA defaults are non-linear."""
    x = lite0.preprocess(photo)[None]
    marginals = {}
    for layer in ("_swish@1", explore.stepper_layer(lite0)):
        stepper = explore.ShapleyStepper(lite0.split(layer), x, seed=1)
        first = stepper.step(1).copy()
        stepper.step(1)
        marginals[layer] = (first, stepper.last_marginals)
    np.testing.assert_allclose(*marginals["_swish@1"], rtol=1e-4, atol=1e-5)
    first, second = marginals[NONLINEAR]
    assert np.abs(first - second).max() > 10 * np.abs(first).mean()
    assert is_affine_head(lite0.split().head) and not is_affine_head(lite0.split(NONLINEAR).head)
    fixed = vqa.fixed(questions[0].question)
    for model in (shapes, fixed):
        assert explore.stepper_layer(model) == model.layer and not is_affine_head(model.split().head)


def test_antithetic_stepper_is_shapcams(shapes, scenes):
    split = shapes.split()
    x = shapes.preprocess(scenes[0].image())[None]
    stepper = explore.ShapleyStepper(split, x, seed=4, estimator="antithetic")
    stepper.step(1)
    first = stepper.last_ordering.copy()
    stepper.step(1)
    np.testing.assert_array_equal(stepper.last_ordering, first[::-1])  # each ordering, then its reverse
    stepper.step(1)
    expected = lu.coefficients("shapcam", split, x, n_permutations=3, seed=4, estimator="antithetic")[0]
    np.testing.assert_allclose(stepper.alpha, expected.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown estimator 'stratified' for the stepper; valid: plain, antithetic"):
        explore.ShapleyStepper(split, x, estimator="stratified")


def test_app_offers_shapes_vit_and_shows_its_maps_and_stepper(scenes):
    """The ViT of the scenes: its map over the image, its numbers, and a SHAP-CAM stepper over its 64 token channels."""
    app = widgets.explorer_app(records=scenes, device="cpu")
    assert "shapes_vit" in app.controls["model"].options
    app.controls["model"].value = "shapes_vit"
    text = widgets.output_text(app.out)
    assert text.startswith(f"{scenes[0].name} at encoder.layers.encoder_layer_2, target") and "Error" not in text
    assert "IC " in text and "insertion AUC" in text
    assert sum(o["output_type"] == "display_data" for o in app.out.outputs) == 1
    (stepper,) = app.stepper_box.children
    stepper.controls["one"].click()
    assert "orderings: 1 " in widgets.output_text(stepper.out) and "64 maps" in widgets.output_text(stepper.out)
