"""Real photos with ImageNet labels that ship inside PyPI packages, so the workbook runs offline.

* The 20 ImageNet validation images inside the ``foolbox`` wheel
  (``foolbox/data/imagenet_XX_LABEL.jpg``, the label is in the file name). Only the files are read;
  foolbox itself is never imported.
* Four photos bundled with scikit-image, each with the ImageNet classes that describe it (a cat
  photo is fairly "tabby", "tiger cat" or "Egyptian cat", so such photos carry several labels).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from .paper_data import IMAGENET_CATEGORIES
from .records import ImageRecord

_FOOLBOX_NAME = re.compile(r"imagenet_(\d\d)_(\d+)\.jpg")

# scikit-image file -> ImageNet classes that fit the photo
_SKIMAGE_PHOTOS = {
    "chelsea.png": (281, 282, 285),  # tabby, tiger cat, Egyptian cat
    "coffee.png": (967, 968),  # espresso, cup
    "rocket.jpg": (657, 744),  # missile, projectile
    "motorcycle_left.png": (665, 670),  # moped, motor scooter
}


def _package_dir(package: str) -> Path:
    """A package's folder, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the package {package!r} is not installed; it ships the embedded photos "
            f"(pip install {package}, or `make workbook`, which installs everything)"
        )
    return Path(spec.submodule_search_locations[0])


def foolbox_imagenet() -> list[ImageRecord]:
    """The 20 ImageNet validation photos from the foolbox wheel, in file order."""
    folder = _package_dir("foolbox") / "data"
    records = []
    for path in sorted(folder.glob("imagenet_*.jpg")):
        match = _FOOLBOX_NAME.fullmatch(path.name)
        if match:
            records.append(ImageRecord(name=path.stem, labels=(int(match.group(2)),), path=path,
                                       classes=IMAGENET_CATEGORIES))
    if len(records) != 20:
        raise FileNotFoundError(f"expected 20 files imagenet_XX_LABEL.jpg in {folder}, found {len(records)}")
    return records


def skimage_photos() -> list[ImageRecord]:
    """Photos bundled with scikit-image, each with the ImageNet classes that describe it."""
    folder = _package_dir("skimage") / "data"
    records = []
    for file, labels in _SKIMAGE_PHOTOS.items():
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"scikit-image's bundled photo {path} is missing")
        records.append(ImageRecord(name=f"skimage_{Path(file).stem}", labels=labels, path=path,
                                   classes=IMAGENET_CATEGORIES))
    return records


def embedded_photos() -> list[ImageRecord]:
    """All embedded real photos: foolbox's 20 ImageNet images, then scikit-image's photos."""
    return foolbox_imagenet() + skimage_photos()
