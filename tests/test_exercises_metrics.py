"""The course exercises of notebooks 04 and 05 (liftcam_utils.app.exercises_metrics): the right answer passes, each
typical mistake gets its own hint, a missing or failing answer gets feedback; and the notebooks hold the exercises
with the points intended, before the evaluation cells that grading skips."""

from pathlib import Path

import nbformat
import pytest
import torch
import yaml

import liftcam_utils as lu
from liftcam_utils.app import exercises_metrics as checks
from liftcam_utils.app.exercises import ExerciseFeedback
from liftcam_utils.datasets import load_dataset, select
from liftcam_utils.evaluation import metrics as M
from liftcam_utils.evaluation.batch import box_mask_after_preprocess

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(scope="module")
def scenes():
    """The scene model, four scenes of several objects, their targets, the box masks, each method's maps and the mean
    baseline."""
    model = lu.load_model("shapes_vgg", device="cpu")
    records = [r for r in select(load_dataset("scenes"), 20, 0) if len(r.labels) > 1][:4]  # as in notebook 04
    x = torch.stack([model.preprocess(r.image()) for r in records])
    target = torch.tensor([r.label for r in records])
    boxes = torch.stack([box_mask_after_preprocess(r, model.preprocess, r.label, tuple(x.shape[-2:])) for r in records])
    maps = {m: lu.saliency(m, model.split(), x, target) for m in ("gradcam", "liftcam")}
    return model, x, target, boxes, maps, M.baseline_image(model.preprocess, "mean")


def _expect(hint, check, *args):
    if hint is None:
        check(*args)
    else:
        with pytest.raises(ExerciseFeedback, match=hint.replace("(", r"\(").replace(")", r"\)")):
            check(*args)


# --- 04.1: IC, AD and ADD --------------------------------------------------------------------------------------

def _safe(numerator, y):
    return torch.where(y > 0, numerator / torch.where(y > 0, y, 1.0), 0.0)


FUNCTIONS = {"IC": "increase_in_confidence", "AD": "average_drop", "ADD": "average_drop_in_deletion"}
RIGHT_TERMS = {"IC": lambda y, o: 100 * (y < o).double(),
               "AD": lambda y, o: 100 * _safe((y - o).clamp_min(0), y),
               "ADD": lambda y, d: 100 * _safe(y - d, y)}


@pytest.mark.parametrize(("metric", "term", "hint"), [
    ("IC", RIGHT_TERMS["IC"], None),
    ("IC", lambda y, o: y < o, "is 0 or 1"),
    ("IC", lambda y, o: 100 * (y <= o).double(), "counted a tie"),
    ("IC", lambda y, o: 100 * (y > o).double(), "whose confidence fell"),
    ("IC", lambda y, o: 100 * _safe((o - y).clamp_min(0), y), "relative gain"),
    ("IC", lambda y, o: 100 * (y < o).double().mean(), "returned one number"),
    ("AD", lambda y, o: _safe((y - o).clamp_min(0), y), "is a fraction"),
    ("AD", lambda y, o: 100 * (y - o).clamp_min(0) / y, "where Y = 0 your term is NaN"),
    ("AD", lambda y, o: 100 * _safe(y - o, y), "goes negative where O > Y"),
    ("AD", lambda y, o: 100 * _safe((y - o).clamp_min(0), o), "you divided by O"),
    ("AD", lambda y, o: 100 * (y - o).clamp_min(0) / o, "you divided by O"),
    ("AD", lambda y, o: 100 * _safe((y - o).abs(), y), "you took |Y - O|"),
    ("AD", lambda y, o: 100 * _safe((o - y).clamp_min(0), y), "you measured the gain"),
    ("AD", lambda y, o: 100 * (y - o).clamp_min(0), "is not relative"),
    ("ADD", lambda y, d: _safe(y - d, y), "is a fraction"),
    ("ADD", lambda y, d: 100 * _safe((y - d).clamp_min(0), y), "never negative"),
    ("ADD", lambda y, d: 100 * _safe(d - y, y), "wrong sign"),
    ("ADD", lambda y, d: 100 * _safe(y - d, d), "you divided by D"),
    ("ADD", lambda y, d: 100 * (y - d) / y, "where Y = 0 your term is NaN"),
    ("ADD", lambda y, d: 100 * _safe((y - d).abs(), y), "you took |Y - D|"),
    ("ADD", lambda y, d: 100 * (y - d) / y.clamp_min(0.5), "not Eq. 13's"),
    ("ADD", lambda y, d: 1 / 0, "raised ZeroDivisionError"),
    ("ADD", lambda y, d: ..., "returned `...`"),
    ("ADD", ..., "not written yet"),
])
def test_confidence_term_hints(scenes, metric, term, hint):
    model, x, target, _, maps, baseline = scenes
    scores = M.confidence_scores(model.net, x, maps["liftcam"], target, baseline, output=model.output)
    terms = {**RIGHT_TERMS, metric: term}
    _expect(hint if hint is None else f"`{FUNCTIONS[metric]}`.*{hint}", checks.check_confidence_terms,
            terms["IC"], terms["AD"], terms["ADD"], scores["Y"], scores["O"], scores["D"])


