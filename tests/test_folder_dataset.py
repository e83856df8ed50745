"""The ``"folder"`` dataset: one's own images, on folders generated here with Pillow."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, ImageFile

from liftcam_utils.datasets import DATASETS, DEFAULT_MODELS, ImageRecord, load_dataset, read_image_folder, select
from liftcam_utils.datasets.embedded import skimage_photos
from liftcam_utils.datasets.folder import IMAGENET_CATEGORIES, imagenet_class_index
from liftcam_utils.datasets.synthetic_scenes import SCENE_CLASS_NAMES
from liftcam_utils.datasets.synthetic_vqa import ANSWERS
from liftcam_utils.evaluation import evaluate

# tench and goldfish at their real indices 0 and 1, padded with made-up ids to 1000 in sorted order
TENCH, GOLDFISH = "n01440764", "n01443537"


def synset_mapping():
    wnids = [TENCH, GOLDFISH] + [f"n02{k:06d}" for k in range(998)]
    names = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus"}
    return "".join(f"{wnid} {names.get(i, 'thing')}\n" for i, wnid in enumerate(wnids))


def write_image(path, seed=0, size=(40, 30), mode="RGB"):
    """A small image of random pixels (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def class_folders(root, folders, per_class=2):
    """``per_class`` images in each of ``folders``, alternating JPEG and PNG."""
    for f, folder in enumerate(folders):
        for i in range(per_class):
            write_image(root / folder / f"img_{i}.{'jpg' if i % 2 == 0 else 'png'}", seed=10 * f + i)
    return root


def test_catalog_lists_the_folder_dataset():
    assert "folder" in DATASETS and DEFAULT_MODELS["folder"] == "efficientnet_lite0"


def test_class_names_are_the_models_imagenet_categories(lite0):
    assert list(IMAGENET_CATEGORIES) == lite0.categories
    assert lite0.categories[0] == "tench" and lite0.categories[1] == "goldfish"
    assert lite0.categories[2] == "great white shark"


def test_class_name_folders(tmp_path, lite0):
    root = class_folders(tmp_path, ["tench", "goldfish"])
    records = load_dataset("folder", data_dir=root)
    assert [r.name for r in records] == ["goldfish/img_0.jpg", "goldfish/img_1.png", "tench/img_0.jpg",
                                         "tench/img_1.png"]
    assert [r.labels for r in records] == [(1,), (1,), (0,), (0,)]
    assert [lite0.categories[r.label] for r in records] == ["goldfish", "goldfish", "tench", "tench"]
    assert all(r.boxes == () and r.path.parent.parent == root for r in records)
    image = records[0].image()
    assert image.mode == "RGB" and image.size == (40, 30)


def test_class_names_ignore_case_and_read_underscores_as_spaces(tmp_path):
    root = class_folders(tmp_path, ["Tench", "GOLDFISH", "Great_White_Shark"], per_class=1)
    assert {r.name.split("/")[0]: r.label for r in load_dataset("folder", data_dir=root)} == {
        "GOLDFISH": 1, "Great_White_Shark": 2, "Tench": 0}


def test_a_case_insensitive_clash_needs_the_exact_case():
    assert IMAGENET_CATEGORIES[264] == "Cardigan" and IMAGENET_CATEGORIES[474] == "cardigan"
    assert imagenet_class_index("Cardigan") == 264 and imagenet_class_index("cardigan") == 474
    with pytest.raises(ValueError, match="(?s)'CARDIGAN' matches.*264 'Cardigan', 474 'cardigan'"):
        imagenet_class_index("CARDIGAN")


def test_wordnet_id_folders_use_the_synset_mapping(tmp_path):
    root = class_folders(tmp_path / "data", [TENCH, GOLDFISH, "goldfish"], per_class=1)
    with pytest.raises(FileNotFoundError, match=rf"(?s){TENCH}.*LOC_synset_mapping.txt.*Kaggle"):
        load_dataset("folder", data_dir=root)
    (root / "LOC_synset_mapping.txt").write_text(synset_mapping())
    records = load_dataset("folder", data_dir=root)
    assert [(r.name, r.label) for r in records] == [
        ("goldfish/img_0.jpg", 1), (f"{TENCH}/img_0.jpg", 0), (f"{GOLDFISH}/img_0.jpg", 1)]
    elsewhere = tmp_path / "synsets.txt"
    (root / "LOC_synset_mapping.txt").rename(elsewhere)
    assert read_image_folder(root, synset_file=elsewhere) == records


def test_unknown_folders_are_listed_with_close_matches(tmp_path):
    root = class_folders(tmp_path, ["tench", "goldfsh", "my_cats"], per_class=1)
    with pytest.raises(ValueError) as info:
        load_dataset("folder", data_dir=root)
    message = str(info.value)
    assert "class folder 'goldfsh' is neither an ImageNet class name nor a WordNet id; close matches: 'goldfish'" \
        in message
    assert "class folder 'my_cats'" in message and "Expected layout" in message
    (root / "LOC_synset_mapping.txt").write_text(synset_mapping())
    write_image(root / "n01440765" / "a.jpg")
    with pytest.raises(ValueError, match="'n01440765' is not one of the 1000 ImageNet WordNet ids; close matches: "
                                         f"'{TENCH}'"):
        load_dataset("folder", data_dir=root)


def test_flat_folder_is_labelled_by_the_models_prediction(tmp_path, lite0):
    chelsea = skimage_photos()[0]
    chelsea.image().save(tmp_path / "chelsea.png")
    for i in range(3):
        write_image(tmp_path / f"noise_{i}.jpg", seed=i, size=(64, 48))
    records = load_dataset("folder", data_dir=tmp_path, model=lite0)
    assert [r.name for r in records] == ["chelsea.png", "noise_0.jpg", "noise_1.jpg", "noise_2.jpg"]
    expected = []
    for record in records:
        with Image.open(record.path) as image, torch.no_grad():
            expected.append(int(lite0.net(lite0.preprocess(image.convert("RGB"))[None]).argmax()))
    assert [r.labels for r in records] == [(c,) for c in expected]
    assert records[0].label in chelsea.labels  # the cat photo: tabby, tiger cat or Egyptian cat
    assert all(r.boxes == () for r in records)
    assert load_dataset("folder", data_dir=tmp_path, n_images=2, seed=1, model=lite0) == select(records, 2, 1)


def test_a_model_name_is_refused_with_the_call_that_loads_it(tmp_path):
    """Datasets sit below models (docs/architecture.md): they label with a loaded model and never load one."""
    write_image(tmp_path / "a.png")
    for dataset, data_dir in (("folder", tmp_path), ("photos", None)):
        with pytest.raises(TypeError, match=r"the name 'efficientnet_lite0': pass load_model\('efficientnet_lite0'\)"):
            load_dataset(dataset, data_dir=data_dir, model="efficientnet_lite0")
    with pytest.raises(TypeError, match="pass load_model"):
        read_image_folder(tmp_path, model="efficientnet_lite0")


def test_flat_folder_needs_a_model_that_takes_no_question(tmp_path, lite0):
    write_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="(?s)labelled with the class a model predicts: pass the model"):
        load_dataset("folder", data_dir=tmp_path)
    asks = dataclasses.replace(lite0, name="a_vqa_model", questions=(None, 4))
    with pytest.raises(ValueError, match="'a_vqa_model' answers questions: fix one with model.fixed"):
        load_dataset("folder", data_dir=tmp_path, model=asks)


