"""The course exercises of notebooks 06 (VQA) and 07 (sanity checks): the exercises and points in the notebooks, and
each check of liftcam_utils.app.exercises_models passing the right answer and naming each typical mistake."""

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml
from scipy.stats import rankdata, spearmanr

import liftcam_utils as lu
from liftcam_utils.app import exercises_models as X
from liftcam_utils.app.exercises import ExerciseFeedback
from liftcam_utils.datasets import load_dataset, select
from liftcam_utils.datasets.records import Box
from liftcam_utils.datasets.synthetic_vqa import ANSWERS
from liftcam_utils.evaluation import metrics as M
from liftcam_utils.evaluation import sanity

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _feedback(hint):
    return pytest.raises(ExerciseFeedback, match=re.escape(hint))


def _exercises(notebook):
    """name -> (manual, points) of the notebook's otter questions; an autograded one's points add up its tests."""
    found, current = {}, None
    for cell in nbformat.read(NOTEBOOKS / notebook, 4).cells:
        if cell.cell_type == "raw" and cell.source.startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(cell.source.removeprefix("# BEGIN QUESTION"))
            current = config["name"]
            found[current] = (config.get("manual", False), config.get("points", 0))
        elif cell.cell_type == "code" and cell.source.startswith('""" # BEGIN TEST CONFIG'):
            config = yaml.safe_load(cell.source.split('"""')[1].removeprefix(" # BEGIN TEST CONFIG"))
            manual, points = found[current]
            found[current] = (manual, points + config["points"])
    return found


@pytest.mark.parametrize(("notebook", "expected"), [
    ("06_vqa.ipynb", {"q06_change_question": (False, 4), "q06_saturation": (False, 3),
                      "q06_why_saturated": (True, 1)}),
    ("07_sanity_checks.ipynb", {"q07_spearman": (False, 3), "q07_cascading": (False, 3),
                                "q07_passing_is_not_faithful": (True, 1)}),
])
def test_the_notebooks_exercises_and_points(notebook, expected):
    assert _exercises(notebook) == expected


# --- 06: a question about another object --------------------------------------------------------------------

@pytest.fixture(scope="module")
def vqa():
    return lu.load_model("shapes_vqa", device="cpu")


@pytest.fixture(scope="module")
def vqa_records():
    return load_dataset("vqa", n_images=60, seed=0)


@pytest.fixture(scope="module")
def answered(vqa, vqa_records):
    """Twelve records, two of them answered wrongly, one with certainty: the predicted answer's probability differs
    from the answer's, also above 0.999."""
    records = load_dataset("vqa", n_images=400, seed=0)
    _, logits = X.answer_probabilities(vqa, records)
    certainty = logits.softmax(1).amax(1)
    certainty[logits.argmax(1) == torch.tensor([r.label for r in records])] = 0  # right answers left out
    return [*vqa_records[:10], *(records[i] for i in certainty.topk(2).indices.tolist())]


@pytest.fixture(scope="module")
def scene(vqa_records):
    """scene_2024_00003: the blue star (0), the blue circle (1), the red triangle (2); asked about the circle."""
    record, scene = X.scenes_with_objects(vqa_records, minimum=3)[1]
    assert record.question == "what color is the circle?" and [s for s, _ in scene.objects] == [
        "star", "circle", "triangle"]
    return scene


ORIGINAL = "what color is the circle?"


@pytest.mark.parametrize(("question", "predicted", "hint"), [
    ("what color is the triangle?", 2, None),
    ("What shape is the red object ?", 0, None),
    ("how many red objects are there?", 1, None),  # the prediction is not graded
    ("what colour is the triangle?", 2, "the model does not know the word(s) 'colour'"),
    ("which color is the triangle?", 2, "the model does not know the word(s) 'which'"),
    ("what color is triangle?", 2, "is not a question of the synthetic VQA task"),
    ("is there a green triangle?", 2, "is about no object of this scene"),
    ("what color is the cross?", 2, "is about no object of this scene"),
    ("what shape is the blue object?", 0, "which the original question 'what color is the circle?' asks about too"),
    ("how many objects are there?", 0, "asks about too"),
    ("what color is the triangle?", 3, "`predicted_object` should be an object's index, 0 to 2"),
    ("what color is the triangle?", ..., "`predicted_object` is not chosen yet"),
    (..., 2, "`new_question` is not written yet"),
])
def test_new_question_hints(vqa, scene, question, predicted, hint):
    if hint is None:
        X.check_new_question(question, predicted, ORIGINAL, scene, vqa)
    else:
        with _feedback(hint):
            X.check_new_question(question, predicted, ORIGINAL, scene, vqa)


