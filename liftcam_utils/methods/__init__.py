"""The methods: one module per family of rules, the registry that names them, and the pipeline that runs one
by name.

A method is a function of a :class:`~liftcam_utils.engine.cam_input.CamInput` and its options that returns
how it weights the activation maps (``alpha``, or per-pixel weights for HiResCAM and Layer-CAM). Method modules
import only the engine (:mod:`liftcam_utils.engine`); :mod:`.registry` names them in ``METHODS``, and
:mod:`.run` runs one by name: :func:`map_weights`, :func:`coefficients`, :func:`saliency`.
"""

from .registry import METHODS
from .run import coefficients, map_weights, saliency

__all__ = ["METHODS", "coefficients", "map_weights", "saliency"]
