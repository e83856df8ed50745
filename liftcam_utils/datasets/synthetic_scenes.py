"""Synthetic multi-object scenes: a small, deterministic, VOC-like dataset with exact ground truth.

Each scene holds 1 to 3 objects of distinct classes (:data:`SCENE_CLASSES`: every class has its
own shape *and* colour), sized 18-45% of the image side, placed so that no object loses more than
a quarter of its area to another. The clutter makes colour alone insufficient:

* a textured background: a muted random colour, smooth low-frequency colour noise and pixel noise;
* distractors drawn under the objects: grey/brown blobs (ellipses in colours that are no class's)
  and thin lines in random colours, class colours included (a form that is no class's).

Objects are drawn in flat class colours without anti-aliasing. Each object is rasterised once,
into its own layer; the image and the mask are both painted from that layer, so the mask holds
exactly the pixels drawn for the object (later objects occlude earlier ones in both). An object's
:class:`Box` is the bounding box of its whole drawn layer (``x1``/``y1`` exclusive), occluded
parts included; for an unoccluded object it is the bounding box of its mask pixels.

Everything comes from ``numpy.random.default_rng([seed, index])``, so every scene is reproducible
on its own, independent of the scenes generated before it.

>>> scenes = make_scenes(100, seed=0)          # SceneSet: .records, .masks
>>> record, mask = scenes.records[0], scenes.masks[0]
>>> image, labels, boxes, mask = generate_scene(seed=0, index=0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .records import Box, ImageRecord


@dataclass(frozen=True)
class SceneClass:
    """An object class: its name, shape and flat RGB colour."""

    name: str
    shape: str
    colour: tuple[int, int, int]


SCENE_CLASSES: tuple[SceneClass, ...] = (
    SceneClass("red circle", "circle", (220, 30, 30)),
    SceneClass("green square", "square", (30, 170, 40)),
    SceneClass("blue triangle", "triangle", (30, 60, 225)),
    SceneClass("yellow star", "star", (235, 215, 20)),
    SceneClass("magenta cross", "cross", (215, 30, 215)),
    SceneClass("cyan ring", "ring", (20, 205, 215)),
)
SCENE_CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in SCENE_CLASSES)
DEFAULT_SIZE = 96

_MIN_SIDE, _MAX_SIDE = 0.18, 0.45  # object diameter as a fraction of the image side
_MAX_OCCLUDED = 0.25  # no object shares more than this fraction of its area with another
_PLACEMENT_TRIES = 60


@dataclass
class SceneSet:
    """Generated scenes: ``records[i]`` (image in ``pixels``) and ``masks[i]`` (H x W int array,
    0 = background, ``j + 1`` = visible pixels of object ``j``, ordered as ``records[i].boxes``)."""

    records: list[ImageRecord]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.records)


# -- geometry ------------------------------------------------------------------------------------
def _polygon(cx: float, cy: float, radii, angle: float) -> list[tuple[float, float]]:
    """Points at the given radii, evenly spaced in angle, starting at ``angle`` (radians)."""
    n = len(radii)
    return [(cx + r * np.cos(angle + 2 * np.pi * k / n), cy + r * np.sin(angle + 2 * np.pi * k / n))
            for k, r in enumerate(radii)]


def _cross(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    w = 0.36 * r  # half the arm width
    corners = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r),
               (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float,
                fill: int) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, round(0.38 * r)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r, 0.45 * r] * 5, angle), fill=fill)
    elif shape == "cross":
        draw.polygon(_cross(cx, cy, r, angle), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _object_layer(rng: np.random.Generator, shape: str, size: int,
                  sides: tuple[float, float] = (_MIN_SIDE, _MAX_SIDE)) -> np.ndarray:
    """One object of random size (diameter a fraction in ``sides`` of the image side), position and
    orientation, rasterised as a boolean H x W layer."""
    r = rng.uniform(*sides) * size / 2
    cx, cy = rng.uniform(r, size - 1 - r, size=2)
    if shape == "square":
        angle = np.pi / 4 + rng.uniform(-0.35, 0.35)  # axis-aligned up to +-20 degrees
        r *= 0.85  # half-diagonal: keep the square's area comparable to the other shapes
    elif shape == "cross":
        angle = rng.uniform(-0.35, 0.35)
    else:
        angle = rng.uniform(0, 2 * np.pi)
    layer = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(layer), shape, cx, cy, r, angle, fill=255)
    return np.asarray(layer) > 0


def bounding_box(layer: np.ndarray, label: int) -> Box:
    """The :class:`Box` of a boolean layer's pixels."""
    ys, xs = np.nonzero(layer)
    return Box(label, float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


# -- clutter -------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted base colour + smooth colour noise + pixel noise, as float H x W x 3."""
    base = rng.uniform(70, 170) + rng.uniform(-25, 25, size=3)
    grid = rng.integers(5, 9)
    coarse = np.clip(128 + rng.normal(0, 22, size=(grid, grid, 3)), 0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
    fine = rng.normal(0, 9, size=(size, size, 3))
    return base + (smooth.astype(np.float64) - 128) + fine


def _draw_distractors(rng: np.random.Generator, image: Image.Image) -> None:
    size = image.width
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 5)):
        if rng.random() < 0.5:  # a blob: grey or brownish ellipse, no class colour
            grey = rng.uniform(50, 200)
            tint = rng.uniform(0, 1) * np.array([35.0, 15.0, -20.0])  # 0 = grey, 1 = brown
            colour = tuple(int(v) for v in np.clip(grey + tint, 0, 255))
            rx, ry = rng.uniform(0.04, 0.14, size=2) * size
            cx, cy = rng.uniform(0, size, size=2)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:  # a thin line: any colour, a class colour half of the time
            if rng.random() < 0.5:
                colour = SCENE_CLASSES[rng.integers(len(SCENE_CLASSES))].colour
            else:
                colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            points = [tuple(p) for p in rng.uniform(0, size, size=(rng.integers(2, 4), 2))]
            draw.line(points, fill=colour, width=int(rng.integers(1, 3)))


