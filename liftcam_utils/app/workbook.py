"""Run the workbook headlessly: every ``notebooks/NN_*.ipynb`` in order, through papermill.

    python -m liftcam_utils.app.workbook [NOTEBOOK_DIR] [OUTPUT_DIR] [-p NAME VALUE ...]
    python -m liftcam_utils.app.workbook --in-place [NOTEBOOK ...]
    python -m liftcam_utils.app.workbook --quick-copies DIR

Executed notebooks are written to ``OUTPUT_DIR`` (default ``results/``), with the tables and figures
they save and ``REPORT.md``, which collects them. ``-p`` overrides a
parameter of every notebook that declares it in its ``parameters`` cell, e.g. ``-p n_images 1000 -p device cuda``.
A name that no notebook declares is refused (with the valid names) before any notebook runs. A value is read as a
Python literal where it is one and kept as text otherwise (``cuda`` above); a literal must be JSON-like: None, a bool,
an int, a finite float, a str, or lists and str-keyed dicts of those (a tuple or set becomes a list, a set sorted).
Anything else (bytes, complex, ...) is refused: papermill would write it into the notebook as unescaped text.

``--in-place`` re-executes committed notebooks (all numbered ones by default) at their default
parameters, keeping their outputs for readers, without papermill's timing metadata, and rebuilds
``results/REPORT.md`` from the tables they save there.

``--quick-copies DIR`` writes a copy of every numbered notebook to ``DIR`` with
:data:`QUICK_PARAMETERS` injected (papermill's "injected-parameters" cell) and the committed outputs
kept, for ``make test``: nbval re-executes the copies and compares their checked cells, which state
invariants that hold at any scale, with the committed outputs computed at the full defaults.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from ..evaluation.report import build_report
from ..json_values import VALID_TYPES as JSON_TYPES
from ..json_values import json_value

# Small sizes for the test suite; notebooks not listed run at their defaults (they take seconds).
QUICK_PARAMETERS = {
    "02_shapcam_convergence": {"n_images": 3, "n_runs": 2, "n_reference": 64, "estimator_costs": [4, 16],
                               "estimator_reference": 64},
    "03_cosine_similarity": {"n_images": {"photos": 3, "scenes": 12}, "n_permutations": {"photos": 40, "scenes": 200},
                             "reference_draws": 2},
    "04_faithfulness": {"n_images": 3, "scenes_n_images": 12},
    "05_localization": {"n_images": 24, "n_grids": 4},
    "06_vqa": {"n_images": 60},
    "07_sanity_checks": {"n_images": 1, "max_depth": 9},
    "08_beyond_cnns": {"n_images": 12, "sanity_images": 2},
}


VALID_TYPES = f"{JSON_TYPES} (a tuple or set becomes a list)"


class ParameterError(ValueError):
    """A ``-p`` parameter refused: unknown name, or a value papermill cannot inject safely."""


def injectable(name: str, value, given: str | None = None):
    """``value`` as papermill injects it safely: a JSON value (:func:`~liftcam_utils.json_values.json_value`), checked
    by a round trip: the text papermill writes into the notebook for it must read back (``ast.literal_eval``, which
    runs no code) as the same value.
    ``given``: the value as the user typed it, for messages."""
    from papermill.translators import PythonTranslator

    given = repr(value) if given is None else given
    try:
        value = json_value(value, f"the value {given}", tuples_and_sets_as_lists=True)
    except (TypeError, ValueError) as error:
        raise ParameterError(f"parameter {name!r}: {error}; valid types: {VALID_TYPES}") from None
    except RecursionError:
        raise ParameterError(f"parameter {name!r}: the value {given} is nested too deeply") from None
    try:
        code = PythonTranslator.translate(value)
        same = ast.literal_eval(code) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        code, same = "(no text)", False
    if not same:
        raise ParameterError(f"parameter {name!r}: papermill would write the value {given} as {code!r}, "
                             "which does not read back as the same value")
    return value


def parse_parameter(name: str, text: str):
    """The value of ``-p NAME TEXT``: the Python literal ``TEXT`` made JSON-like (a tuple or set becomes a list),
    or ``TEXT`` itself where it is no literal (``-p dataset photos``). Raises :class:`ParameterError` for a literal
    of any other type (bytes, complex, Ellipsis, ...), naming the parameter, the value and the valid types."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return injectable(name, text)  # no literal: the text itself
    except (TypeError, MemoryError, RecursionError) as error:  # e.g. an unhashable dict key, nesting too deep
        raise ParameterError(f"parameter {name!r}: the value {text!r} cannot be read ({type(error).__name__}: "
                             f"{error}); valid types: {VALID_TYPES}") from None
    return injectable(name, value, repr(text))


