"""Readers for the paper's datasets, each returning a list of :class:`ImageRecord`.

* :func:`read_imagenet_val`: ILSVRC2012 validation images with their bounding-box XML files;
  labels are torchvision's ImageNet class indices 0..999.
* :func:`read_voc2007_test`: PASCAL VOC 2007 test in the VOCdevkit layout; multi-label, indices
  into :data:`VOC_CLASSES`.
* :func:`read_coco2014_val`: COCO 2014 val from ``instances_val2014.json`` (read with pycocotools);
  multi-label, indices into :data:`COCO_CLASSES`.

Boxes are :class:`Box` es in pixel coordinates of the original image, ``x1``/``y1`` exclusive.

Every reader takes ``n_images`` and ``seed``: ``n_images=None`` reads every valid image, otherwise
``n_images`` ids are drawn with ``random.Random(seed).sample`` from the sorted list of all valid ids
and returned in sorted order, so the same ``(n_images, seed)`` always gives the same records (the
paper uses 1000 images, 500 for its Table 2). Annotations are parsed from disk on each call; nothing
is cached. Each selected image file must exist and its header is checked, without decoding it: its
format (from its first bytes) and its size (:func:`~liftcam_utils.datasets.image_files.check_image_file`);
``record.image()`` decodes it, through the same checks. Missing or malformed files raise
:class:`FileNotFoundError` / :class:`ValueError` naming the file expected and the layout it belongs to.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from torchvision.models._meta import _IMAGENET_CATEGORIES

from .image_files import check_image_file
from .records import Box, ImageRecord

IMAGENET_CATEGORIES: tuple[str, ...] = tuple(_IMAGENET_CATEGORIES)
"""The 1000 ImageNet class names in the order of the ImageNet models (torchvision's list, as ``load_model`` uses it);
the ImageNet readers' labels index this tuple."""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""The 20 PASCAL VOC classes in the standard (alphabetical) order; labels index this tuple."""

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)  # fmt: skip
"""The 80 COCO category ids (non-contiguous, 1..90) in ascending order: label ``i`` is id
``COCO_CATEGORY_IDS[i]``."""

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO category names as ``instances_*2014.json`` lists them, in ascending category-id
order; labels index this tuple. The reader checks the JSON's categories against it."""

IMAGENET_LAYOUT = """\
<root>/
  LOC_synset_mapping.txt            1000 lines "n01440764 tench, Tinca tinca", in class-index order
  ILSVRC2012_img_val/               (or val/) the 50,000 images ILSVRC2012_val_00000001.JPEG, ...
  bbox_val/                         the bounding-box XML files ILSVRC2012_val_00000001.xml, ...
(ILSVRC2012_bbox_val_v3.tgz unpacks its XML files into val/: move them to bbox_val/;
LOC_synset_mapping.txt comes with Kaggle's "ImageNet Object Localization Challenge" data)"""

VOC_LAYOUT = """\
<root>/VOCdevkit/VOC2007/           (or <root> pointing at VOCdevkit/VOC2007 itself)
  ImageSets/Main/test.txt           one image id per line, e.g. 000001
  Annotations/000001.xml            one PASCAL VOC XML file per image
  JPEGImages/000001.jpg             the images
(all unpacked from VOCtest_06-Nov-2007.tar)"""

COCO_LAYOUT = """\
<root>/
  annotations/instances_val2014.json   from annotations_trainval2014.zip
  val2014/COCO_val2014_000000000042.jpg ... the images, from val2014.zip"""

_IMAGENET_SYNSET_FILE = "LOC_synset_mapping.txt"
_IMAGE_SUFFIXES = (".JPEG", ".jpeg", ".jpg", ".JPG")


# ----------------------------------------------------------------------------- shared helpers


def select_ids(ids: Sequence[str], n_images: int | None, seed: int = 0) -> list[str]:
    """``n_images`` ids drawn with ``random.Random(seed)`` from ``sorted(ids)``, returned sorted.

    ``n_images=None`` returns all ids, sorted. Raises :class:`ValueError` when ``n_images`` is not
    a positive integer or exceeds the number of ids.
    """
    pool = sorted(ids)
    if n_images is None:
        return pool
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be None (all images) or a positive integer, got {n_images!r}")
    if n_images > len(pool):
        raise ValueError(f"n_images={n_images} asked for, but only {len(pool)} valid images are available")
    return sorted(random.Random(seed).sample(pool, n_images))


def _root_dir(root: str | os.PathLike, dataset: str, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{dataset} root {str(root)!r} is not a directory. Expected layout:\n{layout}"
        )
    return root


