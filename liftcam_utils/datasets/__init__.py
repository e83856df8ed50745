"""Datasets as lists of :class:`ImageRecord`: embedded real photos, generated scenes, and readers
for the paper's ImageNet, PASCAL VOC 2007 and COCO 2014 data."""

from .records import Box, ImageRecord

__all__ = ["Box", "ImageRecord"]
