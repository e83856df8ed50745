"""VQA v2 and the basic VQA model: the reader on fixtures in the official file formats, a basic VQA
checkpoint in its original format loaded and explained end to end, and the synthetic VQA dataset."""

import json
import random
import re
import warnings

import pytest
import torch
from conftest import head_values
from PIL import EpsImagePlugin, Image, ImageFile

import liftcam_utils as lu
from liftcam_utils.datasets import DATASETS, DEFAULT_MODELS, AnswersLeftOutWarning, load_dataset, read_vqa_v2
from liftcam_utils.datasets.synthetic_vqa import ANSWERS, make_vqa
from liftcam_utils.models.vqa_model import BASIC_VQA_LAYER, basic_vqa_net

# ----------------------------------------------------------------------------- VQA v2 fixtures

VOCABULARY = ["<unk>", "yes", "no", "2", "red", "umbrella", "down", "picnic table"]  # basic VQA: '<unk>' first
IMAGE_SIZES = {42: (40, 30), 73: (32, 24), 262148: (20, 28)}
QUESTIONS = [  # (image id, question id, question, multiple_choice_answer); ids as in VQA v2: image id * 1000 + k
    (42, 42000, "What is the man holding?", "umbrella"),
    (42, 42001, "What color is the umbrella?", "red"),
    (42, 42002, "Is it raining?", "yes"),
    (73, 73000, "How many dogs are there?", "2"),
    (73, 73001, "What is the dog's name?", "max"),  # not in the vocabulary: left out
    (262148, 262148000, "Where is he looking?", "down"),  # sorts after 73000 by number, before 42000 as text
    (262148, 262148001, "What is he on top of?", "picnic table"),
]
VALID = [q for q in QUESTIONS if q[3] in VOCABULARY]


def write_jpeg(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (30, 90, 160)).save(path, "JPEG")


def questions_json(split="val2014", questions=QUESTIONS):
    return {
        "info": {"description": "This is v2.0 of the VQA dataset.", "url": "http://visualqa.org", "version": "2.0",
                 "year": 2017, "contributor": "VQA Team", "date_created": "2017-04-26 17:07:13"},
        "task_type": "Open-Ended", "data_type": "mscoco",
        "license": {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"},
        "data_subtype": split,
        "questions": [{"image_id": image, "question": text, "question_id": qid} for image, qid, text, _ in questions],
    }


def annotation(image_id, question_id, answer):
    others = ["maybe", answer, answer, "no idea", answer, answer, answer, answer, "something", answer]
    answer_type = "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"
    return {
        "question_type": "what is the", "multiple_choice_answer": answer,
        "answers": [{"answer": a, "answer_confidence": "yes" if a == answer else "maybe", "answer_id": k + 1}
                    for k, a in enumerate(others)],
        "image_id": image_id, "answer_type": answer_type, "question_id": question_id,
    }


def annotations_json(split="val2014", questions=QUESTIONS):
    return {
        "info": questions_json()["info"], "license": questions_json()["license"], "data_subtype": split,
        "annotations": [annotation(image, qid, answer) for image, qid, _, answer in questions],
        "data_type": "mscoco",
    }


def write_vqa_v2(root, split="val2014"):
    root.mkdir(parents=True, exist_ok=True)
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps(questions_json(split)))
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps(annotations_json(split)))
    for image_id, size in IMAGE_SIZES.items():
        write_jpeg(root / split / f"COCO_{split}_{image_id:012d}.jpg", *size)
    return root


@pytest.fixture
def vqa_root(tmp_path):
    return write_vqa_v2(tmp_path / "vqa")


def read_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnswersLeftOutWarning)
        return read_vqa_v2(*args, **kwargs)


# ----------------------------------------------------------------------------- the reader


