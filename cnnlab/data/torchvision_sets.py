"""CIFAR-10/100, MNIST, Fashion-MNIST and SVHN through torchvision, decoded to uint8 once.

torchvision downloads into ``root`` (with ``download=True``) and checks the files.
Offline, its long traceback becomes one line naming the file to place where.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from cnnlab.data.splits import ImageSplits, Split, resize_uint8, seeded_split
from cnnlab.errors import DataError

# name -> (torchvision class, the files torchvision looks for, the folder under root they go in).
# With the files in place and dataset.download=true, torchvision checks and extracts
# them without touching the network.
_SOURCES: dict[str, tuple[str, str, str]] = {
    "cifar10": ("CIFAR10", "cifar-10-python.tar.gz", "."),
    "cifar100": ("CIFAR100", "cifar-100-python.tar.gz", "."),
    "mnist": ("MNIST", "train-images-idx3-ubyte.gz and the 3 other MNIST .gz files", "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", "train-images-idx3-ubyte.gz and the 3 other .gz files", "FashionMNIST/raw"),
    "svhn": ("SVHN", "train_32x32.mat and test_32x32.mat", "."),
}


def _open(name: str, root: str, train: bool, download: bool) -> Any:
    import torchvision.datasets as tvd

    cls_name, archive, folder = _SOURCES[name]
    cls = getattr(tvd, cls_name)
    kwargs: dict[str, Any] = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    where = os.path.normpath(os.path.join(root, folder))
    try:
        return cls(root=root, download=download, **kwargs)  # downloads (if asked) and checks the files
    except RuntimeError:
        # torchvision raises RuntimeError("Dataset not found ...") when files are missing.
        raise DataError(
            f"{name} is not in {root!r} and dataset.download=false: set dataset.download=true, "
            f"or place {archive} in {where} and set dataset.download=true (nothing is then downloaded)"
        ) from None
    except OSError as e:  # URLError is an OSError: no network
        raise DataError(
            f"{name}: download failed ({type(e).__name__}: {str(e)[:80]}); offline, place {archive} "
            f"in {where} and rerun"
        ) from None


def _to_tensor(ds: Any, image_size: int) -> Split:
    """torchvision's in-memory arrays -> (N, C, S, S) uint8 resized to image_size, and (N,) int64."""
    x = torch.as_tensor(ds.data)
    if x.ndim == 3:  # MNIST-like (N, H, W)
        x = x.unsqueeze(1)
    elif x.shape[-1] == 3:  # CIFAR (N, H, W, 3); SVHN is already (N, 3, H, W)
        x = x.permute(0, 3, 1, 2)
    labels = ds.targets if hasattr(ds, "targets") else ds.labels  # SVHN's
    return Split(resize_uint8(x.contiguous().to(torch.uint8), image_size), torch.as_tensor(labels).long())


def load_torchvision(name: str, root: str, download: bool = True, image_size: int = 32,
                     val_split: float = 0.1, split_seed: int = 0, **_: object) -> ImageSplits:
    """Train (minus a seeded val split) and the official test set of a torchvision set."""
    train_ds = _open(name, root, True, download)
    full, test = _to_tensor(train_ds, image_size), _to_tensor(_open(name, root, False, download), image_size)
    train, val = seeded_split(full.x, full.y, [val_split], split_seed)
    return ImageSplits(train, val, test, class_names(name, train_ds))


def class_names(name: str, ds: Any) -> list[str]:
    """The class names, index i naming label i: torchvision's ``ds.classes``; SVHN has none, and
    its label i is the digit i (torchvision remaps 10 -> 0)."""
    if name == "svhn":
        return [str(i) for i in range(10)]
    return [str(c) for c in ds.classes]
