"""The shapes_vqa model: the committed weights answer held-out questions, and training learns."""

import pytest
import torch

import liftcam_utils as lu
from liftcam_utils.datasets.catalog import VQA_TEST_SEED
from liftcam_utils.models.vqa_model import answer_accuracy, question_vocabulary, train_shapes_vqa, vqa_tensors


@pytest.fixture(scope="module")
def test_questions():
    return vqa_tensors(150, VQA_TEST_SEED, question_vocabulary())


def test_committed_weights_answer_held_out_questions(test_questions):
    """The acceptance bar of the VQA task: >= 90 % of questions about unseen scenes answered right."""
    model = lu.load_model("shapes_vqa", device="cpu")
    accuracy = answer_accuracy(model.net, test_questions)
    assert len(test_questions["answers"]) > 600
    assert accuracy["accuracy"] >= 0.9, accuracy
    assert min(accuracy[kind] for kind in ("colour", "shape", "exists", "count_colour", "count")) >= 0.75, accuracy


def test_reduced_training_learns_and_is_reproducible():
    runs = [train_shapes_vqa(n_train=96, n_answer_train=120, n_val=40, image_epochs=2, answer_epochs=3, log=None)
            for _ in range(2)]
    (net, metrics), (again, _) = runs
    assert metrics["image_losses"][-1] < metrics["image_losses"][0]
    assert metrics["answer_losses"][-1] < metrics["answer_losses"][0]
    for (name, value), other in zip(net.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(value, other), name
