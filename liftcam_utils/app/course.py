"""The course edition of the workbook: the student edition of notebooks 00-07, and the grading of submissions.

    python -m liftcam_utils.app.course student [--notebooks DIR] [--out DIR]
    python -m liftcam_utils.app.course grade SUBMISSIONS [--notebooks DIR] [--out CSV]

The committed notebooks are the solved edition and the one source of both editions. Their exercises are
otter-grader questions: raw cells ``# BEGIN QUESTION`` / ``# END QUESTION`` around the prompt, a ``# BEGIN SOLUTION``
block and a ``# BEGIN TESTS`` block whose test cells call :mod:`liftcam_utils.app.exercises` (public tests, and
hidden ones with ``hidden: true``). Run as plain notebooks (papermill, nbval) the test cells simply check the
solutions. :func:`assign` runs otter assign on each course notebook (with :data:`ASSIGNMENT_CONFIG`), which
writes the student edition (solutions replaced by ``...``, hidden tests removed, every output cleared, a
``grader = otter.Notebook(...)`` cell first and a ``grader.check(...)`` cell after each exercise, which runs its
public tests in the student's kernel) and an autograder (every test).

``student`` writes the student edition to ``--out`` (default ``build/student/``). ``grade`` grades every
``SUBMISSIONS/<student>/<notebook>.ipynb`` with otter on this machine (no Docker): the notebook is executed from the
top (cells tagged ``otter_ignore``, which no exercise needs, are skipped), then every test runs. The scores per
student and exercise are printed and written to ``--out`` (default ``build/grades.csv``); each failed exercise's
hints go to ``<out stem>_feedback.csv``. Exercises graded by hand (``manual: true``) are listed with no score.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from ..files import write_atomically
from .workbook import QUICK_PARAMETERS, injectable

COURSE_NOTEBOOKS = ("00_quickstart", "01_framework", "02_shapcam_convergence", "03_cosine_similarity",
                    "04_faithfulness", "05_localization", "06_vqa", "07_sanity_checks")

# otter assign's settings for every course notebook: tests stored in the notebook's metadata (the student edition
# is one self-contained file), written as Python functions that raise (not doctests), and nothing else generated
# (no PDF, no export cell, no run of the tests: the workbook's own tests run the solved notebooks)
ASSIGNMENT_CONFIG = {
    "init_cell": True,
    "check_all_cell": False,
    "export_cell": False,
    "run_tests": False,
    "solutions_pdf": False,
    "tests": {"files": False, "ok_format": False},
}

MANUAL = "manual"

# The sizes a course notebook runs at in the student edition (injected after its parameters cell, as papermill
# does, so that a student sees them and can change them): those of the test suite's quick copies, which run each
# notebook in under 5 minutes on a 2-core CPU (docs/course.md gives the measured times). Notebooks 00 and 01 run at
# their defaults.
STUDENT_PARAMETERS = QUICK_PARAMETERS


class CourseError(ValueError):
    """Input the course tools refuse: a missing folder or notebook, a file that is no course notebook, ..."""


@dataclass(frozen=True)
class Edition:
    """What otter assign made of one course notebook."""

    name: str  # the notebook's stem, e.g. "00_quickstart"
    student: Path  # the student edition
    autograder: Path  # the autograder zip: every test, public and hidden
    exercises: dict[str, float | str]  # exercise name -> points, or MANUAL for one graded by hand


@dataclass(frozen=True)
class Submission:
    student: str
    notebook: str  # one of COURSE_NOTEBOOKS
    path: Path


def _questions(notebook, source: Path) -> dict[str, float | str]:
    """Each exercise of a master notebook (its ``# BEGIN QUESTION`` cells) -> its points, or MANUAL."""
    exercises = {}
    for cell in notebook.cells:
        if cell.cell_type == "raw" and re.match(r"#\s*BEGIN QUESTION", cell.source, flags=re.IGNORECASE):
            config = yaml.safe_load(cell.source.partition("\n")[2]) or {}
            if not isinstance(config, dict) or "name" not in config:
                raise CourseError(f"{source}: a '# BEGIN QUESTION' cell names no exercise ('name: ...'): "
                                  f"{cell.source!r}")
            exercises[config["name"]] = MANUAL if config.get("manual") else config.get("points")
    return exercises


def _test_points(autograder_notebook) -> dict[str, float]:
    """Points of each autograded exercise: the sum over its test cases (public and hidden)."""
    from otter.test_files import ExceptionTestFile

    tests = autograder_notebook.metadata["otter"]["tests"]
    return {name: sum(case.points for case in ExceptionTestFile.from_string(source, name).test_cases)
            for name, source in tests.items()}


def _with_student_parameters(notebook, name: str):
    """``notebook`` with its :data:`STUDENT_PARAMETERS` in a cell after its parameters cell (papermill's
    ``injected-parameters`` cell, headed by a comment saying why), or itself where it has none."""
    from papermill.parameterize import parameterize_notebook

    parameters = {key: injectable(key, value) for key, value in STUDENT_PARAMETERS.get(name, {}).items()}
    if not parameters:
        return notebook
    notebook = copy.deepcopy(notebook)
    notebook.metadata["papermill"] = {}  # where papermill records what it injected (removed below)
    student = parameterize_notebook(notebook, parameters, comment="Course sizes: the whole notebook runs in under "
                                                                  "5 minutes (change them to run it larger)")
    student.metadata.pop("papermill", None)
    for cell in student.cells:
        cell.metadata.pop("papermill", None)
    return student


def assign(notebook_dir: Path, work_dir: Path) -> dict[str, Edition]:
    """Run otter assign on each course notebook of ``notebook_dir`` into ``work_dir/<name>/``.

    Raises :class:`CourseError` when a course notebook is missing or has no exercise."""
    import nbformat
    from otter.assign import main as otter_assign

    editions = {}
    for name in COURSE_NOTEBOOKS:
        source = notebook_dir / f"{name}.ipynb"
        if not source.is_file():
            raise CourseError(f"{source} is missing: the course editions are made from {', '.join(COURSE_NOTEBOOKS)} "
                              f"in {notebook_dir}/")
        notebook = nbformat.read(source, as_version=4)
        exercises = _questions(notebook, source)
        if not exercises:
            raise CourseError(f"{source} has no exercise (no '# BEGIN QUESTION' raw cell)")
        notebook = _with_student_parameters(notebook, name)
        config = {"name": name, **ASSIGNMENT_CONFIG}
        notebook.cells.insert(0, nbformat.v4.new_raw_cell("# ASSIGNMENT CONFIG\n" + yaml.safe_dump(config)))
        master = work_dir / name / "master" / source.name
        master.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, master)
        dist = work_dir / name / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()):
            otter_assign(str(master), str(dist), no_pdfs=True, no_run_tests=True)
        (autograder,) = (dist / "autograder").glob(f"{name}-autograder_*.zip")
        points = _test_points(nbformat.read(dist / "autograder" / source.name, as_version=4))
        exercises = {exercise: MANUAL if value == MANUAL else points[exercise] for exercise, value in exercises.items()}
        editions[name] = Edition(name, dist / "student" / source.name, autograder, exercises)
    return editions


