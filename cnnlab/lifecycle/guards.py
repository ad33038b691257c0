"""Guards around the training passes: out of memory (one line naming the key to change,
the device tensors' frames dropped first), a batch of 1 that BatchNorm cannot train on, and
NaN/inf weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cnnlab.errors import DeviceError, first_line


class OutOfMemory(DeviceError):
    """The device ran out of memory; the message names the batch-size key to lower."""


def is_oom(e: BaseException) -> bool:
    """torch's OutOfMemoryError or a host MemoryError: by type, never by the wording (a CPU tensor
    too large to allocate is a plain RuntimeError in torch 2.x: reported as torch says it)."""
    import torch

    return isinstance(e, (torch.OutOfMemoryError, MemoryError))


@contextmanager
def oom_hint(phase: str, key: str, batch: int, device: Callable[[], str]) -> Iterator[None]:
    """Re-raise an out-of-memory error in the block as :class:`OutOfMemory`, naming ``phase``, the
    batch-size ``key`` that governs it and a value to try: ``key=batch // 2``."""
    try:
        yield
    except Exception as e:
        if isinstance(e, ValueError) and batch == 1 and phase == "training":
            # BatchNorm needs 2+ values per channel in training: a batch of 1 on a 1x1 map has one
            # (torch's ValueError: "Expected more than 1 value per channel when training").
            raise DeviceError(f"{key}={batch} is too small for this model in training "
                              f"({first_line(e)}): use {key}=2 or more") from None
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
