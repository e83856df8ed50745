"""Reader for VQA v2 (Goyal et al. 2017), the data of the paper's VQA experiment (Sec. 4.4, Table 6).

:func:`read_vqa_v2` returns one :class:`ImageRecord` per question: the COCO 2014 image it is
asked about, the ``question`` text, and as its label the index of the question's
``multiple_choice_answer`` (the most frequent of its ten human answers) in the answer vocabulary
of the model to be explained. VQA v2 has no boxes, so ``boxes`` is empty.

Selection follows the other readers (:func:`~liftcam_utils.datasets.paper_data.select_ids`), with
``n_images`` counting questions: ``n_images`` question ids are drawn with ``random.Random(seed)``
from the sorted ids of the valid questions and returned in ascending id order. A question is valid
when its ``multiple_choice_answer`` is in the vocabulary; the others are left out before the
selection, and an :class:`AnswersLeftOutWarning` says how many.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from .image_files import check_image_file
from .paper_data import _missing, _root_dir, select_ids
from .questions import Vocabulary
from .records import ImageRecord

VQA_V2_SPLITS = ("train2014", "val2014")
"""The splits whose answers are public (the test splits have questions only)."""

_DOWNLOADS = {"train2014": ("v2_Questions_Train_mscoco.zip", "v2_Annotations_Train_mscoco.zip", "train2014.zip"),
              "val2014": ("v2_Questions_Val_mscoco.zip", "v2_Annotations_Val_mscoco.zip", "val2014.zip")}


def vqa_v2_layout(split: str = "val2014") -> str:
    """The folder layout :func:`read_vqa_v2` expects for ``split``, with where each file comes from."""
    questions, annotations, images = _DOWNLOADS[split]
    return f"""\
<root>/
  v2_OpenEnded_mscoco_{split}_questions.json   from {questions} (https://visualqa.org/download.html)
  v2_mscoco_{split}_annotations.json           from {annotations} (https://visualqa.org/download.html)
  {split}/COCO_{split}_000000000042.jpg ...    the COCO 2014 images, from {images} (https://cocodataset.org/#download)"""


class AnswersLeftOutWarning(UserWarning):
    """Some questions were left out because their answer is not in the model's answer vocabulary."""


def _read_json(path: Path, what: str, key: str, fields: dict[str, type], layout: str) -> list[dict]:
    """The list ``key`` of the JSON object in ``path``, each entry checked to hold ``fields`` of their types."""
    if not path.is_file():
        raise _missing(what, path, layout)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{what} {str(path)!r} is not in the VQA v2 format: expected a JSON object with a list "
                         f"{key!r}")
    for entry in data[key]:
        if not isinstance(entry, dict) or any(field not in entry for field in fields):
            raise ValueError(f"{what} {str(path)!r}: an entry of {key!r} lacks one of {tuple(fields)}: "
                             f"{entry!r:.200}")
        for field, kind in fields.items():
            if isinstance(entry[field], bool) or not isinstance(entry[field], kind):
                raise ValueError(f"{what} {str(path)!r}: {field} {entry[field]!r} is not a {kind.__name__}, "
                                 "as in VQA v2")
    return data[key]


def _answer_index(answers: Sequence[str]) -> dict[str, int]:
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise TypeError(f"answers must be a sequence of answer strings (the model's answer vocabulary), "
                        f"got {type(answers).__name__}")
    if not answers:
        raise ValueError("answers is empty: pass the model's answer vocabulary")
    return Vocabulary(answers).ids


def read_vqa_v2(
    root: str | os.PathLike,
    answers: Sequence[str],
    n_images: int | None = None,
    seed: int = 0,
    split: str = "val2014",
) -> list[ImageRecord]:
    """The questions of VQA v2 ``split`` whose answer is in ``answers``, as question records.

    Layout (see :func:`vqa_v2_layout`), the official file names:

    * ``root/v2_OpenEnded_mscoco_{split}_questions.json``: ``{"questions": [{"image_id",
      "question", "question_id"}, ...], ...}``;
    * ``root/v2_mscoco_{split}_annotations.json``: ``{"annotations": [{"question_id", "image_id",
      "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}, ...],
      "question_type", "answer_type"}, ...], ...}``; every question needs its annotation;
    * ``root/{split}/COCO_{split}_{image_id:012d}.jpg``: the COCO 2014 images.

    ``answers`` is the model's answer vocabulary (e.g. ``LoadedModel.categories``): the label of a
    record is ``(answers.index(multiple_choice_answer),)``. A record's name is
    ``vqa_{question_id}``; ``n_images`` is a number of questions (see the module docstring).
    Questions whose answer is not in ``answers`` are left out with an :class:`AnswersLeftOutWarning`
    that counts them. Missing files raise :class:`FileNotFoundError`, malformed ones
    :class:`ValueError`, each naming the file.
    """
    if split not in VQA_V2_SPLITS:
        raise ValueError(f"unknown VQA v2 split {split!r}; valid splits (those with answers): "
                         f"{', '.join(VQA_V2_SPLITS)}")
    layout = vqa_v2_layout(split)
    index = _answer_index(answers)
    root = _root_dir(root, "VQA v2", layout)
    question_file = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
    annotation_file = root / f"v2_mscoco_{split}_annotations.json"
    questions = _read_json(question_file, "question file", "questions",
                           {"image_id": int, "question": str, "question_id": int}, layout)
    annotations = _read_json(annotation_file, "annotation file", "annotations",
                             {"question_id": int, "image_id": int, "multiple_choice_answer": str}, layout)
    annotation_of = {annotation["question_id"]: annotation for annotation in annotations}

    valid = {}  # zero-padded question id -> (question entry, label), so that sorted strings sort numerically
    for question in questions:
        annotation = annotation_of.get(question["question_id"])
        if annotation is None or annotation["image_id"] != question["image_id"]:
            raise ValueError(
                f"annotation file {str(annotation_file)!r} has no annotation of question {question['question_id']} "
                f"on image {question['image_id']} of {str(question_file)!r}; use the two files of the same split"
            )
        answer = annotation["multiple_choice_answer"]
        if answer in index:
            valid[f"{question['question_id']:012d}"] = (question, index[answer])
    left_out = len(questions) - len(valid)
    if left_out:
        warnings.warn(f"{left_out} of {len(questions)} VQA v2 {split} questions left out: their "
                      f"multiple_choice_answer is not one of the {len(index)} answers of the vocabulary",
                      AnswersLeftOutWarning, stacklevel=2)

    records, checked = [], set()
    for key in select_ids(list(valid), n_images, seed):
        question, label = valid[key]
        path = root / split / f"COCO_{split}_{question['image_id']:012d}.jpg"
        if path not in checked:
            if not path.is_file():
                raise _missing("image file", path, layout)
            check_image_file(path)  # format and size from the header; record.image() decodes it
            checked.add(path)
        records.append(ImageRecord(name=f"vqa_{question['question_id']}", labels=(label,), path=path,
                                   question=question["question"], classes=tuple(answers)))
    return records
