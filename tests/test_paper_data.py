"""Readers of the paper's datasets, on tiny fixtures written in the real on-disk formats."""

import json
import random
import re

import pytest
from PIL import EpsImagePlugin, Image, ImageFile
from torchvision.models._meta import _IMAGENET_CATEGORIES
from torchvision.models.detection.faster_rcnn import _COCO_CATEGORIES

from liftcam_utils.datasets import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    VOC_CLASSES,
    Box,
    read_coco2014_val,
    read_imagenet_val,
    read_voc2007_test,
)
from liftcam_utils.datasets.paper_data import select_ids


def write_jpeg(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (120, 60, 30)).save(path, "JPEG")


def voc_object(name, box, difficult=0, parts=""):
    xmin, ymin, xmax, ymax = box
    return f"""
\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox>
\t\t\t<xmin>{xmin}</xmin>
\t\t\t<ymin>{ymin}</ymin>
\t\t\t<xmax>{xmax}</xmax>
\t\t\t<ymax>{ymax}</ymax>
\t\t</bndbox>{parts}
\t</object>"""


# ----------------------------------------------------------------------------- ImageNet

# Real wnids at their real indices (tench 0, goldfish 1, ..., sea snake 65), padded to 1000 sorted ids.
REAL_WNIDS = {0: "n01440764", 1: "n01443537", 2: "n01484850", 65: "n01751748"}


def synset_lines():
    wnids = ["n01440764", "n01443537", "n01484850"] + [f"n015{k:05d}" for k in range(62)] + ["n01751748"]
    wnids += [f"n09{k:06d}" for k in range(1000 - len(wnids))]
    names = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 65: "sea snake"}
    return [f"{wnid} {names.get(i, 'thing')}" for i, wnid in enumerate(wnids)]


def imagenet_xml(stem, width, height, objects):
    body = "".join(voc_object(wnid, box) for wnid, box in objects)
    return f"""<annotation>
\t<folder>val</folder>
\t<filename>{stem}</filename>
\t<source>
\t\t<database>ILSVRC_2012</database>
\t</source>
\t<size>
\t\t<width>{width}</width>
\t\t<height>{height}</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>{body}
</annotation>
"""


IMAGENET = {  # stem: (width, height, objects)
    "ILSVRC2012_val_00000001": (50, 40, [("n01751748", (11, 10, 44, 33))]),
    "ILSVRC2012_val_00000002": (30, 20, [("n01440764", (0, 2, 15, 20)), ("n01440764", (5, 6, 30, 18))]),
    "ILSVRC2012_val_00000003": (24, 32, [("n01443537", (3, 4, 20, 30))]),
    "ILSVRC2012_val_00000004": (16, 16, [("n01484850", (1, 1, 15, 15))]),
    "ILSVRC2012_val_00000005": (20, 12, [("n01440764", (2, 2, 10, 10))]),
}


@pytest.fixture
def imagenet_root(tmp_path):
    root = tmp_path / "imagenet"
    (root / "bbox_val").mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text("\n".join(synset_lines()) + "\n")
    for stem, (width, height, objects) in IMAGENET.items():
        write_jpeg(root / "ILSVRC2012_img_val" / f"{stem}.JPEG", width, height)
        (root / "bbox_val" / f"{stem}.xml").write_text(imagenet_xml(stem, width, height, objects))
    return root


def test_imagenet_fixture_indices_are_torchvisions():
    assert _IMAGENET_CATEGORIES[0] == "tench" and _IMAGENET_CATEGORIES[65] == "sea snake"
    lines = synset_lines()
    assert all(lines[i].startswith(wnid) for i, wnid in REAL_WNIDS.items())


def test_imagenet_records(imagenet_root):
    records = read_imagenet_val(imagenet_root)
    assert [r.name for r in records] == sorted(IMAGENET)
    first, second = records[0], records[1]
    assert first.labels == (65,)
    assert first.boxes == (Box(65, 11, 10, 44, 33),)
    assert second.labels == (0,)
    assert second.boxes == (Box(0, 0, 2, 15, 20), Box(0, 5, 6, 30, 18))
    assert [r.label for r in records[2:]] == [1, 2, 0]
    assert first.path == imagenet_root / "ILSVRC2012_img_val" / "ILSVRC2012_val_00000001.JPEG"
    for record in records:
        width, height, _ = IMAGENET[record.name]
        image = record.image()
        assert image.size == (width, height) and image.mode == "RGB"