def test_vqa_v2_records(vqa_root):
    with pytest.warns(AnswersLeftOutWarning, match="1 of 7 VQA v2 val2014 questions left out"):
        records = read_vqa_v2(vqa_root, VOCABULARY)
    assert [r.name for r in records] == [
        "vqa_42000", "vqa_42001", "vqa_42002", "vqa_73000", "vqa_262148000", "vqa_262148001"
    ]
    assert [r.labels for r in records] == [(5,), (4,), (1,), (3,), (6,), (7,)]
    assert {r.classes for r in records} == {tuple(VOCABULARY)}  # the labels index the answer vocabulary
    assert [r.question for r in records] == [q[2] for q in VALID]
    assert all(r.boxes == () for r in records)
    for record, (image_id, *_rest) in zip(records, VALID, strict=True):
        assert record.path == vqa_root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg"
        assert record.image().size == IMAGE_SIZES[image_id]
    assert [VOCABULARY[r.label] for r in records] == [q[3] for q in VALID]


def test_vqa_v2_image_files_are_checked_before_decoding(vqa_root, monkeypatch):
    records = read_quietly(vqa_root, VOCABULARY)
    path = records[0].path
    named = f"image file {re.escape(repr(str(path)))}"
    Image.new("RGB", (1, 3000)).save(path, "JPEG")
    with monkeypatch.context() as patched:
        patched.setattr(ImageFile.ImageFile, "load", lambda *_: pytest.fail("a refused image was decoded"))
        for read in (lambda: read_quietly(vqa_root, VOCABULARY), records[0].image):
            with pytest.raises(ValueError, match=rf"{named} is 1 x 3000 pixels; aspect ratios up to 10:1"):
                read()
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n")
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda *_: pytest.fail("EPS parser ran"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *_: pytest.fail("Ghostscript ran"))
    for read in (lambda: read_quietly(vqa_root, VOCABULARY), records[0].image):
        with pytest.raises(ValueError, match=rf"{named} is an image in EPS format, which this package does not read"):
            read()


