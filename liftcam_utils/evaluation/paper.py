"""The paper's reported numbers (Jung & Oh, ICCV 2021), to print beside ours.

All on VGG16 with 1,000 random images per dataset (500 for Table 2), ImageNet / VOC07 / COCO14.
"""

from __future__ import annotations

import pandas as pd

DATASETS = ("ImageNet", "VOC", "COCO")
METHOD_NAMES = {
    "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM", "liftcam": "LIFT-CAM", "shapcam": "SHAP-CAM", "exact_shap": "exact Shapley",
    "lrpcam": "LRP-CAM", "limecam": "LIME-CAM", "kernelshapcam": "KernelSHAP-CAM", "eigencam": "Eigen-CAM",
    "shapleycam": "ShapleyCAM", "hirescam": "HiResCAM", "layercam": "Layer-CAM", "random": "random",
}
_BASELINES = ("gradcam", "gradcam++", "xgradcam", "scorecam", "ablationcam", "liftcam")


def _table(rows: dict, columns) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(columns))


def table1() -> dict[str, pd.DataFrame]:
    """Table 1: IC / AD / ADD (%) of SHAP-CAM_P, P in {1, 10, 100}, mean of 10 runs."""
    return {
        "IC": _table({1: (25.9, 37.4, 35.2), 10: (26.2, 42.7, 40.1), 100: (26.4, 43.6, 41.4)}, DATASETS),
        "AD": _table({1: (28.16, 22.93, 23.98), 10: (27.54, 17.53, 19.07), 100: (27.48, 16.71, 18.27)}, DATASETS),
        "ADD": _table({1: (32.64, 17.35, 24.07), 10: (32.99, 19.95, 27.50), 100: (33.03, 20.64, 27.65)}, DATASETS),
    }


def table2() -> pd.DataFrame:
    """Table 2: cosine similarity of each method's alpha to SHAP-CAM_10k's."""
    values = [(0.489, 0.404, 0.441), (0.385, 0.329, 0.412), (0.406, 0.327, 0.350), (0.195, 0.181, 0.157),
              (0.972, 0.888, 0.908), (0.980, 0.918, 0.924)]
    return _table(dict(zip(_BASELINES, values, strict=True)), DATASETS)


def table3() -> dict[str, pd.DataFrame]:
    """Table 3: IC / AD / ADD (%) per method."""
    ic = [(24.0, 32.7, 31.9), (23.1, 33.8, 33.5), (25.0, 30.5, 31.3), (22.8, 29.4, 23.9), (24.1, 34.4, 35.0),
          (25.2, 38.7, 39.3)]
    ad = [(31.89, 30.73, 30.74), (30.53, 17.20, 20.87), (31.36, 30.04, 29.92), (29.91, 17.49, 23.66),
          (29.41, 25.49, 23.99), (29.15, 17.15, 18.65)]
    add = [(30.60, 17.43, 25.66), (27.98, 15.85, 24.16), (30.48, 17.09, 24.95), (27.52, 14.12, 17.35),
           (32.52, 19.42, 26.75), (32.95, 20.09, 26.34)]
    return {name: _table(dict(zip(_BASELINES, v, strict=True)), DATASETS)
            for name, v in (("IC", ic), ("AD", ad), ("ADD", add))}


def table4() -> pd.DataFrame:
    """Table 4: insertion and deletion AUC on ImageNet."""
    values = [(0.4427, 0.0891), (0.4350, 0.0969), (0.4457, 0.0883), (0.4345, 0.1002), (0.4685, 0.0873),
              (0.4712, 0.0866)]
    return _table(dict(zip(_BASELINES, values, strict=True)), ("insertion_auc", "deletion_auc"))


def table5() -> pd.Series:
    """Table 5: energy-based pointing game, proportion (%) of energy in the boxes, ImageNet."""
    return pd.Series(dict(zip(_BASELINES, (47.76, 49.14, 47.91, 51.14, 51.87, 52.43), strict=True)),
                     name="pointing")


def table6() -> pd.DataFrame:
    """Table 6: VQA, Grad-CAM vs LIFT-CAM (IC, AD, ADD in %)."""
    return _table({"gradcam": (41.95, 16.71, 9.09), "liftcam": (43.39, 14.14, 9.58)}, ("IC", "AD", "ADD"))


def gap(table: pd.DataFrame | pd.Series, method, versus, higher_is_better: bool = True,
        column: str = "ImageNet") -> float:
    """The paper's own difference ``method - competitor`` in ``column`` of one of its tables (ImageNet by
    default), for :class:`~liftcam_utils.evaluation.verdicts.Claim`'s ``paper_diff``. Against several competitors
    it is the difference to the closest one (the smallest improvement), the gap the claim's margin must respect.

    ``method`` and ``versus`` are row labels (method names, or Table 1's P); ``versus`` may be a tuple of them.
    ``gap(table3()["AD"], "liftcam", "gradcam", higher_is_better=False)`` is 29.15 - 31.89 = -2.74."""
    values = table if isinstance(table, pd.Series) else table[column]
    competitors = tuple(versus) if isinstance(versus, (tuple, list)) else (versus,)
    unknown = [m for m in (method, *competitors) if m not in values.index]
    if unknown:
        raise ValueError(f"the paper's table has no row {unknown}; its rows: {list(values.index)}")
    sign = 1.0 if higher_is_better else -1.0
    diffs = {other: float(values[method] - values[other]) for other in competitors}
    return diffs[min(diffs, key=lambda other: sign * diffs[other])]
