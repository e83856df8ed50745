"""Datasets by name, as the notebooks' ``dataset`` parameter names them, with their default model.

| name | what | default model |
|---|---|---|
| ``"photos"`` | the embedded real photos (foolbox's 20 ImageNet images + scikit-image's) | ``efficientnet_lite0`` |
| ``"scenes"`` | generated multi-object scenes with exact boxes (a split never used in training) | ``shapes_vgg`` |
| ``"imagenet"`` | ILSVRC2012 validation images with boxes, from ``data_dir`` | ``vgg16`` |
| ``"voc"`` | PASCAL VOC 2007 test, from ``data_dir`` | ``vgg16_voc`` (TorchRay checkpoint) |
| ``"coco"`` | COCO 2014 val, from ``data_dir`` | ``vgg16_coco`` (TorchRay checkpoint) |
"""

from __future__ import annotations

import os

from .embedded import embedded_photos
from .paper_data import read_coco2014_val, read_imagenet_val, read_voc2007_test
from .records import ImageRecord
from .synthetic_scenes import make_scenes

SCENES_TEST_SEED = 2024  # the scenes model trained on seed 0 and was validated on seed 10000
DATASETS = ("photos", "scenes", "imagenet", "voc", "coco")
DEFAULT_MODELS = {"photos": "efficientnet_lite0", "scenes": "shapes_vgg", "imagenet": "vgg16", "voc": "vgg16_voc",
                  "coco": "vgg16_coco"}
_READERS = {"imagenet": read_imagenet_val, "voc": read_voc2007_test, "coco": read_coco2014_val}


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, n_images: int | None = None,
                 seed: int = 0) -> list[ImageRecord]:
    """``n_images`` records of dataset ``name`` drawn with ``seed`` (all when None; 200 scenes).

    The paper's datasets are read from ``data_dir``; when it or a file is missing the error says
    what to download and where to put it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if name == "photos":
        from ..evaluation import select

        return select(embedded_photos(), n_images, seed)
    if name == "scenes":
        return make_scenes(n_images or 200, seed=SCENES_TEST_SEED + seed).records
    if data_dir is None:
        raise FileNotFoundError(
            f"dataset {name!r} is read from disk: set the notebook parameter data_dir to the folder that holds "
            f"it (see liftcam_utils.datasets.{_READERS[name].__name__} for the expected layout)"
        )
    return _READERS[name](data_dir, n_images=n_images, seed=seed)
