"""Checks of the course exercises in notebooks 06 (VQA) and 07 (sanity checks), with hints for the typical mistakes.

Like :mod:`liftcam_utils.app.exercises` (notebooks 00 and 01), each check computes the right answer with the package,
compares it with the student's, and on a mismatch raises :class:`~liftcam_utils.app.exercises.ExerciseFeedback`
naming the mistake it recognises, or, for one it does not, how far off the answer is and what to revisit.

* :func:`check_new_question` and :func:`check_object_energies` (06, a new question about another object of one
  scene, and the share of LIFT-CAM's map energy in each object's box, Eq. 14, before and after);
* :func:`check_answer_probabilities` and :func:`check_saturated_share` (06, the answer's probability ``Y`` of
  Eqs. 11-13 with the question fixed, and the share of saturated questions);
* :func:`check_spearman` (07, the Spearman rank correlation of two maps, as :func:`sanity.map_spearman`);
* :func:`check_head_spearman` and :func:`check_failing_methods` (07, Adebayo et al.'s cascading randomisation of
  the head, and the methods whose map keeps the trained map's ranking).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..datasets.questions import tokenize
from ..datasets.records import Box, ImageRecord
from ..datasets.synthetic_scenes import bounding_box
from ..datasets.synthetic_vqa import COLOURS, SHAPES, generate_vqa_scene
from ..evaluation import metrics as M
from ..evaluation import sanity
from ..methods.run import saliency
from ..models.loaded import LoadedModel
from .exercises import ExerciseFeedback, _as_tensor, _call, _close, _distance, _first_match, _require

# --- 06: a question about another object, and where LIFT-CAM's map goes ----------------------------------------

# The task's templates (liftcam_utils.datasets.synthetic_vqa), tokenized: what a question must read like.
TEMPLATES = {"colour": "what color is the {shape}?", "shape": "what shape is the {colour} object?",
             "exists": "is there a {colour} {shape}?", "count_colour": "how many {colour} objects are there?",
             "count": "how many objects are there?"}
_WORD = {"shape": f"({'|'.join(SHAPES)})", "colour": f"({'|'.join(COLOURS)})"}


@dataclass(frozen=True)
class VqaScene:
    """One generated scene of the synthetic VQA task: its image, each object's (shape, colour name) and box."""

    image: Image.Image
    objects: list[tuple[str, str]]
    boxes: list[Box]


def vqa_scene(record: ImageRecord) -> VqaScene:
    """The scene a synthetic VQA record (named ``scene_{seed}_{index}_q{k}``) asks about, with every object's box
    (the record's own ``boxes`` hold only the objects its question is about)."""
    _, seed, index = record.name.rsplit("_q", 1)[0].split("_")
    image, objects, pixels, _ = generate_vqa_scene(int(seed), int(index))
    return VqaScene(image, objects, [bounding_box(layer, j) for j, layer in enumerate(pixels)])


def scenes_with_objects(records: Sequence[ImageRecord], minimum: int = 2) -> list[tuple[ImageRecord, VqaScene]]:
    """The records asking "what color is the {shape}?" about a scene of at least ``minimum`` objects, with it."""
    found = []
    for record in records:
        if record.question.startswith("what color is the"):
            scene = vqa_scene(record)
            if len(scene.objects) >= minimum:
                found.append((record, scene))
    return found


def _template_pattern(template: str) -> re.Pattern:
    """A template's tokens as a regular expression, each ``{slot}`` a group matching the slot's words."""
    tokens = tokenize(template.replace("{", "slot_").replace("}", ""))
    return re.compile(" ".join(_WORD[t.removeprefix("slot_")] if t.startswith("slot_") else re.escape(t)
                               for t in tokens) + "$")


