"""Your own images: root/<class>/* (split with split_seed) or root/train/<class>/...
[root/val/...] [root/test/...], found in torchvision's order (hidden names left out).

Within ``memory_budget_mb`` the images are decoded once into uint8 tensors (an undecodable
file is skipped with a warning naming it); over it, with ``loader="dataloader"``, each file
is read once to skip the same files with the same warning, and each split is a
:class:`FileSplit` that torchvision's ImageFolder reads at batch time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torchvision.datasets import ImageFolder

from cnnlab.data import registry
from cnnlab.data.decode import UNREADABLE, decode_image
from cnnlab.data.splits import ImageSplits, Split, seeded_split
from cnnlab.errors import DataError

log = logging.getLogger(__name__)


def _scan(root: str, part: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and (path, class index) as torchvision's ``find_classes``/``make_dataset`` give
    them (same order), but hidden names (``.ipynb_checkpoints``, ``._x.png``) left out and each
    real folder walked once, so a symlink loop cannot repeat images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    folder = os.path.join(root, part)
    try:
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"dataset.root={folder!r}: {e.strerror}") from None
    if not classes:
        raise DataError(f"dataset.root={os.path.normpath(folder)!r} has no class subfolders: "
                        "put each class's images in root/<class>/")
    seen = {os.path.realpath(p) for p in [root, folder, *(os.path.join(folder, c) for c in classes)]}
    samples = []
    for i, c in enumerate(classes):
        walked = []
        for top, dirs, files in os.walk(os.path.join(folder, c), followlinks=True):
            real = [(d, os.path.realpath(os.path.join(top, d))) for d in sorted(dirs) if not d.startswith(".")]
            dirs[:] = [d for d, r in real if r not in seen and not seen.add(r)]  # first sight only
            walked.append((top, files))
        samples += [(os.path.join(top, f), i) for top, files in sorted(walked) for f in sorted(files)
                    if not f.startswith(".") and has_file_allowed_extension(f, IMG_EXTENSIONS)]
    return classes, samples


def _refuse_empty(root: str, part: str, classes: list[str], labels: Iterable[int], what: str) -> None:
    """A class folder with no (readable) image is a DataError naming it."""
    have = set(labels)
    empty = [os.path.normpath(os.path.join(root, part, c)) for i, c in enumerate(classes) if i not in have]
    if empty:
        raise DataError(f"dataset.root={root!r}: class folder {', '.join(map(repr, empty))} {what}: "
                        "add images to it or remove it")


def read_image(path: str | os.PathLike, in_chans: int, image_size: int) -> torch.Tensor:
    """One image file as uint8 (C, S, S) (:func:`cnnlab.data.decode.decode_image`, as a tensor).

    The one reader of image files: the in-memory path, the per-batch path and
    ``cnnlab.predict`` all see the same pixels. Raises one of ``UNREADABLE``.
    """
    return torch.from_numpy(decode_image(path, in_chans, image_size))


def _readable(samples: list[tuple[str, int]], in_chans: int,
              image_size: int) -> Iterator[tuple[torch.Tensor, tuple[str, int]]]:
    """(image, sample) for every file that reads; a warning naming each one that does not."""
    for sample in samples:
        try:
            yield read_image(sample[0], in_chans, image_size), sample
        except UNREADABLE as e:
            log.warning("skipping unreadable image %s (%s: %s)", sample[0], type(e).__name__, e)


def _decode(samples: list[tuple[str, int]], in_chans: int, image_size: int) -> Split:
    """Read every image; skip (and name) the ones that fail."""
    xs, ys = [], []
    for x, (_, label) in _readable(samples, in_chans, image_size):
        xs.append(x)
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
    """Load an image folder into memory, within ``memory_budget_mb``; over it, :class:`FileSplit` s
    with ``loader="dataloader"`` (every file read once first, the unreadable ones skipped), a
    one-line DataError with ``tensor``.

    Layouts: root/<class>/ (cut into train/val/test with ``split_seed``), or root/train/<class>/
    with val/ and test/ beside it: a missing val/ is cut from train with ``val_split`` (and test/
    too when both are missing); a missing test/ with val/ present is val.
    """
    if not root or not os.path.isdir(root):
        raise DataError(f"dataset.root={root!r} is not a folder: give a folder with one subfolder per class")
    subdirs = {e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
    pre_split = "train" in subdirs and ("val" in subdirs or subdirs <= {"train", "test"})
    parts = [p for p in ("train", "val", "test") if p in subdirs] if pre_split else ["."]
    found = {p: _scan(root, p) for p in parts}
    classes = found[parts[0]][0]
    n_files = sum(len(s) for _, s in found.values())
    if n_files == 0:
        raise DataError(f"dataset.root={root!r} holds no images (looked for .png, .jpg, ... in its class subfolders)")
    if len(classes) < 2:
        raise DataError(f"dataset.root={root!r} has {len(classes)} class ({', '.join(classes)}); a classifier needs at least 2 class subfolders")
    for p, (cls, samples) in found.items():
        if cls != classes:
            raise DataError(f"dataset.root={root!r}: {p}/ has classes {cls}, train/ has {classes}")
        _refuse_empty(root, p, classes, (label for _, label in samples), "holds no images (.png, .jpg, ...)")
    need_mb = n_files * in_chans * image_size * image_size / 2**20  # uint8 bytes
    # Over the memory available now (not only the budget): read per batch, or refused before decoding.
    too_big = registry.decoded_size_error(f"dataset.root={root!r}", n_files, in_chans, image_size,
                                          "lower dataset.image_size, or read the images from disk per batch "
                                          "with dataset.loader=dataloader")
    on_disk = need_mb > memory_budget_mb or too_big is not None
    if on_disk:
        if loader != "dataloader" and too_big is not None:
            raise too_big
        if loader != "dataloader":
            raise DataError(
                f"dataset.root={root!r}: {n_files} images at {image_size}px need {need_mb:,.1f} MB, over "
                f"dataset.memory_budget_mb={memory_budget_mb}: use dataset.loader=dataloader to read "
                "them from disk per batch, or raise the budget, or lower dataset.image_size"
            )
        log.info("%s: %d images need %.0f MB, over the %d MB budget or the memory available: checking that "
                 "each one reads, then reading them from disk per batch", root, n_files, need_mb, memory_budget_mb)

    def read(part: str) -> Any:
        """One folder's readable images: decoded into memory, or as its file list when over the budget."""
        samples = found[part][1]
        if on_disk:  # read once now, so that an unreadable file is skipped here, not met mid-run
            out: Any = FileSplit(os.path.join(root, part), [s for _, s in _readable(samples, in_chans, image_size)],
                                 classes, in_chans, image_size)
        else:
            out = _decode(samples, in_chans, image_size)
        _refuse_empty(root, part, classes, out.y.tolist(), "holds no readable image (see the warnings above)")
        return out

    def cut(split: Any, fractions: list[float]) -> list[Any]:
        """``split`` shuffled with split_seed and cut (the first part takes the rest)."""
        idx = torch.arange(len(split))
        return [split.subset(p.y) if on_disk else Split(split.x[p.y], split.y[p.y])
                for p in seeded_split(idx, idx, fractions, split_seed)]

    if parts in (["."], ["train"]):
        train, val, test = cut(read(parts[0]), [val_split, test_split])
    else:
        train = read("train")
        train, val = (train, read("val")) if "val" in found else cut(train, [val_split])
        test = read("test") if "test" in found else val
    return ImageSplits(train, val, test, classes)