def test_imagenet_images_in_val_folder(imagenet_root):
    (imagenet_root / "ILSVRC2012_img_val").rename(imagenet_root / "val")
    records = read_imagenet_val(imagenet_root, n_images=2, seed=3)
    assert all(r.path.parent == imagenet_root / "val" for r in records)


def test_imagenet_missing_files(imagenet_root):
    (imagenet_root / "ILSVRC2012_img_val" / "ILSVRC2012_val_00000003.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_val_00000003.JPEG"):
        read_imagenet_val(imagenet_root)
    (imagenet_root / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(FileNotFoundError, match="LOC_synset_mapping.txt") as info:
        read_imagenet_val(imagenet_root)
    assert str(imagenet_root / "LOC_synset_mapping.txt") in str(info.value)
    assert "bbox_val/" in str(info.value)  # the layout comes with it
    with pytest.raises(FileNotFoundError, match="root .* is not a directory"):
        read_imagenet_val(imagenet_root / "nowhere")


def test_imagenet_bad_annotations(imagenet_root):
    xml = imagenet_root / "bbox_val" / "ILSVRC2012_val_00000002.xml"
    xml.write_text(xml.read_text().replace("n01440764", "n99999999", 1))
    with pytest.raises(ValueError, match="n99999999"):
        read_imagenet_val(imagenet_root)
    xml.write_text("<annotation><object><name>n01440764</name>")
    with pytest.raises(ValueError, match="ILSVRC2012_val_00000002.xml.* not valid XML"):
        read_imagenet_val(imagenet_root)
    mapping = imagenet_root / "LOC_synset_mapping.txt"
    mapping.write_text("\n".join(synset_lines()[:999]))
    with pytest.raises(ValueError, match="999 distinct"):
        read_imagenet_val(imagenet_root)
    mapping.write_text("\n".join(reversed(synset_lines())))
    with pytest.raises(ValueError, match="sorted"):
        read_imagenet_val(imagenet_root)


# ----------------------------------------------------------------------------- PASCAL VOC 2007


def voc_xml(image_id, width, height, objects):
    body = "".join(voc_object(*obj) for obj in objects)
    return f"""<annotation>
\t<folder>VOC2007</folder>
\t<filename>{image_id}.jpg</filename>
\t<source>
\t\t<database>The VOC2007 Database</database>
\t\t<annotation>PASCAL VOC2007</annotation>
\t\t<image>flickr</image>
\t\t<flickrid>341012865</flickrid>
\t</source>
\t<owner>
\t\t<flickrid>Fried Camels</flickrid>
\t\t<name>Jinky the Fruit Bat</name>
\t</owner>
\t<size>
\t\t<width>{width}</width>
\t\t<height>{height}</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>{body}
</annotation>
"""


HEAD_PART = """
\t\t<part>
\t\t\t<name>head</name>
\t\t\t<bndbox><xmin>3</xmin><ymin>3</ymin><xmax>6</xmax><ymax>6</ymax></bndbox>
\t\t</part>"""

VOC = {  # id: (width, height, objects)
    "000001": (35, 50, [("dog", (5, 24, 20, 37)), ("person", (1, 1, 35, 50), 0, HEAD_PART)]),
    "000002": (40, 30, [("train", (14, 10, 30, 25))]),
    "000004": (30, 20, [("car", (10, 5, 20, 15)), ("car", (1, 1, 5, 5), 1), ("aeroplane", (2, 2, 4, 4))]),
    "000006": (20, 20, [("pottedplant", (2, 3, 10, 12), 1)]),
    "000008": (25, 25, [("tvmonitor", (1, 1, 25, 25))]),
}


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "voc"
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in VOC))
    for image_id, (width, height, objects) in VOC.items():
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", width, height)
        (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, width, height, objects))
    return root