def objects_asked_about(question: str, objects: Sequence[tuple[str, str]]) -> list[int]:
    """The indices of the objects whose pixels decide the answer to ``question`` (the grounding of
    :mod:`~liftcam_utils.datasets.synthetic_vqa`); ``ExerciseFeedback`` for a question the task does not ask."""
    words = ", ".join(sorted({w for shape, colour in objects for w in (shape, colour)}))
    templates = "; ".join(f'"{t}"' for t in TEMPLATES.values())
    _require(isinstance(question, str), f"the question should be a str, got {question!r}")
    text = " ".join(tokenize(question))
    for template in TEMPLATES.values():
        match = _template_pattern(template).match(text)
        if match is None:
            continue
        slots = dict(zip(re.findall(r"{(\w+)}", template), match.groups(), strict=True))
        return [j for j, (shape, colour) in enumerate(objects)
                if slots.get("shape", shape) == shape and slots.get("colour", colour) == colour]
    raise ExerciseFeedback(f"{question!r} is not a question of the synthetic VQA task: it asks only {templates}, "
                           f"with a shape among {', '.join(SHAPES)} and a colour among {', '.join(COLOURS)} "
                           f"(this scene's words: {words}); spell 'color' the American way")


def _describe(objects: Sequence[tuple[str, str]], indices: Sequence[int]) -> str:
    return ", ".join(f"object {j} (the {objects[j][1]} {objects[j][0]})" for j in indices)


def check_new_question(new_question, predicted_object, original_question: str, scene: VqaScene,
                       loaded: LoadedModel) -> None:
    """``new_question`` must be a question of the task (its templates, words the model knows) about one or more
    objects of ``scene`` that ``original_question`` is not about; ``predicted_object`` the index of the object
    where the student expects LIFT-CAM's map to move (only its validity is checked, not the prediction)."""
    _require(new_question is not Ellipsis, "`new_question` is not written yet: replace the `...` with a question")
    vocabulary, _ = loaded.questions
    unknown = [t for t in tokenize(new_question) if t not in vocabulary] if isinstance(new_question, str) else []
    _require(not unknown, f"the model does not know the word(s) {', '.join(map(repr, unknown))}: it reads only "
                          f"{', '.join(w for w in vocabulary.words if not w.startswith('<'))}")
    about = objects_asked_about(new_question, scene.objects)
    original = objects_asked_about(original_question, scene.objects)
    present = ", ".join(f"the {colour} {shape}" for shape, colour in scene.objects)
    _require(bool(about), f"{new_question!r} is about no object of this scene (its answer is 'no' or 0): ask about "
                          f"one that is there ({present})")
    other_shape = next(shape for j, (shape, _) in enumerate(scene.objects) if j not in original)
    _require(not set(about) & set(original),
             f"{new_question!r} is about {_describe(scene.objects, about)}, which the original question "
             f"{original_question!r} asks about too: ask about another object, e.g. \"what color is the "
             f"{other_shape}?\"")
    _require(predicted_object is not Ellipsis, "`predicted_object` is not chosen yet: the index of the object "
                                               "where you expect LIFT-CAM's map to move")
    _require(isinstance(predicted_object, int | np.integer) and 0 <= predicted_object < len(scene.objects),
             f"`predicted_object` should be an object's index, 0 to {len(scene.objects) - 1}, "
             f"got {predicted_object!r}")


def object_energies(loaded: LoadedModel, image: Image.Image, question: str, boxes: Sequence[Box],
                    method: str = "liftcam", target=None) -> torch.Tensor:
    """Per box, the share of ``method``'s map energy inside it (Eq. 14, ``sum_box s / sum s``), the map of the
    model's answer (``target`` None) with ``question`` fixed. (The exercise's reference: students write their own.)
    """
    saliency_map = _question_map(loaded, image, question, method, target)
    masks = torch.stack([M.box_mask([box], *saliency_map.shape) for box in boxes])
    return M.energy_pointing_game(saliency_map.expand_as(masks), masks).double()


def _question_map(loaded: LoadedModel, image: Image.Image, question: str, method: str = "liftcam", target=None
                  ) -> torch.Tensor:
    fixed = loaded.fixed(question)
    x = loaded.preprocess(image)[None].to(loaded.device)
    return saliency(method, fixed.split(), x, target)[0].cpu().double()


