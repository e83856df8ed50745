"""Notebook outputs on disk: tables (CSV) and figures (PNG) under ``results/``, and ``REPORT.md``.

A notebook saves each result as ``<notebook>_<name>.csv`` / ``.png`` (e.g. ``04_faithfulness_table3.csv``);
:func:`build_report` collects them, notebook by notebook, into one Markdown report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .files import write_atomically


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


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table (numbers rounded to ``digits``)."""
    def cell(value):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, *row in frame.itertuples():
        lines.append("| " + " | ".join([str(index)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines)


def build_report(results_dir: str | os.PathLike, title: str = "LIFT-CAM workbook: results") -> Path:
    """Collect every ``*.csv`` table and ``*.png`` figure of ``results_dir`` into ``REPORT.md``."""
    results = Path(results_dir)
    sections: dict[str, list[str]] = {}
    for path in sorted(results.glob("*.csv")) + sorted(results.glob("*.png")):
        notebook = path.name.split("_", 1)[0]
        if path.suffix == ".csv":
            block = f"**{path.stem}**\n\n" + markdown_table(pd.read_csv(path, index_col=0))
        else:
            block = f"![{path.stem}]({path.name})"
        sections.setdefault(notebook, []).append(block)
    notebooks = {p.name.split("_", 1)[0]: p.stem for p in results.glob("[0-9][0-9]_*.ipynb")}
    text = [f"# {title}", ""]
    for key in sorted(sections):
        text += [f"## {notebooks.get(key, key)}", ""] + [b + "\n" for b in sections[key]]
    path = results / "REPORT.md"
    _write_text(path, "\n".join(text))
    return path