def test_voc_records(voc_root):
    records = {r.name: r for r in read_voc2007_test(voc_root)}
    assert list(records) == sorted(VOC)
    dog, person, car, aeroplane = (VOC_CLASSES.index(c) for c in ("dog", "person", "car", "aeroplane"))
    assert (dog, person, car, aeroplane) == (11, 14, 6, 0)
    # 1-based inclusive -> 0-based, x1/y1 exclusive; the person's <part> box is not an object
    assert records["000001"].labels == (11, 14)
    assert records["000001"].boxes == (Box(11, 4, 23, 20, 37), Box(14, 0, 0, 35, 50))
    assert records["000004"].labels == (0, 6)
    assert records["000004"].boxes == (Box(6, 9, 4, 20, 15), Box(6, 0, 0, 5, 5), Box(0, 1, 1, 4, 4))
    assert records["000006"].boxes == (Box(15, 1, 2, 10, 12),)  # difficult objects kept by default
    assert records["000008"].boxes == (Box(19, 0, 0, 25, 25),)  # whole image
    for name, record in records.items():
        assert record.image().size == VOC[name][:2]


def test_voc_without_difficult(voc_root):
    records = {r.name: r for r in read_voc2007_test(voc_root, include_difficult=False)}
    assert "000006" not in records  # only a difficult object: not a valid id
    assert records["000004"].boxes == (Box(6, 9, 4, 20, 15), Box(0, 1, 1, 4, 4))
    with pytest.raises(ValueError, match="n_images=5 asked for, but only 4 valid images"):
        read_voc2007_test(voc_root, n_images=5, include_difficult=False)


def test_voc_root_at_voc2007(voc_root):
    direct = read_voc2007_test(voc_root / "VOCdevkit" / "VOC2007", n_images=3, seed=1)
    assert direct == read_voc2007_test(voc_root, n_images=3, seed=1)