def _answer_of(loaded: LoadedModel, image: Image.Image, question: str) -> int:
    with torch.no_grad():
        return int(loaded.fixed(question).net(loaded.preprocess(image)[None].to(loaded.device)).argmax(1))


def check_object_energies(energies_function, loaded: LoadedModel, scene: VqaScene, questions: Sequence[str]
                          ) -> None:
    """``energies_function(loaded, image, question, boxes)`` must return, per box, the share of LIFT-CAM's map
    energy inside it (Eq. 14), the map of the model's answer to ``question`` (fixed in the model, Sec. 4.4), for
    each of ``questions`` about ``scene``."""
    name = "object_energies"
    for question in questions:
        _require(isinstance(question, str), f"the question {question!r} is not written yet: set `new_question` to "
                                            "a question (a str) first")
        answer = _as_tensor(_call(energies_function, name, loaded, scene.image, question, scene.boxes), name)
        expected = object_energies(loaded, scene.image, question, scene.boxes)
        _require(answer.numel() == len(scene.boxes),
                 f"return one share per box ({len(scene.boxes)} objects), got {answer.numel()} numbers")
        answer = answer.reshape(-1)
        if _close(answer, expected):
            continue
        saliency_map = _question_map(loaded, scene.image, question)
        masks = torch.stack([M.box_mask([box], *saliency_map.shape) for box in scene.boxes]).double()
        inside = (saliency_map * masks).flatten(1).sum(1)
        other = next(q for q in questions if q != question) if len(set(questions)) > 1 else None
        mistakes = [
            (object_energies(loaded, scene.image, other, scene.boxes) if other else None,
             f"your shares for {question!r} are those of {other!r}: the question is not changed in the model; fix "
             "the question you are given, loaded.fixed(question), and cut that model (fixed.split())"),
            (inside, "your energies are not normalised: divide the map's sum inside each box by its sum over the "
                     "whole image (Eq. 14's share)"),
            (inside / masks.flatten(1).sum(1), "you averaged the map inside each box: Eq. 14 divides the sum inside "
                                               "the box by the map's sum over the whole image, not by the box's area"),
            (inside / inside.sum(), "you divided by the energy inside all the boxes: divide by the map's sum over the "
                                    "whole image (the background counts too)"),
            (object_energies(loaded, scene.image, question, [Box(b.label, b.y0, b.x0, b.y1, b.x1)
                                                              for b in scene.boxes]),
             "your boxes are transposed: a box's x0/x1 are columns (the last dimension), y0/y1 rows; "
             "M.box_mask(boxes, height, width) draws them"),
            (torch.full_like(expected, M.energy_pointing_game(
                saliency_map[None], M.box_mask(scene.boxes, *saliency_map.shape)[None].double()).item()),
             "every share is the one of the union of all the boxes: take one box at a time "
             "(M.box_mask([box], height, width))"),
            (object_energies(loaded, scene.image, question, scene.boxes, method="gradcam"),
             "these are Grad-CAM's shares: use LIFT-CAM's map (lu.saliency(\"liftcam\", ...))"),
            (object_energies(loaded, scene.image, question, scene.boxes,
                             target=_answer_of(loaded, scene.image, questions[0])) if question != questions[0]
             else None,
             f"you explained the answer to {questions[0]!r}: explain the model's answer to the question you are "
             "given (target=None: the answer the model gives with that question fixed)"),
        ]
        hint = _first_match(answer, [(result, hint) for result, hint in mistakes if result is not None])
        raise ExerciseFeedback(hint or (
            f"your shares for {question!r} are not Eq. 14's ({_distance(answer, expected)}); per box: "
            "the sum of LIFT-CAM's map inside the box / its sum over the image, with the question fixed"))