def _missing(what: str, path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} {str(path)!r} does not exist. Expected layout:\n{layout}")


def _parse_xml(path: Path, layout: str) -> ET.Element:
    if not path.is_file():
        raise _missing("annotation file", path, layout)
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"annotation file {str(path)!r} is not valid XML: {error}") from error


def _xml_text(element: ET.Element, tag: str, path: Path) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(
            f"annotation file {str(path)!r}: an <{element.tag}> element lacks <{tag}> "
            "(expected PASCAL VOC XML: <object><name>..</name><bndbox><xmin>..</xmin><ymin>..</ymin>"
            "<xmax>..</xmax><ymax>..</ymax></bndbox></object>)"
        )
    return child.text.strip()


def _xml_objects(path: Path, class_index: dict[str, int], valid: str, layout: str, one_based: bool = False,
                 include_difficult: bool = True) -> list[Box]:
    """A box per <object> of a PASCAL-VOC-format XML file. ``one_based``: the file's pixel coordinates start
    at 1 with inclusive ends (VOC), converted to 0-based with exclusive ends; otherwise taken as written."""
    boxes = []
    for obj in _parse_xml(path, layout).findall("object"):
        name = _xml_text(obj, "name", path)
        if name not in class_index:
            raise ValueError(f"annotation file {str(path)!r} names {name!r}, which is not {valid}")
        difficult = obj.find("difficult")
        if not include_difficult and difficult is not None and (difficult.text or "").strip() == "1":
            continue
        xmin, ymin, xmax, ymax = _xml_box(obj, path)
        shift = 1 if one_based else 0
        boxes.append(Box(class_index[name], xmin - shift, ymin - shift, xmax, ymax))
    return boxes


def _xml_box(obj: ET.Element, path: Path) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of an <object>'s own <bndbox>, as written in the file."""
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise ValueError(f"annotation file {str(path)!r}: an <object> lacks <bndbox>")
    values = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = _xml_text(bndbox, tag, path)
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"annotation file {str(path)!r}: <{tag}> is {text!r}, not a number") from None
    return tuple(values)


def _image_file(folder: Path, stem: str, suffixes: Sequence[str], layout: str) -> Path:
    for suffix in suffixes:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise _missing("image file", folder / f"{stem}{suffixes[0]}", layout)


# ----------------------------------------------------------------------------- ImageNet


def _read_synsets(path: Path) -> list[str]:
    """The 1000 WordNet ids of ``LOC_synset_mapping.txt``, checked to be torchvision's class order."""
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet synset mapping {str(path)!r} does not exist: it maps the XML files' WordNet ids "
            "(n01440764, ...) to class indices. Expected layout:\n" + IMAGENET_LAYOUT
        )
    wnids = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        wnid = line.split()[0]
        if not (len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit()):
            raise ValueError(
                f"{str(path)!r} line {number} is {line!r}: expected a WordNet id and names, "
                "like 'n01440764 tench, Tinca tinca'"
            )
        wnids.append(wnid)
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise ValueError(
            f"{str(path)!r} lists {len(set(wnids))} distinct WordNet ids; expected the 1000 classes"
        )
    if wnids != sorted(wnids):
        raise ValueError(
            f"{str(path)!r} is not in sorted WordNet-id order, so its line numbers are not torchvision's "
            "class indices; use the original LOC_synset_mapping.txt"
        )
    return wnids


