"""Datasets as lists of :class:`ImageRecord`: embedded real photos, generated scenes, and readers
for the paper's ImageNet, PASCAL VOC 2007 and COCO 2014 data."""

from .catalog import DATASETS, DEFAULT_MODELS, load_dataset
from .paper_data import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    VOC_CLASSES,
    read_coco2014_val,
    read_imagenet_val,
    read_voc2007_test,
)
from .records import Box, ImageRecord

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "DATASETS",
    "DEFAULT_MODELS",
    "VOC_CLASSES",
    "Box",
    "ImageRecord",
    "load_dataset",
    "read_coco2014_val",
    "read_imagenet_val",
    "read_voc2007_test",
]
