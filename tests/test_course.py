"""The course edition of notebooks 00-07 (docs/course.md): otter assign makes a student edition without the
solutions and hidden tests, the grader gives the solved edition full marks, the blank student edition zero with a
hint per exercise, and a planted mistake loses exactly its exercise's points with that mistake's hint; each check
of liftcam_utils.app.exercises names the typical mistakes it is built to recognise."""

import ast
import itertools
import json
import math
import shutil
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

import liftcam_utils as lu
from liftcam_utils.app import course, exercises
from liftcam_utils.datasets import load_dataset

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PLANTED = ("gradient.mean(dim=(2, 3))", "gradient.sum(dim=(2, 3))")  # Grad-CAM's alpha summed over the pixels


@pytest.fixture(scope="module")
def editions(tmp_path_factory):
    return course.assign(NOTEBOOKS, tmp_path_factory.mktemp("assign"))


def _solved(edition):
    """The solved edition as a submission: otter's autograder notebook, the solutions with the check cells."""
    return edition.student.parent.parent / "autograder" / edition.student.name


@pytest.fixture(scope="module")
def graded(editions, tmp_path_factory):
    """Grades of three students: `solved` hands in the solutions of every notebook, `blank` every student edition
    untouched, `planted` only notebook 00's solutions with Grad-CAM's alpha summed instead of averaged."""
    submissions = tmp_path_factory.mktemp("submissions")
    for edition in editions.values():
        for student, source in (("solved", _solved(edition)), ("blank", edition.student)):
            (submissions / student).mkdir(exist_ok=True)
            shutil.copyfile(source, submissions / student / source.name)
    planted = _solved(editions["00_quickstart"]).read_text()
    assert planted.count(PLANTED[0]) == 1
    (submissions / "planted").mkdir()
    (submissions / "planted" / "00_quickstart.ipynb").write_text(planted.replace(*PLANTED))
    return course.grade(course.find_submissions(submissions), editions)


def _rows(feedback, student):
    rows = feedback[feedback["student"] == student]
    return {row.exercise: row for row in rows.itertuples()}


def test_each_notebook_has_two_to_four_exercises_with_points(editions):
    for edition in editions.values():
        assert 2 <= len(edition.exercises) <= 4
        auto = [points for points in edition.exercises.values() if points != course.MANUAL]
        assert auto and all(points > 0 for points in auto)
    assert editions["00_quickstart"].exercises == {"q00_gradcam": 3, "q00_cam_map": 2}
    assert editions["01_framework"].exercises["q01_why_not_locally_accurate"] == course.MANUAL


def test_the_student_edition_has_no_solutions_hidden_tests_or_outputs(editions):
    for edition in editions.values():
        student = nbformat.read(edition.student, as_version=4)
        text = edition.student.read_text()
        assert "BEGIN SOLUTION" not in text and "# SOLUTION" not in text
        assert "torch.autograd.grad(target_logits" not in text and "math.factorial(size)" not in text
        assert all(not cell.get("outputs") for cell in student.cells)
        tests = student.metadata["otter"]["tests"]
        assert set(tests) == {e for e, points in edition.exercises.items() if points != course.MANUAL}
        assert all("hidden=False" in source and "hidden=True" not in source for source in tests.values())
        checks = [cell.source for cell in student.cells if cell.source.startswith("grader.check(")]
        assert sorted(checks) == sorted(f'grader.check("{name}")' for name in tests)
        solved = json.loads(_solved(edition).read_text())["metadata"]["otter"]["tests"]
        assert set(solved) == set(tests) and any("hidden=True" in source for source in solved.values()), edition.name


def test_the_solved_edition_scores_full_marks(graded, editions):
    for exercise, row in _rows(graded, "solved").items():
        if row.possible == row.possible:  # not NaN: autograded
            assert row.points == row.possible and not row.hint, (exercise, row.hint)
    assert set(_rows(graded, "solved")) == {e for edition in editions.values() for e in edition.exercises}


def test_the_blank_student_edition_scores_zero_with_a_hint_for_every_test(graded):
    rows = _rows(graded, "blank")
    for exercise, row in rows.items():
        if row.possible != row.possible:  # manual
            assert row.hint == "graded by the teacher"
            continue
        assert row.points == 0, exercise
        hints = row.hint.splitlines()
        assert hints and all(hint.strip() and "Traceback" not in hint and "Error:" not in hint for hint in hints), (
            exercise, row.hint)  # a hint per failed test, never a crash of the check
        if exercise.startswith(("q00", "q01")):
            assert all("replace the `...`" in hint for hint in hints), row.hint