def test_voc_missing_files(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    (voc / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000002.jpg"):
        read_voc2007_test(voc_root)
    (voc / "Annotations" / "000004.xml").unlink()
    with pytest.raises(FileNotFoundError, match="annotation file .*000004.xml"):
        read_voc2007_test(voc_root)
    (voc / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="(?s)test.txt.*VOCtest_06-Nov-2007.tar") as info:
        read_voc2007_test(voc_root)
    assert str(voc / "ImageSets" / "Main" / "test.txt") in str(info.value)


def test_voc_bad_annotations(voc_root):
    xml = voc_root / "VOCdevkit" / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<name>train</name>", "<name>unicorn</name>"))
    with pytest.raises(ValueError, match="'unicorn', which is not one of aeroplane"):
        read_voc2007_test(voc_root)
    xml.write_text(xml.read_text().replace("<xmin>14</xmin>", "<xmin>a</xmin>"))
    with pytest.raises(ValueError):
        read_voc2007_test(voc_root)
    xml.write_text("not xml at all")
    with pytest.raises(ValueError, match="000002.xml.* not valid XML"):
        read_voc2007_test(voc_root)


# ----------------------------------------------------------------------------- COCO 2014


def coco_image(image_id, width, height):
    return {"license": 3, "file_name": f"COCO_val2014_{image_id:012d}.jpg", "coco_url": "", "height": height,
            "width": width, "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": image_id}


def coco_annotation(ann_id, image_id, category_id, bbox, iscrowd=0):
    x, y = bbox[:2]
    segmentation = {"counts": [0, 4], "size": [2, 2]} if iscrowd else [[x, y, x + 1, y, x, y + 1]]
    return {"segmentation": segmentation, "area": bbox[2] * bbox[3], "iscrowd": iscrowd, "image_id": image_id,
            "bbox": bbox, "category_id": category_id, "id": ann_id}


COCO_SIZES = {42: (40, 30), 73: (32, 24), 74: (20, 20), 133: (16, 24), 136: (30, 30), 164: (25, 20)}


def coco_instances():
    annotations = [
        coco_annotation(1, 42, 18, [3.5, 4.25, 10.0, 6.5]),
        coco_annotation(2, 42, 1, [0, 0, 40, 30]),
        coco_annotation(3, 42, 18, [20, 10, 5, 5]),
        coco_annotation(4, 73, 90, [1.0, 2.0, 3.0, 4.0]),
        coco_annotation(5, 73, 1, [0, 0, 32, 24], iscrowd=1),
        coco_annotation(6, 74, 1, [0, 0, 10, 10], iscrowd=1),  # crowd only: excluded by default
        coco_annotation(7, 136, 1, [5, 5, 10, 10]),
        coco_annotation(8, 164, 90, [2, 2, 2, 2]),
    ]  # image 133 has no annotation: excluded
    return {
        "info": {"description": "COCO 2014 Dataset", "year": 2014},
        "images": [coco_image(i, *size) for i, size in COCO_SIZES.items()],
        "licenses": [{"url": "", "id": 3, "name": "Attribution-NonCommercial License"}],
        "annotations": annotations,
        "categories": [{"supercategory": "person", "id": 1, "name": "person"},
                       {"supercategory": "animal", "id": 18, "name": "dog"},
                       {"supercategory": "indoor", "id": 90, "name": "toothbrush"}],
    }


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(coco_instances()))
    for image_id, size in COCO_SIZES.items():
        write_jpeg(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", *size)
    return root


def test_coco_classes_match_torchvision():
    ids = [i for i, name in enumerate(_COCO_CATEGORIES) if name not in ("__background__", "N/A")]
    assert tuple(ids) == COCO_CATEGORY_IDS
    assert tuple(_COCO_CATEGORIES[i] for i in ids) == COCO_CLASSES
    assert len(COCO_CLASSES) == 80


def test_coco_records(coco_root):
    records = read_coco2014_val(coco_root)
    assert [r.name for r in records] == [f"COCO_val2014_{i:012d}" for i in (42, 73, 136, 164)]
    by_id = dict(zip((42, 73, 136, 164), records, strict=True))
    person, dog, toothbrush = 0, 16, 79  # category ids 1, 18, 90
    assert by_id[42].labels == (person, dog)
    assert by_id[42].boxes == (
        Box(dog, 3.5, 4.25, 13.5, 10.75), Box(person, 0, 0, 40, 30), Box(dog, 20, 10, 25, 15)
    )
    assert by_id[73].labels == (toothbrush,)
    assert by_id[73].boxes == (Box(toothbrush, 1, 2, 4, 6),)  # the crowd box is skipped
    assert by_id[164].label == toothbrush
    for image_id, record in by_id.items():
        assert record.path == coco_root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg"
        assert record.image().size == COCO_SIZES[image_id]


def test_coco_with_crowd(coco_root):
    records = {r.name[-3:]: r for r in read_coco2014_val(coco_root, include_crowd=True)}
    assert sorted(records) == ["042", "073", "074", "136", "164"]
    assert records["073"].labels == (0, 79)
    assert records["074"].boxes == (Box(0, 0, 0, 10, 10),)


def test_coco_missing_and_bad_files(coco_root):
    (coco_root / "val2014" / "COCO_val2014_000000000136.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000136.jpg"):
        read_coco2014_val(coco_root)
    instances = coco_root / "annotations" / "instances_val2014.json"
    data = coco_instances()
    data["categories"][1]["name"] = "cat"
    instances.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category id 18 named 'cat'"):
        read_coco2014_val(coco_root)
    del data["annotations"]
    instances.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'images', 'annotations' and 'categories'"):
        read_coco2014_val(coco_root)
    instances.write_text('{"images": [')
    with pytest.raises(ValueError, match="instances_val2014.json.* not valid JSON"):
        read_coco2014_val(coco_root)
    instances.unlink()
    with pytest.raises(FileNotFoundError, match="(?s)instances_val2014.json.*trainval2014.zip") as info:
        read_coco2014_val(coco_root)
    assert str(instances) in str(info.value)


# ----------------------------------------------------------------------------- seeded selection


READERS = [
    (read_imagenet_val, "imagenet_root"), (read_voc2007_test, "voc_root"), (read_coco2014_val, "coco_root")
]


@pytest.mark.parametrize("reader, root", READERS)
def test_seeded_selection(reader, root, request):
    root = request.getfixturevalue(root)
    everything = reader(root)
    names = [r.name for r in everything]
    picked = reader(root, n_images=2, seed=0)
    assert picked == reader(root, n_images=2, seed=0)  # reproducible
    assert [r.name for r in picked] == sorted(r.name for r in picked)  # deterministic order
    assert set(r.name for r in picked) <= set(names)
    assert picked == [r for r in everything if r in picked]  # same records as the full read
    selections = {tuple(r.name for r in reader(root, n_images=2, seed=seed)) for seed in range(8)}
    assert len(selections) > 1  # other seeds pick other images
    assert [r.name for r in reader(root, n_images=len(names), seed=5)] == names
    with pytest.raises(ValueError, match=f"n_images={len(names) + 1} asked for, but only {len(names)} valid"):
        reader(root, n_images=len(names) + 1)
    with pytest.raises(ValueError, match="positive integer"):
        reader(root, n_images=0)


def test_select_ids_is_random_sample_of_sorted_ids():
    ids = [f"{i:03d}" for i in range(50, 0, -1)]
    assert select_ids(ids, 5, seed=7) == sorted(random.Random(7).sample(sorted(ids), 5))
    assert select_ids(ids, None) == sorted(ids)


# ----------------------------------------------------------------------------- image files checked before decoding

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n0 0 moveto 16 16 lineto stroke\n"


def forbid(monkeypatch, target, attribute, what):
    def forbidden(*_args, **_kwargs):
        raise AssertionError(what)

    monkeypatch.setattr(target, attribute, forbidden)


@pytest.mark.parametrize("reader, root", READERS)
def test_a_thin_strip_is_refused_by_its_aspect_ratio_before_decoding(reader, root, request, monkeypatch):
    root = request.getfixturevalue(root)
    record = reader(root)[0]
    Image.new("RGB", (3000, 1), (120, 60, 30)).save(record.path, "JPEG")
    forbid(monkeypatch, ImageFile.ImageFile, "load", "a refused image was decoded")
    refused = (rf"image file {re.escape(repr(str(record.path)))} is 3000 x 1 pixels; aspect ratios up to 10:1 are "
               r"accepted \(the model sees the centre square of the image\): crop it, or remove it")
    with pytest.raises(ValueError, match=refused):  # the reader checks each selected file's header
        reader(root)
    with pytest.raises(ValueError, match=refused):  # and so does the record's image()
        record.image()


@pytest.mark.parametrize("reader, root", READERS)
def test_a_postscript_file_with_an_image_name_is_refused_without_ghostscript(reader, root, request, monkeypatch):
    root = request.getfixturevalue(root)
    record = reader(root)[0]
    record.path.write_bytes(POSTSCRIPT)
    with Image.open(record.path) as image:
        assert image.format == "EPS"  # Pillow alone would take it, whatever its name
    forbid(monkeypatch, EpsImagePlugin.EpsImageFile, "_open", "Pillow's EPS parser ran on a dataset file")
    forbid(monkeypatch, EpsImagePlugin, "Ghostscript", "Ghostscript ran on a dataset file")
    refused = rf"image file {re.escape(repr(str(record.path)))} is an image in EPS format, which this package does not"
    with pytest.raises(ValueError, match=refused):
        reader(root)
    with pytest.raises(ValueError, match=refused):
        record.image()


def test_each_reader_names_the_label_space_of_its_labels(imagenet_root, voc_root, coco_root):
    """The labels index ImageNet's 1000 classes in torchvision's order, VOC's 20 and COCO's 80 (the paper's models'
    classes: load_model's categories), so evaluate can refuse a model of other classes."""
    assert {r.classes for r in read_imagenet_val(imagenet_root)} == {tuple(_IMAGENET_CATEGORIES)}
    assert {r.classes for r in read_voc2007_test(voc_root)} == {VOC_CLASSES}
    assert {r.classes for r in read_coco2014_val(coco_root)} == {COCO_CLASSES}
