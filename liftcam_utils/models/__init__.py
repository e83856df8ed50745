"""Models: networks by name, ready for CAM, and the three we train ourselves.

:func:`load_model` (:mod:`.registry`) builds a network by name with its weights, default CAM layer,
preprocessing and class names as a :class:`LoadedModel` (:mod:`.loaded`); checkpoints are read safely and
loaded completely or not at all (:mod:`.checkpoints`). Our synthetic-scene classifiers (:mod:`.shapes_vgg`,
:mod:`.shapes_vit`; :mod:`.scene_classifiers`: their data, metrics and one training loop) and VQA model
(:mod:`.vqa_model`) are defined and trained here (:mod:`.training`: what all their training shares).
A VQA model becomes a function of the image alone by fixing its question (:mod:`.fixed_inputs`, Sec. 4.4).
Models use the engine's split and the datasets' class names, vocabularies and generated training data.
"""

from .checkpoints import default_device
from .loaded import LoadedModel
from .registry import MODEL_NAMES, load_model

__all__ = ["MODEL_NAMES", "LoadedModel", "default_device", "load_model"]
