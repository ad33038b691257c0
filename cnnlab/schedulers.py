"""Learning-rate schedules, stepped once per optimizer step.

Each is the ``_target_`` of a conf/scheduler/*.yaml with ``_partial_: true``; the
runner completes the call with the optimizer and the run's length in steps, so
every schedule has the same signature and the loop never asks which one it has.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0,
           min_lr_ratio: float = 0.0) -> LRScheduler:
    """Linear warm-up for ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` * lr."""
    warmup = int(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return LambdaLR(optimizer, factor)


def step(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int = 5,
         gamma: float = 0.1) -> LRScheduler:
    """Multiply the lr by ``gamma`` every ``step_epochs`` epochs."""
    every = max(1, step_epochs * steps_per_epoch)
    return LambdaLR(optimizer, lambda s: gamma ** (s // every))


def onecycle(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, max_lr_factor: float = 1.0,
             pct_start: float = 0.25) -> LRScheduler:
    """torch's OneCycleLR peaking at ``max_lr_factor`` times each group's lr."""
    max_lr = [g["lr"] * max_lr_factor for g in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 1), pct_start=pct_start)


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """A constant lr (scheduler=none)."""
    return LambdaLR(optimizer, lambda s: 1.0)
