"""The exercises of notebooks 02 and 03 (liftcam_utils.app.exercises_shapley): each check passes the right answer
and names each typical mistake with its own hint; a student's function that raises or returns ``...`` gets
feedback, not a traceback; and the notebooks hold the exercises and points docs/course.md lists."""

import ast
import builtins
import functools
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml

import liftcam_utils as lu
from liftcam_utils.app import exercises_shapley as ex
from liftcam_utils.app.exercises import ExerciseFeedback
from liftcam_utils.datasets import load_dataset
from liftcam_utils.evaluation.metrics import cosine_similarity

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# A five-player game with a constant, a quadratic part and a three-way interaction: no two orderings give the same
# marginal vector, and v(empty) = 1.5 is not zero.
WEIGHTS = (1.0, -2.0, 0.5, 3.0, 1.5)


def game(coalition):
    total = sum(w * a for w, a in zip(WEIGHTS, coalition, strict=True))
    return 1.5 + total + 0.5 * total * total - 2.0 * coalition[0] * coalition[3] * coalition[4]


N_PLAYERS = len(WEIGHTS)


@functools.cache
def _contributions(ordering: tuple[int, ...], mistake: str | None) -> torch.Tensor:
    """The vector one ordering adds to Algorithm 1's running sum, or what a typical mistake adds instead."""
    vector = torch.zeros(N_PLAYERS, dtype=torch.float64)
    coalition = [0] * N_PLAYERS
    worth = 0.0 if mistake == "first from zero" else game(coalition)
    players = ordering[:-1] if mistake == "last forgotten" else ordering
    for position, k in enumerate(players):
        coalition[k] = 1
        joined = game(coalition)
        gain = {"worths": joined, "sign": worth - joined}.get(mistake, joined - worth)
        vector[position if mistake == "by position" else k] += gain
        worth = joined
    return vector


def algorithm1(value, n_players, n_orderings, seed, mistake=None):
    """Algorithm 1 on the test's `game` (`value` is it), right or with one typical mistake."""
    generator = torch.Generator().manual_seed(0 if mistake == "seed ignored" else seed)
    first = tuple(torch.randperm(n_players, generator=generator).tolist())
    running_sum = torch.zeros(n_players, dtype=torch.float64)
    rows = []
    for p in range(1, n_orderings + 1):
        if mistake == "fresh orderings":  # a new estimate of p orderings for each p
            orderings = [tuple(torch.randperm(n_players, generator=generator).tolist()) for _ in range(p)]
            rows.append(torch.stack([_contributions(o, None) for o in orderings]).mean(0))
            continue
        if mistake == "one ordering":
            ordering = first
        elif mistake == "rotations":  # valid orderings, but only the n rotations of one
            ordering = tuple(torch.arange(n_players).roll(p + seed).tolist())
        elif mistake == "global random state":
            ordering = tuple(torch.randperm(n_players).tolist())
        else:
            ordering = first if p == 1 else tuple(torch.randperm(n_players, generator=generator).tolist())
        running_sum = running_sum + _contributions(ordering, mistake)
        divisor = {"sums": 1, "divided by n_orderings": n_orderings}.get(mistake, p)
        rows.append(running_sum / divisor)
    result = torch.stack(rows)
    return {"transposed": result.T, "last row only": result[-1]}.get(mistake, result)


def test_the_right_algorithm1_passes_on_a_game_and_a_channel_game():
    ex.check_algorithm1(algorithm1, game, N_PLAYERS, seed=3)
    scenes_model = lu.load_model("shapes_vgg")
    scene = scenes_model.preprocess(load_dataset("scenes", n_images=1, model=scenes_model)[0].image())[None]
    split = scenes_model.split()
    players = lu.coefficients("liftcam", split, scene)[0].abs().topk(4).indices.tolist()

    def solution(value, n_players, n_orderings, seed):  # Algorithm 1 on any game, as the notebook's solution
        generator = torch.Generator().manual_seed(seed)
        running_sum, rows = torch.zeros(n_players, dtype=torch.float64), []
        for p in range(1, n_orderings + 1):
            coalition = [0] * n_players
            worth = value(coalition)
            for k in torch.randperm(n_players, generator=generator).tolist():
                coalition[k] = 1
                joined = value(coalition)
                running_sum[k] += joined - worth
                worth = joined
            rows.append(running_sum / p)
        return torch.stack(rows)

    subgame = ex.channel_subgame(split, scene, players)
    ex.check_algorithm1(solution, subgame, len(players), seed=0)
    assert ex.exact_shapley_values(subgame, len(players)).sum().item() == pytest.approx(
        subgame((1,) * 4) - subgame((0,) * 4), rel=1e-5)