def test_a_planted_mistake_loses_exactly_its_exercise_and_gets_its_hint(graded):
    rows = _rows(graded, "planted")
    assert rows["q00_gradcam"].points == 0
    assert "49 times too large: average the gradient over the 7 x 7 pixels" in rows["q00_gradcam"].hint
    assert rows["q00_cam_map"].points == rows["q00_cam_map"].possible and not rows["q00_cam_map"].hint
    assert rows["q01_shapley"].hint == "not handed in" and rows["q01_shapley"].points == 0
    assert rows["q07_spearman"].hint == "not handed in" and rows["q07_spearman"].points == 0


def test_the_score_table_and_its_files(graded, editions, tmp_path):
    table = course.score_table(graded, editions)
    assert list(table.index) == ["blank", "planted", "solved"]
    assert list(table.columns[:5]) == ["q00_gradcam (3)", "q00_cam_map (2)", "q01_shapley (3)",
                                       "q01_local_accuracy (3)", "q01_why_not_locally_accurate (manual)"]
    assert list(table.columns[-2:]) == ["total", "possible"] and len(table.columns) == 2 + sum(
        len(edition.exercises) for edition in editions.values())
    possible = sum(p for edition in editions.values() for p in edition.exercises.values() if p != course.MANUAL)
    assert table.loc["solved", "total"] == table.loc["solved", "possible"] == possible
    assert table.loc["planted", "total"] == 2 and table.loc["blank", "total"] == 0
    scores, hints = course.write_grades(graded, table, tmp_path / "grades.csv")
    assert scores.read_text().splitlines()[0].startswith("student,q00_gradcam (3)")
    assert hints.name == "grades_feedback.csv" and "49 times too large" in hints.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades.csv", "grades_feedback.csv"]  # no temporary left


def test_the_student_command_writes_the_student_edition(tmp_path, capsys):
    assert course.main(["student", "--notebooks", str(NOTEBOOKS), "--out", str(tmp_path / "student")]) == 0
    written = sorted(p.name for p in (tmp_path / "student").iterdir())
    assert written == [f"{name}.ipynb" for name in course.COURSE_NOTEBOOKS]
    assert "student edition: " in capsys.readouterr().out
    notebook = nbformat.read(tmp_path / "student" / "00_quickstart.ipynb", as_version=4)
    assert notebook.metadata["otter"]["assignment_name"] == "00_quickstart"
    assert notebook.cells[0].source.endswith('grader = otter.Notebook("00_quickstart.ipynb")')


def test_the_student_edition_runs_at_the_course_sizes(editions):
    """Notebooks 02-07 get their STUDENT_PARAMETERS in papermill's injected cell right after the parameters cell;
    00 and 01 run at their defaults."""
    for name, edition in editions.items():
        cells = nbformat.read(edition.student, as_version=4).cells
        injected = [i for i, cell in enumerate(cells) if "injected-parameters" in cell.metadata.get("tags", [])]
        sizes = course.STUDENT_PARAMETERS.get(name, {})
        if not sizes:
            assert not injected, name
            continue
        (at,) = injected
        assert "parameters" in cells[at - 1].metadata.get("tags", []), name
        assert cells[at].source.startswith("# Course sizes: the whole notebook runs in under 5 minutes"), name
        assigned = dict(line.split(" = ", 1) for line in cells[at].source.splitlines()[1:] if " = " in line)
        assert {key: ast.literal_eval(value) for key, value in assigned.items()} == sizes, name


# --- bad input: refused, naming the problem, before anything is graded ------------------------------------------

