"""Checks of the course exercises in notebooks 02 and 03, each with hints specific to the typical mistakes.

Like :mod:`liftcam_utils.app.exercises` (notebooks 00 and 01, whose helpers these reuse), a check computes the
right answer with the package, compares it with the student's and on a mismatch raises
:class:`~liftcam_utils.app.exercises.ExerciseFeedback` with a hint naming the mistake it recognises, or, for one it
does not recognise, how far off the answer is and what to revisit.

* :func:`check_algorithm1` (02, Algorithm 1's running mean of marginal contributions on a small channel game);
* :func:`check_error_slope` (02, SHAP-CAM_P's error against the exact Shapley values falls like ``1 / sqrt(P)``);
* :func:`check_cosine_function` and :func:`check_method_cosines` (03, Table 2's per-image cosine of ``alpha``);
* :func:`check_reference_cosines` (03, how many orderings SHAP-CAM needs to reach a cosine of 0.999 to a long
  reference).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..engine.cam_map import cam_map
from ..engine.split import CamSplit
from ..evaluation.metrics import cosine_similarity
from ..methods import coefficients, saliency
from ..methods.shapley import exhaustive_shapley
from .exercises import ExerciseFeedback, _as_tensor, _call, _close, _distance, _first_match, _require

# --- 02: a channel game small enough to enumerate -----------------------------------------------------------------


def channel_subgame(split: CamSplit, x: torch.Tensor, players: Sequence[int], target: int | None = None
                    ) -> Callable[[Sequence[int]], float]:
    """The channel game of the first image of ``x`` (Secs. 3.2-3.3) with only the maps ``players`` as players:
    ``value(a') = F^c(A o m)``, where ``m_k = a'_i`` for the map ``k = players[i]`` and ``m_k = 1`` for every other
    map (they stay as they are). ``target``: the class c, by default the predicted one. Each of the ``2^n``
    coalitions is evaluated once (cached), so Algorithm 1 on it costs no more head passes than enumeration."""
    with torch.no_grad():
        maps = split.body(x[:1])
        target = int(split.head(maps).argmax(1)) if target is None else int(target)
    players = torch.as_tensor(players, dtype=torch.long).reshape(-1)

    @functools.cache
    def worth(coalition: tuple[int, ...]) -> float:
        mask = torch.ones(maps.shape[1], dtype=maps.dtype, device=maps.device)
        mask[players] = torch.tensor(coalition, dtype=maps.dtype, device=maps.device)
        with torch.no_grad():
            return split.head(maps * mask[None, :, None, None])[0, target].item()

    def value(coalition: Sequence[int]) -> float:
        """``v(a')`` for ``a'`` a sequence of one 0 or 1 per player (1: the map kept, 0: set to zero)."""
        coalition = tuple(int(a) for a in (coalition.tolist() if isinstance(coalition, torch.Tensor) else coalition))
        if len(coalition) != len(players) or not set(coalition) <= {0, 1}:
            raise ValueError(f"a coalition has one 0 or 1 per player: {len(players)} of them, got {coalition}")
        return worth(coalition)

    return value


def _worths(value: Callable[[Sequence[int]], float], n_players: int) -> torch.Tensor:
    """``v`` of all ``2^n`` coalitions, coalition ``S`` at index ``sum_{k in S} 2^k`` (float64)."""
    codes = torch.arange(2 ** n_players)
    members = (codes[:, None] >> torch.arange(n_players)) & 1
    return torch.tensor([value(tuple(row)) for row in members.tolist()], dtype=torch.float64)


def exact_shapley_values(value: Callable[[Sequence[int]], float], n_players: int) -> torch.Tensor:
    """The Shapley values (Eq. 6) of a game given as a function of a 0/1 tuple, by enumerating its coalitions."""
    return exhaustive_shapley(_worths(value, n_players), n_players)


class _Orderings:
    """For every ordering of the players of a game (n! rows): its marginal vector (Algorithm 1's contributions of
    one ordering) and the vectors that the typical mistakes of Algorithm 1 make of it."""

    def __init__(self, worths: torch.Tensor, n_players: int):
        orderings = torch.tensor(list(itertools.permutations(range(n_players))))
        after = (2 ** orderings).cumsum(1)  # the coalition once the i-th player of the ordering has joined
        before = after - 2 ** orderings
        gains = worths[after] - worths[before]  # (n!, n): the i-th player's marginal contribution
        self.marginals = torch.zeros_like(gains).scatter_(1, orderings, gains)
        self.worths_at_join = torch.zeros_like(gains).scatter_(1, orderings, worths[after])
        self.by_position = gains
        self.last_forgotten = self.marginals.scatter(1, orderings[:, -1:], 0.0)
        self.first_from_zero = self.marginals.scatter_add(1, orderings[:, :1],
                                                          worths[:1].expand(len(orderings), 1).clone())
        self.phi = self.marginals.mean(0)
        self.spread = self.marginals.std(0, unbiased=False)  # one ordering's standard deviation, per player
        self.scale = max(self.marginals.abs().max().item(), 1e-12)

    def contains(self, vectors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Per row of ``vectors``, whether it equals (up to float rounding) one row of ``candidates``."""
        nearest = torch.cdist(vectors.reshape(-1, candidates.shape[1]), candidates).amin(1)
        return nearest <= 1e-4 * self.scale


def _running_means(answer: torch.Tensor) -> torch.Tensor:
    """The increments ``P a_P - (P - 1) a_(P-1)`` of rows ``a_P`` (..., P, n): the P-th ordering's vector."""
    counts = torch.arange(1, answer.shape[-2] + 1, dtype=answer.dtype)[:, None]
    totals = answer * counts
    return torch.cat([totals[..., :1, :], totals[..., 1:, :] - totals[..., :-1, :]], dim=-2)


_ALGORITHM1 = ("Algorithm 1: for each of P random orderings (torch.randperm(n_players, generator=...)), add the "
               "players one at a time and give each its marginal contribution v(S u {k}) - v(S), S the players "
               "before it; row P - 1 is the mean of the first P orderings' vectors")


def _first_row_hint(first: torch.Tensor, orderings: _Orderings, full_minus_empty: float, n_rows: int) -> str:
    """An empty string if the first row is one ordering's marginal vector, else the hint of its mistake."""
    mistakes = [
        (orderings.marginals, None),
        (-orderings.marginals, "your contributions have the wrong sign: a player's marginal contribution is "
                               "v(S u {k}) - v(S), the worth with it minus the worth without it"),
        (orderings.worths_at_join, "your row P = 1 holds the worths v(S u {k}) themselves: Algorithm 1 adds the "
                                   "marginal contribution v(S u {k}) - v(S), the worth gained when k joins S"),
        (orderings.by_position, "you stored each contribution at the step where the player joined (its position "
                                "in the ordering), not at the player: add v(S u {k}) - v(S) to alpha[k], k = "
                                "ordering[i]"),
        (orderings.last_forgotten, "the last player of each ordering gets no contribution: the loop over the "
                                   "ordering must run over all n players, the last one joining S = everyone else"),
        (orderings.first_from_zero, "the first player of each ordering gets v({k}) instead of v({k}) - v(empty): "
                                    "start from S = the empty coalition, whose worth F^c(0) is not zero"),
        (orderings.marginals / n_rows, f"you divided every row by n_orderings = {n_rows}: row P - 1 is the mean of "
                                       "the first P orderings, so divide the running sum by P"),
    ]
    for candidates, hint in mistakes:
        if orderings.contains(first[None], candidates).item():
            return hint or ""
    return (f"row P = 1 is not the marginal vector of any ordering of the {len(first)} players (its entries add "
            f"up to {first.sum().item():.4g}, one ordering's add up to v(all) - v(empty) = "
            f"{full_minus_empty:.4g}). {_ALGORITHM1}")


def _running_mean_hint(answer: torch.Tensor, orderings: _Orderings, full_minus_empty: float) -> str | None:
    """None if every row is the mean of the first P orderings' marginal vectors, else what is wrong."""
    hint = _first_row_hint(answer[0], orderings, full_minus_empty, len(answer))
    if hint:
        return hint
    increments = _running_means(answer)
    valid = orderings.contains(increments, orderings.marginals)
    if valid.all():
        return None
    steps = answer[1:] - answer[:-1]
    if orderings.contains(steps, orderings.marginals).all():
        return ("row P is the sum of the first P orderings' marginal vectors: divide it by P (the running mean, "
                "SHAP-CAM_P = the sum / P)")
    row = int((~valid).nonzero()[0])
    if torch.allclose(answer.sum(1), torch.full((len(answer),), full_minus_empty, dtype=answer.dtype),
                      atol=1e-4 * orderings.scale):
        return (f"row P = {row + 1} does not extend row P = {row} by one ordering (P a_P - (P - 1) a_(P-1) is no "
                "ordering's marginal vector): keep one running sum over the orderings, do not draw a fresh set of "
                "orderings for each P")
    return (f"row P = {row + 1} is not the mean of the first {row + 1} orderings' marginal vectors (its entries add "
            f"up to {answer[row].sum().item():.4g}, not v(all) - v(empty) = {full_minus_empty:.4g}). {_ALGORITHM1}")


def check_algorithm1(algorithm1, value: Callable[[Sequence[int]], float], n_players: int, seed: int = 0,
                     n_orderings: int = 400) -> None:
    """``algorithm1(value, n_players, n_orderings, seed)`` must return SHAP-CAM_P for P = 1..n_orderings
    (Algorithm 1), shape (n_orderings, n_players): row P - 1 the mean of the marginal-contribution vectors of the
    first P of ``n_orderings`` random orderings drawn from ``seed``. Checked exactly on a game of at most 7
    players: every increment ``P a_P - (P - 1) a_(P-1)`` is the marginal vector of one of the ``n!`` orderings,
    the orderings are uniform (the last row is within 5 standard errors of Eq. 6's values), and the seed decides
    the orderings."""
    _require(n_players <= 7, "check_algorithm1 enumerates every ordering: give it a game of at most 7 players")
    answer = _as_tensor(_call(algorithm1, "algorithm1", value, n_players, n_orderings, seed), "algorithm1")
    _require(answer.shape != (n_players,), "you returned one vector: return every running mean, one row per P, "
                                           f"shape (n_orderings, n_players) = ({n_orderings}, {n_players})")
    _require(answer.shape != (n_players, n_orderings),
             f"your result is transposed: one row per P, shape (n_orderings, n_players) = ({n_orderings}, "
             f"{n_players}), not ({n_players}, {n_orderings})")
    _require(answer.shape == (n_orderings, n_players),
             f"algorithm1 should return shape (n_orderings, n_players) = ({n_orderings}, {n_players}), got "
             f"{tuple(answer.shape)}")
    _require(bool(torch.isfinite(answer).all()), "your result has NaN or infinite entries")
    worths = _worths(value, n_players)
    orderings = _Orderings(worths, n_players)
    full_minus_empty = (worths[-1] - worths[0]).item()
    hint = _running_mean_hint(answer, orderings, full_minus_empty)
    _require(hint is None, hint or "")
    _require(not torch.allclose(answer[0], answer[-1]),
             "every row is the same vector: you reused one ordering for every P; draw a new random ordering for "
             "each of the n_orderings steps")
    error = (answer[-1] - orderings.phi).abs()
    bound = 5 * orderings.spread / n_orderings ** 0.5 + 1e-6 * orderings.scale
    _require(bool((error <= bound).all()),
             f"after {n_orderings} orderings your estimate is still {error.max().item():.3g} from the Shapley "
             f"values (5 standard errors: {bound.max().item():.3g}): your orderings are valid but not uniformly "
             "random; draw each with torch.randperm(n_players, generator=...)")
    again = _as_tensor(_call(algorithm1, "algorithm1", value, n_players, n_orderings, seed), "algorithm1")
    _require(again.shape == answer.shape and torch.equal(again, answer),
             "two calls with the same seed gave different results: draw the orderings from "
             "torch.Generator().manual_seed(seed), not from the global random state")
    other = _as_tensor(_call(algorithm1, "algorithm1", value, n_players, n_orderings, seed + 1), "algorithm1")
    _require(other.shape != answer.shape or not torch.equal(other, answer),
             f"seeds {seed} and {seed + 1} gave the same result: the orderings must come from the `seed` argument")


# --- 02: the error falls like 1 / sqrt(P) --------------------------------------------------------------------------

# The error's mean over 32 runs of 1024 orderings has a log-log slope within about 0.04 of -1/2 (one standard
# deviation, measured over seeds on the photos' six-player games): the check allows 0.15.
MIN_RUNS, MIN_ORDERINGS, SLOPE_TOLERANCE = 32, 1024, 0.15


def _log_log_slope(errors: torch.Tensor) -> float:
    """The least-squares slope of ``log(error)`` against ``log(P)``, P = 1, 2, ..."""
    steps = np.arange(1, len(errors) + 1)
    return float(np.polyfit(np.log(steps), np.log(errors.numpy()), 1)[0])


def check_error_slope(estimates, errors, slope, value: Callable[[Sequence[int]], float], n_players: int) -> None:
    """``estimates`` (R, P, n): R runs of Algorithm 1 on ``value`` with different seeds; ``errors`` (P,): the
    relative error ``||alpha_P - phi|| / ||phi||`` of SHAP-CAM_P, averaged over the runs, with ``phi`` the exact
    Shapley values (Eq. 6); ``slope``: the least-squares slope of ``log(errors)`` against ``log(P)``, which the
    Monte Carlo error of Algorithm 1 puts near -1/2."""
    for what, given in (("your estimates (the stacked runs) are", estimates), ("your errors are", errors),
                        ("your slope is", slope)):
        _require(given is not None and given is not Ellipsis, f"{what} not computed yet: replace the `...`")
    estimates = _as_tensor(estimates, "estimates")
    _require(estimates.dim() == 3 and estimates.shape[2] == n_players,
             f"`estimates` should have shape (runs, P, n_players), one Algorithm 1 result per run stacked "
             f"(torch.stack), got {tuple(estimates.shape)}")
    runs, steps, _ = estimates.shape
    _require(runs >= MIN_RUNS, f"average over at least {MIN_RUNS} runs (seeds), got {runs}: one run's error wanders "
                               "around the 1 / sqrt(P) law, and the slope of a few runs' mean wanders too")
    _require(steps >= MIN_ORDERINGS, f"run at least {MIN_ORDERINGS} orderings (got {steps}): the slope needs a wide "
                                     "range of P")
    worths = _worths(value, n_players)
    orderings = _Orderings(worths, n_players)
    _require(bool(orderings.contains(_running_means(estimates), orderings.marginals).all()),
             "`estimates` are not running means of Algorithm 1 on this game: pass exercise 02.1 first and stack "
             "its results for the runs")
    _require(not torch.equal(estimates[0], estimates[1]),
             "your runs are identical: give each run its own seed")
    phi = exhaustive_shapley(worths, n_players)
    distances = (estimates - phi).norm(dim=-1)  # (R, P)
    expected = (distances / phi.norm()).mean(0)
    answer = _as_tensor(errors, "errors").flatten()
    _require(answer.shape == expected.shape, f"`errors` should have one value per P, shape ({steps},), got "
                                             f"{tuple(answer.shape)}")
    if not _close(answer, expected):
        cosines = cosine_similarity(estimates, phi.expand_as(estimates))
        mistakes = [
            (distances.mean(0), "your errors are absolute, ||alpha_P - phi||: divide by ||phi|| for the relative "
                                "error"),
            ((distances ** 2).mean(0).sqrt() / phi.norm(),
             "you took the root mean square over the runs: average the relative errors themselves (.mean(0))"),
            ((distances / phi.norm()) ** 2, "your errors are squared: take the norm ||alpha_P - phi||, not its "
                                            "square (a squared error falls like 1 / P)"),
            (((distances / phi.norm()) ** 2).mean(0), "your errors are squared: take the norm ||alpha_P - phi||, "
                                                      "not its square (a squared error falls like 1 / P)"),
            ((estimates.mean(0) - phi).norm(dim=-1) / phi.norm(),
             "you averaged the estimates over the runs before taking the error: that is the error of one estimate "
             "with R x P orderings; take each run's error, then average the errors"),
            ((distances / estimates.norm(dim=-1)).mean(0),
             "you divided by the estimate's norm ||alpha_P||: the relative error divides by the reference's, "
             "||phi||"),
            (distances[0] / phi.norm(), "your errors are those of the first run only: average over all runs"),
            ((1 - cosines).mean(0), "you computed 1 - cosine: the error here is ||alpha_P - phi|| / ||phi||"),
        ]
        hint = _first_match(answer, mistakes)
        raise ExerciseFeedback(hint or (
            f"your errors are not the relative errors of the estimates ({_distance(answer, expected)}): for each "
            "run and P, ||alpha_P - phi|| / ||phi|| with phi the exact Shapley values, then the mean over runs"))
    _require(isinstance(slope, (int, float, np.floating)) or (isinstance(slope, torch.Tensor) and slope.numel() == 1),
             f"`slope` should be one number, got {type(slope).__name__}")
    slope = float(slope)
    fitted = _log_log_slope(answer)
    if abs(slope - fitted) > 1e-3:
        log_steps, log_errors = np.log(np.arange(1, steps + 1)), np.log(answer.numpy())
        linear = np.arange(1, steps + 1)
        mistakes = [
            (float(np.polyfit(log_steps, log_errors, 1)[1]),
             "that is the intercept of the line: np.polyfit(x, y, 1) returns [slope, intercept]"),
            (-fitted, "your slope has the wrong sign: the error falls as P grows, so the slope is negative"),
            (float(np.polyfit(linear, log_errors, 1)[0]), "you fitted log(error) against P: fit it against log(P)"),
            (float(np.polyfit(log_steps, answer.numpy(), 1)[0]),
             "you fitted the error itself against log(P): take the logarithm of both"),
            (float(np.polyfit(linear, answer.numpy(), 1)[0]),
             "you fitted the error against P on linear axes: fit log(error) against log(P)"),
            (float(np.polyfit(log_errors, log_steps, 1)[0]),
             "you fitted log(P) against log(error): the slope is d log(error) / d log(P), x = log(P)"),
        ]
        hint = next((hint for wrong, hint in mistakes if abs(slope - wrong) <= 1e-3 * max(1.0, abs(wrong))), None)
        raise ExerciseFeedback(hint or (
            f"your slope {slope:.3f} is not the least-squares slope of log(errors) against log(P) = log(1..{steps}), "
            f"which is {fitted:.3f}: np.polyfit(np.log(P), np.log(errors), 1)[0]"))
    _require(abs(fitted + 0.5) <= SLOPE_TOLERANCE,
             f"your slope is {fitted:.3f}, far from -1/2: Algorithm 1's error is a Monte Carlo error, whose "
             "standard deviation falls like 1 / sqrt(P) for independent, uniformly random orderings; check that "
             "each run draws new orderings from its own seed")


# --- 03: Table 2's quantity, per image ----------------------------------------------------------------------------

_COSINE = ("cos(alpha, alpha_ref) = alpha . alpha_ref / (||alpha|| ||alpha_ref||), one per image: sums over the "
           "channels (dim=1)")


def check_cosine_function(cosine, alphas: Mapping[str, torch.Tensor], reference: torch.Tensor) -> None:
    """``cosine(alpha, reference)`` must return the per-image cosine similarity (B,) of two (B, N) coefficient
    tensors, the package's :func:`~liftcam_utils.evaluation.metrics.cosine_similarity`; tried on each tensor of
    ``alphas`` against ``reference``."""
    reference = torch.as_tensor(reference).detach().cpu().double()
    for method, alpha in alphas.items():
        alpha = torch.as_tensor(alpha).detach().cpu().double()
        answer = _as_tensor(_call(cosine, "cosine", alpha, reference), "cosine")
        expected = cosine_similarity(alpha, reference)
        batch, n_maps = alpha.shape
        whole = cosine_similarity(alpha.flatten(), reference.flatten())
        _require(not (answer.numel() == 1 and batch > 1 and _close(answer.reshape(()), whole)),
                 "you computed one cosine over the whole batch flattened: Table 2's cosine is per image, "
                 f"{_COSINE}")
        _require(answer.shape != (n_maps,) or batch == n_maps,
                 f"your result has one value per channel ({n_maps}): you summed over the images (dim=0); "
                 f"{_COSINE}")
        answer = answer.reshape(-1) if answer.numel() == batch else answer
        _require(answer.shape == expected.shape, f"return one cosine per image, shape (B,) = ({batch},), got "
                                                 f"{tuple(answer.shape)}")
        if _close(answer, expected, rtol=1e-5):
            continue
        dot = (alpha * reference).sum(1)
        mistakes = [
            (dot, "you returned the dot product alpha . alpha_ref: divide by ||alpha|| ||alpha_ref|| (the "
                  "cosine does not depend on the scale of either vector)"),
            (dot / reference.norm(dim=1) ** 2, "you divided by ||alpha_ref||^2 (a projection): divide by "
                                               "||alpha|| ||alpha_ref||"),
            (dot / reference.norm(dim=1), "you divided by ||alpha_ref|| only: divide by ||alpha|| ||alpha_ref||"),
            (dot / alpha.norm(dim=1), "you divided by ||alpha|| only: divide by ||alpha|| ||alpha_ref||"),
            (expected.abs(), "you took the absolute value: keep the sign, a negative cosine (alpha pointing "
                             "against the Shapley values) must stay below zero"),
            (1 - expected, "you returned 1 - cosine (the cosine distance): return the cosine itself"),
            (dot / (alpha.norm(dim=1) * reference.norm(dim=1)) ** 2,
             "you divided by the squared norms: divide by ||alpha|| ||alpha_ref||, each norm the square root of "
             "the sum of squares"),
        ]
        hint = _first_match(answer, mistakes)
        raise ExerciseFeedback(hint or (f"your cosines for {method!r} are not right ({_distance(answer, expected)}): "
                                        f"{_COSINE}"))


def _per_method(answer, methods: Sequence[str], name: str) -> dict[str, torch.Tensor]:
    _require(answer is not None and answer is not Ellipsis, f"`{name}` is not computed yet: replace the `...`")
    if hasattr(answer, "to_dict") and hasattr(answer, "columns"):  # a pandas DataFrame: one column per method
        answer = {column: answer[column].to_numpy().copy() for column in answer.columns}
    _require(isinstance(answer, Mapping), f"`{name}` should be a dict {{method: cosines}}, got "
                                          f"{type(answer).__name__}")
    missing = [m for m in methods if m not in answer]
    _require(not missing, f"`{name}` has no entry for {', '.join(map(repr, missing))}: one per method of "
                          f"{list(methods)}")
    return {m: _as_tensor(answer[m], f"{name}[{m!r}]").reshape(-1) for m in methods}


def check_method_cosines(method_cosines, split: CamSplit, x: torch.Tensor, target: torch.Tensor,
                         reference: torch.Tensor, methods: Sequence[str]) -> None:
    """``method_cosines[m]`` must be the cosine (B,) of each image's ``alpha`` of method ``m`` (for class
    ``target``) to ``reference`` (B, N), the quantity Table 2 averages."""
    answers = _per_method(method_cosines, methods, "method_cosines")
    reference = torch.as_tensor(reference).detach().cpu().double()
    with torch.no_grad():
        maps = split.body(x)
    size = tuple(x.shape[-2:])
    reference_map = cam_map(reference.to(maps), maps, size).cpu().double().flatten(1)
    for method in methods:
        answer = answers[method]
        alpha = coefficients(method, split, x, target).cpu().double()
        expected = cosine_similarity(alpha, reference)
        _require(answer.numel() != 1 or len(x) == 1,
                 f"method_cosines[{method!r}] is one number: keep one cosine per image (Table 2 averages them "
                 "afterwards)")
        _require(answer.shape == expected.shape, f"method_cosines[{method!r}] should have one cosine per image, "
                                                 f"({len(x)},), got {tuple(answer.shape)}")
        if _close(answer, expected, rtol=1e-4):
            continue
        mistakes = [
            (cosine_similarity(saliency(method, split, x, target).cpu().double().flatten(1), reference_map),
             "you compared the saliency maps, not the coefficients: Table 2's cosine is between the vectors "
             "alpha (lu.coefficients), one number per channel"),
            (cosine_similarity(coefficients(method, split, x).cpu().double(), reference),
             "you explained the predicted class: pass `target` (each scene's label, the class the reference "
             "explains) to lu.coefficients"),
            (expected.abs(), "you took the absolute value of the cosine: keep its sign"),
        ]
        hint = _first_match(answer, mistakes)
        raise ExerciseFeedback(hint or (
            f"method_cosines[{method!r}] differs from the cosine of its alpha to the reference "
            f"({_distance(answer, expected)}): lu.coefficients({method!r}, split, x, target), then your cosine"))


# --- 03: how good must a reference be? -----------------------------------------------------------------------------

def check_reference_cosines(cosine_by_p, smallest_p, split: CamSplit, x: torch.Tensor, target: torch.Tensor,
                            long_reference: torch.Tensor, seed: int, reference_seed: int,
                            threshold: float = 0.999) -> None:
    """``cosine_by_p``: ``{P: cos(SHAP-CAM_P, long_reference)}`` for SHAP-CAM with the stratified estimator,
    ``P`` orderings and ``seed``, on the first image of ``x``; ``smallest_p``: the smallest of those P whose cosine
    reaches ``threshold`` (None if none does)."""
    _require(cosine_by_p is not None and cosine_by_p is not Ellipsis,
             "`cosine_by_p` is not computed yet: replace the `...`")
    _require(isinstance(cosine_by_p, Mapping) and len(cosine_by_p) >= 3,
             "`cosine_by_p` should be a dict {P: cosine} over at least three values of P")
    cosine_by_p = {int(p): cosine for p, cosine in cosine_by_p.items()}
    grid = sorted(cosine_by_p)
    long_reference = torch.as_tensor(long_reference).detach().cpu().double().reshape(1, -1)

    def cosine_of(p: int, **options) -> float:
        options = {"seed": seed, "estimator": "stratified", **options}
        alpha = coefficients("shapcam", split, x[:1], target[:1], n_permutations=p, **options).cpu().double()
        return float(cosine_similarity(alpha, long_reference))

    for p in grid:
        answer = float(_as_tensor(cosine_by_p[p], f"cosine_by_p[{p}]").reshape(-1)[0])
        expected = cosine_of(p)
        if abs(answer - expected) <= 1e-4:
            continue
        mistakes = [
            (cosine_of(p, estimator="plain"), "you used Algorithm 1's plain orderings: this exercise measures the "
                                              "stratified estimator (estimator=\"stratified\"), the one of the "
                                              "notebook's references"),
            (cosine_of(p, seed=reference_seed), f"your SHAP-CAM_P uses the reference's seed ({reference_seed}): "
                                                f"draw the estimates with seed={seed}, independent of the "
                                                "reference"),
        ]
        hint = next((hint for wrong, hint in mistakes if abs(answer - wrong) <= 1e-4), None)
        raise ExerciseFeedback(hint or (
            f"your cosine at P = {p} is {answer:.5f}, SHAP-CAM_{p} (stratified, seed={seed}) has {expected:.5f} to "
            "the long reference: lu.coefficients(\"shapcam\", split, x, target, n_permutations=P, seed=seed, "
            "estimator=\"stratified\"), then the cosine to `long_reference`"))
    reached = [p for p in grid if float(cosine_by_p[p]) >= threshold]
    expected_p = reached[0] if reached else None
    if smallest_p == expected_p:
        return
    _require(smallest_p is not Ellipsis, "`smallest_p` is not chosen yet: replace the `...`")
    below = [p for p in grid if p not in reached]
    if expected_p is None:
        raise ExerciseFeedback(f"no P of your grid reaches a cosine of {threshold}: `smallest_p` should be None")
    hints = {
        (below[-1] if below else None): "that is the largest P whose cosine is still below the threshold: take "
                                        "the first P at or above it",
        grid[-1]: f"that is the largest P of the grid: take the smallest P whose cosine reaches {threshold}",
    }
    raise ExerciseFeedback(hints.get(smallest_p) or (
        f"`smallest_p` = {smallest_p!r}, but the first P of your grid with a cosine of at least {threshold} is "
        f"{expected_p}"))