def _energies(method="liftcam", fixed_question=None, reduce="share", transpose=False, union=False, target=None):
    """A student's object_energies, right by default or with one typical mistake."""
    def object_energies(loaded, image, question, boxes):
        fixed = loaded.fixed(fixed_question or question)
        scene_map = lu.saliency(method, fixed.split(), loaded.preprocess(image)[None], target)[0]
        drawn = [Box(b.label, b.y0, b.x0, b.y1, b.x1) for b in boxes] if transpose else boxes
        masks = torch.stack([M.box_mask(drawn if union else [box], *scene_map.shape) for box in drawn])
        inside = (scene_map * masks).flatten(1).sum(1)
        return {"share": inside / scene_map.sum(), "sum": inside, "mean": inside / masks.flatten(1).sum(1),
                "boxes": inside / inside.sum()}[reduce]
    return object_energies


@pytest.mark.parametrize(("answer", "hint"), [
    (_energies(), None),
    (_energies(fixed_question=ORIGINAL), "the question is not changed in the model"),
    (_energies(reduce="sum"), "your energies are not normalised"),
    (_energies(reduce="mean"), "you averaged the map inside each box"),
    (_energies(reduce="boxes"), "you divided by the energy inside all the boxes"),
    (_energies(transpose=True), "your boxes are transposed"),
    (_energies(union=True), "the union of all the boxes"),
    (_energies(method="gradcam"), "these are Grad-CAM's shares"),
    (_energies(target=ANSWERS.index("blue")), "you explained the answer to 'what color is the circle?'"),
    (lambda loaded, image, question, boxes: torch.ones(2), "return one share per box (3 objects)"),
    (lambda loaded, image, question, boxes: 1 / 0, "raised ZeroDivisionError"),
    (lambda loaded, image, question, boxes: ..., "returned `...`"),
    (..., "not written yet"),
])
def test_object_energies_hints(vqa, scene, answer, hint):
    questions = [ORIGINAL, "what color is the triangle?"]
    if hint is None:
        X.check_object_energies(answer, vqa, scene, questions)
    else:
        with _feedback(hint):
            X.check_object_energies(answer, vqa, scene, questions)


def test_object_energies_before_the_new_question_is_written(vqa, scene):
    with _feedback("the question Ellipsis is not written yet"):
        X.check_object_energies(_energies(), vqa, scene, [ORIGINAL, ...])


def test_the_question_change_is_described_whatever_the_answers(vqa, scene):
    text = X.describe_question_change(_energies(), vqa, scene, ORIGINAL, "what color is the triangle?", 2)
    assert "object 2: red triangle" in text and "the largest gain is on object 2" in text and "as you predicted" in text
    assert "not where you predicted (object 0)" in X.describe_question_change(
        _energies(), vqa, scene, ORIGINAL, "what color is the triangle?", 0)
    assert X.describe_question_change(..., vqa, scene, ORIGINAL, ..., ...).startswith("not yet: `new_question`")
    assert "not written yet" in X.describe_question_change(..., vqa, scene, ORIGINAL, "what color is the star?", 0)
    assert "one share per box (3 objects)" in X.describe_question_change(
        lambda loaded, image, question, boxes: torch.ones(2), vqa, scene, ORIGINAL, "what color is the star?", 0)


# --- 06: a saturated model ----------------------------------------------------------------------------------

def _probabilities(pick="label", question=None, dim=1):
    """A student's answer_probabilities, one record at a time, right by default or with one typical mistake."""
    def answer_probabilities(loaded, records):
        values = []
        for record in records:
            with torch.no_grad():
                logits = loaded.fixed(question or record.question).net(loaded.preprocess(record.image())[None])
            values.append({"label": logits.softmax(dim)[0, record.label], "max": logits.softmax(1).amax(),
                           "logit": logits[0, record.label], "log": logits.log_softmax(1)[0, record.label]}[pick])
        return torch.stack(values)
    return answer_probabilities


@pytest.mark.parametrize(("answer", "hint"), [
    (lambda records: _probabilities(), None),
    (lambda records: _probabilities(pick="max"), "the probability of the model's predicted answer"),
    (lambda records: _probabilities(pick="logit"), "these are logits"),
    (lambda records: _probabilities(pick="log"), "these are log-probabilities"),
    (lambda records: _probabilities(dim=0), "all your probabilities are 1"),
    (lambda records: _probabilities(question=records[0].question), "fix each record's own question"),
    (lambda records: lambda loaded, records: _probabilities()(loaded, records) / 2, "your probabilities are not"),
    (lambda records: lambda loaded, records: torch.ones(3), "return one probability per record"),
    (lambda records: lambda loaded, records: records[99], "raised IndexError"),
])
def test_answer_probabilities_hints(vqa, answered, answer, hint):
    if hint is None:
        X.check_answer_probabilities(answer(answered), vqa, answered)
    else:
        with _feedback(hint):
            X.check_answer_probabilities(answer(answered), vqa, answered)


