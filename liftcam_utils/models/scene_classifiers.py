"""What our classifiers of the synthetic scenes (``shapes_vgg``, ``shapes_vit``) share: their preprocessing, the
scenes as tensors, the held-out metrics and one training loop.

Inputs are 96 x 96 RGB scenes from :func:`~liftcam_utils.datasets.synthetic_scenes.make_scenes`,
preprocessed by :data:`shapes_preprocess` (resize to 96 x 96 -- a no-op for generated scenes --,
``ToTensor``, then the ImageNet normalisation mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).
Outputs are one logit per class of :data:`~liftcam_utils.datasets.synthetic_scenes.SCENE_CLASSES`; a class is
present where its logit > 0. :func:`train_scene_classifier` trains any such network (multi-label: binary
cross-entropy on the logits); the two models differ only in their architecture and hyper-parameters.
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

from ..datasets.synthetic_scenes import DEFAULT_SIZE, make_scenes, multi_hot
from .training import IMAGENET_MEAN, IMAGENET_STD, normalise_uint8, save_state_dict, seeded_generator, train_epochs

SHAPES_IMAGE_SIZE = DEFAULT_SIZE
VAL_SEED_OFFSET = 10_000  # held-out scenes come from dataset seed ``seed + VAL_SEED_OFFSET``

shapes_preprocess: Callable = transforms.Compose([
    transforms.Resize((SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)),
    transforms.ToTensor(),
    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
])


# -- metrics -------------------------------------------------------------------------------------
def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: the mean precision at the rank of each positive (scores sorted descending)."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (columns) with at least one positive of :func:`average_precision`."""
    aps = [average_precision(scores[:, k], targets[:, k]) for k in range(targets.shape[1])]
    return float(np.nanmean(aps))


def exact_match_accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of images whose whole label set (classes with logit > 0) is right."""
    return float(((logits > 0) == (targets > 0)).all(axis=1).mean())


# -- data ----------------------------------------------------------------------------------------
def scene_tensors(n: int, seed: int, size: int = SHAPES_IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes of dataset ``seed`` as uint8 (n, 3, H, W) images and float (n, C) targets."""
    scenes = make_scenes(n, seed=seed, size=size)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i, record in enumerate(scenes.records):
        images[i] = np.asarray(record.image())
    images = images.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(multi_hot(scenes.records))


@torch.no_grad()
def predict_logits(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of uint8 images, in eval mode, on the network's device; returned on the CPU."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = [net(normalise_uint8(images[i:i + batch_size]).to(device)).cpu()
           for i in range(0, len(images), batch_size)]
    net.train(was_training)
    return torch.cat(out)


def evaluate(net: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Held-out ``mAP`` and ``exact_match`` accuracy of ``net`` on uint8 images."""
    logits = predict_logits(net, images).numpy()
    targets = targets.numpy()
    return {"mAP": mean_average_precision(logits, targets),
            "exact_match": exact_match_accuracy(logits, targets)}


# -- training ------------------------------------------------------------------------------------
def weight_decay_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """``net``'s parameters as two optimiser groups: the weight matrices and kernels (parameters named ``*weight``
    with two or more dimensions: linear, attention projection and convolution weights), decayed by
    ``weight_decay``, and all others (biases, normalisation, position embeddings, class tokens), not decayed."""
    decayed, spared = [], []
    for name, parameter in net.named_parameters():
        (decayed if name.endswith("weight") and parameter.ndim >= 2 else spared).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": spared, "weight_decay": 0.0}]


def train_scene_classifier(build: Callable[[int, int], nn.Module], n_train: int, n_val: int, epochs: int,
                           seed: int, out_path: str | os.PathLike | None = None,
                           log: Callable[[str], None] | None = print, image_size: int = SHAPES_IMAGE_SIZE,
                           batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 0.0,
                           pct_start: float = 0.15, threads: int | None = 2) -> tuple[nn.Module, dict]:
    """Train ``build(num_classes, image_size)`` on CPU: BCE-with-logits, one-cycle learning rate (cosine).

    The optimiser is Adam, or with a positive ``weight_decay`` AdamW, decaying only the weight matrices and kernels
    (:func:`weight_decay_groups`); the learning rate warms up to ``lr`` over the first ``pct_start`` of the steps,
    then anneals. ``torch.manual_seed(seed)`` precedes ``build``. Training scenes
    come from dataset seed ``seed``, the ``n_val`` held-out scenes from ``seed + VAL_SEED_OFFSET``; random
    horizontal flips augment the training batches. Returns the model in eval mode and metrics: held-out ``mAP``
    and ``exact_match``, per-epoch ``losses`` (mean training loss), ``seconds``, and the data settings. Writes
    the state dict to ``out_path`` (atomically) if given.
    """
    log = log or (lambda _message: None)
    start = time.perf_counter()
    generator = seeded_generator(seed, threads)
    train_x, train_y = scene_tensors(n_train, seed, image_size)
    val_x, val_y = scene_tensors(n_val, seed + VAL_SEED_OFFSET, image_size)
    log(f"data: {n_train} training + {n_val} held-out scenes in {time.perf_counter() - start:.1f} s")

    net = build(train_y.shape[1], image_size)
    loss_fn = nn.BCEWithLogitsLoss()

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        x = normalise_uint8(train_x[batch])
        flip = torch.rand(len(batch), generator=generator) < 0.5
        return loss_fn(net(torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)), train_y[batch])

    def report(epoch: int, loss: float) -> None:
        message = f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}"
        if n_val:
            metrics = evaluate(net, val_x, val_y)
            message += f", held-out mAP {metrics['mAP']:.4f}, exact match {metrics['exact_match']:.3f}"
        log(f"{message} ({time.perf_counter() - start:.0f} s)")

    if weight_decay > 0:
        parameters, make_optimiser = weight_decay_groups(net, weight_decay), torch.optim.AdamW
    else:
        parameters, make_optimiser = net.parameters(), torch.optim.Adam
    net.train()
    losses = train_epochs(parameters, n_train, epochs, batch_size, lr, generator, batch_loss, report,
                          pct_start=pct_start, make_optimiser=make_optimiser)
    net.eval()
    metrics = evaluate(net, val_x, val_y) if n_val else {"mAP": float("nan"), "exact_match": float("nan")}
    metrics.update(losses=losses, seconds=time.perf_counter() - start, n_train=n_train, n_val=n_val,
                   epochs=epochs, seed=seed)
    if out_path is not None:
        save_state_dict(net, out_path)
        log(f"saved {out_path}")
    return net, metrics


def scene_classifier_cli(description: str, default_weights: os.PathLike, default_training: dict,
                         train: Callable[..., tuple[nn.Module, dict]], argv: list[str] | None = None) -> None:
    """The command line of a scene classifier: ``--out`` (default ``default_weights``) and one integer option per
    entry of ``default_training`` (``n_train`` -> ``--n-train``), passed to ``train`` by name."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_weights, help="where to write the state dict")
    for name, value in default_training.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    _, metrics = train(**args, out_path=out)
    print(f"held-out mAP {metrics['mAP']:.4f}, exact-match accuracy {metrics['exact_match']:.4f}, "
          f"{metrics['seconds']:.0f} s")