def write_student_edition(notebook_dir: Path, out_dir: Path) -> list[Path]:
    """The student edition of each course notebook, written to ``out_dir`` (each file atomically)."""
    with tempfile.TemporaryDirectory(prefix="liftcam-course-") as work:
        editions = assign(notebook_dir, Path(work))
        return [write_atomically(out_dir / edition.student.name,
                                 lambda temporary, edition=edition: shutil.copyfile(edition.student, temporary))
                for edition in editions.values()]


def _course_notebook_of(path: Path) -> str:
    """Which course notebook ``path`` is, from the name otter assign wrote into its metadata; ``CourseError``
    saying why it is none."""
    try:
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise CourseError(f"{path} is not a Jupyter notebook ({error})") from None
    name = metadata.get("otter", {}).get("assignment_name") if isinstance(metadata, dict) else None
    if name is None:
        raise CourseError(f"{path} is not a notebook of the course's student edition (it has no otter assignment "
                          "name): hand in the notebook from `make student`, with your answers")
    if name not in COURSE_NOTEBOOKS:
        raise CourseError(f"{path} is the course edition of {name!r}, which is not one of the course notebooks "
                          f"({', '.join(COURSE_NOTEBOOKS)})")
    return name


def find_submissions(folder: Path) -> list[Submission]:
    """Every ``folder/<student>/<notebook>.ipynb``. Raises :class:`CourseError`, listing every problem, before
    anything is graded: a missing folder, no notebook, a notebook outside a student's folder, a file that is not
    a course notebook, or two submissions of the same notebook by one student."""
    if not folder.is_dir():
        raise CourseError(f"the submissions folder {folder} does not exist (or is not a folder)")
    loose = sorted(folder.glob("*.ipynb"))
    if loose:
        raise CourseError(f"{', '.join(p.name for p in loose)} in {folder}/ belong to no student: put each student's "
                          f"notebooks in a folder named after the student, {folder}/<student>/<notebook>.ipynb")
    paths = sorted(p for p in folder.glob("*/*.ipynb") if not p.parent.name.startswith("."))
    if not paths:
        raise CourseError(f"no submitted notebooks in {folder}/: expected {folder}/<student>/<notebook>.ipynb")
    problems, submissions = [], {}
    for path in paths:
        try:
            notebook = _course_notebook_of(path)
        except CourseError as error:
            problems.append(str(error))
            continue
        key = (path.parent.name, notebook)
        if key in submissions:
            problems.append(f"{path} and {submissions[key].path} are both {path.parent.name}'s {notebook}: keep one")
            continue
        submissions[key] = Submission(path.parent.name, notebook, path)
    if problems:
        raise CourseError("cannot grade these submissions:\n  " + "\n  ".join(problems))
    return list(submissions.values())


