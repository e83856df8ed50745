"""One colour per method in every figure of the workbook, distinguishable with each common colour-vision deficiency.

The colours are Paul Tol's "muted" qualitative scheme (nine colours and pale grey, designed to stay apart for
protan, deutan and tritan vision), black for LIFT-CAM, the method of the paper, and three colours of Okabe and Ito's
scheme for the methods only notebook 03 compares. A method keeps its colour in every figure, so a reader learns it
once. ``tests/test_colours.py`` simulates the three deficiencies at full severity (Machado et al. 2009, via
colorspacious) and checks that every two colours stay apart in CAM02-UCS.

* :data:`METHOD_COLOURS`: method key -> hex colour; :func:`method_palette` maps keys or display names (e.g. "LIFT-CAM")
  to colours, for seaborn's ``palette=`` and matplotlib's ``color=``;
* :func:`use_method_colours`: makes Tol's muted scheme matplotlib's and seaborn's default cycle, for figures whose
  lines or bars are not methods.
"""

from __future__ import annotations

from collections.abc import Iterable

from .paper import METHOD_NAMES

METHOD_COLOURS = {
    "liftcam": "#000000",  # black: the paper's method stands out in every figure
    "gradcam": "#CC6677",  # Tol muted: rose
    "gradcam++": "#332288",  # indigo
    "xgradcam": "#DDCC77",  # sand
    "scorecam": "#117733",  # green
    "ablationcam": "#88CCEE",  # cyan
    "eigencam": "#882255",  # wine
    "shapleycam": "#44AA99",  # teal
    "hirescam": "#999933",  # olive
    "layercam": "#AA4499",  # purple
    "random": "#DDDDDD",  # pale grey: the floor, not a method
    "lrpcam": "#E69F00",  # Okabe-Ito: orange
    "limecam": "#0072B2",  # blue
    "kernelshapcam": "#D55E00",  # vermillion
}
_BY_NAME = {METHOD_NAMES[key]: colour for key, colour in METHOD_COLOURS.items()}


def method_colour(method: str) -> str:
    """The colour of ``method``, given by key ("liftcam") or display name ("LIFT-CAM"). SHAP-CAM estimates
    ("SHAP-CAM_16 run 1", "shapcam") are drawn in the colour of the exact Shapley values they estimate, dark grey.
    ``ValueError`` naming the methods that have a colour for any other name."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    if method in _BY_NAME:
        return _BY_NAME[method]
    if method.lower().startswith(("shap-cam", "shapcam", "exact")):
        return SHAPLEY_COLOUR
    raise ValueError(f"no colour for method {method!r}; methods with a colour: {', '.join(METHOD_COLOURS)} "
                   f"(or their display names: {', '.join(_BY_NAME)})")


SHAPLEY_COLOUR = "#666666"  # the Shapley values and their SHAP-CAM estimates (reference lines, not compared methods)


def method_palette(methods: Iterable[str]) -> dict[str, str]:
    """``{method: colour}`` for each of ``methods`` (keys or display names), e.g. ``sns.barplot(..., hue="method",
    palette=method_palette(frame["method"].unique()))``."""
    return {method: method_colour(method) for method in dict.fromkeys(methods)}


# Tol's muted scheme in its published order: the default cycle, for lines and bars that are not methods (datasets,
# setups, measures)
DEFAULT_CYCLE = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499")


def use_method_colours() -> None:
    """Make :data:`DEFAULT_CYCLE` the default colour cycle of matplotlib and seaborn in this session, so that the
    figures whose colours are not set per method (e.g. one bar per dataset) are safe for colour-blind readers too."""
    import matplotlib as mpl
    import seaborn as sns
    from cycler import cycler

    mpl.rcParams["axes.prop_cycle"] = cycler(color=list(DEFAULT_CYCLE))
    sns.set_palette(list(DEFAULT_CYCLE))