def read_imagenet_val(
    root: str | os.PathLike,
    n_images: int | None = None,
    seed: int = 0,
    *,
    synset_file: str | os.PathLike | None = None,
) -> list[ImageRecord]:
    """ILSVRC2012 validation images with their boxes, labels in torchvision's class order.

    Layout (see :data:`IMAGENET_LAYOUT`): images in ``root/ILSVRC2012_img_val/`` (or ``root/val/``),
    one PASCAL VOC XML file per image in ``root/bbox_val/``, and ``root/LOC_synset_mapping.txt``
    (or ``synset_file``), whose 1000 lines in sorted WordNet-id order give the class indices; the
    sorted order is torchvision's order, and a file in any other order is refused.

    The valid ids are the stems of the XML files in ``bbox_val/``. A record's name is that stem
    (``ILSVRC2012_val_00000001``), its labels are the sorted class indices of its objects' WordNet
    ids (one class in practice: every object of an ImageNet val image has the image's class), and
    it has one box per object. The XML's ``xmin, ymin, xmax, ymax`` are used as written for
    ``x0, y0, x1, y1`` (ILSVRC leaves the last pixel's inclusion unstated; the difference is at most
    one pixel).
    """
    root = _root_dir(root, "ImageNet", IMAGENET_LAYOUT)
    wnids = _read_synsets(Path(synset_file) if synset_file is not None else root / _IMAGENET_SYNSET_FILE)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    image_dir = next((d for d in (root / "ILSVRC2012_img_val", root / "val") if d.is_dir()), None)
    if image_dir is None:
        raise _missing("image folder", root / "ILSVRC2012_img_val", IMAGENET_LAYOUT)
    box_dir = root / "bbox_val"
    if not box_dir.is_dir():
        raise _missing("bounding-box folder", box_dir, IMAGENET_LAYOUT)
    ids = [path.stem for path in box_dir.glob("*.xml")]
    if not ids:
        raise FileNotFoundError(f"bounding-box folder {str(box_dir)!r} holds no .xml files. "
                                f"Expected layout:\n{IMAGENET_LAYOUT}")
    records = []
    for stem in select_ids(ids, n_images, seed):
        xml_path = box_dir / f"{stem}.xml"
        boxes = _xml_objects(xml_path, index, "one of the 1000 WordNet ids of the synset mapping", IMAGENET_LAYOUT)
        if not boxes:
            raise ValueError(f"annotation file {str(xml_path)!r} has no <object>; expected at least one")
        path = _image_file(image_dir, stem, _IMAGE_SUFFIXES, IMAGENET_LAYOUT)
        check_image_file(path)
        records.append(ImageRecord(stem, tuple(sorted({b.label for b in boxes})), tuple(boxes), path,
                                   classes=IMAGENET_CATEGORIES))
    return records


# ----------------------------------------------------------------------------- PASCAL VOC 2007


def _voc_dir(root: Path) -> Path:
    for candidate in (root / "VOCdevkit" / "VOC2007", root / "VOC2007", root):
        if (candidate / "ImageSets" / "Main" / "test.txt").is_file():
            return candidate
    raise _missing("image list", root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt",
                   VOC_LAYOUT)


def read_voc2007_test(
    root: str | os.PathLike,
    n_images: int | None = None,
    seed: int = 0,
    *,
    include_difficult: bool = True,
) -> list[ImageRecord]:
    """PASCAL VOC 2007 test images, multi-label, with a box per object.

    ``root`` holds ``VOCdevkit/VOC2007`` (or is ``VOC2007`` itself); see :data:`VOC_LAYOUT`. The ids
    come from ``ImageSets/Main/test.txt``; each id's ``Annotations/<id>.xml`` is parsed (all of
    them, before the selection) and ``JPEGImages/<id>.jpg`` must exist for the selected ids.

    Labels are the sorted indices into :data:`VOC_CLASSES` of the classes present. VOC boxes are
    1-based with inclusive ``xmax``/``ymax``; they become 0-based with exclusive ends:
    ``x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax`` (same width and height).

    Objects flagged ``<difficult>1</difficult>`` are kept, in labels and boxes, by default. With
    ``include_difficult=False`` they are dropped, and an image left without objects is not a valid
    id (it is neither selected nor counted). An annotation file without any <object> is an error.
    """
    root = _root_dir(root, "PASCAL VOC 2007", VOC_LAYOUT)
    voc = _voc_dir(root)
    ids = [line.strip() for line in (voc / "ImageSets" / "Main" / "test.txt").read_text().splitlines()]
    ids = [i for i in ids if i]
    class_index = {name: i for i, name in enumerate(VOC_CLASSES)}
    boxes_of = {}
    for image_id in ids:
        xml_path = voc / "Annotations" / f"{image_id}.xml"
        boxes = _xml_objects(xml_path, class_index, f"one of {', '.join(VOC_CLASSES)}", VOC_LAYOUT,
                             one_based=True, include_difficult=include_difficult)
        if boxes:
            boxes_of[image_id] = tuple(boxes)
        elif include_difficult:
            raise ValueError(f"annotation file {str(xml_path)!r} has no <object>; expected at least one")
    records = []
    for image_id in select_ids(list(boxes_of), n_images, seed):
        path = voc / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file():
            raise _missing("image file", path, VOC_LAYOUT)
        check_image_file(path)
        boxes = boxes_of[image_id]
        records.append(ImageRecord(image_id, tuple(sorted({b.label for b in boxes})), boxes, path, classes=VOC_CLASSES))
    return records


# ----------------------------------------------------------------------------- COCO 2014


