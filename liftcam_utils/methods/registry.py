"""The registry of methods: name -> rule. Each rule maps a :class:`~liftcam_utils.engine.cam_input.CamInput`
(and method options) to how it weights the activation maps: ``alpha`` of shape (B, N), or, for ``hirescam``
and ``layercam``, per-pixel weights of the maps' shape (B, N, h, w); the map itself is built once, by
:func:`~liftcam_utils.engine.cam_map.cam_map`.

FullGrad (Srinivas & Fleuret 2019) is not here: its map sums input-gradient x input and bias-gradient x
bias over every layer of the whole network, body included, so it is not a weighting of one layer's maps
``A`` and does not fit a pipeline that explains ``F(A)``; FullGrad restricted to the head would be another
method under its name.
"""

from .eigen import eigencam
from .gradient import gradcam, gradcam_plus_plus, hirescam, layercam, shapleycam, xgradcam
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
    "eigencam": eigencam,
    "shapleycam": shapleycam,
    "hirescam": hirescam,
    "layercam": layercam,
    "random": random_coefficients,
}
