"""Dataset name -> builder. Adding a dataset: a function here and a conf/dataset/*.yaml."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cnnlab.data.splits import ImageSplits
from cnnlab.errors import DataError


def _lazy(module: str, fn: str, *args: Any) -> Callable[..., ImageSplits]:
    """``cnnlab.data.<module>.<fn>(*args, **kw)``, imported when first called (torchvision is slow)."""
    def load(**kw: Any) -> ImageSplits:
        return getattr(importlib.import_module(f"cnnlab.data.{module}"), fn)(*args, **kw)

    return load


DATASETS: dict[str, Callable[..., ImageSplits]] = {
    "digits": _lazy("digits", "load_digits"),
    "imagefolder": _lazy("imagefolder", "load_imagefolder"),
    **{n: _lazy("torchvision_sets", "load_torchvision", n) for n in ("cifar10", "cifar100", "mnist", "fashion_mnist", "svhn")},
}


def load_dataset(name: str, root: str | None, download: bool, image_size: int, in_chans: int,
                 val_split: float, test_split: float, split_seed: int,
                 memory_budget_mb: int, limit: int | None = None, loader: str = "tensor") -> ImageSplits:
    """Decode dataset ``name`` into uint8 splits; ``limit`` keeps the first N of each split."""
    splits = DATASETS[name](root=root, download=download, image_size=image_size, in_chans=in_chans,
                            val_split=val_split, test_split=test_split, split_seed=split_seed,
                            memory_budget_mb=memory_budget_mb, loader=loader)
    if splits.in_chans != in_chans:
        raise DataError(f"dataset.in_chans={in_chans} but {name} images have {splits.in_chans} channels")
    return splits.limit(limit)
