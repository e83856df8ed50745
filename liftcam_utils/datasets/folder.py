"""A folder of one's own images as a dataset (``load_dataset("folder", data_dir, ...)``), in one of two layouts.

* **Class sub-folders** (torchvision's ``ImageFolder`` layout): ``data_dir/<class>/<image files>``, one
  sub-folder per class, its images anywhere below it. A folder is named by an ImageNet class name as the
  ImageNet models list them (:data:`IMAGENET_CATEGORIES`, torchvision's names: ``tench``, ``goldfish``,
  ``golden retriever``), matched ignoring case and with ``_`` read as a space, or by a WordNet id
  (``n01440764``). The 1000 WordNet ids ship with no installed package, so WordNet-id folders need
  ImageNet's ``LOC_synset_mapping.txt`` in ``data_dir`` (read and checked as :func:`read_imagenet_val`
  reads it). The label is the class's ImageNet index 0..999.
* **Flat**: the image files directly in ``data_dir``, no sub-folders. The label is the class that
  ``model`` predicts (the argmax of its logits), so the ``model`` keyword is required (a loaded model:
  ``load_model(name)``), and the labels index that model's ``categories``.

Image files are those with a suffix in :data:`IMAGE_SUFFIXES` (any case); other files and every name
starting with ``.`` are ignored. Records are sorted by their name, the file's path relative to ``data_dir``
(``tench/img_001.jpg``); ``n_images`` of them are drawn with ``seed`` by
:func:`liftcam_utils.datasets.records.select`, as for the embedded photos, so the same folder, ``n_images`` and
``seed`` always give the same records. Each selected image is decoded once when the dataset is read (to
classify it, or to check it), through :func:`~liftcam_utils.datasets.image_files.read_image_file`: a file
that is damaged, is in a format not read (recognised from its first bytes, whatever its suffix: an EPS file
named ``photo.jpg`` is refused before any parser of EPS runs) or is too large or too thin (checked from its
header before decoding) raises :class:`ValueError` naming it, rather than being skipped, so a bad file never
silently changes the selection. ``record.image()`` reads the file again, as RGB, through the same checks.

The records have no boxes: the pointing game cannot be played on a folder.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from ..engine.split import eval_mode
from .image_files import read_image_file
from .paper_data import _IMAGENET_SYNSET_FILE, IMAGENET_CATEGORIES, _read_synsets
from .records import ImageRecord, select


class LabellingModel(Protocol):
    """What labels a flat folder: a loaded model (:class:`liftcam_utils.models.LoadedModel`, from ``load_model``)."""

    name: str
    net: torch.nn.Module
    preprocess: Callable
    categories: list[str]
    questions: object
    question: str | None

    @property
    def device(self) -> torch.device: ...



IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""Suffixes (compared in lower case) of the files read as images."""

FOLDER_LAYOUT = f"""\
either one sub-folder per class (torchvision's ImageFolder layout):
  <data_dir>/tench/img_001.jpg        named by an ImageNet class name (case-insensitive, _ for a space)
  <data_dir>/goldfish/img_002.png
  <data_dir>/n01443537/img_003.jpg    or by a WordNet id, with <data_dir>/{_IMAGENET_SYNSET_FILE}
                                      (from Kaggle's "ImageNet Object Localization Challenge" data)
or the image files directly in <data_dir>, with no sub-folders, labelled by the model's predicted class
(pass model=...). Image files: {", ".join(IMAGE_SUFFIXES)}"""

_WNID = re.compile(r"n\d{8}")
_PREDICT_BATCH = 16


