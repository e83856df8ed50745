"""A synthetic VQA task with exact grounding: templated questions about generated scenes.

Each 64 x 64 scene holds 1 to 3 objects of distinct :data:`SHAPES` (30-50 % of the image side), each painted in one of
:data:`COLOURS` drawn independently (two objects may share a colour), on the cluttered
background of :mod:`~liftcam_utils.datasets.synthetic_scenes`. So answering needs the image: a
shape's colour is not implied by the shape. Every scene asks the questions of
:data:`QUESTION_TYPES` that have a unique answer:

| type | question | answer | about (grounding) |
|---|---|---|---|
| ``colour`` | what color is the {shape}? | a colour | that object |
| ``shape`` | what shape is the {colour} object? (colour unique in the scene) | a shape | that object |
| ``exists`` | is there a {colour} {shape}? | yes / no | the object if yes; none if no |
| ``count_colour`` | how many {colour} objects are there? | 0 - 3 | the objects of that colour |
| ``count`` | how many objects are there? | 1 - 3 | every object |

For ``exists`` the answer is "no" half of the time, with a hard negative: a present shape in
another colour, or a present colour on an absent shape. ``count_colour`` asks about a present
colour two times in three. A record's ``labels`` is ``(answer id,)`` into :data:`ANSWERS`; its
``boxes`` are the objects the question is about (label = the answer id), and
:attr:`VqaSet.masks` holds their exact pixels. Everything comes from
``numpy.random.default_rng([seed, index])``, per scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .records import ImageRecord
from .synthetic_scenes import _start_scene, bounding_box, place_objects, scene_name

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 225), "yellow": (235, 215, 20),
           "magenta": (215, 30, 215), "cyan": (20, 205, 215)}
ANSWERS = (*COLOURS, *SHAPES, "yes", "no", "0", "1", "2", "3")
QUESTION_TYPES = ("colour", "shape", "exists", "count_colour", "count")
VQA_IMAGE_SIZE = 64
OBJECT_SIDES = (0.3, 0.5)  # object diameter / image side: larger than in the classification scenes (64 px)
MAX_QUESTION_TOKENS = 10  # the longest template, "how many magenta objects are there ?", has 7


Question = tuple[str, str, str, list[int]]  # (type, question, answer, indices of the objects it is about)


@dataclass
class VqaSet:
    """Question records (several per scene) with ``masks[i]``: the H x W boolean pixels of the
    objects question ``i`` is about, and ``types[i]``, its entry of :data:`QUESTION_TYPES`."""

    records: list[ImageRecord]
    masks: list[np.ndarray]
    types: list[str]

    def __len__(self) -> int:
        return len(self.records)


_TYPE_PREFIXES = {"what color is the": "colour", "what shape is the": "shape", "is there a": "exists",
                  "how many objects": "count", "how many": "count_colour"}


def question_type(question: str) -> str:
    """The :data:`QUESTION_TYPES` entry of one of this task's questions."""
    for prefix, kind in _TYPE_PREFIXES.items():
        if question.startswith(prefix):
            return kind
    raise ValueError(f"{question!r} is not a question of the synthetic VQA task")


def _questions(rng: np.random.Generator, objects: list[tuple[str, str]]) -> list[Question]:
    """The questions one scene's objects (shape, colour name) answer."""
    shapes = [shape for shape, _ in objects]
    colours = [colour for _, colour in objects]
    questions = []
    j = int(rng.integers(len(objects)))
    questions.append(("colour", f"what color is the {shapes[j]}?", colours[j], [j]))
    unique = [j for j, colour in enumerate(colours) if colours.count(colour) == 1]
    if unique:
        j = unique[int(rng.integers(len(unique)))]
        questions.append(("shape", f"what shape is the {colours[j]} object?", shapes[j], [j]))
    if rng.random() < 0.5:
        j = int(rng.integers(len(objects)))
        questions.append(("exists", f"is there a {colours[j]} {shapes[j]}?", "yes", [j]))
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (s, c) not in objects and (s in shapes or c in colours)]
        colour, shape = absent[int(rng.integers(len(absent)))]
        questions.append(("exists", f"is there a {colour} {shape}?", "no", []))
    present = sorted(set(colours))
    others = [c for c in COLOURS if c not in colours]
    pool = present if rng.random() < 2 / 3 or not others else others
    colour = pool[int(rng.integers(len(pool)))]
    matching = [j for j, c in enumerate(colours) if c == colour]
    questions.append(("count_colour", f"how many {colour} objects are there?", str(len(matching)), matching))
    questions.append(("count", "how many objects are there?", str(len(objects)), list(range(len(objects)))))
    return questions


def generate_vqa_scene(seed: int, index: int, size: int = VQA_IMAGE_SIZE
                       ) -> tuple[Image.Image, list[tuple[str, str]], list[np.ndarray], list[Question]]:
    """Scene ``index`` of the VQA dataset ``seed``: ``(image, objects, layers, questions)``.

    ``objects[j]`` is object ``j``'s (shape, colour name), ``layers[j]`` its boolean pixels (as drawn;
    later objects may occlude it), ``questions`` the (type, question, answer, indices of the objects
    it is about) of every question the scene asks.
    """
    rng = np.random.default_rng([seed, index])
    image = _start_scene(rng, size)
    n_objects = int(rng.integers(1, 4))
    shapes = rng.choice(len(SHAPES), size=n_objects, replace=False)
    colours = rng.choice(len(COLOURS), size=n_objects)
    names = list(COLOURS)
    wanted = [(SHAPES[s], names[c]) for s, c in zip(shapes, colours, strict=True)]
    image, drawn, layers, mask = place_objects(rng, image, [(s, COLOURS[c]) for s, c in wanted], OBJECT_SIDES)
    objects = [wanted[i] for i in drawn]
    visible = [mask == j + 1 for j in range(len(objects))]
    return image, objects, visible, _questions(rng, objects)


def make_vqa(n_scenes: int, seed: int = 0, size: int = VQA_IMAGE_SIZE, start: int = 0) -> VqaSet:
    """The questions of scenes ``start`` .. ``start + n_scenes - 1`` of the VQA dataset ``seed``.

    Record names are ``scene_{seed}_{index:05d}_q{k}``: question ``k`` of that scene.
    """
    if n_scenes < 0:
        raise ValueError(f"n_scenes must be non-negative, got {n_scenes}")
    records, masks, types = [], [], []
    for index in range(start, start + n_scenes):
        image, _objects, visible, questions = generate_vqa_scene(seed, index, size)
        for k, (kind, question, answer, about) in enumerate(questions):
            label = ANSWERS.index(answer)
            records.append(ImageRecord(
                name=f"{scene_name(seed, index)}_q{k}", labels=(label,), pixels=image, question=question,
                classes=ANSWERS,
                boxes=tuple(bounding_box(visible[j], label) for j in about)))
            masks.append(np.logical_or.reduce([visible[j] for j in about]) if about
                         else np.zeros((size, size), dtype=bool))
            types.append(kind)
    return VqaSet(records=records, masks=masks, types=types)