def test_seeded_selection_is_deterministic(tmp_path):
    root = class_folders(tmp_path, ["tench", "goldfish", "goldfinch"], per_class=4)
    everything = load_dataset("folder", data_dir=root)
    assert len(everything) == 12 and [r.name for r in everything] == sorted(r.name for r in everything)
    picked = load_dataset("folder", data_dir=root, n_images=5, seed=3)
    assert picked == load_dataset("folder", data_dir=root, n_images=5, seed=3) == select(everything, 5, 3)
    assert [r.name for r in picked] == sorted(r.name for r in picked)
    assert picked != load_dataset("folder", data_dir=root, n_images=5, seed=4)
    with pytest.raises(ValueError, match=r"n_images must be in 1 \.\. 12"):
        load_dataset("folder", data_dir=root, n_images=13)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="(?s)set the notebook parameter data_dir.*one sub-folder per class"):
        load_dataset("folder")
    with pytest.raises(FileNotFoundError, match="(?s)is not a directory.*one sub-folder per class"):
        load_dataset("folder", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no image files and no class sub-folders"):
        load_dataset("folder", data_dir=tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(FileNotFoundError, match="holds no image files and no class sub-folders"):
        load_dataset("folder", data_dir=tmp_path)
    (tmp_path / "tench").mkdir()
    (tmp_path / "tench" / "readme.md").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="class folder .*tench' holds no image files"):
        load_dataset("folder", data_dir=tmp_path)


def test_both_layouts_at_once_is_refused(tmp_path):
    class_folders(tmp_path, ["tench"], per_class=1)
    write_image(tmp_path / "stray.jpg")
    with pytest.raises(ValueError, match=r"holds both sub-folders \(tench\) and image files \(stray.jpg\)"):
        load_dataset("folder", data_dir=tmp_path)


def test_other_files_hidden_entries_and_image_modes(tmp_path):
    root = class_folders(tmp_path, ["tench"], per_class=1)
    (root / "tench" / "notes.txt").write_text("ignored")
    (root / "tench" / ".hidden.jpg").write_text("ignored")
    write_image(root / ".ipynb_checkpoints" / "img_0.jpg")
    write_image(root / "tench" / "more" / "grey.PNG", mode="L")
    write_image(root / "tench" / "rgba.png", mode="RGBA")
    records = load_dataset("folder", data_dir=root)
    assert [r.name for r in records] == ["tench/img_0.jpg", "tench/more/grey.PNG", "tench/rgba.png"]
    assert all(r.image().mode == "RGB" for r in records)


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_a_file_that_is_not_an_image_is_an_error_naming_it(tmp_path, lite0, layout):
    folder = tmp_path / "tench" if layout == "classes" else tmp_path
    write_image(folder / "good.jpg")
    (folder / "fake.jpg").write_text("this is text, not a JPEG")
    with pytest.raises(ValueError, match=r"image file .*fake\.jpg' is not an image this package can read; replace"):
        load_dataset("folder", data_dir=tmp_path, model=lite0)
    (folder / "fake.jpg").unlink()
    data = write_image(folder / "cut.png", size=(200, 200)).read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"image file .*cut\.png' is a damaged PNG file"):
        load_dataset("folder", data_dir=tmp_path, model=lite0)