@pytest.mark.parametrize(("mistake", "hint"), [
    ("sums", "sum of the first P orderings"),
    ("worths", "holds the worths v(S u {k}) themselves"),
    ("one ordering", "reused one ordering"),
    ("last forgotten", "the last player of each ordering gets no contribution"),
    ("first from zero", "gets v({k}) instead of v({k}) - v(empty)"),
    ("by position", "its position in the ordering"),
    ("sign", "wrong sign"),
    ("divided by n_orderings", "divided every row by n_orderings = 400"),
    ("fresh orderings", "do not draw a fresh set of orderings for each P"),
    ("rotations", "not uniformly random"),
    ("global random state", "two calls with the same seed gave different results"),
    ("seed ignored", "gave the same result: the orderings must come from the `seed` argument"),
    ("transposed", "transposed"),
    ("last row only", "return every running mean"),
])
def test_algorithm1_hints(mistake, hint):
    with pytest.raises(ExerciseFeedback, match=None) as caught:
        ex.check_algorithm1(functools.partial(algorithm1, mistake=mistake), game, N_PLAYERS, seed=3)
    assert hint in str(caught.value)


def _raises(*args):
    raise IndexError("index 5 is out of bounds")


@pytest.mark.parametrize(("function", "hint"), [
    (..., "not written yet"),
    (lambda *args: ..., "returned `...`"),
    (lambda *args: None, "returned None"),
    (_raises, "raised IndexError: index 5 is out of bounds"),
])
def test_an_unfinished_algorithm1_gets_feedback(function, hint):
    with pytest.raises(ExerciseFeedback) as caught:
        ex.check_algorithm1(function, game, N_PLAYERS)
    assert hint in str(caught.value)


# --- 02.2 -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs():
    """The right answer of 02.2 on the test's game: estimates (32, 1024, 5), errors (1024,), slope."""
    estimates = torch.stack([algorithm1(game, N_PLAYERS, ex.MIN_ORDERINGS, seed) for seed in range(ex.MIN_RUNS)])
    phi = ex.exact_shapley_values(game, N_PLAYERS)
    errors = ((estimates - phi).norm(dim=-1) / phi.norm()).mean(0)
    slope = np.polyfit(np.log(np.arange(1, len(errors) + 1)), np.log(errors.numpy()), 1)[0]
    return estimates, errors, slope, phi


def test_the_right_errors_and_slope_pass(runs):
    estimates, errors, slope, _ = runs
    ex.check_error_slope(estimates, errors, slope, game, N_PLAYERS)
    ex.check_error_slope(estimates.numpy(), errors.tolist(), torch.tensor(slope), game, N_PLAYERS)


@pytest.mark.parametrize(("mistake", "hint"), [
    (lambda e, phi: (e - phi).norm(dim=-1).mean(0), "your errors are absolute"),
    (lambda e, phi: ((e - phi).norm(dim=-1) ** 2).mean(0).sqrt() / phi.norm(), "root mean square"),
    (lambda e, phi: (((e - phi).norm(dim=-1) / phi.norm()) ** 2).mean(0), "your errors are squared"),
    (lambda e, phi: (e.mean(0) - phi).norm(dim=-1) / phi.norm(), "you averaged the estimates over the runs"),
    (lambda e, phi: ((e - phi).norm(dim=-1) / e.norm(dim=-1)).mean(0), "divided by the estimate's norm"),
    (lambda e, phi: (e[0] - phi).norm(dim=-1) / phi.norm(), "the first run only"),
    (lambda e, phi: (1 - cosine_similarity(e, phi.expand_as(e))).mean(0), "1 - cosine"),
])
def test_error_hints(runs, mistake, hint):
    estimates, _, _, phi = runs
    with pytest.raises(ExerciseFeedback) as caught:
        ex.check_error_slope(estimates, mistake(estimates, phi), -0.5, game, N_PLAYERS)
    assert hint in str(caught.value)


