"""ShapesVGG: a small VGG-style multi-label classifier for the synthetic scenes, and its training.

The architecture mirrors torchvision's VGG16 at a small scale: conv blocks (Conv-BN-ReLU, max-pool)
in ``features``, whose last conv layer is followed by its own ``nn.ReLU`` -- the default CAM layer
:data:`SHAPES_VGG_LAYER` (128 x 12 x 12 maps for 96 x 96 images, non-negative) -- then ``pool``
(``nn.MaxPool2d(2)``) and ``classifier`` = FC-ReLU-Dropout-FC-ReLU-Dropout-FC. So the head ``F``
cut at the default layer (max-pool, flatten, three FC layers with ReLUs) is non-linear, as in the
paper's VGG16 setting.

Inputs are 96 x 96 RGB scenes preprocessed by :data:`~.scene_classifiers.shapes_preprocess` (``ToTensor``, then
the ImageNet normalisation); outputs are one logit per class of :data:`SCENE_CLASSES`, a class is present where its
logit > 0 (:mod:`.scene_classifiers`: what this model shares with ``shapes_vit``, the training loop included).

The committed weights ``data/shapes_vgg.pt`` (a state dict) are reproduced on CPU by::

    python -m liftcam_utils.models.shapes_vgg --out data/shapes_vgg.pt

which trains with the defaults of :func:`train_shapes_vgg` (``DEFAULT_TRAINING``): training
scenes from seed 0, held-out scenes from seed ``0 + VAL_SEED_OFFSET``, ``torch.manual_seed(0)``,
2 CPU threads. Load them with :func:`load_shapes_vgg`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..datasets.synthetic_scenes import SCENE_CLASSES
from .checkpoints import default_device, load_state_dict_file
from .scene_classifiers import SHAPES_IMAGE_SIZE, scene_classifier_cli, train_scene_classifier

SHAPES_VGG_LAYER = "features.14"  # the ReLU after the last conv layer (and its BN)
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "shapes_vgg.pt"

DEFAULT_TRAINING = {"n_train": 3000, "n_val": 500, "epochs": 10, "seed": 0}


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


# -- training ------------------------------------------------------------------------------------
def train_shapes_vgg(n_train: int = DEFAULT_TRAINING["n_train"], n_val: int = DEFAULT_TRAINING["n_val"],
                     epochs: int = DEFAULT_TRAINING["epochs"], seed: int = DEFAULT_TRAINING["seed"],
                     out_path: str | os.PathLike | None = None, log: Callable[[str], None] | None = print,
                     image_size: int = SHAPES_IMAGE_SIZE, batch_size: int = 64, lr: float = 2e-3,
                     threads: int | None = 2) -> tuple[ShapesVGG, dict]:
    """Train :class:`ShapesVGG` with :func:`~.scene_classifiers.train_scene_classifier`: Adam (no weight
    decay), one-cycle learning rate peaking at ``lr`` after 15 % of the steps. Returns the model in eval mode and
    its metrics; writes the state dict to ``out_path`` (atomically) if given."""
    return train_scene_classifier(ShapesVGG, n_train, n_val, epochs, seed, out_path=out_path, log=log,
                                  image_size=image_size, batch_size=batch_size, lr=lr, pct_start=0.15,
                                  threads=threads)


def load_shapes_vgg(path: str | os.PathLike = DEFAULT_WEIGHTS, device: str | torch.device | None = None
                    ) -> ShapesVGG:
    """:class:`ShapesVGG` with the weights in ``path`` (read with ``weights_only=True``), in eval mode."""
    net = ShapesVGG(len(SCENE_CLASSES))
    load_state_dict_file(net, path)
    return net.to(default_device(device)).eval()


def main(argv: list[str] | None = None) -> None:
    scene_classifier_cli("Train ShapesVGG on the synthetic scenes (CPU).", DEFAULT_WEIGHTS, DEFAULT_TRAINING,
                         train_shapes_vgg, argv)


if __name__ == "__main__":
    main()
