"""Your own images: root/<class>/* (split with split_seed) or root/train/<class>/..., root/val/...
[root/test/...], found by torchvision's ``find_classes``/``make_dataset``.

Within ``memory_budget_mb`` the images are decoded once into uint8 tensors (an undecodable
file is skipped with a warning naming it); over it, with ``loader="dataloader"``, each split
is a :class:`FileSplit` that torchvision's ImageFolder reads at batch time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torchvision.datasets import ImageFolder

from cnnlab.data.splits import ImageSplits, Split, seeded_split
from cnnlab.errors import DataError

log = logging.getLogger(__name__)


def _scan(folder: str) -> tuple[list[str], list[tuple[str, int]]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(folder)
    except FileNotFoundError:
        raise DataError(f"dataset.root={os.path.normpath(folder)!r} has no class subfolders: "
                        "put each class's images in root/<class>/") from None
    try:
        samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as e:
        raise DataError(f"dataset.root={folder!r}: {e}") from None
    return classes, samples


# What PIL raises for a file it cannot decode (not an image, truncated, unknown format).
UNREADABLE = (OSError, ValueError, SyntaxError)


def read_image(path: str | os.PathLike, in_chans: int, image_size: int) -> torch.Tensor:
    """One image file as uint8 (C, S, S): decoded by PIL, converted to grey "L" (in_chans=1)
    or "RGB", bilinear-resized to image_size x image_size. Raises one of ``UNREADABLE``.

    The one reader of image files: the in-memory path, the per-batch path and
    ``cnnlab.predict`` all see the same pixels.
    """
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if in_chans == 1 else "RGB").resize((image_size, image_size), Image.BILINEAR)
        arr = np.array(im, dtype=np.uint8)  # (S, S) or (S, S, 3), a writable copy
    return torch.from_numpy(arr).reshape(image_size, image_size, -1).permute(2, 0, 1)


def _decode(samples: list[tuple[str, int]], in_chans: int, image_size: int) -> Split:
    """Read every image; skip (and name) the ones that fail."""
    xs, ys = [], []
    for path, label in samples:
        try:
            xs.append(read_image(path, in_chans, image_size))
        except UNREADABLE as e:
            log.warning("skipping unreadable image %s (%s)", path, type(e).__name__)
            continue
        ys.append(label)
    if not xs:
        return Split(torch.empty(0, in_chans, image_size, image_size, dtype=torch.uint8),
                     torch.empty(0, dtype=torch.long))
    return Split(torch.stack(xs), torch.tensor(ys, dtype=torch.long))


def _read_or_fail(path: str, in_chans: int, image_size: int) -> torch.Tensor:
    """``read_image``, failing in one line: a file read at batch time can't be skipped.
    Module-level (with functools.partial) so that spawned DataLoader workers can unpickle it."""
    try:
        return read_image(path, in_chans, image_size)
    except UNREADABLE as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); remove or replace it") from None


class _Files(ImageFolder):
    """torchvision's ImageFolder, told its files (and classes) instead of scanning the folder.
    Module-level, so DataLoader workers started by spawn or forkserver can unpickle it."""

    def __init__(self, root: str, samples: list[tuple[str, int]], classes: list[str],
                 loader: Callable[[str], Any], transform: Callable | None) -> None:
        self._given_samples, self._given_classes = samples, classes
        super().__init__(root, transform=transform, loader=loader, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._given_classes, {c: i for i, c in enumerate(self._given_classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions: Any = None,
                     is_valid_file: Any = None, allow_empty: bool = False) -> list[tuple[str, int]]:
        return list(self._given_samples)


@dataclass
class FileSplit:
    """A split read from its files at batch time: what a folder over the memory budget becomes.

    Like a :class:`~cnnlab.data.splits.Split` where the shapes are asked (``len()``, ``y``,
    ``take(n)``, and ``x``, a *meta* uint8 (N, C, S, S) tensor with no memory); its images
    come through :meth:`dataset`, never through ``x``.
    """

    root: str
    samples: list[tuple[str, int]]  # (path, class index)
    classes: list[str]
    in_chans: int
    image_size: int

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def x(self) -> torch.Tensor:
        return torch.empty(len(self), self.in_chans, self.image_size, self.image_size,
                           dtype=torch.uint8, device="meta")

    @property
    def y(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def take(self, n: int | None) -> FileSplit:
        return self if n is None or n >= len(self) else self.subset(range(n))

    def subset(self, idx: Iterable[int] | torch.Tensor) -> FileSplit:
        """The files numbered ``idx``, in that order."""
        rows = idx.tolist() if isinstance(idx, torch.Tensor) else idx
        return FileSplit(self.root, [self.samples[i] for i in rows], self.classes, self.in_chans, self.image_size)

    def dataset(self, transform: Callable | None = None) -> Any:
        """A torchvision ImageFolder over these files; items are (transform(uint8 image), label)."""
        loader = partial(_read_or_fail, in_chans=self.in_chans, image_size=self.image_size)
        return _Files(self.root, self.samples, self.classes, loader, transform)

    def read(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 (C, S, S)."""
        return _read_or_fail(self.samples[i][0], self.in_chans, self.image_size)


