"""2 x 2 mosaics of real photos for the grid pointing game: the target's quadrant is its box.

Only photos that the model classifies correctly and confidently are used, and the four photos
of a mosaic have four distinct classes, so each quadrant is the one region that explains its
class.
"""

from __future__ import annotations

import random

import torch
from PIL import Image, ImageOps

from ..engine.outputs import class_probabilities
from .records import Box, ImageRecord


def confident_records(model, records: list[ImageRecord], min_confidence: float = 0.5,
                      batch_size: int = 16) -> list[ImageRecord]:
    """Records whose top-1 prediction is one of their labels with probability >= ``min_confidence``, each
    relabelled with that class alone.

    The top-1 class is the largest logit. Its probability is under the model's output function
    (``model.output``): its softmax across the classes for a single-label model, the sigmoid of its own logit
    for a multi-label one (``"sigmoid"``). A multi-label model's classes do not compete: on a photo with two
    classes present it is sure of both (two sigmoids near 1), while their softmaxes share one (at most 1/2
    each), so the softmax would drop photos the model is sure of, and its threshold would mean something else
    for every number of classes present. The sigmoid asks what the grid needs: is the model sure that the
    quadrant's class is there? (The largest logit is the largest probability under either function, so the
    top-1 class does not depend on it.)"""
    kept = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        x = torch.stack([model.preprocess(r.image()) for r in chunk]).to(model.device)
        with torch.no_grad():
            confidence, predicted = class_probabilities(model.net(x), model.output).max(1)
        for record, p, c in zip(chunk, predicted.tolist(), confidence.tolist(), strict=True):
            if p in record.labels and c >= min_confidence:
                kept.append(ImageRecord(name=record.name, labels=(p,), path=record.path,
                                        pixels=record.pixels, classes=record.classes))
    return kept


def make_grids(records: list[ImageRecord], n_grids: int, seed: int = 0, cell: int = 112
               ) -> list[ImageRecord]:
    """``n_grids`` mosaics of four single-label records of distinct classes, drawn with ``seed``.

    Each photo is centre-cropped to a square and resized to ``cell`` pixels; the mosaic is
    ``2 cell`` square, with labels and boxes listed in quadrant order (top-left, top-right,
    bottom-left, bottom-right), and ``sources`` the four photos' names in the same order.
    """
    by_class: dict[int, list[ImageRecord]] = {}
    for record in records:
        by_class.setdefault(record.label, []).append(record)
    if len(by_class) < 4:
        raise ValueError(f"a 2 x 2 grid needs photos of 4 distinct classes, got {len(by_class)}")
    rng = random.Random(seed)
    grids = []
    for index in range(n_grids):
        classes = rng.sample(sorted(by_class), 4)
        chosen = [rng.choice(by_class[c]) for c in classes]
        mosaic = Image.new("RGB", (2 * cell, 2 * cell))
        boxes = []
        for quadrant, record in enumerate(chosen):
            x0, y0 = (quadrant % 2) * cell, (quadrant // 2) * cell
            mosaic.paste(ImageOps.fit(record.image(), (cell, cell)), (x0, y0))
            boxes.append(Box(record.label, x0, y0, x0 + cell, y0 + cell))
        grids.append(ImageRecord(name=f"grid_{seed}_{index:03d}", labels=tuple(classes),
                                 boxes=tuple(boxes), pixels=mosaic, classes=chosen[0].classes,
                                 sources=tuple(record.name for record in chosen)))
    return grids