@pytest.fixture(scope="module")
def saturation(vqa, answered):
    probability, logits = X.answer_probabilities(vqa, answered)
    return probability, logits.softmax(1).amax(1)


@pytest.mark.parametrize(("answer", "hint"), [
    (lambda p, q: (p > 0.999).double().mean().item(), None),
    (lambda p, q: (p >= 0.999).float().mean(), None),
    (lambda p, q: 100 * (p > 0.999).double().mean().item(), "you gave a percentage"),
    (lambda p, q: int((p > 0.999).sum()), "you gave the number of saturated questions"),
    (lambda p, q: (p <= 0.999).double().mean().item(), "the share of the questions at or below 0.999"),
    (lambda p, q: (p > 0.99).double().mean().item(), "that is the share above 0.99"),
    (lambda p, q: "67 %", "should be one number, a fraction, got str"),
    (lambda p, q: p > 0.999, "should be one number, a fraction, got Tensor"),
    (lambda p, q: ..., "not computed yet"),
    (lambda p, q: (q > 0.999).double().mean().item(), "you counted the predicted answer's probability"),
    (lambda p, q: 0.0123, "off by"),
])
def test_saturated_share_hints(vqa, answered, saturation, answer, hint):
    share = answer(*saturation)
    if hint is None:
        X.check_saturated_share(share, vqa, answered, 0.999)
    else:
        with _feedback(hint):
            X.check_saturated_share(share, vqa, answered, 0.999)


# --- 07: the Spearman rank correlation of two maps ----------------------------------------------------------

@pytest.fixture(scope="module")
def photos(lite0):
    records = select(load_dataset("photos", model=lite0), 12, 0)[:1]  # the notebook's first photo
    x = torch.stack([lite0.preprocess(r.image()) for r in records])
    return x, torch.tensor([r.label for r in records])


@pytest.fixture(scope="module")
def trained_maps(lite0, photos):
    x, target = photos
    return sanity.method_maps(lite0.split("_blocks.15._swish@0"), x, target, ["gradcam", "liftcam"])


def _flat(a, b):
    return np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()


def _ordinal(values):
    return np.argsort(np.argsort(values, kind="stable"), kind="stable")


def _scipy(a, b):
    return float(spearmanr(*_flat(a, b)).statistic)


@pytest.mark.parametrize(("answer", "hint"), [
    (_scipy, None),
    (lambda a, b: sanity.map_spearman(a, b), None),
    (lambda a, b: np.corrcoef(*_flat(a, b))[0, 1], "that is the Pearson correlation of the values"),
    (lambda a, b: np.corrcoef(*map(_ordinal, _flat(a, b)))[0, 1], "your ranks break ties by position"),
    (lambda a, b: float(np.corrcoef(rankdata(_flat(a, b)[0]), _flat(a, b)[1])[0, 1]),
     "you ranked only the first map"),
    (lambda a, b: float(np.corrcoef(_flat(a, b)[0], rankdata(_flat(a, b)[1]))[0, 1]),
     "you ranked only the second map"),
    (lambda a, b: _scipy(a, b) / 2, "your correlation is"),
    (lambda a, b: "high", "returned a str, not a number"),
    (lambda a, b: spearmanr(np.asarray(a), np.asarray(b)).statistic, "flatten both maps first"),
    (lambda a, b: spearmanr(*_flat(a, b)), "scipy's result object"),
    (lambda a, b: 0.0 if np.ptp(_flat(a, b)[0]) == 0 else _scipy(a, b), "a constant map has no ranking"),
    (lambda a, b: 1 / 0, "raised ZeroDivisionError"),
    (lambda a, b: ..., "returned ..."),
])
def test_spearman_hints(trained_maps, answer, hint):
    if hint is None:
        X.check_spearman(answer, trained_maps["gradcam"], trained_maps["liftcam"])
    else:
        with _feedback(hint):
            X.check_spearman(answer, trained_maps["gradcam"], trained_maps["liftcam"])


def test_spearman_of_signed_correlations_keeps_the_sign(trained_maps):
    """Anti-correlated maps: the absolute value is named as a mistake."""
    flipped = 1 - trained_maps["liftcam"]
    with _feedback("you returned the absolute value"):
        X.check_spearman(lambda a, b: abs(_scipy(a, b)), trained_maps["gradcam"], flipped)


# --- 07: cascading randomisation of the head ----------------------------------------------------------------

METHODS = ["gradcam", "gradcam++", "liftcam", "eigencam"]


