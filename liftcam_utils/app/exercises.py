"""Checks of the course exercises in notebooks 00 and 01, each with hints specific to the typical mistakes.

The course edition of the workbook (docs/course.md) asks students to write a few functions; each exercise's test
cells (otter-grader tests in the notebooks) call one check below. A check computes the right answer with the
package, compares it with the student's, and on a mismatch raises :class:`ExerciseFeedback` (an
``AssertionError``, which otter reports) whose message names the mistake it recognises, e.g. "your alpha has the
right sign but is 49 times too large: average the gradient over the 7 x 7 pixels", or, for a mistake it does not
recognise, how far off the answer is and what to revisit. A check never fails with a bare "wrong", and a student's
function that raises, returns ``...`` or returns the wrong type is reported as such, not as a traceback.

* :func:`check_gradcam_alpha` (00, Grad-CAM's ``alpha`` with ``torch.autograd.grad``);
* :func:`check_cam_map` (00, the map of Eqs. 1 and 10 from any ``alpha``);
* :func:`check_shapley_values` (01, the Shapley values of a channel game by enumeration, Eq. 6);
* :func:`check_cut_and_method` and :func:`check_local_accuracy_gaps` (01, local accuracy, Eq. 8, at a cut of the
  student's choice, and a method that violates it).

The feedback helpers here (:class:`ExerciseFeedback`, calling the student's function, reading its answer, matching
typical mistakes) are shared by the checks of the other notebooks: :mod:`~liftcam_utils.app.exercises_shapley`
(02, 03), :mod:`~liftcam_utils.app.exercises_metrics` (04, 05) and :mod:`~liftcam_utils.app.exercises_models`
(06, 07).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.cam_map import cam_map, upsample_and_normalise
from ..engine.split import CamSplit
from ..methods import METHODS, coefficients


class ExerciseFeedback(AssertionError):
    """An exercise's answer is not right yet; the message says what is wrong and how to fix it."""


# --- shared helpers --------------------------------------------------------------------------------------------

def _require(condition: bool, hint: str) -> None:
    if not condition:
        raise ExerciseFeedback(hint)


def _call(function, name: str, *args):
    """``function(*args)``, with feedback (not a traceback) when it is missing, not callable or raises."""
    _require(function is not None and function is not Ellipsis,
             f"`{name}` is not written yet: replace the `...` with your function")
    _require(callable(function), f"`{name}` should be a function, got a {type(function).__name__}")
    try:
        return function(*args)
    except ExerciseFeedback:
        raise
    except Exception as error:  # the student's code: any error is feedback, never a crash of the check
        raise ExerciseFeedback(f"calling `{name}` raised {type(error).__name__}: {error}") from None


def _as_tensor(value, name: str) -> torch.Tensor:
    """``value`` (a tensor, a NumPy array or a list of numbers) as a float64 tensor, or feedback saying why not."""
    _require(value is not None, f"`{name}` returned None: replace the `...` in its body with your code, which "
                                "returns a tensor")
    _require(value is not Ellipsis, f"`{name}` returned `...`: replace it with your code, which returns a tensor")
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double()
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):  # a NumPy array or a list of numbers is accepted too
        raise ExerciseFeedback(f"`{name}` returned a {type(value).__name__}, not numbers: return a torch.Tensor"
                               ) from None


def _close(answer: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-3) -> bool:
    """Equal up to float rounding, relative to the largest finite entry of ``expected``; a NaN or an infinity
    matches only the same value in ``expected`` (a typical mistake's result may have them where the student's does)."""
    if answer.shape != expected.shape:
        return False
    finite = expected[torch.isfinite(expected)]
    scale = (finite.abs().max().item() if finite.numel() else 0.0) or 1.0
    return bool(torch.allclose(answer, expected.double(), rtol=rtol, atol=rtol * scale, equal_nan=True))


