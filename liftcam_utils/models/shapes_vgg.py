"""ShapesVGG: a small VGG-style multi-label classifier for the synthetic scenes, and its training.

The architecture mirrors torchvision's VGG16 at a small scale: conv blocks (Conv-BN-ReLU, max-pool)
in ``features``, whose last conv layer is followed by its own ``nn.ReLU`` -- the default CAM layer
:data:`SHAPES_VGG_LAYER` (128 x 12 x 12 maps for 96 x 96 images, non-negative) -- then ``pool``
(``nn.MaxPool2d(2)``) and ``classifier`` = FC-ReLU-Dropout-FC-ReLU-Dropout-FC. So the head ``F``
cut at the default layer (max-pool, flatten, three FC layers with ReLUs) is non-linear, as in the
paper's VGG16 setting.

Inputs are 96 x 96 RGB scenes from :func:`~liftcam_utils.datasets.synthetic_scenes.make_scenes`,
preprocessed by :data:`shapes_preprocess` (resize to 96 x 96 -- a no-op for generated scenes --,
``ToTensor``, then the ImageNet normalisation mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).
Outputs are one logit per class of :data:`SCENE_CLASSES`; a class is present where its logit > 0.

The committed weights ``data/shapes_vgg.pt`` (a state dict) are reproduced on CPU by::

    python -m liftcam_utils.models.shapes_vgg --out data/shapes_vgg.pt

which trains with the defaults of :func:`train_shapes_vgg` (``DEFAULT_TRAINING``): training
scenes from seed 0, held-out scenes from seed ``0 + VAL_SEED_OFFSET``, ``torch.manual_seed(0)``,
2 CPU threads. Load them with :func:`load_shapes_vgg`.
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

from ..datasets.synthetic_scenes import DEFAULT_SIZE, SCENE_CLASSES, make_scenes, multi_hot
from .checkpoints import default_device, load_state_dict_file
from .training import IMAGENET_MEAN, IMAGENET_STD, normalise_uint8, save_state_dict, seeded_generator, train_epochs

SHAPES_VGG_LAYER = "features.14"  # the ReLU after the last conv layer (and its BN)
SHAPES_IMAGE_SIZE = DEFAULT_SIZE
VAL_SEED_OFFSET = 10_000  # held-out scenes come from dataset seed ``seed + VAL_SEED_OFFSET``
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "shapes_vgg.pt"

DEFAULT_TRAINING = {"n_train": 3000, "n_val": 500, "epochs": 10, "seed": 0}

shapes_preprocess: Callable = transforms.Compose([
    transforms.Resize((SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)),
    transforms.ToTensor(),
    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
])


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class ShapesVGG(nn.Module):
    """Small VGG for ``image_size`` x ``image_size`` inputs (a multiple of 16).

    ``features``: 16, 32, 64 channels at full, 1/2, 1/4 resolution (each followed by a max-pool),
    then the last conv at 1/8 resolution with ``width`` channels and its ReLU (``features.14``).
    """

    def __init__(self, num_classes: int = len(SCENE_CLASSES), image_size: int = SHAPES_IMAGE_SIZE,
                 width: int = 128, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {image_size}")
        self.features = nn.Sequential(
            *_conv(3, 16), nn.MaxPool2d(2),     # 0-3
            *_conv(16, 32), nn.MaxPool2d(2),    # 4-7
            *_conv(32, 64), nn.MaxPool2d(2),    # 8-11
            *_conv(64, width),                  # 12-14: 14 = the CAM layer
        )
        self.pool = nn.MaxPool2d(2)
        side = image_size // 16
        self.classifier = nn.Sequential(
            nn.Linear(width * side * side, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


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
def train_shapes_vgg(n_train: int = DEFAULT_TRAINING["n_train"], n_val: int = DEFAULT_TRAINING["n_val"],
                     epochs: int = DEFAULT_TRAINING["epochs"], seed: int = DEFAULT_TRAINING["seed"],
                     out_path: str | os.PathLike | None = None, log: Callable[[str], None] | None = print,
                     image_size: int = SHAPES_IMAGE_SIZE, batch_size: int = 64, lr: float = 2e-3,
                     threads: int | None = 2) -> tuple[ShapesVGG, dict]:
    """Train :class:`ShapesVGG` on CPU: BCE-with-logits, Adam, one-cycle learning rate (cosine).

    Training scenes come from dataset seed ``seed``, the ``n_val`` held-out scenes from
    ``seed + VAL_SEED_OFFSET``; random horizontal flips augment the training batches. Returns the
    model in eval mode and metrics: held-out ``mAP`` and ``exact_match``, per-epoch ``losses``
    (mean training loss), ``seconds``. Writes the state dict to ``out_path`` (atomically) if given.
    """
    log = log or (lambda _message: None)
    start = time.perf_counter()
    generator = seeded_generator(seed, threads)
    train_x, train_y = scene_tensors(n_train, seed, image_size)
    val_x, val_y = scene_tensors(n_val, seed + VAL_SEED_OFFSET, image_size)
    log(f"data: {n_train} training + {n_val} held-out scenes in {time.perf_counter() - start:.1f} s")

    net = ShapesVGG(train_y.shape[1], image_size=image_size)
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

    net.train()
    losses = train_epochs(net.parameters(), n_train, epochs, batch_size, lr, generator, batch_loss, report,
                          pct_start=0.15)
    net.eval()
    metrics = evaluate(net, val_x, val_y) if n_val else {"mAP": float("nan"), "exact_match": float("nan")}
    metrics.update(losses=losses, seconds=time.perf_counter() - start, n_train=n_train, n_val=n_val,
                   epochs=epochs, seed=seed)
    if out_path is not None:
        save_state_dict(net, out_path)
        log(f"saved {out_path}")
    return net, metrics


def load_shapes_vgg(path: str | os.PathLike = DEFAULT_WEIGHTS, device: str | torch.device | None = None
                    ) -> ShapesVGG:
    """:class:`ShapesVGG` with the weights in ``path`` (read with ``weights_only=True``), in eval mode."""
    net = ShapesVGG(len(SCENE_CLASSES))
    load_state_dict_file(net, path)
    return net.to(default_device(device)).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train ShapesVGG on the synthetic scenes (CPU).")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="where to write the state dict")
    for name, value in DEFAULT_TRAINING.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)
    _, metrics = train_shapes_vgg(args.n_train, args.n_val, args.epochs, args.seed, out_path=args.out)
    print(f"held-out mAP {metrics['mAP']:.4f}, exact-match accuracy {metrics['exact_match']:.4f}, "
          f"{metrics['seconds']:.0f} s")


if __name__ == "__main__":
    main()