@pytest.fixture(scope="module")
def head_setting(lite0, photos):
    layer = "_blocks.15._swish@0"
    split = lite0.split(layer)
    head_layers = [n for n in sanity.randomisation_layers(split, blocks=True) if sanity.layer_part(split, n) == "head"]
    x, target = photos
    rows, _ = sanity.parameter_randomisation(lite0.net, layer, x, METHODS, target, layers=head_layers, seed=0)
    return (lite0, layer, x, target, METHODS, head_layers, 0), rows


def _at(rows, mode="cascading", depth=7, measure="spearman", nan=0.0):
    at = rows[(rows["mode"] == mode) & (rows.depth == depth)]
    values = at[measure] if nan is None else at[measure].fillna(nan)
    return values.groupby(at["method"]).mean()


@pytest.mark.parametrize(("answer", "hint"), [
    (lambda rows: _at(rows), None),
    (lambda rows: _at(rows).to_dict(), None),
    (lambda rows: _at(rows, nan=None), "your mean for liftcam is NaN: a constant map's Spearman is undefined"),
    (lambda rows: _at(rows, depth=0), "these are the trained network's (depth 0) correlations"),
    (lambda rows: _at(rows, depth=1), "you took depth 1"),
    (lambda rows: rows[(rows["mode"] == "cascading") & (rows.depth > 0)].fillna(0.0).groupby("method").spearman.mean(),
     "you averaged over every depth"),
    (lambda rows: _at(rows, measure="ssim"), "these are SSIMs"),
    (lambda rows: _at(rows, mode="independent"), "you ran the independent mode"),
    (lambda rows: _at(rows) + 0.01, "your correlations differ from the package's"),
    (lambda rows: _at(rows).drop("eigencam"), "has no value for eigencam"),
    (lambda rows: list(_at(rows)), "should map each method to its mean Spearman"),
    (lambda rows: dict.fromkeys(METHODS, "low"), "should hold one number per method"),
    (lambda rows: ..., "not computed yet"),
])
def test_head_spearman_hints(head_setting, answer, hint):
    setting, rows = head_setting
    if hint and "NaN" in hint:
        assert rows.spearman.isna().any()  # LIFT-CAM's map of this photo is constant once the head is random
    if hint is None:
        X.check_head_spearman(answer(rows), *setting)
    else:
        with _feedback(hint):
            X.check_head_spearman(answer(rows), *setting)


@pytest.mark.parametrize(("answer", "hint"), [
    (lambda rho: [m for m in METHODS if rho[m] >= 0.5], None),
    (lambda rho: {m for m in METHODS if rho[m] >= 0.5}, None),
    (lambda rho: [m for m in METHODS if rho[m] < 0.5], "you listed the methods that pass"),
    (lambda rho: ["eigencam"], "gradcam++ fails (mean Spearman"),
    (lambda rho: ["eigencam", "gradcam++", "gradcam"], "gradcam passes (mean Spearman"),
    (lambda rho: ["eigencam", "gradcam++", "Grad-CAM"], "Grad-CAM not among the methods run"),
    (lambda rho: "eigencam", "should be a list of method names"),
    (lambda rho: ..., "not listed yet"),
])
def test_failing_methods_hints(head_setting, answer, hint):
    setting, rows = head_setting
    rho = _at(rows)
    assert rho["gradcam++"] >= 0.5 > rho["gradcam"] and rho["eigencam"] == pytest.approx(1)  # the hints assume it
    if hint is None:
        X.check_failing_methods(answer(rho), *setting, 0.5)
    else:
        with _feedback(hint):
            X.check_failing_methods(answer(rho), *setting, 0.5)


def test_head_spearman_of_two_photos_names_the_constant_maps_left_out(lite0):
    """With two photos, LIFT-CAM's map of one becomes constant: leaving its NaN out gives the other photo's value."""
    layer = "_blocks.15._swish@0"
    split = lite0.split(layer)
    records = select(load_dataset("photos", model=lite0), 12, 0)[:2]
    x, target = torch.stack([lite0.preprocess(r.image()) for r in records]), torch.tensor([r.label for r in records])
    head_layers = [n for n in sanity.randomisation_layers(split, blocks=True) if sanity.layer_part(split, n) == "head"]
    rows, _ = sanity.parameter_randomisation(lite0.net, layer, x, METHODS, target, modes=["cascading"],
                                             layers=head_layers, seed=0)
    dropped = _at(rows, nan=None)
    assert not dropped.isna().any() and not dropped.equals(_at(rows))
    with _feedback("you left the constant maps' undefined (NaN) Spearman out of the mean"):
        X.check_head_spearman(dropped, lite0, layer, x, target, METHODS, head_layers, 0)