def check_parameter_names(declared: dict[str, set[str]], parameters: dict) -> None:
    """Refuse a parameter that no notebook declares (``declared``: notebook name -> its parameter names)."""
    valid = sorted(set().union(*declared.values()))
    unknown = sorted(set(parameters) - set(valid))
    if unknown:
        raise ParameterError(f"no notebook declares the parameter(s) {', '.join(unknown)}; "
                             f"valid names: {', '.join(valid) or '(none)'}")


def notebooks_in(directory: Path) -> list[Path]:
    """The numbered notebooks of ``directory``, in order."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def run(notebook_dir: Path, output_dir: Path, parameters: dict) -> list[Path]:
    """Execute the numbered notebooks of ``notebook_dir`` into ``output_dir``, each with the ``parameters`` it
    declares. Raises :class:`ParameterError`, before any notebook runs, for a name no notebook declares or a value
    papermill cannot inject safely."""
    import papermill

    notebooks = notebooks_in(notebook_dir)
    if not notebooks:
        print(f"no numbered notebooks in {notebook_dir}/ yet: nothing to run")
        return []
    declared = {notebook.name: set(papermill.inspect_notebook(str(notebook))) for notebook in notebooks}
    check_parameter_names(declared, parameters)
    parameters = {name: injectable(name, value) for name, value in parameters.items()}
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    parameters = {"output_dir": str(output_dir.resolve()), **parameters}
    for notebook in notebooks:
        own = {k: v for k, v in parameters.items() if k in declared[notebook.name]}
        target = output_dir / notebook.name
        print(f"running {notebook.name} {own or ''}", flush=True)
        papermill.execute_notebook(str(notebook), str(target), parameters=own, cwd=str(notebook_dir),
                                   progress_bar=False)
        written.append(target)
    print(f"report: {build_report(output_dir)}")
    return written


def refresh(notebooks: list[Path]) -> None:
    """Execute each notebook in place at its default parameters; drop machine-specific metadata."""
    import nbformat
    import papermill

    for notebook in notebooks:
        print(f"executing {notebook}", flush=True)
        papermill.execute_notebook(str(notebook), str(notebook), cwd=str(notebook.parent), progress_bar=False)
        nb = nbformat.read(notebook, as_version=4)
        nb.metadata.pop("papermill", None)
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
        nbformat.write(nb, notebook)


def write_quick_copies(notebook_dir: Path, target_dir: Path) -> list[Path]:
    """Copies of the numbered notebooks with :data:`QUICK_PARAMETERS` injected and their outputs kept."""
    import nbformat
    import papermill
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for notebook in notebooks_in(notebook_dir):
        declared = papermill.inspect_notebook(str(notebook))
        parameters = {"output_dir": str((target_dir / "results").resolve()), **QUICK_PARAMETERS.get(notebook.stem, {})}
        parameters = {name: injectable(name, value) for name, value in parameters.items()}
        unknown = sorted(set(parameters) - set(declared))
        if unknown:
            raise ValueError(f"{notebook.name} declares no parameter(s) {unknown}; it declares {sorted(declared)}")
        quick = parameterize_notebook(load_notebook_node(str(notebook)), parameters)
        quick.metadata.pop("papermill", None)
        for cell in quick.cells:
            cell.metadata.pop("papermill", None)
        target = target_dir / notebook.name
        nbformat.write(quick, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--in-place", nargs="*", type=Path, metavar="NOTEBOOK",
                        help="re-execute these committed notebooks (default: all numbered ones) in place")
    parser.add_argument("--quick-copies", type=Path, metavar="DIR",
                        help="write copies of the notebooks at the test suite's small parameters to DIR")
    parser.add_argument("notebook_dir", nargs="?", default="notebooks", type=Path)
    parser.add_argument("output_dir", nargs="?", default="results", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="override a notebook parameter")
    args = parser.parse_args(argv)
    if args.parameter and (args.in_place is not None or args.quick_copies is not None):
        parser.error("-p applies to a run into OUTPUT_DIR; --in-place runs at the defaults and --quick-copies at "
                     "QUICK_PARAMETERS")
    if args.in_place is not None:
        refresh(args.in_place or notebooks_in(args.notebook_dir))
        if args.output_dir.is_dir():
            names = [p.stem for p in notebooks_in(args.notebook_dir)]
            print(f"report: {build_report(args.output_dir, notebooks=names)}")
        return 0
    if args.quick_copies is not None:
        written = write_quick_copies(args.notebook_dir, args.quick_copies)
        print(f"{len(written)} notebooks at the quick parameters in {args.quick_copies}/")
        return 0
    if not args.notebook_dir.is_dir():
        parser.error(f"notebook directory {args.notebook_dir} does not exist")
    try:
        parameters = {name: parse_parameter(name, text) for name, text in args.parameter}
        run(args.notebook_dir, args.output_dir, parameters)
    except ParameterError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
