"""Checks of the course exercises in notebooks 04 and 05 (the paper's metrics, Sec. 4), each with hints specific to
the typical mistakes, in the manner of :mod:`liftcam_utils.app.exercises`: a check computes the right answer with
:mod:`liftcam_utils.evaluation.metrics`, compares it with the student's, and on a mismatch raises
:class:`~liftcam_utils.app.exercises.ExerciseFeedback` naming the mistake it recognises, or how far off the answer
is and what to revisit.

* :func:`check_confidence_terms` (04, the per-image terms of IC, AD and ADD, Eqs. 11-13);
* :func:`check_confidences` (04, the confidences ``Y``, ``O``, ``D`` of Eq. 10 under the model's own output);
* :func:`check_insertion_auc` (04, the insertion AUC of Table 4 by hand);
* :func:`check_energy_in_box` (05, the energy-based pointing game, Eq. 14);
* :func:`check_scene_energies` (05, LIFT-CAM's and Grad-CAM's energy per scene and LIFT-CAM's share of wins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..evaluation import metrics as M
from ..methods import saliency
from .exercises import ExerciseFeedback, _as_tensor, _call, _close, _distance, _first_match, _require

# (Y, O or D) pairs where the conventions show: Y = 0 with and without a change, a tie, a gain and two losses
EDGE_Y = (0.0, 0.0, 0.5, 0.4, 0.8, 1.0)
EDGE_OTHER = (0.0, 0.3, 0.5, 0.9, 0.2, 0.0)


def _per_image(answer: torch.Tensor, expected: torch.Tensor, name: str, what: str) -> torch.Tensor:
    """``answer`` as one number per image like ``expected`` (B,), or feedback: a single number is a mean."""
    _require(answer.dim() != 0 or expected.numel() == 1,
             f"`{name}` returned one number: return one {what} per image, shape (B,); the mean over the images is "
             "taken afterwards")
    answer = answer.reshape(-1) if answer.numel() == expected.numel() else answer
    _require(answer.shape == expected.shape,
             f"`{name}` should return one {what} per image, shape {tuple(expected.shape)}, got {tuple(answer.shape)}")
    return answer


def _divided(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with 0 where the denominator is 0 (the package's convention at Y = 0)."""
    return torch.where(denominator != 0, numerator / torch.where(denominator != 0, denominator, 1.0), 0.0)


# --- 04: the terms of IC, AD and ADD (Eqs. 11-13) ----------------------------------------------------------------