def _confidences(scenes, output=None, baseline=None, swap=False):
    model, x, target, _, maps, mean = scenes
    result = {}
    for method, s in maps.items():
        scores = M.confidence_scores(model.net, x, s, target, mean if baseline is None else baseline,
                                     output=output or model.output)
        result[method] = {**scores, "O": scores["D"], "D": scores["O"]} if swap else scores
    return result


@pytest.mark.parametrize(("options", "hint"), [
    ({}, None),
    ({"output": "softmax"}, "you scored the softmax"),
    ({"swap": True}, "O and D are swapped"),
    ({"baseline": "black"}, "blended towards raw black"),
])
def test_confidences_hints(scenes, options, hint):
    model, x, target, _, maps, baseline = scenes
    if options.get("baseline") == "black":
        options = {**options, "baseline": M.baseline_image(model.preprocess, "black")}
    _expect(hint, checks.check_confidences, _confidences(scenes, **options), model, x, maps, target, baseline)


@pytest.mark.parametrize(("confidences", "hint"), [
    (..., "not computed yet"),
    ({}, "has no entry for gradcam, liftcam"),
    ([1, 2], "should be a dict"),
])
def test_confidences_missing(scenes, confidences, hint):
    model, x, target, _, maps, baseline = scenes
    _expect(hint, checks.check_confidences, confidences, model, x, maps, target, baseline)


# --- 04.2: insertion AUC ---------------------------------------------------------------------------------------

def _insertion(output=None, kind="insertion", area="trapezoid", ties="seeded"):
    def insertion_auc(net, x, saliency, target, baseline, model_output):
        curve = []
        with torch.no_grad():
            for delta in M.DELTAS.tolist():
                keep = (M.top_fraction_mask(saliency, delta) if ties == "seeded"
                        else checks._index_ordered_mask(saliency, delta))
                logits = net(M.blend(x, keep if kind == "insertion" else 1 - keep, baseline))
                scores = {"softmax": logits.softmax(1), "sigmoid": logits.sigmoid(), "logit": logits}[
                    output or model_output]
                curve.append(scores[torch.arange(len(target)), target])
        curve = torch.stack(curve, 1)
        return {"trapezoid": lambda: M.trapezoid(curve, M.DELTAS), "mean": lambda: curve.mean(1),
                "sum": lambda: curve.sum(1), "steps": lambda: torch.trapezoid(curve, dim=1),
                "left": lambda: curve[:, :-1].sum(1) * 0.025}[area]()
    return insertion_auc


@pytest.mark.parametrize(("answer", "hint"), [
    (_insertion(), None),
    (_insertion(output="softmax"), "you read the softmax"),
    (_insertion(kind="deletion"), "that is deletion"),
    (_insertion(output="logit"), "integrated the logits"),
    (_insertion(area="mean"), "plain mean"),
    (_insertion(area="sum"), "summed the 41 values"),
    (_insertion(area="steps"), "step number"),
    (_insertion(area="left"), "summed rectangles"),
    (_insertion(ties="index"), "ties by pixel index"),
    (lambda *args: torch.tensor(0.9), "returned one number"),
    (lambda *args: 1 / 0, "raised ZeroDivisionError"),
    (lambda *args: None, "returned None"),
])
def test_insertion_auc_hints(scenes, answer, hint):
    model, x, target, _, maps, baseline = scenes
    _expect(hint, checks.check_insertion_auc, answer, model, x[:2], maps["liftcam"][:2], target[:2], baseline)


# --- 05.1: energy in the box -----------------------------------------------------------------------------------

def _energy(reduce):
    def energy_in_box(saliency, box_mask):
        inside, total = (saliency * box_mask).flatten(1), saliency.flatten(1)
        return reduce(inside, total, box_mask.flatten(1), saliency)
    return energy_in_box


def _share(numerator, denominator):
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1.0), 0.0)


@pytest.mark.parametrize(("answer", "hint"), [
    (_energy(lambda inside, total, box, s: _share(inside.sum(1), total.sum(1))), None),
    (_energy(lambda inside, total, box, s: inside.sum(1) / total.sum(1)), "came out as NaN"),
    (_energy(lambda inside, total, box, s: 100 * _share(inside.sum(1), total.sum(1))), "in percent"),
    (_energy(lambda inside, total, box, s: _share(inside.sum(1), box.sum(1))), "box's number of pixels"),
    (_energy(lambda inside, total, box, s: inside.sum(1)), "without dividing"),
    (_energy(lambda inside, total, box, s: _share(((s > 0) * box.view_as(s)).flatten(1).sum(1).double(),
                                                  (s > 0).flatten(1).sum(1).double())), "above 0"),
    (_energy(lambda inside, total, box, s: _share(inside.amax(1), total.amax(1))), "took the maximum"),
    (_energy(lambda inside, total, box, s: _share(total.sum(1) - inside.sum(1), total.sum(1))), "outside the box"),
    (_energy(lambda inside, total, box, s: _share(inside.sum(1), total.sum(1) - inside.sum(1))),
     "divided by the energy outside"),
    (_energy(lambda inside, total, box, s: _share(inside.sum(1), total.sum(1)).mean()), "returned one number"),
    (_energy(lambda inside, total, box, s: inside.sum(1) / total.sum(1).clamp_min(1e-3) ** 0.5), "not Eq. 14's"),
    (lambda s, box: {}.pop("x"), "raised KeyError"),
])
def test_energy_in_box_hints(scenes, answer, hint):
    _, _, _, boxes, maps, _ = scenes
    _expect(hint, checks.check_energy_in_box, answer, maps["liftcam"], boxes)