@pytest.mark.parametrize(("fit", "hint"), [
    (lambda p, e: np.polyfit(np.log(p), np.log(e), 1)[1], "intercept"),
    (lambda p, e: -np.polyfit(np.log(p), np.log(e), 1)[0], "wrong sign"),
    (lambda p, e: np.polyfit(p, np.log(e), 1)[0], "against P: fit it against log(P)"),
    (lambda p, e: np.polyfit(np.log(p), e, 1)[0], "the error itself against log(P)"),
    (lambda p, e: np.polyfit(p, e, 1)[0], "on linear axes"),
    (lambda p, e: np.polyfit(np.log(e), np.log(p), 1)[0], "log(P) against log(error)"),
    (lambda p, e: -0.5, "is not the least-squares slope"),
])
def test_slope_hints(runs, fit, hint):
    estimates, errors, _, _ = runs
    with pytest.raises(ExerciseFeedback) as caught:
        ex.check_error_slope(estimates, errors, fit(np.arange(1, len(errors) + 1), errors.numpy()), game, N_PLAYERS)
    assert hint in str(caught.value)


def test_estimates_that_do_not_converge_get_the_monte_carlo_hint(runs):
    _, _, _, phi = runs
    rotations = torch.stack([algorithm1(game, N_PLAYERS, ex.MIN_ORDERINGS, seed, mistake="rotations")
                             for seed in range(ex.MIN_RUNS)])
    errors = ((rotations - phi).norm(dim=-1) / phi.norm()).mean(0)
    slope = np.polyfit(np.log(np.arange(1, len(errors) + 1)), np.log(errors.numpy()), 1)[0]
    with pytest.raises(ExerciseFeedback, match="far from -1/2: Algorithm 1's error is a Monte Carlo error"):
        ex.check_error_slope(rotations, errors, slope, game, N_PLAYERS)


@pytest.mark.parametrize(("change", "hint"), [
    (lambda e: e[:4], "at least 32 runs"),
    (lambda e: e[:, :100], "at least 1024 orderings"),
    (lambda e: e[0], "shape (runs, P, n_players)"),
    (lambda e: e[:1].expand(32, -1, -1), "your runs are identical"),
    (lambda e: e * 2, "not running means of Algorithm 1"),
    (lambda e: ..., "your estimates (the stacked runs) are not computed yet"),
])
def test_estimates_hints(runs, change, hint):
    estimates, errors, slope, _ = runs
    with pytest.raises(ExerciseFeedback) as caught:
        ex.check_error_slope(change(estimates), errors, slope, game, N_PLAYERS)
    assert hint in str(caught.value)


# --- 03.1 -----------------------------------------------------------------------------------------------------------

def right_cosine(alpha, reference):
    return (alpha * reference).sum(1) / (alpha.norm(dim=1) * reference.norm(dim=1))


@pytest.fixture(scope="module")
def vectors():
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    alpha = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    alpha[0] = -2 * reference[0] + 0.1  # a negative cosine: its absolute value differs
    return {"a method": alpha}, reference


def test_the_right_cosine_passes(vectors):
    ex.check_cosine_function(right_cosine, *vectors)
    ex.check_cosine_function(lambda a, r: right_cosine(a, r).float().numpy(), *vectors)


def _norms(a, r):
    return a.norm(dim=1), r.norm(dim=1)


@pytest.mark.parametrize(("cosine", "hint"), [
    (lambda a, r: (a * r).sum(1), "you returned the dot product"),
    (lambda a, r: (a * r).sum(1) / _norms(a, r)[1] ** 2, "you divided by ||alpha_ref||^2"),
    (lambda a, r: (a * r).sum(1) / _norms(a, r)[1], "you divided by ||alpha_ref|| only"),
    (lambda a, r: (a * r).sum(1) / _norms(a, r)[0], "you divided by ||alpha|| only"),
    (lambda a, r: right_cosine(a, r).abs(), "you took the absolute value"),
    (lambda a, r: 1 - right_cosine(a, r), "1 - cosine"),
    (lambda a, r: (a * r).sum(1) / (_norms(a, r)[0] * _norms(a, r)[1]) ** 2, "divided by the squared norms"),
    (lambda a, r: (a.flatten() @ r.flatten()) / (a.norm() * r.norm()), "over the whole batch flattened"),
    (lambda a, r: (a * r).sum(0) / (a.norm(dim=0) * r.norm(dim=0)), "one value per channel"),
    (lambda a, r: right_cosine(a, r)[:2], "one cosine per image"),
    (lambda a, r: right_cosine(a, r) * 0.5, "cosine to the right answer"),
    (lambda a, r: ..., "returned `...`"),
    (lambda a, r: a.nonexistent(), "raised AttributeError"),
])
def test_cosine_hints(vectors, cosine, hint):
    with pytest.raises(ExerciseFeedback) as caught:
        ex.check_cosine_function(cosine, *vectors)
    assert hint in str(caught.value)