def test_vqa_v2_labels_index_the_given_vocabulary(vqa_root):
    reordered = ("picnic table", "max", "yes", "<unk>", "red")  # any sequence; now 'max' is in and others out
    with pytest.warns(AnswersLeftOutWarning, match="3 of 7 .* not one of the 5 answers"):
        records = read_vqa_v2(vqa_root, reordered)
    assert {r.name: r.label for r in records} == {"vqa_42001": 4, "vqa_42002": 2, "vqa_73001": 1,
                                                  "vqa_262148001": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out: no warning
        assert len(read_vqa_v2(vqa_root, [*VOCABULARY, "max"])) == len(QUESTIONS)


def test_vqa_v2_bad_vocabularies(vqa_root):
    with pytest.raises(ValueError, match="'yes' twice"):
        read_vqa_v2(vqa_root, ["yes", "no", "yes"])
    with pytest.raises(TypeError, match="sequence of answer strings"):
        read_vqa_v2(vqa_root, "yes")
    with pytest.raises(ValueError, match="answers is empty"):
        read_vqa_v2(vqa_root, [])
    with pytest.raises(ValueError, match="unknown VQA v2 split 'test2015'; valid splits .*train2014, val2014"):
        read_vqa_v2(vqa_root, VOCABULARY, split="test2015")


def test_vqa_v2_seeded_selection(vqa_root):
    everything = read_quietly(vqa_root, VOCABULARY)
    padded = sorted(f"{qid:012d}" for _, qid, _, _ in VALID)
    for seed in range(4):
        picked = read_quietly(vqa_root, VOCABULARY, n_images=3, seed=seed)
        expected = sorted(random.Random(seed).sample(padded, 3))  # the other readers' rule, on question ids
        assert [r.name for r in picked] == [f"vqa_{int(key)}" for key in expected]
        assert picked == [r for r in everything if r in picked]
    assert len({tuple(r.name for r in read_quietly(vqa_root, VOCABULARY, n_images=3, seed=s)) for s in range(8)}) > 1
    assert read_quietly(vqa_root, VOCABULARY, n_images=6, seed=5) == everything
    with pytest.raises(ValueError, match="n_images=7 asked for, but only 6 valid"):
        read_quietly(vqa_root, VOCABULARY, n_images=7)  # the out-of-vocabulary question is not counted
    with pytest.raises(ValueError, match="positive integer"):
        read_quietly(vqa_root, VOCABULARY, n_images=0)


def test_vqa_v2_train_split(tmp_path):
    root = write_vqa_v2(tmp_path / "vqa", split="train2014")
    records = read_quietly(root, VOCABULARY, split="train2014")
    assert records[0].path == root / "train2014" / "COCO_train2014_000000000042.jpg"
    with pytest.raises(FileNotFoundError, match="v2_OpenEnded_mscoco_val2014_questions.json"):
        read_quietly(root, VOCABULARY)


def test_vqa_v2_missing_files(vqa_root):
    (vqa_root / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    padded = sorted(f"{qid:012d}" for _, qid, _, _ in VALID)
    seed = next(s for s in range(100) if random.Random(s).sample(padded, 1) != ["000000073000"])
    assert read_quietly(vqa_root, VOCABULARY, n_images=1, seed=seed)  # only the selected images must exist
    with pytest.raises(FileNotFoundError, match="(?s)COCO_val2014_000000000073.jpg.*cocodataset.org"):
        read_quietly(vqa_root, VOCABULARY)
    annotations = vqa_root / "v2_mscoco_val2014_annotations.json"
    annotations.unlink()
    with pytest.raises(FileNotFoundError, match="(?s)annotation file .*v2_Annotations_Val_mscoco.zip.*visualqa.org"
                       ) as info:
        read_quietly(vqa_root, VOCABULARY)
    assert str(annotations) in str(info.value)
    (vqa_root / "v2_OpenEnded_mscoco_val2014_questions.json").unlink()
    with pytest.raises(FileNotFoundError, match="(?s)question file .*v2_Questions_Val_mscoco.zip"):
        read_quietly(vqa_root, VOCABULARY)
    with pytest.raises(FileNotFoundError, match="root .* is not a directory"):
        read_quietly(vqa_root / "nowhere", VOCABULARY)


def test_vqa_v2_malformed_files(vqa_root):
    questions = vqa_root / "v2_OpenEnded_mscoco_val2014_questions.json"
    annotations = vqa_root / "v2_mscoco_val2014_annotations.json"
    questions.write_text('{"questions": [')
    with pytest.raises(ValueError, match="question file .*v2_OpenEnded_mscoco_val2014_questions.json.* not valid JSON"):
        read_quietly(vqa_root, VOCABULARY)
    questions.write_text(json.dumps({"data": []}))
    with pytest.raises(ValueError, match="with a list 'questions'"):
        read_quietly(vqa_root, VOCABULARY)
    data = questions_json()
    data["questions"][2]["question_id"] = "42002"
    questions.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="question_id '42002' is not a int"):
        read_quietly(vqa_root, VOCABULARY)
    questions.write_text(json.dumps(questions_json()))
    data = annotations_json()
    del data["annotations"][3]["multiple_choice_answer"]
    annotations.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotation file .*: an entry of 'annotations' lacks one of .*"
                                         "multiple_choice_answer"):
        read_quietly(vqa_root, VOCABULARY)
    annotations.write_text(json.dumps(annotations_json(questions=QUESTIONS[1:])))
    with pytest.raises(ValueError, match="no annotation of question 42000 on image 42"):
        read_quietly(vqa_root, VOCABULARY)


# ----------------------------------------------------------------------------- the catalog


def test_load_dataset_vqa_v2_reads_the_answer_vocabulary_from_data_dir(vqa_root):
    assert "vqa_v2" in DATASETS and DEFAULT_MODELS["vqa_v2"] == "basic_vqa"
    with pytest.raises(FileNotFoundError, match="(?s)vocab_answers.txt.* does not exist.*basic VQA"):
        load_dataset("vqa_v2", data_dir=vqa_root)
    (vqa_root / "vocab_answers.txt").write_text("".join(f"{answer}\n" for answer in VOCABULARY))
    with pytest.warns(AnswersLeftOutWarning):
        records = load_dataset("vqa_v2", data_dir=vqa_root, n_images=4, seed=1)
    assert records == read_quietly(vqa_root, VOCABULARY, n_images=4, seed=1)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_dataset("vqa_v2")


