"""The registry of coefficient rules. Each maps a :class:`~liftcam_utils.cam.CamInput` (and
method options) to ``alpha`` of shape (B, N); the map itself is built once, in ``cam.py``."""

from .gradient import gradcam, gradcam_plus_plus, xgradcam
from .lime import limecam
from .perturbation import ablationcam, random_coefficients, scorecam
from .propagation_rules import liftcam, lrpcam
from .shapley import exact_shap, kernelshapcam, shapcam

METHODS = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "scorecam": scorecam,
    "ablationcam": ablationcam,
    "liftcam": liftcam,
    "shapcam": shapcam,
    "exact_shap": exact_shap,
    "lrpcam": lrpcam,
    "limecam": limecam,
    "kernelshapcam": kernelshapcam,
    "random": random_coefficients,
}

__all__ = ["METHODS"]