def _first_match(answer: torch.Tensor, mistakes: Sequence[tuple[torch.Tensor, str]]) -> str | None:
    """The hint of the first typical mistake whose result ``answer`` reproduces."""
    for result, hint in mistakes:
        if _close(answer, result):
            return hint
    return None


def _distance(answer: torch.Tensor, expected: torch.Tensor) -> str:
    """How far off ``answer`` is, in words: cosine, largest difference and the scale of the right answer."""
    a, e = answer.flatten(), expected.double().flatten()
    norms = a.norm() * e.norm()
    cosine = (a @ e / norms).item() if norms > 0 else 0.0
    return (f"cosine to the right answer {cosine:.3f}, largest difference {(a - e).abs().max().item():.3g} "
            f"(the right values reach {e.abs().max().item():.3g})")


def _activations_and_logits(split: CamSplit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        maps = split.body(x)
        return maps, split.head(maps)


def _mean_gradient(split: CamSplit, maps: torch.Tensor, output: Callable[[torch.Tensor], torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of ``output(head(A)).sum()`` with respect to ``A``, and its mean over the pixels."""
    with torch.enable_grad():
        leaf = maps.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(output(split.head(leaf)).sum(), leaf)
    return gradient, gradient.mean(dim=(2, 3))


# --- 00: Grad-CAM's alpha by hand --------------------------------------------------------------------------------

def check_gradcam_alpha(gradcam_alpha, split: CamSplit, x: torch.Tensor, target: torch.Tensor) -> None:
    """``gradcam_alpha(split, x, target)`` must return Grad-CAM's ``alpha`` (B, N), the package's
    ``coefficients("gradcam", split, x, target)``: the gradient of each image's target logit ``F^c`` with respect
    to the activation maps ``A = split.body(x)``, averaged over the ``h x w`` pixels of each map."""
    target = torch.as_tensor(target).reshape(-1)
    answer = _as_tensor(_call(gradcam_alpha, "gradcam_alpha", split, x, target), "gradcam_alpha")
    expected = coefficients("gradcam", split, x, target).double()
    maps, logits = _activations_and_logits(split, x)
    batch, _, height, width = maps.shape
    rows = torch.arange(batch)
    _require(answer.shape != maps.shape,
             f"your result has the maps' shape {tuple(maps.shape)}: Grad-CAM keeps one number per map, the gradient "
             f"averaged over the {height} x {width} pixels (dimensions 2 and 3)")
    _require(answer.shape != x.shape,
             "your result has the images' shape: differentiate F^c with respect to the activation maps "
             "A = split.body(x), not the image x")
    _require(answer.shape == expected.shape,
             f"alpha should have shape (B, N) = {tuple(expected.shape)} (one coefficient per image and map), "
             f"got {tuple(answer.shape)}")
    if _close(answer, expected):
        return
    gradient, mean_gradient = _mean_gradient(split, maps, lambda out: out[rows, target])
    _, probability = _mean_gradient(split, maps, lambda out: out.softmax(1)[rows, target])
    _, log_probability = _mean_gradient(split, maps, lambda out: out.log_softmax(1)[rows, target])
    _, all_classes = _mean_gradient(split, maps, lambda out: out)
    _, predicted = _mean_gradient(split, maps, lambda out: out[rows, logits.argmax(1)])
    mistakes = [
        (gradient.sum(dim=(2, 3)),
         f"your alpha has the right sign but is {height * width} times too large: average the gradient over the "
         f"{height} x {width} pixels (.mean(dim=(2, 3))) instead of summing it"),
        (-mean_gradient, "your alpha has the right size but the wrong sign: differentiate the logit F^c itself "
                         "(not -F^c or a loss)"),
        (probability, "you differentiated the softmax probability: Grad-CAM differentiates the logit F^c, the "
                      "head's output before the softmax"),
        (log_probability, "you differentiated the log-probability (log_softmax): Grad-CAM differentiates the "
                          "logit F^c itself"),
        (all_classes, "you differentiated the sum of all logits: take each image's target logit, "
                      "logits[range(B), target], before calling torch.autograd.grad"),
        (predicted, "you explained each image's predicted class: explain the class given as `target` "
                    "(it need not be the top-1 prediction)"),
        ((gradient * maps).mean(dim=(2, 3)),
         "you weighted the gradient by the activations: Grad-CAM's alpha_k is the gradient alone, averaged over "
         "the pixels of map k"),
    ]
    hint = _first_match(answer, mistakes)
    raise ExerciseFeedback(hint or (
        f"your alpha is not Grad-CAM's ({_distance(answer, expected)}). alpha_k is the mean over the pixels of "
        "dF^c/dA_k: run the head on A = split.body(x) with requires_grad, take each image's target logit and "
        "call torch.autograd.grad"))


# --- 00: the map of Eqs. 1 and 10 --------------------------------------------------------------------------------

def _normalise_over_batch(up: torch.Tensor) -> torch.Tensor:
    """Min-max with the minimum and maximum of the whole batch (a typical mistake)."""
    low, high = up.amin(), up.amax()
    return (up - low) / (high - low)


def _normalise_each(up: torch.Tensor) -> torch.Tensor:
    """Min-max of each image's (1, H, W) map to [0, 1], (B, 1, H, W) -> (B, H, W); a constant map gives zeros."""
    flat = up.flatten(1)
    low, high = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    varies = high > low
    return torch.where(varies, (up[:, 0] - low) / torch.where(varies, high - low, 1.0), 0.0)


def check_cam_map(cam_from_alpha, alpha: torch.Tensor, maps: torch.Tensor, size: tuple[int, int]) -> None:
    """``cam_from_alpha(alpha, maps, size)`` must return the maps ``s(u(ReLU(sum_k alpha_k A_k)))`` (B, H, W) of
    Eqs. 1 and 10, the package's ``cam_map(alpha, maps, size)``: ReLU of the weighted sum, bilinear upsampling to
    ``size`` (``align_corners=False``), min-max normalisation of each image's map to [0, 1], and zeros (not NaN)
    for a map that is constant."""
    answer = _as_tensor(_call(cam_from_alpha, "cam_from_alpha", alpha, maps, size), "cam_from_alpha")
    expected = cam_map(alpha, maps, size).double()
    weighted = torch.einsum("bn,bnhw->bhw", alpha.to(maps.dtype), maps)[:, None]  # sum_k alpha_k A_k, (B, 1, h, w)
    batch, height, width = len(maps), *size
    _require(answer.shape != (batch, 1, height, width),
             f"your maps have shape {tuple(answer.shape)}: drop the channel dimension, e.g. [:, 0], to get (B, H, W)")
    _require(answer.shape != (batch, *maps.shape[2:]),
             f"your maps have the activation maps' size {tuple(maps.shape[2:])}: upsample them to size={size} "
             "(bilinear, Eq. 10's u)")
    _require(answer.shape == expected.shape, f"the maps should have shape (B, H, W) = {tuple(expected.shape)}, "
                                             f"got {tuple(answer.shape)}")
    constant = (weighted.clamp_min(0).flatten(1).amax(1) == weighted.clamp_min(0).flatten(1).amin(1))
    _require(torch.isfinite(answer[constant]).all(),
             "a map that is constant (zero everywhere after the ReLU: every alpha_k A_k sum is negative) came out "
             "as NaN: min-max normalisation divides by max - min = 0 there; return zeros for such a map")
    if _close(answer, expected):
        return
    bilinear = F.interpolate(weighted.clamp_min(0), size=size, mode="bilinear", align_corners=False)
    mistakes = [
        (upsample_and_normalise(weighted, size)[:, 0],
         "your maps keep the negative part of sum_k alpha_k A_k: apply the ReLU (Eq. 1) before upsampling and "
         "normalising"),
        (bilinear[:, 0], "your maps are not normalised: Eq. 10's s scales each image's map to [0, 1] "
                         "((L - min) / (max - min), per image)"),
        (_normalise_over_batch(bilinear)[:, 0],
         "you normalised with the minimum and maximum of the whole batch: normalise each image's map on its own "
         "(amin/amax over its H x W pixels)"),
        (_normalise_each(F.interpolate(weighted, size=size, mode="bilinear", align_corners=False).clamp_min(0)),
         "you applied the ReLU after upsampling: Eq. 1 takes the ReLU of the weighted sum first, then Eq. 10 "
         "upsamples"),
        (_normalise_each(F.interpolate(weighted.clamp_min(0), size=size, mode="nearest")),
         "your upsampling is nearest-neighbour: Eq. 10's u is bilinear (mode='bilinear', align_corners=False)"),
        (_normalise_each(F.interpolate(weighted.clamp_min(0), size=size, mode="bilinear", align_corners=True)),
         "you upsampled with align_corners=True: use align_corners=False, as the package does"),
    ]
    hint = _first_match(answer, mistakes)
    raise ExerciseFeedback(hint or (
        f"your maps differ from s(u(ReLU(sum_k alpha_k A_k))) ({_distance(answer, expected)}): weighted sum over "
        "the maps, ReLU, bilinear upsampling to `size`, then min-max to [0, 1] per image"))



# --- 01: the Shapley values of a channel game, by enumeration (Eq. 6) ---------------------------------------------

def channel_game(split: CamSplit, x: torch.Tensor, target: int) -> Callable[[Sequence[int]], float]:
    """The channel game of one image (Secs. 3.2-3.3): ``value(coalition) = F^c(A o a')``, ``a'`` a sequence of
    N zeros and ones (1: map k kept, 0: map k set to zero)."""
    maps, _ = _activations_and_logits(split, x[:1])

    def value(coalition: Sequence[int]) -> float:
        present = torch.as_tensor([float(k) for k in coalition], dtype=maps.dtype)
        if present.shape != (maps.shape[1],):
            raise ValueError(f"a coalition has one 0 or 1 per map: {maps.shape[1]} of them, got {len(present)}")
        with torch.no_grad():
            return split.head(maps * present[None, :, None, None])[0, target].item()

    return value


def _marginals(value: Callable[[Sequence[int]], float], n_players: int) -> dict[int, list[tuple[int, float]]]:
    """For each player k, ``(|S|, v(S u {k}) - v(S))`` over every coalition S of the others (2^(n-1) each)."""
    worth = {coalition: value(coalition) for coalition in itertools.product((0, 1), repeat=n_players)}
    marginals: dict[int, list[tuple[int, float]]] = {k: [] for k in range(n_players)}
    for coalition, coalition_worth in worth.items():
        for k in range(n_players):
            if not coalition[k]:
                with_k = coalition[:k] + (1,) + coalition[k + 1:]
                marginals[k].append((sum(coalition), worth[with_k] - coalition_worth))
    return marginals


def _weighted(marginals: dict[int, list[tuple[int, float]]], weight: Callable[[int], float]) -> torch.Tensor:
    return torch.tensor([sum(weight(size) * gain for size, gain in marginals[k]) for k in sorted(marginals)],
                        dtype=torch.float64)


def check_shapley_values(shapley_values, value: Callable[[Sequence[int]], float], n_players: int,
                         expected: torch.Tensor) -> None:
    """``shapley_values(value, n_players)`` must return the Shapley values (n_players,) of the game ``value``
    (Eq. 6): each player's marginal contributions ``v(S u {k}) - v(S)`` over the coalitions S of the others,
    weighted by ``|S|! (n - |S| - 1)! / n!``. ``expected``: the package's values of the same game
    (``coefficients("exact_shap", ...)``), to which the answer is compared."""
    answer = _as_tensor(_call(shapley_values, "shapley_values", value, n_players), "shapley_values").flatten()
    expected = torch.as_tensor(expected).double().flatten()
    _require(answer.shape == expected.shape,
             f"return one value per player: {n_players} of them, got {answer.numel()} numbers")
    if _close(answer, expected):
        return
    n = n_players
    marginals = _marginals(value, n)
    everyone, nobody = value((1,) * n), value((0,) * n)
    mistakes = [
        (_weighted(marginals, lambda size: 1 / 2 ** (n - 1)),
         "you averaged the marginal contributions uniformly over the coalitions (the Banzhaf value): Eq. 6 "
         "weights a coalition S by |S|! (N - |S| - 1)! / N!, so that every size of S counts equally"),
        (_weighted(marginals, lambda size: 1.0),
         "you summed the marginal contributions without weights: weight each coalition S by "
         "|S|! (N - |S| - 1)! / N!"),
        (_weighted(marginals, lambda size: math.factorial(size) * math.factorial(n - size) / math.factorial(n)),
         "your weights are |S|! (N - |S|)! / N!: Eq. 6's weight is |S|! (N - |S| - 1)! / N! (the player itself "
         "is not among the N - |S| - 1 who come after it)"),
        (-expected, "your values have the right size but the wrong sign: the marginal contribution of k is "
                    "v(S u {k}) - v(S)"),
        (_weighted(marginals, lambda size: float(size == n - 1)),
         "you kept only the coalition of all the other players, v(all) - v(all without k) (that is Ablation-CAM's "
         "marginal, Eq. 9): Eq. 6 averages over every coalition S"),
        (_weighted(marginals, lambda size: float(size == 0)),
         "you kept only the empty coalition, v({k}) - v(empty): Eq. 6 averages over every coalition S"),
    ]
    hint = _first_match(answer, mistakes)
    if hint is None and abs(answer.sum().item() - (everyone - nobody)) > 1e-3 * max(1.0, abs(everyone - nobody)):
        hint = (f"local accuracy fails: your values add up to {answer.sum().item():.4g}, but v(all) - v(empty) = "
                f"{everyone - nobody:.4g}; Shapley values always add up to it (check that the weights of each "
                "player's coalitions add up to 1)")
    raise ExerciseFeedback(hint or f"your values are not the Shapley values ({_distance(answer, expected)}); "
                                   "enumerate every coalition S of the other players with Eq. 6's weights")


# --- 01: local accuracy (Eq. 8) at a cut of your own -------------------------------------------------------------

def _head_values(split: CamSplit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``F^c(A)``, ``F^c(0)`` (float64, (B,)) and the predicted class c of each image."""
    maps, logits = _activations_and_logits(split, x)
    with torch.no_grad():
        empty = split.head(torch.zeros_like(maps))
    target = logits.argmax(1)
    rows = torch.arange(len(target))
    return logits[rows, target].double(), empty[rows, target].double(), target


def local_accuracy_gaps(split: CamSplit, x: torch.Tensor, method: str) -> torch.Tensor:
    """Per image, ``sum_k alpha_k - (F^c(A) - F^c(0))`` of ``method`` for the predicted class c (Eq. 8); 0 where
    the method is locally accurate. (The exercise's reference: students write their own.)"""
    full, empty, target = _head_values(split, x)
    return coefficients(method, split, x, target).double().sum(1) - (full - empty)


def _rounding_tolerance(split: CamSplit, x: torch.Tensor) -> float:
    """A gap up to this is float rounding: 1e-3 of the largest ``|F^c(A) - F^c(0)|`` (at least 1e-3)."""
    full, empty, _ = _head_values(split, x)
    return 1e-3 * max(1.0, (full - empty).abs().max().item())


def check_cut_and_method(my_cut, violating_method, model, x: torch.Tensor, checked_cuts: Sequence[str]) -> None:
    """``my_cut`` must be a cut of ``model`` (a :class:`~liftcam_utils.models.LoadedModel`) that the notebook has
    not checked (not in ``checked_cuts``) and where LIFT-CAM can run; ``violating_method`` a method with ``alpha``
    that is not locally accurate there: for some image its gap exceeds float rounding (0.1 % of the largest
    ``|F^c(A) - F^c(0)|``)."""
    _require(my_cut is not Ellipsis and violating_method is not Ellipsis,
             "`my_cut` and `violating_method` are not chosen yet: replace the `...` after each")
    _require(isinstance(my_cut, str), f"`my_cut` should be a layer name (a str), got {my_cut!r}")
    layers = model.split().layers()
    _require(my_cut in layers, f"{my_cut!r} is not a layer of this model; valid cuts are listed by "
                               f"loaded.split().layers(), e.g. {', '.join(layers[-12:-4])}")
    _require(my_cut not in checked_cuts, f"the notebook already checked {my_cut!r}: choose a cut of your own, not "
                                         f"one of {', '.join(checked_cuts)}")
    try:
        split = model.split(my_cut)
    except ValueError as error:
        raise ExerciseFeedback(f"the model cannot be cut at {my_cut!r}: {error}") from None
    _require(isinstance(violating_method, str) and violating_method in METHODS,
             f"`violating_method` should be one of the package's methods ({', '.join(METHODS)}), "
             f"got {violating_method!r}")
    try:
        gaps = local_accuracy_gaps(split, x, violating_method)
    except ValueError as error:
        raise ExerciseFeedback(f"{violating_method!r} cannot be checked for local accuracy: {error}") from None
    _require(gaps.abs().max().item() > _rounding_tolerance(split, x),
             f"{violating_method!r} is locally accurate at {my_cut!r} (largest gap {gaps.abs().max().item():.2g}): "
             "its alpha add up to F^c(A) - F^c(0), as LIFT-CAM's, SHAP-CAM's and the Shapley values' do by "
             "construction; pick a rule whose alpha does not share out F^c(A) - F^c(0)")


def check_local_accuracy_gaps(gaps_function, split: CamSplit, x: torch.Tensor, method: str) -> None:
    """``gaps_function(split, x, method)`` must return, per image, the signed local accuracy gap
    ``sum_k alpha_k - (F^c(A) - F^c(0))`` (B,) of ``method`` for each image's predicted class c (Eq. 8)."""
    answer = _as_tensor(_call(gaps_function, "local_accuracy_gaps", split, x, method), "local_accuracy_gaps")
    expected = local_accuracy_gaps(split, x, method)
    _require(answer.dim() != 0 or len(x) == 1,
             "you returned one number: return one signed gap per image, shape (B,), not their maximum or sum")
    answer = answer.reshape(-1) if answer.numel() == len(x) else answer
    _require(answer.shape == expected.shape, f"return one gap per image, shape (B,) = {tuple(expected.shape)}, got "
                                             f"{tuple(answer.shape)}")
    if (answer - expected).abs().max().item() <= _rounding_tolerance(split, x):
        return
    full, empty, _ = _head_values(split, x)
    alpha_sum = expected + (full - empty)
    mistakes = [
        (alpha_sum - full,
         "your gap is sum_k alpha_k - F^c(A): subtract F^c(A) - F^c(0), the head's output at A = 0 is not zero "
         "(its biases)"),
        (-expected, "your gaps have the wrong sign (or are absolute values of negative gaps): the gap is "
                    "sum_k alpha_k - (F^c(A) - F^c(0)), signed"),
        (expected.abs(), "you returned |gap|: keep its sign, sum_k alpha_k - (F^c(A) - F^c(0))"),
        (alpha_sum, "you returned sum_k alpha_k alone: subtract F^c(A) - F^c(0)"),
    ]
    hint = _first_match(answer, mistakes)
    raise ExerciseFeedback(hint or (
        f"your gaps are not sum_k alpha_k - (F^c(A) - F^c(0)) of {method!r} ({_distance(answer, expected)}); c is "
        "each image's predicted class, F^c(0) the head's output at A = torch.zeros_like(A)"))