def _hints(test_file) -> str:
    """The messages of the failed test cases of one exercise (the exception's text), each once, one per line."""
    hints = []
    for result in test_file.test_case_results:
        if not result.passed:
            hint = re.sub(r"^\w+: ", "", result.message.strip().splitlines()[-1])
            if hint not in hints:
                hints.append(hint)
    return "\n".join(hints)


def grade_one(submission: Submission, edition: Edition) -> list[dict]:
    """One row per exercise of ``submission``'s notebook: points, possible points and the hints of failed tests."""
    from otter.api import grade_submission

    try:
        results, failure = grade_submission(str(submission.path), str(edition.autograder), quiet=True), None
    except Exception as error:  # a submission otter cannot run at all scores 0, with the reason, and grading goes on
        results, failure = None, f"{type(error).__name__}: {error}"
    rows = []
    for exercise, possible in edition.exercises.items():
        row = {"student": submission.student, "notebook": submission.notebook, "exercise": exercise}
        if possible == MANUAL:
            rows.append({**row, "points": None, "possible": None, "hint": "graded by the teacher"})
        elif failure is not None:
            rows.append({**row, "points": 0.0, "possible": possible, "hint": f"not graded: {failure}"})
        elif exercise in results.results:
            tests = results.results[exercise]
            rows.append({**row, "points": results.get_score(exercise), "possible": possible, "hint": _hints(tests)})
        else:
            reason = results.catastrophic_error or "the exercise's tests did not run"
            rows.append({**row, "points": 0.0, "possible": possible, "hint": f"not graded: {reason}"})
    return rows


def grade(submissions: list[Submission], editions: dict[str, Edition]) -> pd.DataFrame:
    """Grade every submission; one row per student, notebook and exercise, a notebook not handed in scoring 0."""
    rows = []
    for student in sorted({s.student for s in submissions}):
        handed_in = {s.notebook: s for s in submissions if s.student == student}
        for name, edition in editions.items():
            if name in handed_in:
                print(f"grading {student}'s {name}", flush=True)
                rows.extend(grade_one(handed_in[name], edition))
            else:
                rows.extend({"student": student, "notebook": name, "exercise": exercise,
                             "points": None if possible == MANUAL else 0.0,
                             "possible": None if possible == MANUAL else possible, "hint": "not handed in"}
                            for exercise, possible in edition.exercises.items())
    return pd.DataFrame(rows, columns=["student", "notebook", "exercise", "points", "possible", "hint"])


def score_table(feedback: pd.DataFrame, editions: dict[str, Edition]) -> pd.DataFrame:
    """Students x exercises: each exercise's points (blank for one graded by hand), then the autograded total and
    the points possible. Columns are named ``<exercise> (<points>)`` or ``<exercise> (manual)``."""
    columns = {exercise: f"{exercise} ({'manual' if possible == MANUAL else f'{possible:g}'})"
               for edition in editions.values() for exercise, possible in edition.exercises.items()}
    table = feedback.pivot(index="student", columns="exercise", values="points")[list(columns)].rename(columns=columns)
    table.columns.name = None
    table["total"] = feedback.groupby("student")["points"].sum()
    table["possible"] = sum(p for e in editions.values() for p in e.exercises.values() if p != MANUAL)
    return table


def write_grades(feedback: pd.DataFrame, table: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    """``out`` (the score table) and ``<out stem>_feedback.csv`` (every exercise's hints), each written atomically."""
    hints = out.with_name(f"{out.stem}_feedback.csv")
    write_atomically(out, lambda temporary: table.to_csv(temporary))
    write_atomically(hints, lambda temporary: feedback.to_csv(temporary, index=False))
    return out, hints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student", help="write the student edition of the course notebooks")
    student.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="the solved notebooks")
    student.add_argument("--out", type=Path, default=Path("build/student"))
    grader = commands.add_parser("grade", help="grade a folder of submissions, SUBMISSIONS/<student>/<notebook>.ipynb")
    grader.add_argument("submissions", type=Path)
    grader.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="the solved notebooks")
    grader.add_argument("--out", type=Path, default=Path("build/grades.csv"))
    args = parser.parse_args(argv)
    try:
        if args.command == "student":
            for path in write_student_edition(args.notebooks, args.out):
                print(f"student edition: {path}")
            return 0
        submissions = find_submissions(args.submissions)
        with tempfile.TemporaryDirectory(prefix="liftcam-course-") as work:
            editions = assign(args.notebooks, Path(work))
            feedback = grade(submissions, editions)
        table = score_table(feedback, editions)
    except CourseError as error:
        parser.error(str(error))
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(na_rep="-"))
    for row in feedback[feedback["hint"].astype(bool) & feedback["possible"].notna()].itertuples():
        if row.points < row.possible:
            print(f"\n{row.student}, {row.exercise} ({row.points:g}/{row.possible:g}):\n  "
                  + row.hint.replace("\n", "\n  "))
    scores, hints = write_grades(feedback, table, args.out)
    print(f"\nscores: {scores}\nhints: {hints}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