def describe_question_change(energies_function, loaded: LoadedModel, scene: VqaScene, original_question: str,
                             new_question, predicted_object) -> str:
    """The energy shares of both questions per object and whether the map moved to ``predicted_object``; a
    sentence saying what is missing while the exercise is not done (never an error)."""
    try:
        check_new_question(new_question, predicted_object, original_question, scene, loaded)
        shares = {q: _as_tensor(_call(energies_function, "object_energies", loaded, scene.image, q, scene.boxes),
                                "object_energies").reshape(-1) for q in (original_question, new_question)}
        _require(all(len(s) == len(scene.objects) for s in shares.values()),
                 f"`object_energies` should return one share per box ({len(scene.objects)} objects)")
    except ExerciseFeedback as feedback:
        return f"not yet: {feedback}"
    table = pd.DataFrame({q: (100 * s).numpy() for q, s in shares.items()},
                         index=[f"object {j}: {colour} {shape}" for j, (shape, colour) in enumerate(scene.objects)])
    change = shares[new_question] - shares[original_question]
    moved_to = int(change.argmax())
    verdict = ("as you predicted" if moved_to == predicted_object
               else f"not where you predicted (object {predicted_object})")
    return (f"share of LIFT-CAM's map energy in each object's box (%):\n{table.round(1).to_string()}\n"
            f"the largest gain is on object {moved_to} ({100 * change[moved_to]:+.1f} points): {verdict}")


# --- 06: a saturated model ----------------------------------------------------------------------------------

