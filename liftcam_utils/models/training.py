"""What our trained models (``shapes_vgg``, ``shapes_vit``, ``shapes_vqa``) share: seeding, the input
normalisation of uint8 image batches, the training loop (Adam or AdamW with a one-cycle learning rate over
shuffled epochs) and the atomic write of the weights."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..files import write_atomically

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def seeded_generator(seed: int, threads: int | None) -> torch.Generator:
    """Seed torch's global generator (weight initialisation), set ``threads`` CPU threads (None: leave
    as is) and return a fresh generator for the data order, all from ``seed``."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def normalise_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, ``ToTensor`` then ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def save_state_dict(net: nn.Module, path: str | os.PathLike) -> None:
    """Write ``net``'s state dict atomically: a temporary file in the same directory, then replace."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    write_atomically(path, lambda temporary: torch.save(state, temporary))


def train_epochs(parameters: Iterable[torch.nn.Parameter] | Iterable[dict], n: int, epochs: int, batch_size: int,
                 lr: float, generator: torch.Generator, batch_loss: Callable[[torch.Tensor], torch.Tensor],
                 on_epoch: Callable[[int, float], None] | None = None, pct_start: float = 0.2,
                 make_optimiser: Callable[..., torch.optim.Optimizer] = torch.optim.Adam) -> list[float]:
    """``epochs`` passes over items ``0 .. n - 1`` in an order drawn from ``generator``, ``batch_size`` at a
    time: ``batch_loss(indices)`` is a batch's mean loss, minimised with ``make_optimiser(parameters, lr=lr)`` (Adam;
    ``parameters`` may be parameter groups) under a one-cycle (cosine) schedule peaking at ``lr`` after
    ``pct_start`` of the steps. After each epoch ``on_epoch(epoch, mean loss)``. Returns the per-epoch mean
    losses."""
    optimiser = make_optimiser(parameters, lr=lr)
    steps = epochs * -(-n // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1),
                                                   pct_start=pct_start)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            indices = order[start:start + batch_size]
            loss = batch_loss(indices)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(indices)
        losses.append(total / n)
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses
