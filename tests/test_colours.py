"""The method colours stay apart for every common colour-vision deficiency, and every figure's method has one."""

import itertools

import numpy as np
import pytest

from liftcam_utils.evaluation import colours
from liftcam_utils.evaluation.paper import METHOD_NAMES
from liftcam_utils.methods import METHODS

colorspacious = pytest.importorskip("colorspacious", reason="colorspacious is in the dev extra")

VISION = ("normal", "protanomaly", "deuteranomaly", "tritanomaly")
MIN_DISTANCE = 6.0  # CAM02-UCS units; about 1 is the smallest difference seen side by side


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255


def _as_seen(rgb: np.ndarray, vision: str) -> np.ndarray:
    """``rgb`` (n, 3) in CAM02-UCS as a viewer with ``vision`` sees it (deficiencies at full severity)."""
    if vision != "normal":
        space = {"name": "sRGB1+CVD", "cvd_type": vision, "severity": 100}
        rgb = np.clip(colorspacious.cspace_convert(rgb, space, "sRGB1"), 0, 1)
    return colorspacious.cspace_convert(rgb, "sRGB1", "CAM02-UCS")


@pytest.mark.parametrize("vision", VISION)
def test_every_two_method_colours_stay_apart(vision):
    palette = {**colours.METHOD_COLOURS, "SHAP-CAM": colours.SHAPLEY_COLOUR}
    seen = _as_seen(np.array([_rgb(c) for c in palette.values()]), vision)
    names = list(palette)
    closest = min((float(np.linalg.norm(seen[i] - seen[j])), names[i], names[j])
                  for i, j in itertools.combinations(range(len(names)), 2))
    assert closest[0] > MIN_DISTANCE, f"{closest[1]} and {closest[2]} look alike with {vision} vision: {closest}"


def test_every_method_of_the_package_has_a_colour_by_key_and_by_name():
    for method in METHODS:
        assert colours.method_colour(method) == colours.method_colour(METHOD_NAMES[method])
    assert colours.method_palette(["LIFT-CAM", "gradcam", "SHAP-CAM_16 run 1"]) == {
        "LIFT-CAM": "#000000", "gradcam": "#CC6677", "SHAP-CAM_16 run 1": colours.SHAPLEY_COLOUR}


def test_an_unknown_method_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"no colour for method 'gradcam\+'; methods with a colour: liftcam, gradcam"):
        colours.method_colour("gradcam+")


def test_the_default_cycle_becomes_the_method_colours():
    import matplotlib as mpl
    import seaborn as sns

    before = mpl.rcParams["axes.prop_cycle"]
    try:
        colours.use_method_colours()
        cycle = [mpl.colors.to_hex(c["color"]).upper() for c in mpl.rcParams["axes.prop_cycle"]]
        assert tuple(cycle) == colours.DEFAULT_CYCLE
        assert mpl.colors.to_hex(sns.color_palette()[1]).upper() == "#332288"
    finally:
        mpl.rcParams["axes.prop_cycle"] = before
