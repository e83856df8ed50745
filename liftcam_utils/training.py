"""The training loop our two models share: Adam with a one-cycle learning rate over shuffled epochs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def train_epochs(parameters: Iterable[torch.nn.Parameter], n: int, epochs: int, batch_size: int, lr: float,
                 generator: torch.Generator, batch_loss: Callable[[torch.Tensor], torch.Tensor],
                 on_epoch: Callable[[int, float], None] | None = None, pct_start: float = 0.2) -> list[float]:
    """``epochs`` passes over items ``0 .. n - 1`` in an order drawn from ``generator``, ``batch_size`` at a
    time: ``batch_loss(indices)`` is a batch's mean loss, minimised with Adam under a one-cycle (cosine)
    schedule peaking at ``lr`` after ``pct_start`` of the steps. After each epoch ``on_epoch(epoch, mean
    loss)``. Returns the per-epoch mean losses."""
    optimiser = torch.optim.Adam(parameters, lr=lr)
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