def read_image_folder(root: str | os.PathLike, n_images: int | None = None, seed: int = 0, *,
                      model: LabellingModel | None = None,
                      synset_file: str | os.PathLike | None = None) -> list[ImageRecord]:
    """``n_images`` records (all when None) of the images in ``root``, drawn with ``seed``; see the module
    docstring for the two layouts.

    ``model`` (a loaded model, :class:`~liftcam_utils.models.LoadedModel`) labels a flat folder and is not used
    for class sub-folders. ``synset_file``
    replaces ``root/LOC_synset_mapping.txt`` for WordNet-id folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} is not a directory. Expected layout:\n{FOLDER_LAYOUT}")
    entries = _visible(root)
    folders = [path for path in entries if path.is_dir()]
    files = [path for path in entries if _is_image_file(path)]
    if folders and files:
        raise ValueError(
            f"image folder {str(root)!r} holds both sub-folders ({_few(p.name for p in folders)}) and image "
            f"files ({_few(p.name for p in files)}): use one layout. Expected layout:\n{FOLDER_LAYOUT}"
        )
    if folders:
        return _class_folder_records(root, folders, n_images, seed, synset_file)
    if not files:
        raise FileNotFoundError(f"image folder {str(root)!r} holds no image files and no class sub-folders. "
                                f"Expected layout:\n{FOLDER_LAYOUT}")
    return _flat_records(root, files, n_images, seed, model)


def imagenet_class_index(folder_name: str, wnids: list[str] | None = None) -> int:
    """The ImageNet class index that a class folder's name names: a class name of
    :data:`IMAGENET_CATEGORIES` (exact, else ignoring case, ``_`` read as a space), or a WordNet id
    looked up in ``wnids`` (the 1000 ids in class order). Raises :class:`ValueError` with close matches."""
    if _WNID.fullmatch(folder_name):
        if wnids is None:
            raise ValueError(f"class folder {folder_name!r} is named by a WordNet id, but no synset mapping "
                             "was given to look it up")
        if folder_name in wnids:
            return wnids.index(folder_name)
        raise ValueError(f"class folder {folder_name!r} is not one of the 1000 ImageNet WordNet ids"
                         + _suggestions(folder_name, wnids))
    name = folder_name.replace("_", " ")
    if name in IMAGENET_CATEGORIES:
        return IMAGENET_CATEGORIES.index(name)
    matches = [i for i, category in enumerate(IMAGENET_CATEGORIES) if category.casefold() == name.casefold()]
    if len(matches) > 1:
        raise ValueError(f"class folder {folder_name!r} matches the ImageNet classes "
                         f"{', '.join(f'{i} {IMAGENET_CATEGORIES[i]!r}' for i in matches)} when case is ignored: "
                         "rename it with that class's exact case")
    if matches:
        return matches[0]
    raise ValueError(f"class folder {folder_name!r} is neither an ImageNet class name nor a WordNet id"
                     + _suggestions(name, IMAGENET_CATEGORIES))


def _class_folder_records(root: Path, folders: list[Path], n_images: int | None, seed: int,
                          synset_file: str | os.PathLike | None) -> list[ImageRecord]:
    """The records of class sub-folders, labelled by their folders' ImageNet indices; selected, then checked."""
    wnids = None
    named_by_wnid = [folder.name for folder in folders if _WNID.fullmatch(folder.name)]
    if named_by_wnid:
        synsets = Path(synset_file) if synset_file is not None else root / _IMAGENET_SYNSET_FILE
        if not synsets.is_file():
            raise FileNotFoundError(
                f"class folders {_few(named_by_wnid)} are named by WordNet ids, which no installed package maps "
                f"to class indices: put ImageNet's {_IMAGENET_SYNSET_FILE} (1000 lines \"n01440764 tench, Tinca "
                f"tinca\", from Kaggle's \"ImageNet Object Localization Challenge\" data) at {str(synsets)!r}, "
                f"or name the folders by class name. Expected layout:\n{FOLDER_LAYOUT}"
            )
        wnids = _read_synsets(synsets)
    labels, errors = {}, []
    for folder in folders:
        try:
            labels[folder] = imagenet_class_index(folder.name, wnids)
        except ValueError as error:
            errors.append(str(error))
    if errors:
        raise ValueError("\n".join(errors) + f"\nExpected layout:\n{FOLDER_LAYOUT}")
    records = []
    for folder in folders:
        paths = sorted((path for path in folder.rglob("*") if _is_image_file(path)
                        and not any(part.startswith(".") for part in path.relative_to(root).parts)),
                       key=lambda path: path.relative_to(root).as_posix())
        if not paths:
            raise FileNotFoundError(f"class folder {str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        records += [ImageRecord(path.relative_to(root).as_posix(), (labels[folder],), path=path,
                                 classes=IMAGENET_CATEGORIES) for path in paths]
    records.sort(key=lambda record: record.name)
    selected = select(records, n_images, seed)
    for record in selected:
        read_image_file(record.path)
    return selected


def _flat_records(root: Path, files: list[Path], n_images: int | None, seed: int,
                  model: LabellingModel | None) -> list[ImageRecord]:
    """The records of a flat folder, selected, then labelled by ``model``'s predicted class."""
    if model is None:
        raise ValueError(
            f"image folder {str(root)!r} holds image files with no class sub-folders, so each image is labelled "
            "with the class a model predicts: pass the model, e.g. load_dataset('folder', data_dir, "
            f"model=load_model('efficientnet_lite0')), or sort the images into class sub-folders. Expected layout:\n"
            f"{FOLDER_LAYOUT}"
        )
    if isinstance(model, str):
        raise TypeError(f"model must be a loaded model, not the name {model!r}: pass load_model({model!r}) "
                        "(from liftcam_utils.models.registry) to label the images of a flat folder")
    if model.questions is not None and model.question is None:
        raise ValueError(f"model {model.name!r} answers questions: fix one with model.fixed(question) to label "
                         "a folder of images, or use an image classifier")
    unlabelled = select([ImageRecord(path.name, (), path=path) for path in sorted(files)], n_images, seed)
    labels = []
    with eval_mode(model.net), torch.no_grad():
        for start in range(0, len(unlabelled), _PREDICT_BATCH):
            chunk = unlabelled[start:start + _PREDICT_BATCH]
            x = torch.stack([model.preprocess(read_image_file(record.path)) for record in chunk]).to(model.device)
            labels += model.net(x).argmax(1).tolist()
    classes = tuple(model.categories)  # the labels index the model's classes
    return [ImageRecord(record.name, (label,), path=record.path, classes=classes)
            for record, label in zip(unlabelled, labels, strict=True)]


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` whose names do not start with ``.``, sorted by name."""
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def _is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with one of :data:`IMAGE_SUFFIXES`."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _few(names, limit: int = 3) -> str:
    """The first ``limit`` of ``names``, comma-separated, with the count when there are more."""
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _suggestions(name: str, choices) -> str:
    """``"; close matches: ..."`` for ``name`` among ``choices`` (compared ignoring case), or ``""``."""
    by_key = {choice.casefold(): choice for choice in choices}
    close = difflib.get_close_matches(name.casefold(), list(by_key), n=3, cutoff=0.6)
    return f"; close matches: {', '.join(repr(by_key[key]) for key in close)}" if close else ""
