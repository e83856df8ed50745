"""liftcam_utils: class activation maps as coefficient rules.

Every CAM method is a rule for the coefficients ``alpha`` of ``L = ReLU(sum_k alpha_k A_k)``
(Jung & Oh, "Towards Better Explanations of Class Activation Mapping", ICCV 2021, Eq. 1), or, for
HiResCAM and Layer-CAM, for per-pixel weights ``W`` of ``L = ReLU(sum_k W_k o A_k)`` (``map_weights``).

>>> model = load_model("efficientnet_lite0")
>>> split = model.split()                      # body(x) -> A, head(A) -> logits
>>> alpha = coefficients("liftcam", split, x)  # (B, N)
>>> maps = saliency("liftcam", split, x)       # (B, H, W) in [0, 1]
"""

from .cam import SignedActivationsWarning, cam_map, coefficients, map_weights, saliency
from .head_ops import UnsupportedHeadOpError
from .methods import METHODS
from .models import MODEL_NAMES, LoadedModel, load_model
from .split import CamSplit, eval_mode, split_model

__all__ = [
    "METHODS",
    "MODEL_NAMES",
    "CamSplit",
    "LoadedModel",
    "SignedActivationsWarning",
    "UnsupportedHeadOpError",
    "cam_map",
    "coefficients",
    "eval_mode",
    "load_model",
    "map_weights",
    "saliency",
    "split_model",
]