def answer_probabilities(loaded: LoadedModel, records: Sequence[ImageRecord], question: str | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax probability of each record's answer (its label) with its question fixed (``Y`` of Eqs. 11-13),
    and the logits (n, answers); ``question``: fix this one for every record instead (a typical mistake)."""
    logits = torch.empty(len(records), len(loaded.categories), dtype=torch.float64)
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(question or record.question, []).append(i)
    for asked, indices in groups.items():
        x = torch.stack([loaded.preprocess(records[i].image()) for i in indices]).to(loaded.device)
        with torch.no_grad():
            logits[indices] = loaded.fixed(asked).net(x).double().cpu()
    labels = torch.tensor([r.label for r in records])
    return logits.softmax(1)[torch.arange(len(records)), labels], logits


def check_answer_probabilities(probabilities_function, loaded: LoadedModel, records: Sequence[ImageRecord]) -> None:
    """``probabilities_function(loaded, records)`` must return the softmax probability (n,) of each record's
    answer, with its own question fixed in the model (``Y`` of Eqs. 11-13)."""
    name = "answer_probabilities"
    answer = _as_tensor(_call(probabilities_function, name, loaded, list(records)), name)
    expected, logits = answer_probabilities(loaded, records)
    _require(answer.numel() == len(records), f"return one probability per record ({len(records)}), got "
                                             f"{answer.numel()} numbers")
    answer = answer.reshape(-1)
    if _close(answer, expected):
        return
    labels = torch.tensor([r.label for r in records])
    rows = torch.arange(len(records))
    _require(not torch.allclose(answer, torch.ones_like(answer)) or torch.allclose(expected, torch.ones_like(answer)),
             "all your probabilities are 1: the softmax ran over a dimension of size 1 (the batch of one image); "
             "take it over the answers, dim=1")
    mistakes = [
        (logits.softmax(1).amax(1), "you took the probability of the model's predicted answer (the maximum): take "
                                    "the probability of the record's answer, record.label (they differ where the "
                                    "model is wrong)"),
        (logits[rows, labels], "these are logits: apply the softmax over the answers first (Y is a probability)"),
        (logits.log_softmax(1)[rows, labels], "these are log-probabilities: Y is the softmax probability itself"),
        (answer_probabilities(loaded, records, records[0].question)[0],
         f"every record was answered with the question {records[0].question!r}: fix each record's own question "
         "(loaded.fixed(record.question))"),
    ]
    hint = _first_match(answer, mistakes)
    raise ExerciseFeedback(hint or (
        f"your probabilities are not the answers' ({_distance(answer, expected)}): per record, fix its question, "
        "run the fixed model on loaded.preprocess(record.image()), softmax over the answers, take record.label"))


def check_saturated_share(share, loaded: LoadedModel, records: Sequence[ImageRecord], threshold: float) -> None:
    """``share`` must be the fraction (in [0, 1]) of ``records`` whose answer's probability exceeds ``threshold``."""
    _require(share is not Ellipsis and share is not None, "`saturated_share` is not computed yet: replace the `...`")
    try:
        share = float(share)
    except (TypeError, ValueError, RuntimeError):  # a str, a list, a tensor of several numbers
        raise ExerciseFeedback(f"`saturated_share` should be one number, a fraction, got {type(share).__name__}"
                               ) from None
    probability, logits = answer_probabilities(loaded, records)
    n = len(records)
    # a probability within float rounding of the threshold may fall on either side
    low, high = ((probability > threshold + side).double().mean().item() for side in (1e-6, -1e-6))
    if low - 1e-6 <= share <= high + 1e-6:
        return
    expected = (probability > threshold).double().mean().item()
    mistakes = [
        (100 * expected, "you gave a percentage: give the share as a fraction in [0, 1]"),
        (expected * n, f"you gave the number of saturated questions: divide by the {n} questions"),
        (1 - expected, f"you gave the share of the questions at or below {threshold}: count those above it"),
        ((logits.softmax(1).amax(1) > threshold).double().mean().item(),
         "you counted the predicted answer's probability: count the probability of each record's answer (label)"),
        ((probability > 0.99).double().mean().item(), f"that is the share above 0.99: use the threshold {threshold}"),
    ]
    hint = _first_match(torch.tensor([share], dtype=torch.float64),
                        [(torch.tensor([value], dtype=torch.float64), hint) for value, hint in mistakes])
    raise ExerciseFeedback(hint or (
        f"your share {share:.4g} is not the share of questions whose answer's probability exceeds {threshold} "
        f"(off by {abs(share - expected):.3g}); compare answer_probabilities(vqa, records) with {threshold} and "
        "take the mean"))


# --- 07: the Spearman rank correlation of two maps --------------------------------------------------------------

def _number(value, name: str) -> float:
    """One number from the student's function, or feedback naming what came back instead."""
    _require(value is not Ellipsis and value is not None,
             f"`{name}` returned {'...' if value is Ellipsis else 'None'}: return the correlation, one float")
    if hasattr(value, "statistic"):
        raise ExerciseFeedback(f"`{name}` returned scipy's result object (statistic and p-value): return its "
                               ".statistic, one float")
    array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=object)
    _require(array.size == 1, f"`{name}` returned {array.size} numbers (shape {array.shape}), not one: flatten both "
                              "maps first (.ravel()); on two 2-D arrays spearmanr treats every column as a variable "
                              "and returns a matrix")
    try:
        return float(array.reshape(-1)[0])
    except (TypeError, ValueError):
        raise ExerciseFeedback(f"`{name}` returned a {type(value).__name__}, not a number") from None


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _ordinal_ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(np.float64)


