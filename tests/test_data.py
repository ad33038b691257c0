"""Datasets: the embedded digits, torchvision sets from local files, image folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import load_dataset
from cnnlab.errors import DataError


def _load(name, root=None, **kw):
    args = dict(name=name, root=str(root) if root else None, download=False, image_size=32, in_chans=kw.pop("in_chans", 3),
                val_split=0.1, test_split=0.1, split_seed=0, memory_budget_mb=512)
    args.update(kw)
    return load_dataset(**args)


def test_digits_is_real_and_split_with_a_fixed_seed():
    a = _load("digits", in_chans=1, val_split=0.15, test_split=0.15)
    b = _load("digits", in_chans=1, val_split=0.15, test_split=0.15)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert (len(a.val), len(a.test)) == (270, 270)
    assert a.train.x.shape[1:] == (1, 32, 32) and a.train.x.dtype == torch.uint8
    assert torch.equal(a.train.y, b.train.y) and torch.equal(a.test.x, b.test.x)
    assert set(a.train.y.tolist()) == set(range(10))
    assert a.train.x.max() == 255  # 0..16 scaled to the full uint8 range
    other = _load("digits", in_chans=1, val_split=0.15, test_split=0.15, split_seed=1)
    assert not torch.equal(a.test.y, other.test.y)


def test_digits_reads_sklearns_csv_as_load_digits_does(monkeypatch):
    """The fast CSV path and sklearn's own loader give the same arrays; without the CSV
    (another sklearn layout) the public API is used."""
    import importlib.util

    from sklearn.datasets import load_digits

    from cnnlab.data import digits

    ref = load_digits()
    images, target = digits.digits_arrays()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    images, target = digits.digits_arrays()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)


def _write_cifar10(root: Path, n_train: int = 50, n_test: int = 20) -> np.ndarray:
    """CIFAR-10's python format, as torchvision reads it (md5 checks patched in the test)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    for i in range(1, 6):
        part = train[(i - 1) * n_train // 5 : i * n_train // 5]
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": part, "labels": [j % 10 for j in range(len(part))]}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                     "labels": [j % 10 for j in range(n_test)]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return train


def test_cifar10_from_local_files(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    # Our generated files have other md5 sums than the real ones.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    raw = _write_cifar10(tmp_path)
    s = _load("cifar10", tmp_path, val_split=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 20)
    assert s.classes == [f"c{i}" for i in range(10)]
    # (N, 3072) rows are CHW planes: pixel (c=1, y=2, x=3) of some training image.
    all_x = torch.cat([s.train.x, s.val.x])
    want = torch.from_numpy(raw.reshape(-1, 3, 32, 32))
    assert sorted(map(bytes, all_x.flatten(1).numpy())) == sorted(map(bytes, want.flatten(1).numpy()))


def test_missing_dataset_offline_is_one_clear_line(tmp_path):
    with pytest.raises(DataError) as e:
        _load("cifar10", tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and "cifar-10-python.tar.gz" in msg and str(tmp_path) in msg


def test_download_without_network_is_one_clear_line(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as e:
        _load("mnist", tmp_path, download=True, in_chans=1)
    msg = str(e.value)
    assert "\n" not in msg and "MNIST" in msg


def _png_folder(root: Path, classes=("cat", "dog"), per_class=6, size=(20, 16)) -> None:
    from PIL import Image

    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (100 * ci, 20 * i, 50)).save(root / c / f"{i}.png")


def test_imagefolder_seeded_split(tmp_path):
    _png_folder(tmp_path, per_class=10)
    s = _load("imagefolder", tmp_path, val_split=0.2, test_split=0.2)
    assert s.classes == ["cat", "dog"]
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 4)
    assert s.train.x.shape[1:] == (3, 32, 32)


def test_imagefolder_train_val_layout_and_corrupt_file(tmp_path, caplog):
    _png_folder(tmp_path / "train")
    _png_folder(tmp_path / "val", per_class=2)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    s = _load("imagefolder", tmp_path)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 4)
    assert "broken.png" in caplog.text


def test_imagefolder_over_budget_says_what_to_do(tmp_path):
    _png_folder(tmp_path)
    with pytest.raises(DataError, match="memory_budget_mb"):
        _load("imagefolder", tmp_path, memory_budget_mb=0)