def load_imagefolder(root: str | None, image_size: int = 64, in_chans: int = 3,
                     val_split: float = 0.15, test_split: float = 0.15, split_seed: int = 0,
                     memory_budget_mb: int = 2048, loader: str = "tensor",
                     **_: object) -> ImageSplits:
    """Load an image folder (either layout) into memory, within ``memory_budget_mb``; over it,
    :class:`FileSplit` s with ``loader="dataloader"``, a one-line DataError with ``tensor``."""
    if not root or not os.path.isdir(root):
        raise DataError(f"dataset.root={root!r} is not a folder: give a folder with one subfolder per class")
    pre_split = os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val"))
    parts = ["train", "val", "test"] if pre_split else ["."]
    found = {p: _scan(os.path.join(root, p)) for p in parts if os.path.isdir(os.path.join(root, p))}
    classes = found[parts[0]][0]
    n_files = sum(len(s) for _, s in found.values())
    if n_files == 0:
        raise DataError(f"dataset.root={root!r} holds no images (looked for .png, .jpg, ... in its class subfolders)")
    if len(classes) < 2:
        raise DataError(f"dataset.root={root!r} has {len(classes)} class ({', '.join(classes)}); a classifier needs at least 2 class subfolders")
    if pre_split:
        for p, (cls, _) in found.items():
            if cls != classes:
                raise DataError(f"dataset.root={root!r}: {p}/ has classes {cls}, train/ has {classes}")
    need_mb = n_files * in_chans * image_size * image_size / 2**20  # uint8 bytes
    on_disk = need_mb > memory_budget_mb
    if on_disk:
        if loader != "dataloader":
            raise DataError(
                f"dataset.root={root!r}: {n_files} images at {image_size}px need {need_mb:,.1f} MB, over "
                f"dataset.memory_budget_mb={memory_budget_mb}: use dataset.loader=dataloader to read "
                "them from disk per batch, or raise the budget, or lower dataset.image_size"
            )
        log.info("%s: %d images need %.0f MB, over the %d MB budget: reading them from disk per batch",
                 root, n_files, need_mb, memory_budget_mb)

    def read(part: str) -> Any:
        """One folder's images: decoded into memory, or as its file list when over the budget."""
        samples = found[part][1]
        if on_disk:
            return FileSplit(os.path.join(root, part), samples, classes, in_chans, image_size)
        return _decode(samples, in_chans, image_size)

    if pre_split:
        train, val = read("train"), read("val")
        test = read("test") if "test" in found else val
    else:
        every = read(".")
        idx = torch.arange(len(every))
        parts = seeded_split(idx, idx, [val_split, test_split], split_seed)  # each split's image numbers
        train, val, test = (every.subset(p.y) if on_disk else Split(every.x[p.y], every.y[p.y]) for p in parts)
    if len(train) == 0:
        raise DataError(f"dataset.root={root!r}: no readable training images (see the warnings above)")
    return ImageSplits(train, val, test, classes)
