"""Datasets by name, as the notebooks' ``dataset`` parameter names them, with their default model.

| name | what | default model |
|---|---|---|
| ``"photos"`` | the embedded real photos (foolbox's 20 ImageNet images + scikit-image's) | ``efficientnet_lite0`` |
| ``"scenes"`` | generated multi-object scenes with exact boxes (a split never used in training) | ``shapes_vgg`` |
| ``"imagenet"`` | ILSVRC2012 validation images with boxes, from ``data_dir`` | ``vgg16`` |
| ``"voc"`` | PASCAL VOC 2007 test, from ``data_dir`` | ``vgg16_voc`` (TorchRay checkpoint) |
| ``"coco"`` | COCO 2014 val, from ``data_dir`` | ``vgg16_coco`` (TorchRay checkpoint) |
| ``"vqa"`` | questions about generated scenes, with exact grounding (a split never used in training) | ``shapes_vqa`` |
| ``"vqa_v2"`` | VQA v2 val questions, from ``data_dir`` (with the answers' ``vocab_answers.txt``) | ``basic_vqa`` |
| ``"folder"`` | your own images in ``data_dir``: class sub-folders, or flat (see below) | ``efficientnet_lite0`` |

For the VQA datasets a record is a question and ``n_images`` counts questions. ``"vqa"`` takes the
questions of scenes ``0, 1, ...`` of the dataset seed ``VQA_TEST_SEED + seed`` in order, as many as
asked (200 when ``n_images`` is None). ``"vqa_v2"`` labels each question with its answer's index in
``data_dir/vocab_answers.txt``: the basic VQA model's answer vocabulary (one answer per line, the
file beside its checkpoint), so that labels are that model's classes; questions with another answer
are left out (:class:`~liftcam_utils.datasets.vqa_v2.AnswersLeftOutWarning`).

``"folder"`` (:mod:`~liftcam_utils.datasets.folder`) reads ``data_dir/<class>/<images>``, each sub-folder
named by an ImageNet class name or WordNet id, labels 0..999; or image files directly in ``data_dir``,
each labelled with the class that ``model`` (a loaded model, ``load_model(name)``) predicts. Its records have no boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

from .embedded import embedded_photos
from .folder import FOLDER_LAYOUT, LabellingModel, read_image_folder
from .paper_data import read_coco2014_val, read_imagenet_val, read_voc2007_test
from .questions import Vocabulary
from .records import ImageRecord, select
from .synthetic_scenes import make_scenes
from .synthetic_vqa import make_vqa
from .vqa_v2 import read_vqa_v2

SCENES_TEST_SEED = 2024  # the scenes model trained on seed 0 and was validated on seed 10000
VQA_TEST_SEED = 2024  # likewise the shapes_vqa model: trained on seed 0, validated on seed 10000
_MIN_QUESTIONS_PER_SCENE = 4  # every scene asks colour, exists, count_colour and count (shape: when unique)
DATASETS = ("photos", "scenes", "imagenet", "voc", "coco", "vqa", "vqa_v2", "folder")
DEFAULT_MODELS = {"photos": "efficientnet_lite0", "scenes": "shapes_vgg", "imagenet": "vgg16", "voc": "vgg16_voc",
                  "coco": "vgg16_coco", "vqa": "shapes_vqa", "vqa_v2": "basic_vqa", "folder": "efficientnet_lite0"}
_READERS = {"imagenet": read_imagenet_val, "voc": read_voc2007_test, "coco": read_coco2014_val,
            "vqa_v2": read_vqa_v2}
ANSWER_VOCABULARY_FILE = "vocab_answers.txt"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, n_images: int | None = None,
                 seed: int = 0, *, model: LabellingModel | None = None) -> list[ImageRecord]:
    """``n_images`` records of dataset ``name`` drawn with ``seed`` (all when None; 200 scenes or questions).

    The paper's datasets and ``"folder"`` are read from ``data_dir``; when it or a file is missing the error
    says what to download (or which layout to provide) and where to put it. ``model`` labels a flat
    ``"folder"`` by its predicted classes; every other dataset ignores it. A model *name* is refused for every
    dataset (``TypeError``), so that a notebook that passes one fails on the photos too, not only on a folder.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if isinstance(model, str):
        raise TypeError(f"model must be a loaded model or None, not the name {model!r}: pass load_model({model!r}) "
                        "(from liftcam_utils.models.registry)")
    if name == "photos":
        return select(embedded_photos(), n_images, seed)
    if name == "scenes":
        return make_scenes(n_images or 200, seed=SCENES_TEST_SEED + seed).records
    if name == "vqa":
        return _synthetic_questions(200 if n_images is None else n_images, seed)
    if name == "folder":
        if data_dir is None:
            raise ValueError("dataset 'folder' reads your own images: set the notebook parameter data_dir to "
                             f"their folder. Expected layout:\n{FOLDER_LAYOUT}")
        return read_image_folder(data_dir, n_images=n_images, seed=seed, model=model)
    if data_dir is None:
        raise FileNotFoundError(
            f"dataset {name!r} is read from disk: set the notebook parameter data_dir to the folder that holds "
            f"it (see liftcam_utils.datasets.{_READERS[name].__name__} for the expected layout)"
        )
    if name == "vqa_v2":
        return read_vqa_v2(data_dir, _answer_vocabulary(Path(data_dir)), n_images=n_images, seed=seed)
    return _READERS[name](data_dir, n_images=n_images, seed=seed)


def _synthetic_questions(n_questions: int, seed: int) -> list[ImageRecord]:
    """The first ``n_questions`` questions of the test scenes of the synthetic VQA task."""
    if isinstance(n_questions, bool) or not isinstance(n_questions, int) or n_questions < 1:
        raise ValueError(f"n_images must be None (200 questions) or a positive integer, got {n_questions!r}")
    n_scenes = -(-n_questions // _MIN_QUESTIONS_PER_SCENE)
    return make_vqa(n_scenes, seed=VQA_TEST_SEED + seed).records[:n_questions]


def _answer_vocabulary(data_dir: Path) -> list[str]:
    path = data_dir / ANSWER_VOCABULARY_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"answer vocabulary {str(path)!r} does not exist: dataset 'vqa_v2' labels each question with its "
            f"answer's index in the model's answer vocabulary. Copy the basic VQA model's {ANSWER_VOCABULARY_FILE} "
            "(one answer per line, the file beside its checkpoint) into data_dir."
        )
    return Vocabulary.from_file(path).words