# the header of a PostScript file: Pillow would parse it, then render it with Ghostscript when decoded
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n0 0 moveto 16 16 lineto stroke\n"


def forbid(monkeypatch, target, attribute, what):
    def forbidden(*_args, **_kwargs):
        raise AssertionError(what)

    monkeypatch.setattr(target, attribute, forbidden)


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_a_postscript_file_named_jpg_is_refused_without_ghostscript(tmp_path, lite0, monkeypatch, layout):
    folder = tmp_path / "tench" if layout == "classes" else tmp_path
    write_image(folder / "good.jpg")
    photo = folder / "photo.jpg"
    photo.write_bytes(POSTSCRIPT)
    with Image.open(photo) as image:
        assert image.format == "EPS"  # Pillow alone would take it, whatever its name
    forbid(monkeypatch, EpsImagePlugin.EpsImageFile, "_open", "Pillow's EPS parser ran on a dataset file")
    forbid(monkeypatch, EpsImagePlugin, "Ghostscript", "Ghostscript ran on a dataset file")
    refused = (r"image file .*photo\.jpg' is an image in EPS format, which this package does not read; convert it to "
               r"a PNG, JPEG, GIF, BMP, TIFF, WebP or PPM/PGM file, or remove it")
    with pytest.raises(ValueError, match=refused):
        load_dataset("folder", data_dir=tmp_path, model=lite0)
    with pytest.raises(ValueError, match=refused):
        ImageRecord("photo.jpg", (0,), path=photo).image()


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_a_thin_strip_is_refused_by_its_aspect_ratio_before_decoding(tmp_path, lite0, monkeypatch, layout):
    folder = tmp_path / "tench" if layout == "classes" else tmp_path
    strip = write_image(folder / "strip.png", size=(3000, 1))  # the only image: nothing else is decoded
    forbid(monkeypatch, ImageFile.ImageFile, "load", "a refused image was decoded")
    refused = (r"image file .*strip\.png' is 3000 x 1 pixels; aspect ratios up to 10:1 are accepted \(the model sees "
               r"the centre square of the image\): crop it, or remove it")
    with pytest.raises(ValueError, match=refused):
        load_dataset("folder", data_dir=tmp_path, model=lite0)
    with pytest.raises(ValueError, match=refused):
        ImageRecord("strip.png", (0,), path=strip).image()


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path, suffix):
    """A 16-bit ramp reads as the same ramp in 8 bits (v / 257, rounded), not as white above 255 (Pillow's own
    conversion clips it)."""
    ramp = (np.arange(30 * 40).reshape(30, 40) * 54).astype(np.uint16)  # 0 .. 64746
    (tmp_path / "tench").mkdir()
    Image.fromarray(ramp).save(tmp_path / "tench" / f"ramp{suffix}")
    pixels = np.asarray(load_dataset("folder", data_dir=tmp_path)[0].image())
    assert pixels.shape == (30, 40, 3) and (pixels == pixels[..., :1]).all()
    assert np.array_equal(pixels[..., 0], np.rint(ramp / 257.0).astype(np.uint8))


