"""The basic VQA model (Antol et al. 2015, as in the public basic VQA implementation the paper
explains in Sec. 4.4), our instance of it for the synthetic VQA task, and its training.

Architecture (:class:`VqaModel`), module names as in that implementation so that its checkpoints load:

* ``img_encoder``: a CNN ``model`` (VGG19 up to its second FC layer there; :class:`SmallVGG` here)
  -> ``fc`` -> L2 normalisation. The norm is detached, as in the original: gradients (Grad-CAM)
  treat it as a constant; the values, which rule-based attribution (LIFT-CAM) follows, do not.
* ``qst_encoder``: word embedding ``word2vec`` -> tanh -> ``lstm`` -> the last hidden and cell
  states of every layer, concatenated -> tanh -> ``fc``.
* fusion: the element-wise product of both embeddings -> tanh -> dropout -> ``fc1`` -> tanh ->
  dropout -> ``fc2`` = one logit per answer.

CAM explains the image side: cut at a conv layer of the image CNN with the question fixed
(``LoadedModel.fixed(question)``), the head ``F`` runs from the maps through the FC layers, the
L2 normalisation, the product with the (constant) question embedding and the classifier.

``shapes_vqa`` is trained on CPU from scratch by::

    python -m liftcam_utils.models.vqa_model --out data/shapes_vqa.pt

with the defaults of :func:`train_shapes_vqa` (``DEFAULT_TRAINING``; a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import transforms

from ..datasets.questions import Vocabulary
from ..datasets.synthetic_vqa import (
    ANSWERS,
    COLOURS,
    MAX_QUESTION_TOKENS,
    QUESTION_TYPES,
    SHAPES,
    VQA_IMAGE_SIZE,
    generate_vqa_scene,
)
from .checkpoints import default_device, load_checked, read_state_dict
from .loaded import LoadedModel
from .training import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalise_uint8,
    save_state_dict,
    seeded_generator,
    train_epochs,
)

SHAPES_VQA_LAYER = "img_encoder.model.features.20"  # the ReLU after the last conv layer, 128 x 8 x 8
VAL_SEED_OFFSET = 10_000  # held-out scenes come from dataset seed ``seed + VAL_SEED_OFFSET``
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "shapes_vqa.pt"
DEFAULT_TRAINING = {"n_train": 8000, "n_answer_train": 20000, "n_val": 500, "image_epochs": 10, "answer_epochs": 30,
                    "seed": 0}

shapes_vqa_preprocess: Callable = transforms.Compose([
    transforms.Resize((VQA_IMAGE_SIZE, VQA_IMAGE_SIZE)), transforms.ToTensor(),
    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
])


# -- architecture --------------------------------------------------------------------------------
class ImageEncoder(nn.Module):
    """``model(image)`` -> ``fc`` -> divided by its L2 norm (detached)."""

    def __init__(self, model: nn.Module, feature_size: int, embed_size: int):
        super().__init__()
        self.model = model
        self.fc = nn.Linear(feature_size, embed_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.embed(self.model(image))

    def embed(self, feature: torch.Tensor) -> torch.Tensor:
        """``fc``, then L2 normalisation: the CNN's output feature -> the image embedding."""
        feature = self.fc(feature)
        return feature.div(feature.norm(p=2, dim=1, keepdim=True).detach())


class QuestionEncoder(nn.Module):
    """Token ids (B, L) -> embedding -> tanh -> LSTM -> [hidden; cell] of every layer -> tanh -> ``fc``."""

    def __init__(self, vocabulary_size: int, word_embed_size: int, embed_size: int, num_layers: int,
                 hidden_size: int):
        super().__init__()
        self.word2vec = nn.Embedding(vocabulary_size, word_embed_size)
        self.tanh = nn.Tanh()
        self.lstm = nn.LSTM(word_embed_size, hidden_size, num_layers)
        self.fc = nn.Linear(2 * num_layers * hidden_size, embed_size)

    def forward(self, question: torch.Tensor) -> torch.Tensor:
        words = self.tanh(self.word2vec(question)).transpose(0, 1)  # (L, B, word_embed_size)
        states = self.lstm(words)[1]
        feature = torch.cat((states[0], states[1]), 2).transpose(0, 1)  # (B, num_layers, 2 * hidden)
        return self.fc(self.tanh(feature.reshape(question.shape[0], -1)))


