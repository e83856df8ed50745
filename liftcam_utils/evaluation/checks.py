"""Checks of the science in the notebooks: statements that must hold at any scale, or the run fails.

A notebook states an invariant of the method ("every real method puts more energy in the box than
``random``", "SHAP-CAM's error falls with P") and :func:`require` raises :class:`ScienceCheckError`
when the numbers break it. The printed line names the statement, not the numbers, so nbval can
compare it across thread counts, devices and parameter sizes, and a change of the science fails it.
"""

from __future__ import annotations


class ScienceCheckError(AssertionError):
    """An invariant the notebook relies on does not hold for these numbers."""


def require(statement: str, condition: bool, detail: str = "") -> None:
    """Print ``"check: <statement>"`` if ``condition`` holds; raise with ``detail`` (the numbers) if not."""
    if not bool(condition):
        raise ScienceCheckError(f"{statement}: does NOT hold" + (f" ({detail})" if detail else ""))
    print(f"check: {statement}")
