"""Evaluation: how good an explanation is, on many images, and what the numbers say about the paper's claims.

The paper's metrics (:mod:`.metrics`: IC / AD / ADD, insertion / deletion, the energy pointing game, ROAD, the
cosine between coefficient vectors), the batch runner with its Dask option (:mod:`.batch`) and its on-disk cache
(:mod:`.cache`), the verdicts on each claim (:mod:`.verdicts`), Adebayo et al.'s sanity checks (:mod:`.sanity`),
the paper's own numbers (:mod:`.paper`), the notebooks' invariant checks (:mod:`.checks`) and their tables, figures
and ``REPORT.md`` on disk (:mod:`.report`). Evaluation runs methods by name (:mod:`liftcam_utils.methods`) on
models (:mod:`liftcam_utils.models`) and datasets (:mod:`liftcam_utils.datasets`).
"""

from .batch import METRICS, Evaluation, evaluate, paper_table, summarize

__all__ = ["METRICS", "Evaluation", "evaluate", "paper_table", "summarize"]