def _term_mistakes(metric: str, y: torch.Tensor, other: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """The results of the typical mistakes in the per-image term of ``metric`` ("IC", "AD" or "ADD")."""
    gain, drop = other - y, y - other
    percent = "the package gives every term in percent: multiply by 100"
    unguarded = ("where Y = 0 your term is NaN or infinite (0 / 0): return 0 there, as the package does (there is "
                 "no confidence to lose or gain)")
    if metric == "IC":
        return [
            ((y < other).double(), f"your IC term is 0 or 1: {percent}, 100 * 1[Y < O]"),
            (100 * (y <= other).double(), "you counted a tie (O = Y) as an increase: IC counts the images where "
                                          "O > Y strictly (Eq. 11)"),
            (100 * (y > other).double(), "you counted the images whose confidence fell (Y > O): IC counts those "
                                         "where it rose, O > Y"),
            (100 * (y >= other).double(), "you counted the images whose confidence did not rise: IC counts those "
                                          "where it rose, O > Y"),
            (100 * _divided(gain.clamp_min(0), y), "you returned the relative gain max(0, O - Y) / Y: IC counts "
                                                   "images, 100 * 1[Y < O], not how much the confidence rose"),
        ]
    letter = "O" if metric == "AD" else "D"
    right = drop.clamp_min(0) if metric == "AD" else drop
    mistakes = [
        (100 * right / y, unguarded),
        (_divided(right, y), f"your {metric} term is a fraction: {percent}"),
        (100 * right / other, f"you divided by {letter}: {metric} is the drop relative to the image's own "
                              "confidence, divided by Y"),
        (100 * _divided(right, other), f"you divided by {letter}: {metric} is the drop relative to the image's own "
                                       "confidence, divided by Y"),
        (100 * right, f"your {metric} term is not relative: divide the drop by Y"),
    ]
    if metric == "AD":
        return mistakes + [
            (100 * _divided(drop, y), "your AD goes negative where O > Y: Eq. 12 takes max(0, Y - O), a gain is no "
                                      "drop"),
            (100 * _divided(drop.abs(), y), "you took |Y - O|: a gain (O > Y) is no drop, Eq. 12 takes "
                                            "max(0, Y - O)"),
            (100 * _divided(gain.clamp_min(0), y), "you measured the gain max(0, O - Y): AD is the drop "
                                                   "max(0, Y - O)"),
        ]
    return mistakes + [
        (100 * _divided(drop.clamp_min(0), y), "your ADD is never negative: Eq. 13 has no max(0, .), a D above Y "
                                               "gives a negative term (that max belongs to AD)"),
        (100 * _divided(gain, y), "your ADD has the wrong sign: the drop is Y - D, positive when removing the map's "
                                  "pixels lowers the confidence"),
        (100 * _divided(drop.abs(), y), "you took |Y - D|: keep the sign of Y - D (Eq. 13 has no absolute value)"),
    ]


def _check_term(function, name: str, metric: str, y: torch.Tensor, other: torch.Tensor) -> None:
    expected = {"IC": M.increase_in_confidence, "AD": M.average_drop,
                "ADD": M.average_drop_in_deletion}[metric](y, other).double()
    answer = _per_image(_as_tensor(_call(function, name, y, other), name), expected, name, f"{metric} term")
    if _close(answer, expected):
        return
    y64, other64 = y.double(), other.double()
    hint = _first_match(answer, _term_mistakes(metric, y64, other64))
    if hint is None and not torch.isfinite(answer[y == 0]).all():
        hint = (f"your {metric} term is NaN or infinite where Y = 0: return 0 there (the package's convention: no "
                "confidence to lose or gain)")
    if hint is None:
        wrong = (~torch.isclose(answer, expected, rtol=1e-3, atol=1e-3)).nonzero()[:, 0]
        first = wrong[0].item() if len(wrong) else 0
        hint = (f"your {metric} terms are not Eq. {dict(IC=11, AD=12, ADD=13)[metric]}'s ("
                f"{_distance(answer.nan_to_num(), expected)}); e.g. for Y = {y64[first]:.4g}, "
                f"{'O' if metric != 'ADD' else 'D'} = {other64[first]:.4g} the package gives "
                f"{expected[first]:.4g}, you {answer[first]:.4g}")
    raise ExerciseFeedback(f"`{name}`: {hint}")


def check_confidence_terms(increase_in_confidence, average_drop, average_drop_in_deletion, y: torch.Tensor,
                           o: torch.Tensor, d: torch.Tensor) -> None:
    """The student's per-image terms must equal the package's, in percent: ``increase_in_confidence(y, o)``
    ``100 * 1[Y < O]`` (Eq. 11), ``average_drop(y, o)`` ``100 * max(0, Y - O) / Y`` (Eq. 12) and
    ``average_drop_in_deletion(y, d)`` ``100 * (Y - D) / Y`` (Eq. 13), 0 where Y = 0. They are tried on the
    confidences ``y``, ``o``, ``d`` (B,) followed by :data:`EDGE_Y` / :data:`EDGE_OTHER`, where the conventions
    (Y = 0, a tie, a gain) show."""
    edge_y, edge_other = torch.tensor(EDGE_Y), torch.tensor(EDGE_OTHER)
    y, o, d = (torch.as_tensor(t).detach().cpu().float().reshape(-1) for t in (y, o, d))
    y_all = torch.cat([y, edge_y])
    for function, name, metric, other in (
            (increase_in_confidence, "increase_in_confidence", "IC", torch.cat([o, edge_other])),
            (average_drop, "average_drop", "AD", torch.cat([o, edge_other])),
            (average_drop_in_deletion, "average_drop_in_deletion", "ADD", torch.cat([d, edge_other]))):
        _check_term(function, name, metric, y_all, other)


def check_confidences(confidences, model, x: torch.Tensor, maps: Mapping[str, torch.Tensor], target: torch.Tensor,
                      baseline: torch.Tensor) -> None:
    """``confidences`` must map each method of ``maps`` to the package's ``confidence_scores`` of its map (a dict of
    ``Y``, ``O``, ``D``, each (B,)) under the model's own output function ``model.output`` (Eq. 10, Sec. 4.1)."""
    _require(confidences is not Ellipsis and confidences is not None,
             "`confidences` is not computed yet: replace the `...` with a dict {method: confidence_scores(...)}")
    _require(isinstance(confidences, Mapping), f"`confidences` should be a dict {{method: scores}}, got a "
                                               f"{type(confidences).__name__}")
    missing = [m for m in maps if m not in confidences]
    _require(not missing, f"`confidences` has no entry for {', '.join(missing)}: one per method of the maps")
    for method, scores in confidences.items():
        _require(method in maps, f"`confidences` has an entry {method!r} that is not a method of the maps "
                                 f"({', '.join(maps)})")
        _require(isinstance(scores, Mapping) and {"Y", "O", "D"} <= set(scores),
                 f"confidences[{method!r}] should be the dict of Y, O and D that M.confidence_scores returns")
        answer = {key: _as_tensor(scores[key], f"confidences[{method!r}][{key!r}]").reshape(-1) for key in "YOD"}
        expected = M.confidence_scores(model.net, x, maps[method], target, baseline, output=model.output)
        if all(_close(answer[key], expected[key].double()) for key in "YOD"):
            continue
        other_output = "softmax" if model.output == "sigmoid" else "sigmoid"
        mistaken = M.confidence_scores(model.net, x, maps[method], target, baseline, output=other_output)
        black = M.confidence_scores(model.net, x, maps[method], target, M.baseline_image(model.preprocess, "black"),
                                    output=model.output)
        if all(_close(answer[key], mistaken[key].double()) for key in "YOD"):
            hint = (f"you scored the {other_output} (confidence_scores' default is 'softmax'): this model's "
                    f"confidence is its own output, output=model.output ({model.output!r}"
                    + (": a multi-label model, each class its own sigmoid)" if model.output == "sigmoid" else ")"))
        elif _close(answer["O"], expected["D"].double()) and _close(answer["D"], expected["O"].double()):
            hint = "your O and D are swapped: O keeps the map's pixels (s * x), D removes them ((1 - s) * x)"
        elif all(_close(answer[key], black[key].double()) for key in "YOD") and not torch.equal(
                baseline.cpu(), M.baseline_image(model.preprocess, "black")):
            hint = "you blended towards raw black: use the notebook's `baseline` (the `absent` parameter)"
        else:
            hint = ("they are not the package's (" + "; ".join(
                f"{key}: {_distance(answer[key], expected[key])}" for key in "YOD")
                + "): call M.confidence_scores(model.net, x, map, target, baseline, output=model.output)")
        raise ExerciseFeedback(f"confidences[{method!r}]: {hint}")


# --- 04: the insertion AUC (Table 4) -----------------------------------------------------------------------------

def _index_ordered_mask(saliency_maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """The top ``round(fraction * H * W)`` pixels with ties broken by pixel index (a typical mistake)."""
    order = saliency_maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    count = int(round(fraction * order.shape[1]))
    mask = torch.zeros(saliency_maps.flatten(1).shape, dtype=saliency_maps.dtype, device=saliency_maps.device)
    mask.scatter_(1, order[:, :count], 1.0)
    return mask.view(saliency_maps.shape)


def _logit_curves(net, x, saliency_maps, target, baseline) -> dict[str, torch.Tensor]:
    """(B, K) target logits and (B, K, classes) logits at each delta: kept top pixels ("insertion"), removed
    ("deletion"), and kept with ties broken by pixel index ("index ties")."""
    curves: dict[str, list[torch.Tensor]] = {"insertion": [], "deletion": [], "index ties": []}
    with torch.no_grad():
        for delta in M.DELTAS.tolist():
            keep = M.top_fraction_mask(saliency_maps, delta)
            for kind, kept in (("insertion", keep), ("deletion", 1 - keep),
                               ("index ties", _index_ordered_mask(saliency_maps, delta))):
                curves[kind].append(net(M.blend(x, kept, baseline)).double())
    return {kind: torch.stack(logits, 1) for kind, logits in curves.items()}


def _target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K) the target's entry of (B, K, classes) ``logits``."""
    return logits.gather(2, target.reshape(-1, 1, 1).expand(-1, logits.shape[1], 1))[..., 0]


def check_insertion_auc(insertion_auc, model, x: torch.Tensor, saliency_maps: torch.Tensor, target: torch.Tensor,
                        baseline: torch.Tensor) -> None:
    """``insertion_auc(net, x, saliency, target, baseline, output)`` must return the insertion AUC per image (B,),
    the package's ``auc(insertion_deletion_curves(...)["insertion"])`` (Table 4): for each delta of ``M.DELTAS``,
    the target's probability under ``output`` with only the top ``100 delta %`` pixels of the map kept
    (``M.top_fraction_mask``, the rest at ``baseline``, ``M.blend``), and the trapezoid area over delta."""
    target = torch.as_tensor(target).reshape(-1)
    name = "insertion_auc"
    answer = _as_tensor(_call(insertion_auc, name, model.net, x, saliency_maps, target, baseline, model.output),
                        name)
    expected = M.auc(M.insertion_deletion_curves(model.net, x, saliency_maps, target, baseline,
                                                 output=model.output)["insertion"]).double()
    answer = _per_image(answer, expected, name, "AUC")
    if _close(answer, expected):
        return
    logits = _logit_curves(model.net, x, saliency_maps, target, baseline)
    probability = {output: _target(logits["insertion"].softmax(2) if output == "softmax"
                                   else logits["insertion"].sigmoid(), target) for output in ("softmax", "sigmoid")}
    curve = probability[model.output]
    own = "softmax" if model.output == "softmax" else "sigmoid"
    other = "sigmoid" if own == "softmax" else "softmax"
    steps = torch.arange(len(M.DELTAS), dtype=torch.float64)
    width = (M.DELTAS[1] - M.DELTAS[0]).item()
    rectangles = "you summed rectangles: Table 4's AUC is the trapezoid area, the mean of neighbouring values " \
                 "times the step 0.025 (M.trapezoid or torch.trapezoid with x=M.DELTAS)"
    deletion = logits["deletion"].softmax(2) if own == "softmax" else logits["deletion"].sigmoid()
    index_ties = logits["index ties"].softmax(2) if own == "softmax" else logits["index ties"].sigmoid()
    mistakes = [
        (M.auc(probability[other]),
         f"you read the {other}: this model's confidence is its own output, {own!r} (`output`)"
         + (": a multi-label model gives each class its own sigmoid; a softmax across its classes drops a "
            "present class beside another one" if own == "sigmoid" else "")),
        (M.auc(_target(deletion, target)), "you removed the top pixels (that is deletion): insertion keeps the top "
                                           "100 delta % pixels, blend(x, mask, baseline), and the rest is absent"),
        (M.auc(_target(logits["insertion"], target)),
         f"you integrated the logits: the curve is the target's probability ({own})"),
        (curve.mean(1), "you took the plain mean of the 41 values: the AUC is the trapezoid area over delta "
                        "(M.trapezoid(curve, M.DELTAS)); the first and last values count half"),
        (curve.sum(1), "you summed the 41 values: the AUC is the trapezoid area over delta in [0, 1], "
                       "M.trapezoid(curve, M.DELTAS)"),
        (M.trapezoid(curve, steps), "you integrated over the step number 0, 1, ..., 40: integrate over delta "
                                    "(x=M.DELTAS), whose steps are 0.025"),
        (curve[:, :-1].sum(1) * width, rectangles),
        (curve[:, 1:].sum(1) * width, rectangles),
        (M.auc(_target(index_ties, target)),
         "your ranking breaks ties by pixel index: rank with M.top_fraction_mask (ties in a seeded random order, "
         "so no corner of the image is favoured)"),
    ]
    hint = _first_match(answer, mistakes)
    raise ExerciseFeedback(hint or (
        f"your AUCs are not the insertion AUC ({_distance(answer, expected)}): for each delta in M.DELTAS keep the "
        "top pixels (M.top_fraction_mask), blend with the baseline, read the target's probability under `output`, "
        "then the trapezoid area over delta"))


# --- 05: the energy-based pointing game (Eq. 14) -----------------------------------------------------------------

def _with_edge_cases(saliency_maps: torch.Tensor, box_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps and boxes with two more images where the conventions show: an all-zero map (no energy) with the
    first image's box, and the first map with no box."""
    maps = torch.cat([saliency_maps, torch.zeros_like(saliency_maps[:1]), saliency_maps[:1]])
    boxes = torch.cat([box_masks, box_masks[:1], torch.zeros_like(box_masks[:1])])
    return maps, boxes


def check_energy_in_box(energy_in_box, saliency_maps: torch.Tensor, box_masks: torch.Tensor) -> None:
    """``energy_in_box(saliency, box_mask)`` must return the share of each map's energy inside its box (B,), the
    package's ``energy_pointing_game`` (Eq. 14): ``sum_{p in box} s(p) / sum_p s(p)``, a fraction in [0, 1], 0 for
    a map with no energy. It is tried on ``saliency_maps`` / ``box_masks`` (B, H, W) and on two more images, an
    all-zero map and a map with no box."""
    name = "energy_in_box"
    maps, boxes = _with_edge_cases(saliency_maps.detach().cpu().float(), box_masks.detach().cpu().float())
    expected = M.energy_pointing_game(maps, boxes).double()
    answer = _per_image(_as_tensor(_call(energy_in_box, name, maps, boxes), name), expected, name, "share")
    if _close(answer, expected):
        return
    maps64, boxes64 = maps.double(), boxes.double()
    inside, total = (maps64 * boxes64).flatten(1).sum(1), maps64.flatten(1).sum(1)
    lit = (maps64 > 0).double()
    mistakes = [
        (inside / total, "an all-zero map came out as NaN (0 / 0): a map with no energy scores 0, as in the "
                         "package"),
        (100 * expected, "your shares are in percent: return the fraction in [0, 1] (the table converts to %)"),
        (_divided(inside, boxes64.flatten(1).sum(1)),
         "you divided by the box's number of pixels (the mean saliency inside the box): Eq. 14 divides by the "
         "map's total energy, sum_p s(p)"),
        (inside, "you returned the energy inside the box without dividing by the map's total energy sum_p s(p)"),
        (_divided((lit * boxes64).flatten(1).sum(1), lit.flatten(1).sum(1)),
         "you counted the pixels where the map is above 0: the energy weighs each pixel by its value s(p)"),
        (_divided((maps64 * boxes64).flatten(1).amax(1), maps64.flatten(1).amax(1)),
         "you took the maximum: Eq. 14 sums s(p) over the box's pixels and over all pixels"),
        (_divided(total - inside, total), "you measured the energy outside the box: multiply the map by box_mask "
                                          "(1 inside)"),
        (_divided(inside, total - inside), "you divided by the energy outside the box: divide by the total "
                                           "energy, inside and outside"),
    ]
    hint = _first_match(answer, mistakes)
    raise ExerciseFeedback(hint or (
        f"your shares are not Eq. 14's ({_distance(answer.nan_to_num(), expected)}): per image, the sum of "
        "s * box_mask over the pixels divided by the sum of s, and 0 for a map that is 0 everywhere"))


def scene_energies(model, x: torch.Tensor, target: torch.Tensor, box_masks: torch.Tensor,
                   methods: Sequence[str] = ("liftcam", "gradcam")) -> dict[str, torch.Tensor]:
    """Per method, the share of its map's energy inside each image's box (Eq. 14), (B,) float64: the exercise's
    reference."""
    split = model.split()
    return {m: M.energy_pointing_game(saliency(m, split, x, target).cpu(), box_masks.cpu()).double() for m in methods}


def check_scene_energies(scene_energy, liftcam_share, model, x: torch.Tensor, target: torch.Tensor,
                         box_masks: torch.Tensor) -> None:
    """``scene_energy`` must map "liftcam" and "gradcam" to the share of the method's map's energy inside each
    scene's box (B,) (Eq. 14, the maps of the scenes' targets, ``target``), and ``liftcam_share`` be the share of
    scenes (in [0, 1]) where LIFT-CAM's is larger than Grad-CAM's."""
    _require(scene_energy is not Ellipsis and isinstance(scene_energy, Mapping),
             "`scene_energy` should be a dict {'liftcam': energies, 'gradcam': energies}: replace the `...`")
    expected = scene_energies(model, x, target, box_masks)
    for method in expected:
        _require(method in scene_energy, f"`scene_energy` has no entry {method!r}: fill one per method in the loop")
    answer = {m: _per_image(_as_tensor(scene_energy[m], f"scene_energy[{m!r}]"), expected[m], f"scene_energy[{m!r}]",
                            "energy") for m in expected}
    if not all(_close(answer[m], expected[m]) for m in expected):
        with torch.no_grad():
            predicted = model.net(x).argmax(1)
        mistakes = {
            "swapped": ({"liftcam": expected["gradcam"], "gradcam": expected["liftcam"]},
                        "your LIFT-CAM and Grad-CAM energies are swapped"),
            "percent": ({m: 100 * e for m, e in expected.items()},
                        "your energies are in percent: keep the fractions in [0, 1] that Eq. 14 gives"),
            "predicted": (scene_energies(model, x, predicted, box_masks),
                          "you explained each scene's predicted class: explain its target (`target_few`, the scene's "
                          "first label), whose box the mask draws"),
        }
        for result, hint in mistakes.values():
            if all(_close(answer[m], result[m]) for m in expected):
                raise ExerciseFeedback(hint)
        raise ExerciseFeedback("; ".join(f"scene_energy[{m!r}] is not the package's ({_distance(answer[m], e)})"
                                         for m, e in expected.items() if not _close(answer[m], e))
                               + ": the maps are lu.saliency(method, model.split(), x, target), the energy your "
                                 "energy_in_box of them and the box masks")
    _require(liftcam_share is not Ellipsis and liftcam_share is not None,
             "`liftcam_share` is not computed yet: replace the `...`")
    share = _as_tensor(liftcam_share, "liftcam_share")
    _require(share.numel() == 1, f"`liftcam_share` should be one number, the share of scenes where LIFT-CAM wins; "
                                 f"got {share.numel()} numbers")
    share = share.reshape(())
    wins = expected["liftcam"] > expected["gradcam"]
    right = wins.double().mean()
    if _close(share, right):
        return
    n_scenes = len(wins)
    mistakes = [
        (100 * right, "your share is in percent: give the fraction of the scenes, in [0, 1]"),
        (wins.double().sum(), f"you counted the scenes: divide by their number ({n_scenes}) for the share"),
        (1 - right, "that is the share where Grad-CAM wins (or ties): count the scenes where LIFT-CAM's energy is "
                    "larger"),
        ((expected["liftcam"] >= expected["gradcam"]).double().mean(),
         "you counted ties as LIFT-CAM's wins: count the scenes where its energy is strictly larger"),
        ((expected["liftcam"] - expected["gradcam"]).mean(),
         "you returned the mean difference of the energies: the share counts the scenes where LIFT-CAM's is larger"),
    ]
    hint = _first_match(share, mistakes)
    raise ExerciseFeedback(hint or f"`liftcam_share` is {share.item():.4g}; LIFT-CAM's energy is larger on "
                                   f"{int(wins.sum())} of the {n_scenes} scenes: the share is their fraction")
