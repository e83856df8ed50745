"""Notebook outputs on disk: tables (CSV) and figures (PNG) under ``results/``, and ``REPORT.md``.

A notebook saves each result as ``<notebook>_<name>.csv`` / ``.png`` (e.g. ``04_faithfulness_table3.csv``),
and the verdicts on the paper's claims (:mod:`liftcam_utils.evaluation.verdicts`) as ``<notebook>_verdicts.csv``;
:func:`build_report` collects them into one Markdown report that opens with every notebook's verdicts.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import write_atomically
from . import verdicts
from .paper import METHOD_NAMES

VERDICTS_SUFFIX = "_verdicts"
ROWS_SUFFIX = "_rows"


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
    """Write a :func:`~liftcam_utils.evaluation.verdicts.verdict_table` (its long form: every claim against every
    competitor, with the unadjusted statistics) to ``output_dir/<notebook>_verdicts.csv``; the report re-adjusts
    them over the whole workbook."""
    _write_text(Path(output_dir) / f"{notebook}{VERDICTS_SUFFIX}.csv", table.to_csv(index=False))
    return table


def save_rows(rows_by_setup: dict[str, pd.DataFrame], notebook: str, output_dir: str | os.PathLike) -> Path:
    """Write the per-image rows a notebook's verdicts are computed from to ``output_dir/<notebook>_rows.csv`` (one
    ``setup`` column; scalar columns only, the curves stay out), so that anyone can recompute every verdict:
    ``verdicts.verdict_table(rows, verdicts.claims_of(saved verdicts))``."""
    frames = [frame.loc[:, [c for c in frame.columns if frame[c].map(np.isscalar).all()]].assign(setup=setup)
              for setup, frame in rows_by_setup.items()]
    path = Path(output_dir) / f"{notebook}{ROWS_SUFFIX}.csv"
    _write_text(path, pd.concat(frames, ignore_index=True).to_csv(index=False))
    return path


def load_rows(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The rows :func:`save_rows` wrote, per setup."""
    rows = pd.read_csv(path)
    return {setup: frame.drop(columns="setup").dropna(axis=1, how="all").reset_index(drop=True)
            for setup, frame in rows.groupby("setup", sort=False)}


MARGIN_SOURCES = {"half the paper's gap": "paper / 2"}  # short names for the report's margin column


def _number(value: float) -> str:
    return "" if pd.isna(value) else f"{value:+.3g}"


def verdict_markdown(table: pd.DataFrame) -> str:
    """A decided verdict table as Markdown, one row per claim: our numbers, the paper's difference, the
    margin, the units, the share of non-zero units that improve, the Holm-adjusted p and the verdict."""
    rows = verdicts.summary(table)
    p = np.where(rows["verdict"] == verdicts.CONTRADICTED, rows["adj p worse"],
                 np.where(rows["verdict"] == verdicts.NEGLIGIBLE, rows["adj p equivalent"], rows["adj p better"]))
    test = np.where(rows["verdict"] == verdicts.CONTRADICTED, " (other way)",
                    np.where(rows["verdict"] == verdicts.NEGLIGIBLE, " (TOST)", ""))
    remarks = [f"same evidence as: {same}" if same else note for same, note in
               zip(rows["same evidence as"], rows["note"], strict=True)]
    shown = pd.DataFrame({
        "setup": rows.index.get_level_values("setup"), "claim": rows.index.get_level_values("claim"),
        "source": rows["source"],
        "ours vs theirs": [f"{a:.3g} vs {b:.3g} ({METHOD_NAMES.get(v, v)})"
                           for a, b, v in zip(rows["ours"], rows["theirs"], rows["versus"], strict=True)],
        "difference [95 % CI]": [f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]" for d, lo, hi in
                                 zip(rows["diff"], rows["CI low"], rows["CI high"], strict=True)],
        "paper": [_number(v) for v in rows["paper diff"]],
        "margin": [f"{m:.3g} ({MARGIN_SOURCES.get(s, s)})" for m, s in
                   zip(rows["margin"], rows["margin source"], strict=True)],
        "units (non-zero)": [f"{u} ({k})" for u, k in zip(rows["units"], rows["non-zero"], strict=True)],
        "better": [f"{b}/{k}" for b, k in zip(rows["better"], rows["non-zero"], strict=True)],
        "Holm p": [f"{v:.2g}{t}" for v, t in zip(p, test, strict=True)], "verdict": rows["verdict"].to_numpy(),
        "remark": remarks})
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
    data_files = set(verdict_files) | set(results.glob(f"*{ROWS_SUFFIX}.csv"))
    for path in sorted(set(results.glob("*.csv")) - data_files) + sorted(results.glob("*.png")):
        notebook = path.name.split("_", 1)[0]
        if path.suffix == ".csv":
            block = f"**{path.stem}**\n\n" + markdown_table(pd.read_csv(path, index_col=0))
        else:  # named, not linked: a run writes the figures beside the report, the repository keeps only the tables
            block = f"Figure: `{path.name}`, written beside this report by `make workbook`; shown in the notebook"
        sections.setdefault(notebook, []).append(block)
    names = notebooks if notebooks is not None else [p.stem for p in results.glob("[0-9][0-9]_*.ipynb")]
    headings = {name.split("_", 1)[0]: name for name in names}
    text = [f"# {title}", ""]
    tables = {path: pd.read_csv(path) for path in verdict_files}
    for path, table in list(tables.items()):
        missing = set(verdicts.LONG_COLUMNS) - set(table.columns)
        if missing:
            warnings.warn(f"{path.name} lacks the columns {sorted(missing)} of the current verdict procedure (it was "
                          "written by an older version): left out of the report until its notebook runs again",
                          stacklevel=2)
            del tables[path]
    if tables:
        long = pd.concat([table.assign(notebook=path.name[: -len(f"{VERDICTS_SUFFIX}.csv")])
                          for path, table in tables.items()], ignore_index=True)
        decided = verdicts.decide(long)
        text += ["## Verdicts: the paper's claims tested on our data", "",
                 "Each claim compares two methods on the same images (`liftcam_utils.evaluation.verdicts`, explained "
                 "in docs/statistics.md): the mean difference with a BCa bootstrap 95 % interval over independent "
                 "units, a one-sided sign-flip permutation test of the mean in the claimed direction and in the "
                 "other, and an equivalence test (TOST) within the margin, the smallest difference that counts (the "
                 "smaller of a practical difference and half the paper's own gap). The p-values here are "
                 "Holm-adjusted over the whole workbook, the paper's claims and the claims beyond it as two "
                 "families, so a verdict can be more cautious here than in its notebook. *better* counts the "
                 "independent units that improve among "
                 "those that differ.", "",
                 "Tally (each piece of evidence counted once):", "",
                 markdown_table(verdicts.verdict_counts(decided)), ""]
        for notebook, part in decided.groupby("notebook", sort=True):
            text += [f"### {notebook}", "", verdict_markdown(part), ""]
    for key in sorted(sections):
        text += [f"## {headings.get(key, key)}", ""] + [b + "\n" for b in sections[key]]
    path = results / "REPORT.md"
    _write_text(path, "\n".join(text))
    return path
