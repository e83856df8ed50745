"""End to end, in headless Chromium: a student works exercise 00.1 of the student edition in JupyterLab.

The student edition is built as ``make student`` builds it, served by JupyterLab on loopback with a random token,
and opened as a student would: run the cells the exercise needs, write an answer in the answer cell, run the
exercise's ``grader.check(...)`` cell and read what it says. A typical mistake (the gradient summed over the pixels,
not averaged) must get its own hint in the page, and the right answer must pass. The browser console must show no
error and no request may leave the machine. Without Chromium the test is skipped (or fails where
``LIFTCAM_REQUIRE_BROWSER=1``: see ``browser_servers.check_chromium``).
"""

from __future__ import annotations

import re

import nbformat
import pytest
from browser_servers import REPO, Watched, jupyter_lab

from liftcam_utils.app.course import write_student_edition

pytestmark = pytest.mark.e2e
WAIT_MS = 240_000  # kernel start, the model and the check take seconds on a free 2-core CPU; minutes on a shared one
NOTEBOOK = "00_quickstart.ipynb"
EXERCISE = "q00_gradcam"

# Grad-CAM's alpha by hand, as the exercise asks; {reduce} is how the gradient becomes one number per map
ANSWER = '''def gradcam_alpha(split, x, target):
    maps = split.body(x).detach().requires_grad_(True)
    logits = split.head(maps)
    chosen = logits[torch.arange(len(target)), target]
    (gradient,) = torch.autograd.grad(chosen.sum(), maps)
    return gradient.{reduce}(dim=(2, 3))
'''


def exercise_cells(notebook, exercise: str) -> tuple[list[int], int, int]:
    """In the student edition: the code cells a student runs before answering ``exercise`` (every code cell above
    its answer cell except those tagged ``otter_ignore``, which no exercise needs), its answer cell and its
    ``grader.check`` cell, as indices of the notebook's cells."""
    check = next(i for i, cell in enumerate(notebook.cells)
                 if cell.cell_type == "code" and cell.source.strip() == f'grader.check("{exercise}")')
    answer = max(i for i, cell in enumerate(notebook.cells[:check])
                 if "otter_answer_cell" in cell.metadata.get("tags", []))
    setup = [i for i, cell in enumerate(notebook.cells[:answer])
             if cell.cell_type == "code" and "otter_ignore" not in cell.metadata.get("tags", [])]
    return setup, answer, check


@pytest.fixture(scope="module")
def student_lab(tmp_path_factory):
    """JupyterLab serving a fresh student edition; yields the server and the folder holding the edition."""
    folder = tmp_path_factory.mktemp("student-lab")
    root = folder / "student"
    write_student_edition(REPO / "notebooks", root)
    server = jupyter_lab(folder, root)
    try:
        yield server.start(server.url("/api/status")), root
    finally:
        server.stop()


def run(page, cell) -> None:
    """Select ``cell`` (a ``.jp-Cell`` locator) by its prompt and run it (Ctrl+Enter); the kernel queues it."""
    cell.locator(".jp-InputPrompt").first.click()
    page.keyboard.press("Control+Enter")


def wait_until_run(cell) -> None:
    """Wait until ``cell`` has run: its prompt shows an execution count, not ``[*]``."""
    cell.locator(".jp-InputPrompt", has_text=re.compile(r"\[\d+\]")).first.wait_for(timeout=WAIT_MS)


def write_answer(page, cell, code: str) -> None:
    """Replace the source of ``cell`` with ``code``, as if pasted into its editor."""
    cell.locator(".cm-content").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(code)
    page.keyboard.press("Escape")


def test_student_gets_the_hint_of_a_summed_gradient_then_passes(browser, student_lab):
    lab, root = student_lab
    setup, answer, check = exercise_cells(nbformat.read(root / NOTEBOOK, as_version=4), EXERCISE)
    watched = Watched(browser)
    page = watched.page
    with watched.screenshot_on_failure("student_exercise.png"):
        page.goto(lab.url(f"/lab/tree/{NOTEBOOK}"), wait_until="domcontentloaded", timeout=WAIT_MS)
        page.locator(".jp-StatusBar-TextItem", has_text="Python 3 (ipykernel) | Idle").first.wait_for(timeout=WAIT_MS)
        cells = page.locator(".jp-Notebook .jp-Cell")
        for index in setup:
            run(page, cells.nth(index))
        write_answer(page, cells.nth(answer), ANSWER.format(reduce="sum"))
        run(page, cells.nth(answer))
        run(page, cells.nth(check))
        feedback = cells.nth(check).locator(".jp-OutputArea-output")
        feedback.first.wait_for(timeout=WAIT_MS)
        # the activation maps' size, as the setup cells print it: the sum is h * w times the mean
        shape = re.search(r"A: \((\d+), (\d+), (\d+), (\d+)\)", cells.nth(setup[-1]).inner_text())
        assert shape is not None, "the setup cells print the shape of the activation maps"
        height, width = int(shape[3]), int(shape[4])
        text = feedback.first.inner_text()
        assert f"{EXERCISE} results" in text
        assert (f"right sign but is {height * width} times too large: average the gradient over the "
                f"{height} x {width} pixels") in text
        feedback.first.scroll_into_view_if_needed()
        watched.screenshot("student_exercise_hint.png")

        write_answer(page, cells.nth(answer), ANSWER.format(reduce="mean"))
        run(page, cells.nth(answer))
        run(page, cells.nth(check))
        passed = cells.nth(check).locator(".jp-OutputArea-output", has_text=f"{EXERCISE} passed!")
        passed.wait_for(timeout=WAIT_MS)
        wait_until_run(cells.nth(check))
        assert "results" not in cells.nth(check).locator(".jp-OutputArea").inner_text()
        passed.scroll_into_view_if_needed()
        watched.screenshot("student_exercise_passed.png")
    assert watched.problems == []
