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


# The images each in-memory dataset decodes (train and test), for the memory check before decoding.
IMAGES = {"digits": 1797, "cifar10": 60000, "cifar100": 60000, "mnist": 70000, "fashion_mnist": 70000,
          "svhn": 99289}


def available_mb() -> float | None:
    """The memory the OS can give without swapping (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        return None


def decoded_size_error(what: str, n_images: int, in_chans: int, image_size: int, fix: str) -> DataError | None:
    """The one-line DataError for ``n_images`` that, decoded as uint8 (N x C x S x S bytes), would not fit
    the memory available now (``fix``: what to change); None when they fit, or the memory is unknown.
    Checked before decoding: over it, the OS would swap or kill the run, or torch would blame a batch size."""
    need_mb = n_images * in_chans * image_size**2 / 2**20  # uint8 bytes of every image
    free_mb = available_mb() if need_mb > 256 else None  # small sets: not worth reading /proc
    if free_mb is None or need_mb <= free_mb:
        return None
    return DataError(f"dataset.image_size={image_size}: {what}: its {n_images} images decoded at {image_size}px "
                     f"need {need_mb:,.0f} MB of memory, over the {free_mb:,.0f} MB available: {fix}")


def load_dataset(name: str, root: str | None, download: bool, image_size: int, in_chans: int,
                 val_split: float, test_split: float, split_seed: int,
                 memory_budget_mb: int, limit: int | None = None, loader: str = "tensor",
                 imbalance: float | None = None) -> ImageSplits:
    """Decode dataset ``name`` into uint8 splits; ``imbalance`` (> 1) cuts the train split to a long
    tail (cnnlab/recipes/imbalance.py), val and test untouched; ``limit`` keeps the first N of each split.
    The in-memory sets' decoded size is checked here, an image folder's once its files are counted."""
    if name in IMAGES:
        error = decoded_size_error(name, IMAGES[name], in_chans, image_size,
                                   "lower dataset.image_size (this dataset is held in memory with either dataset.loader)")
        if error is not None:
            raise error
    splits = DATASETS[name](root=root, download=download, image_size=image_size, in_chans=in_chans,
                            val_split=val_split, test_split=test_split, split_seed=split_seed,
                            memory_budget_mb=memory_budget_mb, loader=loader)
    if splits.in_chans != in_chans:
        raise DataError(f"dataset.in_chans={in_chans} but {name} images have {splits.in_chans} channels")
    if imbalance is not None and imbalance > 1:
        from cnnlab.recipes.imbalance import long_tail

        splits = ImageSplits(long_tail(splits.train, splits.num_classes, imbalance), splits.val, splits.test,
                             splits.classes)
    return splits.limit(limit)