@pytest.mark.parametrize("values, mode, problem", [
    (np.full((30, 40), -3, dtype=np.int32), "I", "32-bit integers from -3 to -3"),
    (np.full((30, 40), 0.5, dtype=np.float32), "F", "floating-point values"),
])
def test_grey_images_without_an_eight_bit_scale_are_refused(tmp_path, values, mode, problem):
    (tmp_path / "tench").mkdir()
    Image.fromarray(values, mode=mode).save(tmp_path / "tench" / "wide.tif")
    with pytest.raises(ValueError, match=f"wide.tif.*{problem}.*save it with 8-bit or 16-bit unsigned samples"):
        load_dataset("folder", data_dir=tmp_path)[0].image()


def test_netpbm_files_are_read(tmp_path):
    root = tmp_path / "tench"
    write_image(root / "a.ppm", seed=1)
    write_image(root / "b.pgm", seed=2, mode="L")
    records = load_dataset("folder", data_dir=tmp_path)
    assert [r.name for r in records] == ["tench/a.ppm", "tench/b.pgm"]
    assert [(r.image().mode, r.image().size) for r in records] == [("RGB", (40, 30))] * 2


def test_records_carry_their_label_space(tmp_path, lite0, shapes):
    """Every dataset names the classes its labels index; a flat folder takes the labelling model's."""
    assert all(r.classes == IMAGENET_CATEGORIES for r in load_dataset("photos"))
    assert all(r.classes == SCENE_CLASS_NAMES == tuple(shapes.categories) for r in load_dataset("scenes", n_images=3))
    assert all(r.classes == ANSWERS for r in load_dataset("vqa", n_images=5))
    root = class_folders(tmp_path / "classes", ["goldfish"])
    assert all(r.classes == IMAGENET_CATEGORIES for r in load_dataset("folder", data_dir=root))
    write_image(tmp_path / "flat" / "a.png")
    assert load_dataset("folder", data_dir=tmp_path / "flat", model=shapes)[0].classes == SCENE_CLASS_NAMES


def test_a_folder_of_imagenet_classes_is_refused_by_a_model_of_other_classes(tmp_path, lite0, shapes):
    """A goldfish/ folder is labelled 1 (ImageNet's goldfish); the scenes model's class 1 is a green square."""
    records = load_dataset("folder", data_dir=class_folders(tmp_path, ["goldfish"]))
    lite0.check_label_space(records)
    message = (r"record 'goldfish/img_0.jpg' is labelled in a label space of 1000 classes \(tench, goldfish, great "
               r"white shark, ...\), but model 'shapes_vgg' classifies 6 classes \(red circle, green square, blue "
               r"triangle, ...\) \(label 1 is 'goldfish' there, 'green square' here\)")
    with pytest.raises(ValueError, match=message):
        shapes.check_label_space(records)
    with pytest.raises(ValueError, match="label space of 1000 classes"):
        evaluate(shapes, records, ["gradcam"], metrics=("faithfulness",))
    with pytest.raises(ValueError, match="label space of 6 classes"):
        evaluate(lite0, load_dataset("scenes", n_images=2), ["gradcam"], metrics=("faithfulness",))