def check_spearman(spearman, maps_a: torch.Tensor, maps_b: torch.Tensor) -> None:
    """``spearman(map_a, map_b)`` must return the Spearman rank correlation of two (H, W) maps' pixels as
    :func:`~liftcam_utils.evaluation.sanity.map_spearman` does: ties share their mean rank, NaN when a map is
    constant. Tried on the first maps of ``maps_a`` and ``maps_b`` (B, H, W), a version of the first with half its
    pixels tied at 0, and a constant map."""
    a, b = maps_a[0].double(), maps_b[0].double()
    tied = torch.where(a > a.median(), a, 0.0)
    pairs = {"two maps of one image": (a, b), "a map with half its pixels tied at 0": (tied, b),
             "a constant map (all zero)": (torch.zeros_like(a), b)}
    for case, (first, second) in pairs.items():
        answer = _number(_call(spearman, "spearman", first, second), "spearman")
        expected = sanity.map_spearman(first, second)
        if math.isnan(expected):
            _require(math.isnan(answer), f"on {case} you returned {answer:.4g}: a constant map has no ranking, so "
                                         "its rank correlation is undefined; return float('nan'), as the package "
                                         "does (its Spearman is left out of the means)")
            continue
        if abs(answer - expected) <= 1e-6:
            continue
        x, y = first.numpy().ravel(), second.numpy().ravel()
        ranks_x, ranks_y = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
        mistakes = [
            (_pearson(x, y), "that is the Pearson correlation of the values: Spearman's is the Pearson correlation "
                             "of the pixels' ranks (scipy.stats.spearmanr)"),
            (_pearson(_ordinal_ranks(x), _ordinal_ranks(y)),
             "your ranks break ties by position: tied pixels (e.g. the zeros the ReLU leaves) must share their "
             "mean rank (scipy.stats.rankdata, or spearmanr, does it)"),
            (_pearson(ranks_x, y), "you ranked only the first map: rank both maps' pixels"),
            (_pearson(x, ranks_y), "you ranked only the second map: rank both maps' pixels"),
            (abs(expected), "you returned the absolute value: keep the correlation's sign"),
        ]
        hint = next((h for value, h in mistakes if abs(answer - value) <= 1e-6), None)
        raise ExerciseFeedback(hint or (
            f"on {case} your correlation is {answer:.4g}, the package's {expected:.4g}: flatten both maps, rank each "
            "map's pixels (ties: mean rank) and take the Pearson correlation of the ranks"))


# --- 07: cascading randomisation of the head -------------------------------------------------------------------

def head_spearman(rows: pd.DataFrame, mode: str, depth: int, measure: str = "spearman", constant_as_zero: bool = True
                  ) -> pd.Series:
    """Per method, the mean ``measure`` over the images at ``depth`` in ``mode``; a constant map's undefined
    Spearman counted as 0 (it keeps no ranking), as the notebook's check does."""
    at = rows[(rows["mode"] == mode) & (rows.depth == depth)]
    values = at[measure].fillna(0.0) if constant_as_zero else at[measure]
    return values.groupby(at["method"]).mean()


def _randomisation_rows(loaded: LoadedModel, layer: str, x: torch.Tensor, target: torch.Tensor,
                        methods: Sequence[str], head_layers: Sequence[str], seed: int, mode: str) -> pd.DataFrame:
    rows, _ = sanity.parameter_randomisation(loaded.net, layer, x, methods, target, modes=[mode],
                                             layers=list(head_layers), seed=seed)
    return rows


def _as_series(values, name: str, methods: Sequence[str]) -> pd.Series:
    _require(values is not Ellipsis and values is not None, f"`{name}` is not computed yet: replace the `...`")
    _require(isinstance(values, Mapping | pd.Series),
             f"`{name}` should map each method to its mean Spearman (a dict or a pandas Series), got "
             f"{type(values).__name__}")
    series = pd.Series(dict(values), dtype=object)
    missing = [m for m in methods if m not in series.index]
    _require(not missing, f"`{name}` has no value for {', '.join(missing)}: give one per method of "
                          f"{', '.join(methods)}")
    try:
        return series[list(methods)].astype(float)
    except (TypeError, ValueError):
        raise ExerciseFeedback(f"`{name}` should hold one number per method") from None


