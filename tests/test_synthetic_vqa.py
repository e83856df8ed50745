"""The synthetic VQA task: answers checked against the pixels, question encoding, and VQA records
through the batch runner with each question fixed."""

import dataclasses

import numpy as np
import pytest
import torch

import liftcam_utils as lu
from liftcam_utils.datasets.questions import Vocabulary, tokenize
from liftcam_utils.datasets.synthetic_vqa import ANSWERS, COLOURS, SHAPES, make_vqa, question_type
from liftcam_utils.evaluation import evaluate

N_SCENES = 40


@pytest.fixture(scope="module")
def vqa():
    return make_vqa(N_SCENES, seed=5)


def test_deterministic_per_scene(vqa):
    again = make_vqa(2, seed=5, start=3)
    first = [r for r in vqa.records if r.name.startswith("scene_5_00003_")]
    assert [r.question for r in first] == [r.question for r in again.records[:len(first)]]
    assert first[0].image().tobytes() == again.records[0].image().tobytes()
    assert make_vqa(1, seed=6).records[0].image().tobytes() != vqa.records[0].image().tobytes()


def test_every_answer_agrees_with_the_pixels(vqa):
    """Colours are read back from the image inside each grounding mask; counts are box counts."""
    for record, mask, kind in zip(vqa.records, vqa.masks, vqa.types, strict=True):
        answer = ANSWERS[record.label]
        pixels = np.asarray(record.image())[mask]
        assert bool(mask.any()) == bool(record.boxes)
        if kind == "colour":
            assert len(record.boxes) == 1 and (pixels == COLOURS[answer]).all(), record.name
            assert record.question.split()[-1].rstrip("?") in SHAPES
        elif kind == "shape":
            colour = record.question.split()[-2]
            assert answer in SHAPES and (pixels == COLOURS[colour]).all(), record.name
        elif kind == "exists":
            colour = record.question.split()[-2]
            assert (answer == "yes") == bool(mask.any()), record.name
            if answer == "yes":
                assert (pixels == COLOURS[colour]).all()
        elif kind == "count_colour":
            colour = record.question.split()[2]
            assert int(answer) == len(record.boxes) and (pixels == COLOURS[colour]).all(), record.name
        else:
            assert 1 <= int(answer) == len(record.boxes) <= 3, record.name


def test_question_type_is_read_back_from_the_text(vqa):
    assert [question_type(r.question) for r in vqa.records] == vqa.types
    with pytest.raises(ValueError, match="not a question"):
        question_type("why?")


def test_question_types_and_answers_are_varied(vqa):
    assert set(vqa.types) == {"colour", "shape", "exists", "count_colour", "count"}
    exists = [ANSWERS[r.label] for r, t in zip(vqa.records, vqa.types, strict=True) if t == "exists"]
    assert 0.25 < exists.count("yes") / len(exists) < 0.75
    assert len({ANSWERS[r.label] for r in vqa.records}) >= 12


def test_tokenize_and_encode():
    assert tokenize("What color is the Star?") == ["what", "color", "is", "the", "star", "?"]
    vocabulary = Vocabulary(["<pad>", "<unk>", "?", "is", "star", "the", "what"])
    assert vocabulary.encode("what is the star?", 7).tolist() == [6, 3, 5, 4, 2, 0, 0]
    assert vocabulary.encode("what is a star?", 5).tolist() == [6, 3, 1, 4, 2]  # "a" is unknown
    with pytest.raises(ValueError, match="6 tokens; at most 5"):
        vocabulary.encode("what is the big star?", 5)
    with pytest.raises(ValueError, match="no '<pad>'"):
        Vocabulary(["what"]).encode("what", 3)
    with pytest.raises(ValueError, match="twice"):
        Vocabulary(["a", "a"])


@pytest.fixture(scope="module")
def random_vqa_model():
    torch.manual_seed(0)
    return lu.load_model("shapes_vqa", weights=None, device="cpu")


def test_fixed_model_and_its_errors(random_vqa_model):
    fixed = random_vqa_model.fixed("what color is the star?")
    assert fixed.question == "what color is the star?" and fixed.categories == list(ANSWERS)
    assert random_vqa_model.output == fixed.output == "softmax"  # one answer: the answers share a softmax
    x = torch.randn(2, 3, 64, 64)
    tokens = random_vqa_model.questions[0].encode("what color is the star?", 10)[None].expand(2, -1)
    torch.testing.assert_close(fixed.net(x), random_vqa_model.net(x, tokens), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already has the question"):
        fixed.fixed("how many objects are there?")
    with pytest.raises(ValueError, match="takes no question"):
        lu.load_model("shapes_vgg", weights=None).fixed("what color is the star?")


def test_batch_runner_fixes_each_question(random_vqa_model, vqa):
    records = vqa.records[:7]
    result = evaluate(random_vqa_model, records, ["gradcam", "liftcam"], metrics=("faithfulness", "pointing"),
                      shard_size=4, progress=False)
    rows = result.rows
    assert rows.loc[rows.method == "liftcam", "image"].tolist() == [r.name for r in records]
    assert rows.loc[rows.method == "liftcam", "target"].tolist() == [r.label for r in records]
    # each row's Y is the answer's softmax with that record's own question fixed
    for record, y in zip(records, rows.loc[rows.method == "liftcam", "Y"], strict=True):
        fixed = random_vqa_model.fixed(record.question)
        x = random_vqa_model.preprocess(record.image())[None]
        assert y == pytest.approx(fixed.net(x).softmax(1)[0, record.label].item(), rel=1e-5)
    image_model = lu.load_model("shapes_vgg", weights=None)
    with pytest.raises(ValueError, match="label space of 18 classes .* but model 'shapes_vgg' classifies 6 classes"):
        evaluate(image_model, records, ["gradcam"], progress=False)
    unknown_space = [dataclasses.replace(record, classes=None) for record in records]
    with pytest.raises(ValueError, match="VQA records need a VQA model"):
        evaluate(image_model, unknown_space, ["gradcam"], progress=False)
