"""Datasets as lists of :class:`ImageRecord`: embedded real photos, generated scenes and questions,
readers for the paper's ImageNet, PASCAL VOC 2007, COCO 2014 and VQA v2 data, and for a folder of one's own
images.

Datasets are the lowest layer but the engine: they use the engine's ``eval_mode`` to label a flat folder with a
loaded model that the caller passes in, and import neither models nor methods.
"""

from .catalog import DATASETS, DEFAULT_MODELS, load_dataset
from .folder import read_image_folder
from .paper_data import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    VOC_CLASSES,
    read_coco2014_val,
    read_imagenet_val,
    read_voc2007_test,
)
from .records import Box, ImageRecord, select
from .vqa_v2 import AnswersLeftOutWarning, read_vqa_v2

__all__ = [
    "AnswersLeftOutWarning",
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "DATASETS",
    "DEFAULT_MODELS",
    "VOC_CLASSES",
    "Box",
    "ImageRecord",
    "load_dataset",
    "read_coco2014_val",
    "read_image_folder",
    "read_imagenet_val",
    "read_voc2007_test",
    "read_vqa_v2",
    "select",
]