def check_head_spearman(rho, loaded: LoadedModel, layer: str, x: torch.Tensor, target: torch.Tensor,
                        methods: Sequence[str], head_layers: Sequence[str], seed: int) -> None:
    """``rho`` must map each of ``methods`` to its mean Spearman correlation with the trained map once every layer
    of ``head_layers`` is randomised (cascading, from the logits down, ``seed``), over the images ``x`` with their
    ``target`` classes; a constant map counted as 0 (Adebayo et al., Sec. 4.1)."""
    answer = _as_series(rho, "rho_head_small", methods)
    rows = _randomisation_rows(loaded, layer, x, target, methods, head_layers, seed, "cascading")
    depth = len(head_layers)
    expected = head_spearman(rows, "cascading", depth)[list(methods)]
    if np.allclose(answer, expected, atol=1e-6):
        return
    undefined = answer.index[answer.isna()].tolist()
    _require(not undefined, f"your mean for {', '.join(undefined)} is NaN: a constant map's Spearman is undefined "
                            "(NaN); count it as 0 before averaging, it keeps none of the trained map's ranking "
                            "(.fillna(0.0))")
    cascading = rows[rows["mode"] == "cascading"]
    randomised = cascading[cascading.depth > 0]
    candidates = [
        (lambda: head_spearman(rows, "cascading", depth, constant_as_zero=False),
         "you left the constant maps' undefined (NaN) Spearman out of the mean: count it as 0, a constant map keeps "
         "none of the trained map's ranking (.fillna(0.0))"),
        (lambda: head_spearman(rows, "cascading", 0), "these are the trained network's (depth 0) correlations, 1 by "
                                                      "definition: take the last depth, every head layer random"),
        (lambda: head_spearman(rows, "cascading", 1), "you took depth 1 (only the last layer randomised): take depth "
                                                      f"{depth}, once all {depth} head layers are random"),
        (lambda: randomised.assign(spearman=randomised.spearman.fillna(0.0)).groupby("method").spearman.mean(),
         f"you averaged over every depth: take depth {depth} alone, once the whole head is random"),
        (lambda: head_spearman(rows, "cascading", depth, "ssim"), "these are SSIMs: the exercise asks for the "
                                                                  "Spearman rank correlation"),
        (lambda: head_spearman(_randomisation_rows(loaded, layer, x, target, methods, head_layers, seed,
                                                   "independent"), "independent", depth),
         f"you ran the independent mode (at depth {depth} only {head_layers[-1]} is random): cascading "
         "randomisation keeps every layer above random too (modes=['cascading'])"),
    ]
    for compute, hint in candidates:
        if np.allclose(answer, compute()[list(methods)], atol=1e-6):
            raise ExerciseFeedback(hint)
    worst = (answer - expected).abs().idxmax()
    raise ExerciseFeedback(
        f"your correlations differ from the package's (largest difference {abs(answer - expected)[worst]:.3g}, "
        f"for {worst}): run sanity.parameter_randomisation on x_small with target_small, layers=head_layers and "
        f"seed=seed, then average each method's Spearman at depth {depth} of the cascading mode")


def check_failing_methods(failing, loaded: LoadedModel, layer: str, x: torch.Tensor, target: torch.Tensor,
                          methods: Sequence[str], head_layers: Sequence[str], seed: int, threshold: float) -> None:
    """``failing`` must list the ``methods`` whose mean Spearman once the head is random is at least
    ``threshold``: their map keeps the trained map's ranking, so it does not depend on the head."""
    _require(failing is not Ellipsis and failing is not None, "`failing_methods` is not listed yet: replace the `...`")
    _require(isinstance(failing, list | tuple | set) and all(isinstance(m, str) for m in failing),
             f"`failing_methods` should be a list of method names, got {failing!r}")
    rows = _randomisation_rows(loaded, layer, x, target, methods, head_layers, seed, "cascading")
    rho = head_spearman(rows, "cascading", len(head_layers))
    expected = {m for m in methods if rho[m] >= threshold}
    answer = set(failing)
    if answer == expected:
        return
    unknown = answer - set(methods)
    _require(not unknown, f"{', '.join(sorted(unknown))} not among the methods run: {', '.join(methods)}")
    _require(answer != set(methods) - expected,
             f"you listed the methods that pass: a method fails when its map keeps the trained map's ranking, a mean "
             f"Spearman of at least {threshold} once the head is random")
    wrong = sorted(answer ^ expected)
    raise ExerciseFeedback("; ".join(
        f"{m} {'fails' if m in expected else 'passes'} (mean Spearman {rho[m]:.3f}"
        f"{' >= ' if m in expected else ' < '}{threshold})" for m in wrong))
