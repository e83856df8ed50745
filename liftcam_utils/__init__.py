"""liftcam_utils: class activation maps as coefficient rules.

Every CAM method is a rule for the coefficients ``alpha`` of ``L = ReLU(sum_k alpha_k A_k)``
(Jung & Oh, "Towards Better Explanations of Class Activation Mapping", ICCV 2021, Eq. 1), or, for
HiResCAM and Layer-CAM, for per-pixel weights ``W`` of ``L = ReLU(sum_k W_k o A_k)`` (``map_weights``).

>>> model = load_model("efficientnet_lite0")
>>> split = model.split()                      # body(x) -> A, head(A) -> logits
>>> alpha = coefficients("liftcam", split, x)  # (B, N)
>>> maps = saliency("liftcam", split, x)       # (B, H, W) in [0, 1]

The package is layered; each sub-package imports only those below it (docs/architecture.md):

* :mod:`.app`: the explorer's logic and widgets, upload checks, the headless workbook runner;
* :mod:`.evaluation`: metrics, batch evaluation and its cache, verdicts, sanity checks, the report;
* :mod:`.methods`: the registry of methods and the pipeline that runs one by name;
* :mod:`.models`: models by name, our trained models and their training, fixed inputs;
* :mod:`.datasets`: records, embedded photos, generated scenes and questions, readers of the paper's data;
* :mod:`.engine`: body/head split, :class:`CamInput`, the map, the DeepLIFT/LRP rule table, the channel game;
* :mod:`.files`: atomic writes; :mod:`.json_values`: values with one exact text.
"""

from .engine.cam_input import CamInput, SignedActivationsWarning
from .engine.cam_map import cam_map
from .engine.head_ops import UnsupportedHeadOpError
from .engine.split import CamSplit, eval_mode, split_model
from .methods import METHODS, coefficients, map_weights, saliency
from .models import MODEL_NAMES, LoadedModel, load_model

__all__ = [
    "METHODS",
    "MODEL_NAMES",
    "CamInput",
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
