"""Learning-rate schedules, stepped once per optimizer step.

Each is the ``_target_`` of a conf/scheduler/*.yaml with ``_partial_: true`` and one
signature, so the loop never asks which it has; warm-up is one mechanism for all
(:func:`with_warmup`, ``scheduler.warmup_epochs``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR


def with_warmup(make: Callable[..., LRScheduler], optimizer: Optimizer, total_steps: int,
                steps_per_epoch: int, warmup_epochs: float = 0.0) -> LRScheduler:
    """``make(optimizer, total_steps=, steps_per_epoch=)`` after a linear warm-up of W =
    round(warmup_epochs * steps_per_epoch) optimizer steps (SequentialLR; W = 0: ``make``'s own).

    Step k < W gets (k + 1) / W of the schedule's first lr (onecycle's: max_lr / 25); the
    schedule then runs over the remaining ``total_steps - W`` steps from its step 0.
    """
    warmup = round(warmup_epochs * steps_per_epoch)
    if warmup <= 0:
        return make(optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    main = make(optimizer, total_steps=max(total_steps - warmup, 1), steps_per_epoch=steps_per_epoch)
    # LinearLR: factor 1/W at step 0 rising to 1 at step W - 1 (total_iters steps later).
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
           min_lr_ratio: float = 0.0) -> LRScheduler:
    """Cosine decay from lr to ``min_lr_ratio`` * lr over ``total_steps``."""

    def factor(step: int) -> float:
        t = step / max(1, total_steps)
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
