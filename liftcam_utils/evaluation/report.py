"""Notebook outputs on disk: tables (CSV) and figures (PNG) under ``results/``, and ``REPORT.md``.

A notebook saves each result as ``<notebook>_<name>.csv`` / ``.png`` (e.g. ``04_faithfulness_table3.csv``),
and the verdicts on the paper's claims (:mod:`liftcam_utils.evaluation.verdicts`) as ``<notebook>_verdicts.csv``;
:func:`build_report` collects them into one Markdown report that opens with every notebook's verdicts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..files import write_atomically
from .paper import METHOD_NAMES

VERDICTS_SUFFIX = "_verdicts"


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def save_table(frame: pd.DataFrame, name: str, output_dir: str | os.PathLike) -> pd.DataFrame:
    """Write ``frame`` to ``output_dir/name.csv`` (atomically) and return it, for display."""
    _write_text(Path(output_dir) / f"{name}.csv", frame.to_csv())
    return frame


def save_figure(figure, name: str, output_dir: str | os.PathLike) -> None:
    """Write a matplotlib figure to ``output_dir/name.png``."""
    write_atomically(Path(output_dir) / f"{name}.png",
                     lambda temporary: figure.savefig(temporary, dpi=110, bbox_inches="tight", format="png"))


def save_verdicts(table: pd.DataFrame, notebook: str, output_dir: str | os.PathLike) -> pd.DataFrame:
    """Write a :func:`~liftcam_utils.evaluation.verdicts.verdict_table` to ``output_dir/<notebook>_verdicts.csv``."""
    _write_text(Path(output_dir) / f"{notebook}{VERDICTS_SUFFIX}.csv", table.reset_index().to_csv(index=False))
    return table


def _verdict_markdown(path: Path) -> str:
    """A saved verdict table as Markdown: the claim, our numbers, the test and the verdict."""
    table = pd.read_csv(path)
    shown = pd.DataFrame({
        "setup": table["setup"], "claim": table["claim"], "paper": table["source"],
        "ours": [f"{a:.3g} vs {b:.3g} ({METHOD_NAMES.get(v, v)})"
                 for a, b, v in zip(table["ours"], table["theirs"], table["versus"], strict=True)],
        "difference [95 % CI]": [f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]" for d, lo, hi in
                                 zip(table["mean diff"], table["CI low"], table["CI high"], strict=True)],
        "n": table["n"], "Wilcoxon p": [f"{p:.2g}" for p in table["p"]], "verdict": table["verdict"]})
    return markdown_table(shown.set_index("setup"))


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table (numbers rounded to ``digits``)."""
    def cell(value):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, *row in frame.itertuples():
        lines.append("| " + " | ".join([str(index)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines)


def build_report(results_dir: str | os.PathLike, title: str = "LIFT-CAM workbook: results",
                 notebooks: list[str] | None = None) -> Path:
    """Collect every ``*.csv`` table and ``*.png`` figure of ``results_dir`` into ``REPORT.md``.

    Sections are headed by the notebook names (e.g. ``04_faithfulness``): ``notebooks``, or those of
    the executed notebooks found in ``results_dir``."""
    results = Path(results_dir)
    verdict_files = sorted(results.glob(f"*{VERDICTS_SUFFIX}.csv"))
    sections: dict[str, list[str]] = {}
    for path in sorted(set(results.glob("*.csv")) - set(verdict_files)) + sorted(results.glob("*.png")):
        notebook = path.name.split("_", 1)[0]
        if path.suffix == ".csv":
            block = f"**{path.stem}**\n\n" + markdown_table(pd.read_csv(path, index_col=0))
        else:  # figures are written beside the report by each run (the committed notebooks show them inline)
            block = f"Figure: [{path.stem}]({path.name})"
        sections.setdefault(notebook, []).append(block)
    names = notebooks if notebooks is not None else [p.stem for p in results.glob("[0-9][0-9]_*.ipynb")]
    headings = {name.split("_", 1)[0]: name for name in names}
    text = [f"# {title}", ""]
    if verdict_files:
        text += ["## Verdicts: the paper's claims tested on our data", "",
                 "Each claim is a paired comparison on the same images: the mean difference with a seeded bootstrap "
                 "95 % interval and a two-sided Wilcoxon signed-rank test; the verdict is computed "
                 "(`liftcam_utils.evaluation.verdicts`): *holds* when p < 0.05 and the interval is on the claimed side "
                 "of 0, *contradicted* when both point the other way, *not shown at this n* otherwise.", ""]
        for path in verdict_files:
            notebook = path.name[: -len(f"{VERDICTS_SUFFIX}.csv")]
            text += [f"### {notebook}", "", _verdict_markdown(path), ""]
    for key in sorted(sections):
        text += [f"## {headings.get(key, key)}", ""] + [b + "\n" for b in sections[key]]
    path = results / "REPORT.md"
    _write_text(path, "\n".join(text))
    return path