class VqaModel(nn.Module):
    """``forward(image, question)`` -> answer logits (see the module docstring)."""

    def __init__(self, img_encoder: ImageEncoder, qst_encoder: QuestionEncoder, embed_size: int,
                 answer_vocabulary_size: int, hidden_size: int | None = None, dropout: float = 0.5):
        super().__init__()
        hidden_size = hidden_size or answer_vocabulary_size  # the original ties fc1's width to the answers
        self.img_encoder = img_encoder
        self.qst_encoder = qst_encoder
        self.tanh = nn.Tanh()
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(embed_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, answer_vocabulary_size)

    def forward(self, image: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        return self.answer(self.img_encoder(image), self.qst_encoder(question))

    def answer(self, image_feature: torch.Tensor, question_feature: torch.Tensor) -> torch.Tensor:
        fused = self.dropout(self.tanh(torch.mul(image_feature, question_feature)))
        return self.fc2(self.dropout(self.tanh(self.fc1(fused))))


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallVGG(nn.Module):
    """VGG's layout at a small scale for 64 x 64 images: ``features`` (conv blocks with max-pools;
    ``features.20`` = the ReLU after the last conv, ``width`` x 8 x 8, each unit seeing 60 x 60
    pixels), ``avgpool`` (global average pooling: a detector gives the same feature anywhere in the
    image, which a few thousand scenes can train, unlike VGG's position-specific FC over a 7 x 7
    grid) and ``classifier`` (FC-ReLU), output ``feature_size`` = 512."""

    feature_size = 512

    def __init__(self, width: int = 128):
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            *_conv(3, 16), nn.MaxPool2d(2),                   # 0-3
            *_conv(16, 32), nn.MaxPool2d(2),                  # 4-7
            *_conv(32, 64), *_conv(64, 64), nn.MaxPool2d(2),  # 8-14
            *_conv(64, width), *_conv(width, width),          # 15-20
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(width, self.feature_size), nn.ReLU())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(image)), 1))


def question_vocabulary() -> Vocabulary:
    """The synthetic VQA task's question words (every template filled with every colour and shape)."""
    templates = ["what color is the {s}?", "what shape is the {c} object?", "is there a {c} {s}?",
                 "how many {c} objects are there?", "how many objects are there?"]
    return Vocabulary.of_questions(t.format(c=c, s=s) for t in templates for c in COLOURS for s in SHAPES)


def shapes_vqa_net(vocabulary_size: int, embed_size: int = 256) -> VqaModel:
    """The synthetic task's :class:`VqaModel`: :class:`SmallVGG`, a 1-layer LSTM of 64 units, dropout
    0.2 (the original's 0.5 underfits this smaller model) and an ``fc1`` of 256 units (the original's
    ``fc1`` is as wide as its 1000 answers; 18 would be a bottleneck). The question projection starts
    ``sqrt(embed_size)`` times larger than PyTorch's default, so that its product with the unit-norm
    image embedding starts at unit scale per entry."""
    image = ImageEncoder(SmallVGG(), SmallVGG.feature_size, embed_size)
    question = QuestionEncoder(vocabulary_size, word_embed_size=32, embed_size=embed_size, num_layers=1,
                               hidden_size=64)
    with torch.no_grad():  # the image embedding has unit norm: start the product at unit scale per entry
        question.fc.weight.mul_(embed_size ** 0.5)
        question.fc.bias.mul_(embed_size ** 0.5)
    return VqaModel(image, question, embed_size, len(ANSWERS), hidden_size=256, dropout=0.2)


# -- data ----------------------------------------------------------------------------------------
CELL = 8  # pixels per side of a cell of the 8 x 8 grid of ``features.20`` (64 x 64 images)