# --- 05.2: LIFT-CAM against Grad-CAM ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def energies(scenes):
    """Three scenes (LIFT-CAM wins on two: no share equals its complement), a target that is not the predicted class
    (the runner-up, so that explaining the prediction is detectable), the boxes and the right energies."""
    model, x, _, boxes, _, _ = scenes
    x, boxes = x[1:], boxes[1:]
    with torch.no_grad():
        runner_up = model.net(x).topk(2, dim=1).indices[:, 1]
    return x, runner_up, boxes, checks.scene_energies(model, x, runner_up, boxes)


@pytest.mark.parametrize(("mistake", "hint"), [
    (None, None),
    ("swapped", "are swapped"),
    ("percent", "energies are in percent"),
    ("predicted", "predicted class"),
    ("share percent", "share is in percent"),
    ("count", "you counted the scenes"),
    ("gradcam", "share where Grad-CAM wins"),
    ("difference", "mean difference"),
    ("energy missing", "no entry 'gradcam'"),
    ("share missing", "`liftcam_share` is not computed yet"),
])
def test_scene_energies_hints(scenes, energies, mistake, hint):
    model = scenes[0]
    x, target, boxes, right = energies
    energy = dict(right)
    wins = (right["liftcam"] > right["gradcam"]).double()
    share = wins.mean().item()
    if mistake == "swapped":
        energy = {"liftcam": right["gradcam"], "gradcam": right["liftcam"]}
    elif mistake == "percent":
        energy = {m: 100 * e for m, e in right.items()}
    elif mistake == "predicted":
        with torch.no_grad():
            energy = checks.scene_energies(model, x, model.net(x).argmax(1), boxes)
    elif mistake == "energy missing":
        del energy["gradcam"]
    difference = (right["liftcam"] - right["gradcam"]).mean().item()
    share = {"share percent": 100 * share, "count": wins.sum().item(), "gradcam": 1 - share, "difference": difference,
             "share missing": ...}.get(mistake, share)
    _expect(hint, checks.check_scene_energies, energy, share, model, x, target, boxes)


# --- the notebooks --------------------------------------------------------------------------------------------

def _questions(notebook: str) -> dict[str, int | str]:
    """Each exercise's points: the sum of its test cells' points, or "manual" with the points of a hand-graded one."""
    cells = nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4).cells
    points, current = {}, None
    for cell in cells:
        if cell.cell_type == "raw" and cell.source.startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(cell.source.removeprefix("# BEGIN QUESTION"))
            current = config["name"]
            points[current] = f"manual {config['points']}" if config.get("manual") else 0
        elif cell.cell_type == "raw" and cell.source.startswith("# END QUESTION"):
            current = None
        elif current and cell.cell_type == "code" and cell.source.startswith('""" # BEGIN TEST CONFIG'):
            config = cell.source.split('"""')[1].removeprefix(" # BEGIN TEST CONFIG")
            points[current] += yaml.safe_load(config)["points"]
    return points


@pytest.mark.parametrize(("notebook", "expected"), [
    ("04_faithfulness", {"q04_confidence_terms": 4, "q04_insertion_auc": 3, "q04_map_of_ones": "manual 1"}),
    ("05_localization", {"q05_energy_in_box": 3, "q05_liftcam_versus_gradcam": 2,
                          "q05_mean_or_majority": "manual 1"}),
])
def test_exercise_names_and_points(notebook, expected):
    assert _questions(notebook) == expected


@pytest.mark.parametrize("notebook", ["04_faithfulness", "05_localization"])
def test_the_exercises_come_before_the_cells_grading_skips(notebook):
    """Every code cell from the first `otter_ignore` one on is skipped too (it needs the evaluation), except the
    insertion slider of 04, which needs only the setup; no exercise cell is skipped."""
    cells = [c for c in nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4).cells if c.cell_type == "code"]
    ignored = ["otter_ignore" in c.metadata.get("tags", []) for c in cells]
    first = ignored.index(True)
    assert not any(ignored[:first])
    assert all(ignored[first:-1]) and (ignored[-1] or notebook == "04_faithfulness")
    assert not any("BEGIN TEST CONFIG" in c.source or "BEGIN SOLUTION" in c.source for c in cells[first:])
