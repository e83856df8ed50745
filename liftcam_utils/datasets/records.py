"""The one record type every dataset reader returns, and the seeded selection of ``n_images`` of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .image_files import read_image_file


@dataclass(frozen=True)
class Box:
    """An object's bounding box in pixel coordinates of the original image, ``x1``/``y1`` exclusive."""

    label: int
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class ImageRecord:
    """One image with its class labels (several for multi-label datasets) and object boxes.

    The pixels are read from ``path`` on demand, or held in ``pixels`` for generated images. A VQA
    record also holds its ``question``; its label is then the answer and its boxes are the objects
    the question is about. ``classes`` names what the labels index (the dataset's label space).
    """

    name: str
    labels: tuple[int, ...]
    boxes: tuple[Box, ...] = ()
    path: Path | None = None
    pixels: Image.Image | None = field(default=None, repr=False, compare=False)
    question: str | None = None
    # the label space: the names of the classes that ``labels`` index (e.g. the 1000 ImageNet classes); None where
    # unknown. A model classifies into its own ``categories``, and ``evaluate`` refuses records of another space.
    classes: tuple[str, ...] | None = field(default=None, repr=False)
    # the names of the images this one was made from, in the order of its boxes (a mosaic: its four photos); the
    # verdicts resample by source, since two images made from one photo are not independent evidence
    sources: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self):
        if (self.path is None) == (self.pixels is None):
            raise ValueError(f"record {self.name!r} needs exactly one of path and pixels")

    @property
    def label(self) -> int:
        """The first (for single-label datasets: the) class label: the target of the metrics.
        ``ValueError`` for a record without labels (``labels=()``), which has no target."""
        if not self.labels:
            raise ValueError(f"record {self.name!r} has no labels (labels=()), so it has no target class to "
                             "explain and score; give it at least one class index, e.g. labels=(3,)")
        return self.labels[0]

    def image(self) -> Image.Image:
        """The image as RGB. A file is opened only in an accepted format and within the size limits (checked from
        its first bytes and header before decoding: :func:`~liftcam_utils.datasets.image_files.read_image_file`),
        else :class:`ValueError` naming it."""
        if self.pixels is not None:
            return self.pixels.convert("RGB")
        return read_image_file(self.path)


def select(dataset: Sequence[ImageRecord], n_images: int | None, seed: int) -> list[ImageRecord]:
    """``n_images`` records drawn with ``seed`` (all when None), in dataset order."""
    if n_images is None:
        return list(dataset)
    if not 0 < n_images <= len(dataset):
        raise ValueError(f"n_images must be in 1 .. {len(dataset)} (the dataset's size), got {n_images}")
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n_images]
    return [dataset[i] for i in sorted(chosen.tolist())]