def cell_labels(visible: list[np.ndarray], objects: list[tuple[str, str]], size: int = VQA_IMAGE_SIZE
                ) -> torch.Tensor:
    """(size / CELL, size / CELL) int64: per cell the (shape, colour) pair of the object covering most
    of the cell, when it covers at least 1/8 of it, as ``1 + shape * len(COLOURS) + colour``; 0 = none."""
    side = size // CELL
    if not visible:
        return torch.zeros(side, side, dtype=torch.long)
    counts = np.stack([layer.reshape(side, CELL, side, CELL).sum((1, 3)) for layer in visible])
    colour_names = list(COLOURS)
    pair_ids = np.array([1 + SHAPES.index(shape) * len(COLOURS) + colour_names.index(colour)
                         for shape, colour in objects])
    covered = counts.max(0) >= CELL * CELL / 8
    return torch.from_numpy(np.where(covered, pair_ids[counts.argmax(0)], 0))


def vqa_tensors(n_scenes: int, seed: int, vocabulary: Vocabulary) -> dict[str, torch.Tensor]:
    """Scenes ``0 .. n_scenes - 1`` of the VQA dataset ``seed`` and their questions as tensors:
    ``images`` (uint8, one per scene), ``cells`` (:func:`cell_labels`, the image CNN's pre-training
    target), and per question ``scene`` (its image row), ``questions`` (token ids), ``answers`` and
    ``types``."""
    images, cells, scene, questions, answers, types = [], [], [], [], [], []
    for index in range(n_scenes):
        image, objects, visible, asked = generate_vqa_scene(seed, index)
        images.append(np.asarray(image).transpose(2, 0, 1))
        cells.append(cell_labels(visible, objects))
        for kind, question, answer, _about in asked:
            scene.append(index)
            questions.append(vocabulary.encode(question, MAX_QUESTION_TOKENS))
            answers.append(ANSWERS.index(answer))
            types.append(QUESTION_TYPES.index(kind))
    return {"images": torch.from_numpy(np.stack(images)), "cells": torch.stack(cells),
            "scene": torch.tensor(scene), "questions": torch.stack(questions), "answers": torch.tensor(answers),
            "types": torch.tensor(types)}