# -- scenes --------------------------------------------------------------------------------------
def _start_scene(rng: np.random.Generator, size: int) -> Image.Image:
    """The cluttered background of a scene, before any object is drawn."""
    if size < 32:
        raise ValueError(f"scene size must be at least 32 pixels, got {size}")
    pixels = np.clip(_background(rng, size), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    _draw_distractors(rng, image)
    return image


def place_objects(rng: np.random.Generator, image: Image.Image, objects: list[tuple[str, tuple[int, int, int]]],
                  sides: tuple[float, float] = (_MIN_SIDE, _MAX_SIDE)
                  ) -> tuple[Image.Image, list[int], list[np.ndarray], np.ndarray]:
    """Draw ``objects`` (shape, RGB colour) at random places onto ``image``, in order, each with a
    diameter of a fraction in ``sides`` of the image side.

    Returns the new image, the indices into ``objects`` of those drawn (an object that finds no place
    where it and the others keep at least 3/4 of their area after all tries is left out), their
    boolean layers and the H x W mask (0 = background, ``j + 1`` = visible pixels of drawn object ``j``).
    """
    size = image.width
    layers: list[np.ndarray] = []
    drawn: list[int] = []
    for index, (shape, _colour) in enumerate(objects):
        for _ in range(_PLACEMENT_TRIES):
            layer = _object_layer(rng, shape, size, sides)
            area = layer.sum()
            if all((layer & other).sum() <= _MAX_OCCLUDED * min(area, other.sum()) for other in layers):
                layers.append(layer)
                drawn.append(index)
                break
    canvas = np.array(image)
    mask = np.zeros((size, size), dtype=np.int64)
    for j, (layer, index) in enumerate(zip(layers, drawn, strict=True)):
        canvas[layer] = objects[index][1]
        mask[layer] = j + 1
    return Image.fromarray(canvas, "RGB"), drawn, layers, mask


def generate_scene(seed: int, index: int, size: int = DEFAULT_SIZE
                   ) -> tuple[Image.Image, tuple[int, ...], tuple[Box, ...], np.ndarray]:
    """Scene ``index`` of the dataset ``seed``: ``(image, labels, boxes, mask)``.

    ``image`` is an RGB ``size`` x ``size`` PIL image; ``labels`` are 1 to 3 distinct class indices
    into :data:`SCENE_CLASSES` in drawing order; ``boxes[j]`` is object ``j``'s :class:`Box`; ``mask``
    is an ``int64`` H x W array, 0 = background, ``j + 1`` = visible pixels of object ``j``.
    """
    rng = np.random.default_rng([seed, index])
    image = _start_scene(rng, size)
    n_objects = int(rng.integers(1, 4))
    classes = rng.choice(len(SCENE_CLASSES), size=n_objects, replace=False)
    objects = [(SCENE_CLASSES[label].shape, SCENE_CLASSES[label].colour) for label in classes]
    image, drawn, layers, mask = place_objects(rng, image, objects)
    labels = [int(classes[i]) for i in drawn]
    boxes = tuple(bounding_box(layer, label) for layer, label in zip(layers, labels, strict=True))
    return image, tuple(labels), boxes, mask


def scene_name(seed: int, index: int) -> str:
    return f"scene_{seed}_{index:05d}"


def make_scenes(n: int, seed: int = 0, size: int = DEFAULT_SIZE, start: int = 0) -> SceneSet:
    """Scenes ``start`` .. ``start + n - 1`` of the dataset ``seed`` as a :class:`SceneSet`.

    Record ``i`` is named ``scene_{seed}_{index:05d}`` and holds its image in ``pixels``.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    records, masks = [], []
    for index in range(start, start + n):
        image, labels, boxes, mask = generate_scene(seed, index, size)
        records.append(ImageRecord(name=scene_name(seed, index), labels=labels, boxes=boxes, pixels=image,
                                   classes=SCENE_CLASS_NAMES))
        masks.append(mask)
    return SceneSet(records=records, masks=masks)


def multi_hot(records: list[ImageRecord], num_classes: int = len(SCENE_CLASSES)) -> np.ndarray:
    """``(len(records), num_classes)`` float32 0/1 targets: 1 where the class is in the scene."""
    targets = np.zeros((len(records), num_classes), dtype=np.float32)
    for i, record in enumerate(records):
        targets[i, list(record.labels)] = 1.0
    return targets