def test_load_dataset_vqa_takes_the_first_questions_of_the_test_scenes():
    assert DEFAULT_MODELS["vqa"] == "shapes_vqa"
    records = load_dataset("vqa", n_images=23, seed=1)
    test_questions = make_vqa(10, seed=2024 + 1).records  # 4 or 5 questions per scene
    assert records == test_questions[:23]
    assert load_dataset("vqa", n_images=23, seed=1) == records
    assert load_dataset("vqa", n_images=23, seed=0) != records
    assert all(r.name.startswith("scene_2025_") for r in records)
    for record in records:
        assert isinstance(record.question, str) and len(record.labels) == 1
        assert 0 <= record.label < len(ANSWERS)
        assert all(box.label == record.label for box in record.boxes)
        assert (record.path, record.image().size) == (None, (64, 64))
    assert len(load_dataset("vqa")) == 200
    with pytest.raises(ValueError, match="positive integer"):
        load_dataset("vqa", n_images=0)


# ----------------------------------------------------------------------------- basic VQA checkpoints

# The original model (basic VQA, models.py): VqaModel(img_encoder=ImgEncoder(model=torchvision vgg19 with its
# classifier's last layer removed, fc), qst_encoder=QstEncoder(word2vec, tanh, lstm, fc), tanh, dropout, fc1, fc2),
# with its training defaults embed_size 1024, word_embed_size 300, hidden_size 512, num_layers 2.
VGG19_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (16, 256, 256), (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
               (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512)]  # (index in features, in, out)
QUESTION_WORDS = ["<pad>", "<unk>", "?", "color", "is", "the", "this", "what"]  # basic VQA: '<pad>', '<unk>' first
EMBED, WORD_EMBED, HIDDEN = 1024, 300, 512
TOKENS = torch.tensor([[7, 4, 6, 2] + [0] * 26])  # "What is this?": what is this ?, then <pad> up to 30 tokens


