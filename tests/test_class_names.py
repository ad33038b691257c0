"""Every dataset names its classes (index i names label i); generated files, no downloads."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import load_dataset


def _load(name, root, in_chans=1, **kw):
    args = dict(name=name, root=str(root), download=False, image_size=32, in_chans=in_chans, val_split=0.2,
                test_split=0.0, split_seed=0, memory_budget_mb=512)
    args.update(kw)
    return load_dataset(**args)


def test_digits_names_are_the_digits():
    s = _load("digits", None, val_split=0.15, test_split=0.15)
    assert s.classes == [str(i) for i in range(10)]


def _idx(folder: Path, prefix: str, n: int) -> None:
    """MNIST's idx files (uncompressed, as torchvision leaves them after extracting)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(folder / f"{prefix}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
    with open(folder / f"{prefix}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())


@pytest.mark.parametrize(("name", "folder", "first", "last"), [
    ("mnist", "MNIST", "0 - zero", "9 - nine"),
    ("fashion_mnist", "FashionMNIST", "T-shirt/top", "Ankle boot"),
])
def test_mnist_like_names(tmp_path, name, folder, first, last):
    for prefix in ("train", "t10k"):
        _idx(tmp_path / folder / "raw", prefix, 20)
    s = _load(name, tmp_path)
    assert len(s.classes) == 10 and s.classes[0] == first and s.classes[-1] == last
    assert (len(s.train), len(s.val), len(s.test)) == (16, 4, 20)


def test_svhn_names_are_the_digits(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn

    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *a, **k: True)  # our files, other md5s
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        # SVHN's .mat: X (32, 32, 3, N), y (N, 1) with 10 for the digit 0; only digits 1-3 here.
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat",
                         {"X": rng.integers(0, 256, (32, 32, 3, 10), dtype=np.uint8),
                          "y": (np.arange(10) % 3 + 1).reshape(-1, 1).astype(np.uint8)})
    s = _load("svhn", tmp_path, in_chans=3)
    # All ten names even though the generated labels stop at 3.
    assert s.classes == [str(i) for i in range(10)]


def test_cifar100_names_come_from_its_meta_file(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("train", 20), ("test", 10)):
        with open(d / part, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": [i % 100 for i in range(n)]}, f)
    names = [f"fine{i}" for i in range(100)]
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names}, f)
    s = _load("cifar100", tmp_path, in_chans=3)
    assert s.classes == names


def test_imagefolder_names_are_the_folder_names(tmp_path):
    from PIL import Image

    for c in ("zebra", "ant", "cat"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(tmp_path / c / f"{i}.png")
    s = _load("imagefolder", tmp_path, in_chans=3, val_split=0.25, test_split=0.25)
    assert s.classes == ["ant", "cat", "zebra"]  # sorted, as torchvision's find_classes gives them