@torch.no_grad()
def _pooled_maps(model: SmallVGG, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``avgpool(features(x))`` of uint8 images (eval mode), flattened: the frozen CNN's output."""
    return torch.cat([model.avgpool(model.features(normalise_uint8(images[i:i + batch_size]))).flatten(1)
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def answer_accuracy(net: VqaModel, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of questions answered right by ``net`` in eval mode, overall and per question type."""
    was_training = net.training
    net.eval()
    embedded = torch.cat([net.img_encoder(normalise_uint8(data["images"][i:i + 256]))
                          for i in range(0, len(data["images"]), 256)])
    logits = net.answer(embedded[data["scene"]], net.qst_encoder(data["questions"]))
    net.train(was_training)
    correct = logits.argmax(1) == data["answers"]
    result = {"accuracy": correct.float().mean().item()}
    for k, kind in enumerate(QUESTION_TYPES):
        of_kind = data["types"] == k
        if of_kind.any():
            result[kind] = correct[of_kind].float().mean().item()
    return result


# -- training ------------------------------------------------------------------------------------
def pretrain_features(model: SmallVGG, data: dict[str, torch.Tensor], epochs: int, generator: torch.Generator,
                      log: Callable[[str], None], batch_size: int = 128, lr: float = 3e-3) -> list[float]:
    """Stage 1: train the conv layers ``features`` with two probes: a 1 x 1 conv on the 8 x 8 maps that
    tells each cell's (shape, colour) pair (:func:`cell_labels`; cross-entropy), and a linear layer on
    the pooled maps that tells which pairs the scene holds (binary cross-entropy). The probes are then
    dropped, as an ImageNet classifier's last layer is for the original model. Returns epoch losses."""
    start = time.perf_counter()
    pairs = len(SHAPES) * len(COLOURS)
    cell_probe, scene_probe = nn.Conv2d(model.width, 1 + pairs, 1), nn.Linear(model.width, pairs)
    cell_loss, scene_loss = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        maps = model.features(normalise_uint8(data["images"][batch]))
        cells = data["cells"][batch]
        present = torch.zeros(len(batch), pairs + 1).scatter_(1, cells.flatten(1), 1.0)[:, 1:]
        return cell_loss(cell_probe(maps), cells) + scene_loss(scene_probe(model.avgpool(maps).flatten(1)), present)

    model.train()
    losses = train_epochs([*model.features.parameters(), *cell_probe.parameters(), *scene_probe.parameters()],
                          len(data["images"]), epochs, batch_size, lr, generator, batch_loss,
                          lambda epoch, loss: log(f"stage 1, epoch {epoch + 1}/{epochs}: cell + scene loss "
                                                  f"{loss:.4f} ({time.perf_counter() - start:.0f} s)"))
    model.eval()
    return losses


def train_answering(net: VqaModel, data: dict[str, torch.Tensor], epochs: int, generator: torch.Generator,
                    log: Callable[[str], None], batch_size: int = 128, lr: float = 3e-3) -> list[float]:
    """Stage 2: with the conv layers frozen (their pooled maps computed once), train the CNN's
    ``classifier``, ``img_encoder.fc``, the question encoder and the answer classifier on every
    question (cross-entropy). Returns the per-epoch mean losses."""
    start = time.perf_counter()
    cnn = net.img_encoder.model
    pooled = _pooled_maps(cnn, data["images"])
    loss_fn = nn.CrossEntropyLoss()

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        embedded = net.img_encoder.embed(cnn.classifier(pooled[data["scene"][rows]]))
        return loss_fn(net.answer(embedded, net.qst_encoder(data["questions"][rows])), data["answers"][rows])

    trained = [p for name, p in net.named_parameters() if not name.startswith("img_encoder.model.features.")]
    net.train()
    cnn.features.eval()
    losses = train_epochs(trained, len(data["answers"]), epochs, batch_size, lr, generator, batch_loss,
                          lambda epoch, loss: log(f"stage 2, epoch {epoch + 1}/{epochs}: answer loss {loss:.4f} "
                                                  f"({time.perf_counter() - start:.0f} s)"))
    net.eval()
    return losses


def train_shapes_vqa(n_train: int = DEFAULT_TRAINING["n_train"],
                     n_answer_train: int = DEFAULT_TRAINING["n_answer_train"], n_val: int = DEFAULT_TRAINING["n_val"],
                     image_epochs: int = DEFAULT_TRAINING["image_epochs"],
                     answer_epochs: int = DEFAULT_TRAINING["answer_epochs"], seed: int = DEFAULT_TRAINING["seed"],
                     out_path: str | os.PathLike | None = None, log: Callable[[str], None] | None = print,
                     threads: int | None = 2) -> tuple[VqaModel, dict]:
    """Train the ``shapes_vqa`` model on CPU in two stages, as the original pairs a pre-trained,
    frozen CNN with a trained question side: :func:`pretrain_features`, then :func:`train_answering`.

    Stage 1 sees the first ``n_train`` training scenes of dataset seed ``seed``, stage 2 the
    questions (about 4.9 each) of the first ``n_answer_train`` (at least ``n_train``; its CNN
    features cost one forward pass each); ``n_val`` held-out scenes come from
    ``seed + VAL_SEED_OFFSET``. Returns the model in eval mode and metrics:
    held-out ``accuracy`` (overall and per question type), the ``losses`` of both stages,
    ``seconds``. Writes the state dict to ``out_path`` (atomically) if given.
    """
    log = log or (lambda _message: None)
    start = time.perf_counter()
    generator = seeded_generator(seed, threads)
    vocabulary = question_vocabulary()
    if n_answer_train < n_train:
        raise ValueError(f"n_answer_train ({n_answer_train}) must be at least n_train ({n_train})")
    train = vqa_tensors(n_answer_train, seed, vocabulary)
    val = vqa_tensors(n_val, seed + VAL_SEED_OFFSET, vocabulary) if n_val else None
    log(f"data: {len(train['answers'])} training questions on {n_answer_train} scenes"
        + (f", {len(val['answers'])} held-out on {n_val}" if val else "")
        + f" in {time.perf_counter() - start:.1f} s")

    net = shapes_vqa_net(len(vocabulary))
    first = {"images": train["images"][:n_train], "cells": train["cells"][:n_train]}
    image_losses = pretrain_features(net.img_encoder.model, first, image_epochs, generator, log)
    answer_losses = train_answering(net, train, answer_epochs, generator, log)
    metrics = answer_accuracy(net, val) if val else {"accuracy": float("nan")}
    metrics.update(image_losses=image_losses, answer_losses=answer_losses, seconds=time.perf_counter() - start,
                   n_train=n_train, n_answer_train=n_answer_train, n_val=n_val, seed=seed)
    log(f"held-out answer accuracy {metrics['accuracy']:.4f} ({metrics['seconds']:.0f} s)")
    if out_path is not None:
        save_state_dict(net, out_path)
        log(f"saved {out_path}")
    return net, metrics


BASIC_VQA_LAYER = "img_encoder.model.features.35"  # VGG19's last conv ReLU, before the last max-pool
BASIC_VQA_QUESTION_LENGTH = 30  # questions are padded to 30 tokens
basic_vqa_preprocess: Callable = transforms.Compose([  # images resized to 224 x 224, ImageNet normalisation
    transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
])


def basic_vqa_net(state: dict[str, torch.Tensor]) -> VqaModel:
    """The public basic VQA model (VGG19 image encoder) with every size read off a checkpoint's state."""
    import torchvision

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"not a basic VQA checkpoint: it lacks {key!r}")
        return tuple(state[key].shape)

    embed_size, feature_size = shape("img_encoder.fc.weight")
    vocabulary_size, word_embed_size = shape("qst_encoder.word2vec.weight")
    hidden_size = shape("qst_encoder.lstm.weight_hh_l0")[1]
    num_layers = sum(1 for key in state if key.startswith("qst_encoder.lstm.weight_ih_l"))
    hidden, embed = shape("fc1.weight")
    answers = shape("fc2.weight")[0]
    vgg = torchvision.models.vgg19(weights=None)
    vgg.classifier = nn.Sequential(*list(vgg.classifier.children())[:-1])  # up to the second FC layer's dropout
    image = ImageEncoder(vgg, feature_size, embed_size)
    question = QuestionEncoder(vocabulary_size, word_embed_size, embed_size, num_layers, hidden_size)
    return VqaModel(image, question, embed, answers, hidden_size=hidden)


def load_basic_vqa(checkpoint: str | os.PathLike, device: str | torch.device | None = None):
    """A basic VQA checkpoint (``{"epoch", "state_dict"}`` or a bare state dict) as a ``LoadedModel``,
    with ``vocab_questions.txt`` and ``vocab_answers.txt`` from the checkpoint's folder."""

    if checkpoint in (None, "default"):
        raise ValueError("basic_vqa has no published weights: pass weights='<path to model-epoch-XX.ckpt>', with "
                         "vocab_questions.txt and vocab_answers.txt in the same folder")
    folder = Path(checkpoint).parent
    questions, answers = (Vocabulary.from_file(folder / name) for name in ("vocab_questions.txt", "vocab_answers.txt"))
    state = read_state_dict(checkpoint)
    net = basic_vqa_net(state)
    load_checked(net, state, checkpoint)
    for what, vocabulary, size in (("question", questions, net.qst_encoder.word2vec.num_embeddings),
                                   ("answer", answers, net.fc2.out_features)):
        if len(vocabulary) != size:
            raise ValueError(f"{what} vocabulary of {checkpoint!r} has {len(vocabulary)} words, its model {size}")
    return LoadedModel(name="basic_vqa", net=net.to(default_device(device)).eval(), layer=BASIC_VQA_LAYER,
                       preprocess=basic_vqa_preprocess, categories=list(answers.words), weights=str(checkpoint),
                       questions=(questions, BASIC_VQA_QUESTION_LENGTH))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the shapes_vqa model on the synthetic VQA task (CPU).")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="where to write the state dict")
    for name, value in DEFAULT_TRAINING.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)
    _, metrics = train_shapes_vqa(args.n_train, args.n_answer_train, args.n_val, args.image_epochs,
                                  args.answer_epochs, args.seed, out_path=args.out)
    per_type = ", ".join(f"{kind} {metrics[kind]:.3f}" for kind in QUESTION_TYPES if kind in metrics)
    print(f"held-out answer accuracy {metrics['accuracy']:.4f} ({per_type}), {metrics['seconds']:.0f} s")


if __name__ == "__main__":
    main()