def basic_vqa_shapes(n_words=None, n_answers=None):
    """Key -> shape of the original model's state dict (default vocabularies: QUESTION_WORDS, VOCABULARY)."""
    n_words, n_answers = n_words or len(QUESTION_WORDS), n_answers or len(VOCABULARY)
    shapes = {}
    for index, c_in, c_out in VGG19_CONVS:
        shapes[f"img_encoder.model.features.{index}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"img_encoder.model.features.{index}.bias"] = (c_out,)
    for index, (n_out, n_in) in ((0, (4096, 512 * 7 * 7)), (3, (4096, 4096))):  # classifier[:-1]: FC-ReLU-Drop x 2
        shapes[f"img_encoder.model.classifier.{index}.weight"] = (n_out, n_in)
        shapes[f"img_encoder.model.classifier.{index}.bias"] = (n_out,)
    shapes["img_encoder.fc.weight"], shapes["img_encoder.fc.bias"] = (EMBED, 4096), (EMBED,)
    shapes["qst_encoder.word2vec.weight"] = (n_words, WORD_EMBED)
    for layer, n_in in ((0, WORD_EMBED), (1, HIDDEN)):
        shapes[f"qst_encoder.lstm.weight_ih_l{layer}"] = (4 * HIDDEN, n_in)
        shapes[f"qst_encoder.lstm.weight_hh_l{layer}"] = (4 * HIDDEN, HIDDEN)
        shapes[f"qst_encoder.lstm.bias_ih_l{layer}"] = (4 * HIDDEN,)
        shapes[f"qst_encoder.lstm.bias_hh_l{layer}"] = (4 * HIDDEN,)
    shapes["qst_encoder.fc.weight"], shapes["qst_encoder.fc.bias"] = (EMBED, 2 * 2 * HIDDEN), (EMBED,)
    shapes["fc1.weight"], shapes["fc1.bias"] = (n_answers, EMBED), (n_answers,)  # fc1 as wide as the answers
    shapes["fc2.weight"], shapes["fc2.bias"] = (n_answers, n_answers), (n_answers,)
    return shapes


def sizes_only(shapes):
    """A state dict without storage: all that basic_vqa_net reads from a checkpoint are shapes."""
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def write_vocabularies(folder, questions=QUESTION_WORDS, answers=VOCABULARY):
    (folder / "vocab_questions.txt").write_text("".join(f"{w}\n" for w in questions))
    (folder / "vocab_answers.txt").write_text("".join(f"{w}\n" for w in answers))


def test_basic_vqa_net_has_the_original_state_dict_format():
    expected = basic_vqa_shapes()
    with torch.device("meta"):
        net = basic_vqa_net(sizes_only(expected))
    assert {key: tuple(value.shape) for key, value in net.state_dict().items()} == expected


def test_basic_vqa_net_reads_its_sizes_off_the_checkpoint():
    shapes = basic_vqa_shapes(n_words=20, n_answers=5)
    with torch.device("meta"):
        net = basic_vqa_net(sizes_only(shapes))
    assert (net.qst_encoder.word2vec.num_embeddings, net.qst_encoder.lstm.num_layers) == (20, 2)
    assert (net.fc1.out_features, net.fc2.out_features) == (5, 5)
    del shapes["img_encoder.fc.weight"]
    with pytest.raises(ValueError, match="not a basic VQA checkpoint: it lacks 'img_encoder.fc.weight'"):
        basic_vqa_net(sizes_only(shapes))


@pytest.fixture(scope="module")
def basic_vqa(tmp_path_factory, images):
    """A random-init basic VQA model saved as the original saves checkpoints, its logits on one image
    and question, and the model loaded back (the only real-size model of this module, ~560 MB)."""
    folder = tmp_path_factory.mktemp("basic_vqa")
    torch.manual_seed(0)
    net = basic_vqa_net(sizes_only(basic_vqa_shapes())).eval()
    x = images[:1]
    with torch.no_grad():
        logits = net(x, TOKENS)
    path = folder / "model-epoch-01.ckpt"
    torch.save({"epoch": 1, "state_dict": net.state_dict()}, path)
    write_vocabularies(folder)
    del net
    return path, x, logits, lu.load_model("basic_vqa", weights=path, device="cpu")


def test_basic_vqa_checkpoint_loads_and_splits_at_the_default_layer(basic_vqa):
    path, x, logits, model = basic_vqa
    assert (model.layer, model.categories, model.weights) == (BASIC_VQA_LAYER, VOCABULARY, str(path))
    assert model.questions[0].words == QUESTION_WORDS and model.questions[1] == 30
    assert model.questions[0].encode("What is this?", 30).tolist() == TOKENS[0].tolist()
    split = model.fixed("What is this?").split()
    maps = split.body(x)
    assert maps.shape == (1, 512, 14, 14) and maps.min() >= 0  # VGG19's last conv ReLU
    torch.testing.assert_close(split.head(maps), logits, rtol=1e-5, atol=1e-7)


def test_liftcam_local_accuracy_on_the_basic_vqa_head(basic_vqa):
    """Eq. 8 through max-pool, VGG19's FC layers, the L2 normalisation, the product with the question, fc1, fc2."""
    _, x, _, model = basic_vqa
    split = model.fixed("what is this?").split()
    full, empty, target = head_values(split, x)
    assert (full - empty).abs().item() > 1e-4  # a non-trivial difference to distribute
    alpha = lu.coefficients("liftcam", split, x, target)
    assert alpha.shape == (1, 512)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-4, atol=1e-6)


def test_basic_vqa_vocabulary_size_mismatch(basic_vqa, tmp_path):
    path = basic_vqa[0]
    (tmp_path / path.name).symlink_to(path)
    write_vocabularies(tmp_path, answers=[*VOCABULARY, "max"])
    with pytest.raises(ValueError, match="answer vocabulary of .* has 9 words, its model 8"):
        lu.load_model("basic_vqa", weights=tmp_path / path.name, device="cpu")
