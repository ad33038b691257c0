"""Guards around the training passes: out of memory, and NaN/inf weights.

An out-of-memory error deep in a forward pass says nothing about the config. Inside
``with oom_hint("training", "trainer.batch_size", 256, device)`` it becomes one
line that names the phase and the key to change, with a value to try::

    out of memory on cuda during training with trainer.batch_size=256: try
    trainer.batch_size=128, device.amp=bf16 or device.channels_last=true

The traceback's frames, which hold the device tensors, are dropped so the memory is
freed before the message is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cnnlab.errors import DeviceError


class OutOfMemory(DeviceError):
    """The device ran out of memory; the message names the batch-size key to lower."""


def is_oom(e: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, and any backend that raises it) or a host MemoryError: by type,
    never by the message's wording. (A CPU tensor too large to allocate is a RuntimeError in torch
    2.x with no type of its own: it is reported as torch says it.)"""
    import torch

    return isinstance(e, (torch.OutOfMemoryError, MemoryError))


@contextmanager
def oom_hint(phase: str, key: str, batch: int, device: Callable[[], str]) -> Iterator[None]:
    """Re-raise an out-of-memory error inside the block as :class:`OutOfMemory`.

    ``phase``: setup, training or evaluation; ``key``/``batch``: the batch-size key
    that governs the phase and its value; ``device()``: the device's name.
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, OutOfMemory) or not is_oom(e):
            raise
        e.__traceback__ = None  # drop the frames that hold the device tensors
        raise OutOfMemory(
            f"out of memory on {device()} during {phase} with {key}={batch}: try "
            f"{key}={max(1, batch // 2)}, device.amp=bf16 or device.channels_last=true") from None


def all_finite(model: Any) -> bool:
    """Every parameter finite: one host read, once per epoch, before a checkpoint is written."""
    import torch

    flags = [p.detach().isfinite().all() for p in model.parameters()]
    return bool(torch.stack(flags).all().item()) if flags else True