@pytest.fixture(scope="module")
def scenes():
    """Two scenes explained for their runner-up class (so that the predicted class is a different answer), and a
    SHAP-CAM reference for it."""
    model = lu.load_model("shapes_vgg")
    split = model.split()
    x = torch.stack([model.preprocess(r.image()) for r in load_dataset("scenes", n_images=2, model=model)])
    with torch.no_grad():
        target = split.head(split.body(x)).topk(2).indices[:, 1]
    reference = lu.coefficients("shapcam", split, x, target, n_permutations=100, seed=0, estimator="stratified")
    return split, x, target, reference.double()


METHODS = ["gradcam", "liftcam"]


def _method_cosines(split, x, target, reference, **options):
    return {m: cosine_similarity(lu.coefficients(m, split, x, target, **options).double(), reference) for m in METHODS}


def test_the_right_method_cosines_pass(scenes):
    split, x, target, reference = scenes
    ex.check_method_cosines(_method_cosines(*scenes), split, x, target, reference, METHODS)
    import pandas as pd
    table = pd.DataFrame({m: c.numpy() for m, c in _method_cosines(*scenes).items()})
    ex.check_method_cosines(table, split, x, target, reference, METHODS)


def _on_maps(split, x, target, reference):
    with torch.no_grad():
        maps = split.body(x)
    reference_map = lu.cam_map(reference.float(), maps, tuple(x.shape[-2:])).double().flatten(1)
    return {m: cosine_similarity(lu.saliency(m, split, x, target).double().flatten(1), reference_map)
            for m in METHODS}


@pytest.mark.parametrize(("answer", "hint"), [
    (_on_maps, "you compared the saliency maps, not the coefficients"),
    (lambda split, x, target, reference: _method_cosines(split, x, None, reference), "you explained the predicted "
                                                                                     "class"),
    (lambda *scenes: {m: c.mean() for m, c in _method_cosines(*scenes).items()}, "is one number"),
    (lambda *scenes: {"gradcam": _method_cosines(*scenes)["gradcam"]}, "has no entry for 'liftcam'"),
    (lambda *scenes: [0.5, 0.9], "should be a dict"),
    (lambda *scenes: ..., "not computed yet"),
    (lambda *scenes: {m: c * 0.9 for m, c in _method_cosines(*scenes).items()}, "differs from the cosine"),
])
def test_method_cosines_hints(scenes, answer, hint):
    split, x, target, reference = scenes
    with pytest.raises(ExerciseFeedback) as caught:
        ex.check_method_cosines(answer(*scenes), split, x, target, reference, METHODS)
    assert hint in str(caught.value)


# --- 03.2 -----------------------------------------------------------------------------------------------------------

GRID = (1, 4, 16, 64)
THRESHOLD = 0.999


@pytest.fixture(scope="module")
def long_reference(scenes):
    split, x, target, _ = scenes
    return lu.coefficients("shapcam", split, x[:1], target[:1], n_permutations=1000, seed=100,
                           estimator="stratified").double()


def _cosine_by_p(scenes, long_reference, **options):
    split, x, target, _ = scenes
    options = {"seed": 0, "estimator": "stratified", **options}
    return {p: float(cosine_similarity(lu.coefficients("shapcam", split, x[:1], target[:1], n_permutations=p,
                                                       **options).double(), long_reference)) for p in GRID}


def _check(scenes, long_reference, cosine_by_p, smallest_p, threshold=THRESHOLD):
    split, x, target, _ = scenes
    ex.check_reference_cosines(cosine_by_p, smallest_p, split, x, target, long_reference, 0, 100,
                               threshold=threshold)


def test_the_right_reference_cosines_pass(scenes, long_reference):
    cosines = _cosine_by_p(scenes, long_reference)
    reached = [p for p in GRID if cosines[p] >= THRESHOLD]
    assert reached and reached[0] > GRID[0], cosines  # the test needs a grid that reaches the threshold late
    _check(scenes, long_reference, cosines, reached[0])