def _load_coco(path: Path):
    """``pycocotools.coco.COCO`` of ``path``, with the JSON checked first so errors name the file."""
    try:
        from pycocotools.coco import COCO
    except ImportError as error:  # a declared dependency; this only helps broken installs
        raise ImportError("read_coco2014_val needs pycocotools: pip install pycocotools") from error
    if not path.is_file():
        raise _missing("annotation file", path, COCO_LAYOUT)
    try:
        with open(path, encoding="utf-8") as file:
            dataset = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"annotation file {str(path)!r} is not valid JSON: {error}") from error
    required = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "category_id", "bbox"),
                "categories": ("id", "name")}
    if not isinstance(dataset, dict) or any(not isinstance(dataset.get(key), list) for key in required):
        raise ValueError(
            f"annotation file {str(path)!r} is not a COCO instances file: expected a JSON object with "
            "lists 'images', 'annotations' and 'categories'"
        )
    for key, fields in required.items():
        for entry in dataset[key]:
            if not isinstance(entry, dict) or any(field not in entry for field in fields):
                raise ValueError(
                    f"annotation file {str(path)!r}: an entry of {key!r} lacks one of {fields}: "
                    f"{entry!r:.200}"
                )
    if any(isinstance(image["id"], bool) or not isinstance(image["id"], int) for image in dataset["images"]):
        raise ValueError(f"annotation file {str(path)!r}: image ids must be integers, as in COCO")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def read_coco2014_val(
    root: str | os.PathLike,
    n_images: int | None = None,
    seed: int = 0,
    *,
    include_crowd: bool = False,
) -> list[ImageRecord]:
    """COCO 2014 validation images, multi-label, with a box per (non-crowd) annotation.

    Layout (see :data:`COCO_LAYOUT`): ``root/annotations/instances_val2014.json``, read with
    pycocotools' ``COCO``, and the images in ``root/val2014/``. The JSON's category ids (1..90,
    with gaps) map to contiguous labels 0..79 in ascending id order, i.e. indices into
    :data:`COCO_CLASSES` / :data:`COCO_CATEGORY_IDS`; the JSON's categories must agree with them.

    Boxes: ``bbox = [x, y, w, h]`` becomes ``Box(label, x, y, x + w, y + h)``. Crowd annotations
    (``iscrowd=1``) are skipped unless ``include_crowd``. Images without any annotation left are
    not valid ids (about 1% of val2014): they are neither selected nor counted. The valid ids are
    the image ids in ascending order; a record's name is its file name's stem
    (``COCO_val2014_000000000042``) and its labels are the sorted indices of its categories.
    """
    root = _root_dir(root, "COCO 2014", COCO_LAYOUT)
    json_path = root / "annotations" / "instances_val2014.json"
    coco = _load_coco(json_path)
    label_of = {cat_id: i for i, cat_id in enumerate(COCO_CATEGORY_IDS)}
    for category in coco.loadCats(coco.getCatIds()):
        cat_id, name = category["id"], category["name"]
        if cat_id not in label_of or COCO_CLASSES[label_of[cat_id]] != name:
            known = ", ".join(f"{i} {n}" for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True))
            raise ValueError(
                f"annotation file {str(json_path)!r} has category id {cat_id!r} named {name!r}; the 80 COCO "
                f"categories are {known}"
            )
    boxes_of = {}
    for image_id in sorted(coco.getImgIds()):
        boxes = []
        for ann in coco.imgToAnns.get(image_id, ()):
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            if ann["category_id"] not in coco.cats:
                raise ValueError(f"annotation file {str(json_path)!r}: annotation {ann['id']} has category "
                                 f"{ann['category_id']!r}, not in its 'categories'")
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise ValueError(f"annotation file {str(json_path)!r}: annotation {ann['id']} has bbox "
                                 f"{bbox!r}; expected [x, y, width, height]")
            x, y, w, h = (float(v) for v in bbox)
            boxes.append(Box(label_of[ann["category_id"]], x, y, x + w, y + h))
        if boxes:
            boxes_of[image_id] = tuple(boxes)
    # ids are ints: select on zero-padded strings so the sorted order is the numeric one
    keys = {f"{image_id:012d}": image_id for image_id in boxes_of}
    records = []
    for key in select_ids(list(keys), n_images, seed):
        image_id = keys[key]
        file_name = coco.imgs[image_id]["file_name"]
        path = root / "val2014" / file_name
        if not path.is_file():
            raise _missing("image file", path, COCO_LAYOUT)
        check_image_file(path)
        boxes = boxes_of[image_id]
        labels = tuple(sorted({b.label for b in boxes}))
        records.append(ImageRecord(Path(file_name).stem, labels, boxes, path, classes=COCO_CLASSES))
    return records