def _notebook(path, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook()
    notebook.metadata.update(metadata or {})
    nbformat.write(notebook, path)


@pytest.mark.parametrize(("layout", "message"), [
    ({}, "no submitted notebooks"),
    ({"loose.ipynb": {}}, "belong to no student"),
    ({"ann/00_quickstart.ipynb": None}, "is not a Jupyter notebook"),
    ({"ann/00_quickstart.ipynb": {}}, "has no otter assignment name"),
    ({"ann/08.ipynb": {"otter": {"assignment_name": "08_beyond_cnns"}}}, "not one of the course notebooks"),
    ({"ann/a.ipynb": {"otter": {"assignment_name": "00_quickstart"}},
      "ann/b.ipynb": {"otter": {"assignment_name": "00_quickstart"}}}, "are both ann's 00_quickstart"),
])
def test_bad_submissions_are_refused_with_the_reason(tmp_path, layout, message):
    for name, metadata in layout.items():
        if metadata is None:
            (tmp_path / name).parent.mkdir(parents=True)
            (tmp_path / name).write_text("not json")
        else:
            _notebook(tmp_path / name, metadata)
    with pytest.raises(course.CourseError, match=message):
        course.find_submissions(tmp_path)


def test_the_command_line_refuses_a_missing_folder_and_a_missing_notebook(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_code:
        course.main(["grade", str(tmp_path / "nowhere")])
    assert exit_code.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(course.CourseError, match="00_quickstart.ipynb is missing"):
        course.assign(tmp_path, tmp_path / "work")


# --- the checks' hints, one per typical mistake ------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos():
    model = lu.load_model("efficientnet_lite0", device="cpu")
    x = torch.stack([model.preprocess(r.image()) for r in load_dataset("photos", n_images=2, seed=0, model=model)])
    return model, x


def _gradcam(target_output, reduce):
    def gradcam_alpha(split, x, target):
        with torch.no_grad():
            maps = split.body(x)
        maps.requires_grad_(True)
        (gradient,) = torch.autograd.grad(target_output(split.head(maps), target).sum(), maps)
        return reduce(gradient, maps)
    return gradcam_alpha


def _logit(out, target):
    return out[torch.arange(len(out)), target]


def _mean(gradient, maps):
    return gradient.mean(dim=(2, 3))


@pytest.mark.parametrize(("answer", "hint"), [
    (_gradcam(_logit, _mean), None),
    (_gradcam(_logit, lambda g, m: g.sum(dim=(2, 3))), "is 49 times too large: average the gradient over the 7 x 7"),
    (_gradcam(lambda o, t: -_logit(o, t), _mean), "the wrong sign"),
    (_gradcam(lambda o, t: _logit(o.softmax(1), t), _mean), "you differentiated the softmax probability"),
    (_gradcam(lambda o, t: o, _mean), "the sum of all logits"),
    (_gradcam(lambda o, t: _logit(o, o.argmax(1)), _mean), "you explained each image's predicted class"),
    (_gradcam(_logit, lambda g, m: g), "averaged over the 7 x 7 pixels"),
    (_gradcam(_logit, lambda g, m: (g * m).mean(dim=(2, 3))), "weighted the gradient by the activations"),
    (lambda split, x, target: 1 / 0, "raised ZeroDivisionError"),
    (..., "not written yet"),
])
def test_gradcam_hints(photos, answer, hint):
    model, x = photos
    split = model.split()
    with torch.no_grad():
        runner_up = split.head(split.body(x)).topk(2, dim=1).indices[:, 1]  # not the prediction: catches argmax
    if hint is None:
        exercises.check_gradcam_alpha(answer, split, x, runner_up)
    else:
        with pytest.raises(exercises.ExerciseFeedback, match=hint.replace("(", r"\(")):
            exercises.check_gradcam_alpha(answer, split, x, runner_up)


def _cam(relu="before", normalise="each", mode="bilinear", corners=False, guard=True):
    def cam_from_alpha(alpha, maps, size):
        weighted = torch.einsum("bn,bnhw->bhw", alpha, maps)[:, None]
        weighted = weighted.clamp_min(0) if relu == "before" else weighted
        options = {} if mode == "nearest" else {"align_corners": corners}
        up = torch.nn.functional.interpolate(weighted, size=size, mode=mode, **options)
        up = up.clamp_min(0) if relu == "after" else up
        low, high = (up.amin(), up.amax()) if normalise == "batch" else (up.amin((2, 3), True), up.amax((2, 3), True))
        if normalise is None:
            return up[:, 0]
        scaled = torch.where(high > low, (up - low) / (high - low), 0.0) if guard else (up - low) / (high - low)
        return scaled[:, 0]
    return cam_from_alpha


@pytest.mark.parametrize(("answer", "empty_map", "hint"), [
    (_cam(), False, None),
    (_cam(), True, None),
    (_cam(relu=None), False, "keep the negative part"),
    (_cam(relu="after"), False, "applied the ReLU after upsampling"),
    (_cam(normalise=None), False, "are not normalised"),
    (_cam(normalise="batch"), False, "of the whole batch"),
    (_cam(mode="nearest"), False, "nearest-neighbour"),
    (_cam(corners=True), False, "align_corners=True"),
    (_cam(guard=False), True, "came out as NaN"),
])
def test_cam_map_hints(photos, answer, empty_map, hint):
    model, x = photos
    split = model.split("_blocks.15._swish@0")
    alpha = lu.coefficients("gradcam", split, x)
    if empty_map:
        alpha[0] = -alpha[0].abs()  # non-negative maps weighted by negative alpha: zero after the ReLU
    with torch.no_grad():
        maps = split.body(x)
    if hint is None:
        exercises.check_cam_map(answer, alpha, maps, (224, 224))
    else:
        with pytest.raises(exercises.ExerciseFeedback, match=hint):
            exercises.check_cam_map(answer, alpha, maps, (224, 224))


def _shapley(weight, sign=1):
    def shapley_values(value, n):
        phi = torch.zeros(n, dtype=torch.float64)
        for k in range(n):
            for others in itertools.product((0, 1), repeat=n - 1):
                gain = value(others[:k] + (1,) + others[k:]) - value(others[:k] + (0,) + others[k:])
                phi[k] += sign * weight(sum(others), n) * gain
        return phi
    return shapley_values


def _shapley_weight(size, n):
    return math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)


@pytest.mark.parametrize(("answer", "hint"), [
    (_shapley(_shapley_weight), None),
    (_shapley(lambda size, n: 1 / 2 ** (n - 1)), "the Banzhaf value"),
    (_shapley(lambda size, n: 1.0), "without weights"),
    (_shapley(lambda size, n: math.factorial(size) * math.factorial(n - size) / math.factorial(n)),
     r"your weights are \|S\|! \(N - \|S\|\)! / N!"),
    (_shapley(_shapley_weight, sign=-1), "the wrong sign"),
    (_shapley(lambda size, n: float(size == n - 1)), "Ablation-CAM's marginal"),
    (_shapley(lambda size, n: float(size == 0)), "only the empty coalition"),
    (_shapley(lambda size, n: _shapley_weight(size, n) * (1.5 if size == 2 else 1)), "local accuracy fails"),
    (lambda value, n: torch.zeros(n - 1), "return one value per player"),
])
def test_shapley_hints(answer, hint):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.ReLU(),
                        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    split = lu.split_model(net, "1")
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    expected = lu.coefficients("exact_shap", split, x, 1)[0]
    game = exercises.channel_game(split, x, 1)
    if hint is None:
        exercises.check_shapley_values(answer, game, 4, expected)
    else:
        with pytest.raises(exercises.ExerciseFeedback, match=hint):
            exercises.check_shapley_values(answer, game, 4, expected)


def _gaps(mistake):
    def local_accuracy_gaps(split, x, method):
        with torch.no_grad():
            maps = split.body(x)
            out, zero = split.head(maps), split.head(torch.zeros_like(maps))
        c = out.argmax(1)
        total, full, empty = lu.coefficients(method, split, x, c).sum(1), _logit(out, c), _logit(zero, c)
        return {None: total - (full - empty), "no F(0)": total - full, "sign": (full - empty) - total,
                "max": (total - (full - empty)).abs().max(), "alone": total}[mistake]
    return local_accuracy_gaps


@pytest.mark.parametrize(("answer", "hint"), [
    (_gaps(None), None),
    (_gaps("no F(0)"), "subtract F\\^c\\(A\\) - F\\^c\\(0\\), the head's output at A = 0 is not zero"),
    (_gaps("sign"), "the wrong sign"),
    (_gaps("max"), "you returned one number"),
    (_gaps("alone"), "sum_k alpha_k alone"),
])
def test_local_accuracy_gap_hints(photos, answer, hint):
    model, x = photos
    if hint is None:
        exercises.check_local_accuracy_gaps(answer, model.split(), x, "gradcam")
    else:
        with pytest.raises(exercises.ExerciseFeedback, match=hint):
            exercises.check_local_accuracy_gaps(answer, model.split(), x, "gradcam")


@pytest.mark.parametrize(("cut", "method", "hint"), [
    ("_blocks.15._swish@1", "gradcam", None),
    ("_blocks.15._swish@1", "liftcam", "'liftcam' is locally accurate"),
    ("_swish@1", "gradcam", "the notebook already checked"),
    ("_blocks.14._swish@1", "gradcam", "a skip connection around the cut"),
    ("nowhere", "gradcam", "is not a layer of this model"),
    ("_blocks.15._swish@1", "hirescam", "has no coefficients alpha"),
    (..., ..., "not chosen yet"),
])
def test_cut_and_method_hints(photos, cut, method, hint):
    model, x = photos
    checked = ["_swish@1", "_blocks.15._swish@0", "_blocks.15"]
    if hint is None:
        exercises.check_cut_and_method(cut, method, model, x, checked)
    else:
        with pytest.raises(exercises.ExerciseFeedback, match=hint):
            exercises.check_cut_and_method(cut, method, model, x, checked)