@pytest.mark.parametrize(("options", "hint"), [
    ({"estimator": "plain"}, "you used Algorithm 1's plain orderings"),
    ({"seed": 100}, "uses the reference's seed"),
    ({"n_permutations": 2}, "your cosine at P = 1 is"),
])
def test_reference_cosines_hints(scenes, long_reference, options, hint):
    if "n_permutations" in options:  # one more wrong answer: every cosine that of another P
        cosines = dict(zip(GRID, _cosine_by_p(scenes, long_reference).values(), strict=True))
        cosines = {p: cosines[GRID[min(i + 1, len(GRID) - 1)]] for i, p in enumerate(GRID)}
    else:
        cosines = _cosine_by_p(scenes, long_reference, **options)
    with pytest.raises(ExerciseFeedback) as caught:
        _check(scenes, long_reference, cosines, 16)
    assert hint in str(caught.value)


def test_smallest_p_hints(scenes, long_reference):
    cosines = _cosine_by_p(scenes, long_reference)
    reached = [p for p in GRID if cosines[p] >= THRESHOLD]
    below = [p for p in GRID if p not in reached]
    for smallest_p, hint in [(below[-1], "the largest P whose cosine is still below"),
                             (GRID[-1], "the largest P of the grid"), (..., "not chosen yet"),
                             (None, "the first P of your grid")]:
        with pytest.raises(ExerciseFeedback) as caught:
            _check(scenes, long_reference, cosines, smallest_p)
        assert hint in str(caught.value)
    unreachable = 1 - 1e-9
    with pytest.raises(ExerciseFeedback, match="should be None"):
        _check(scenes, long_reference, cosines, GRID[-1], threshold=unreachable)
    _check(scenes, long_reference, cosines, None, threshold=unreachable)
    with pytest.raises(ExerciseFeedback, match="not computed yet"):
        _check(scenes, long_reference, ..., 4)


# --- the notebooks --------------------------------------------------------------------------------------------------

def _questions(notebook):
    """{name: (manual, [points of each test])} of a notebook's otter questions, in order."""
    cells = nbformat.read(NOTEBOOKS / notebook, as_version=4).cells
    questions, current = {}, None
    for cell in cells:
        source = cell.source.strip()
        if cell.cell_type == "raw" and source.startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(source.removeprefix("# BEGIN QUESTION"))
            current = config["name"]
            questions[current] = (bool(config.get("manual", False)), [config["points"]] if "points" in config else [])
        elif cell.cell_type == "code" and current and source.startswith('""" # BEGIN TEST CONFIG'):
            config = yaml.safe_load(source.split('"""')[1].removeprefix(" # BEGIN TEST CONFIG"))
            questions[current][1].append((config["points"], bool(config.get("hidden", False))))
        elif cell.cell_type == "raw" and source == "# END QUESTION":
            current = None
    return questions


def test_the_notebooks_hold_the_exercises_and_points_of_the_course():
    assert _questions("02_shapcam_convergence.ipynb") == {
        "q02_algorithm1": (False, [(2, False), (1, True)]),
        "q02_error_slope": (False, [(2, False)]),
        "q02_reference_floor": (True, [1]),
    }
    assert _questions("03_cosine_similarity.ipynb") == {
        "q03_cosine": (False, [(1, False), (1, False), (1, True)]),
        "q03_reference_quality": (False, [(2, False)]),
        "q03_reference_error": (True, [1]),
    }


def _names(source):
    """(names a cell defines, names its top-level code reads) of a code cell; magics and shell lines aside."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    defined = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    top_level = [node for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    read = {node.id for statement in top_level for node in ast.walk(statement)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return defined, read


@pytest.mark.parametrize("notebook", ["02_shapcam_convergence.ipynb", "03_cosine_similarity.ipynb"])
def test_grading_runs_the_exercises_without_the_skipped_cells(notebook):
    """Grading skips the cells tagged otter_ignore: every cell it runs reads only names that an earlier cell it runs
    (or the cell itself) defines, and no exercise cell is skipped."""
    cells = [c for c in nbformat.read(NOTEBOOKS / notebook, as_version=4).cells if c.cell_type == "code"]
    graded = [c for c in cells if "otter_ignore" not in c.metadata.get("tags", [])]
    assert all(c in graded for c in cells if "exercises_shapley" in c.source or "SOLUTION" in c.source)
    known = set(dir(builtins))
    for cell in graded:
        defined, read = _names(cell.source)
        assert read <= known | defined, (read - known - defined, cell.source[:80])
        known |= defined
