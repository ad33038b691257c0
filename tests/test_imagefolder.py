"""Image folders laid out as users lay them out, every layout built from generated PNGs.

Hidden names, empty and all-unreadable class folders, train/ + test/ without val/, symlink
loops, 16-bit and other PIL modes, decompression bombs, and the per-batch (dataloader) path
finding unreadable files before training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.imagefolder import FileSplit, load_imagefolder, read_image
from cnnlab.errors import DataError


def _folder(root: Path, classes=("cat", "dog"), per_class=5, size=(12, 10)) -> None:
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (100 * ci, 20 * i, 50)).save(root / c / f"{i}.png")


def _load(root: Path, **kw):
    args = dict(image_size=8, in_chans=3, val_split=0.2, test_split=0.2, split_seed=0, memory_budget_mb=512)
    return load_imagefolder(str(root), **{**args, **kw})


def _sizes(s) -> tuple[int, int, int]:
    return len(s.train), len(s.val), len(s.test)


def test_hidden_folders_and_files_are_ignored(tmp_path):
    _folder(tmp_path)
    _folder(tmp_path / ".ipynb_checkpoints", classes=("cat",))  # a hidden "class"
    _folder(tmp_path / "cat" / ".ipynb_checkpoints", classes=("x",))  # hidden, inside a class
    (tmp_path / "dog" / "._0.png").write_bytes(b"macOS resource fork")  # hidden, image extension
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    s = _load(tmp_path)
    assert s.classes == ["cat", "dog"] and sum(_sizes(s)) == 10


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_an_empty_class_folder_is_refused_naming_it(tmp_path, layout):
    root = tmp_path / "train" if layout == "split" else tmp_path
    _folder(root)
    if layout == "split":
        _folder(tmp_path / "val", per_class=1)
    (root / "eel").mkdir()
    (root / "eel" / "notes.txt").write_text("not an image")
    if layout == "split":
        (tmp_path / "val" / "eel").mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / "val" / "eel" / "0.png")
    with pytest.raises(DataError) as e:
        _load(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and repr(str(root / "eel")) in msg and "holds no images" in msg


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_a_class_folder_with_only_unreadable_images_is_refused_naming_it(tmp_path, loader, caplog):
    _folder(tmp_path)
    (tmp_path / "eel").mkdir()
    for i in range(2):
        (tmp_path / "eel" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError) as e:
        _load(tmp_path, loader=loader, memory_budget_mb=0 if loader == "dataloader" else 512)
    msg = str(e.value)
    assert "\n" not in msg and repr(str(tmp_path / "eel")) in msg and "no readable image" in msg
    assert "eel/0.png" in caplog.text and "eel/1.png" in caplog.text


def test_train_and_test_without_val_cut_val_from_train(tmp_path):
    _folder(tmp_path / "train", per_class=10)
    _folder(tmp_path / "test", per_class=3)
    s = _load(tmp_path, val_split=0.25)
    assert s.classes == ["cat", "dog"]
    assert _sizes(s) == (15, 5, 6)
    # val is cut from train/ (its images, no test/ image), test/ stays whole
    train_only = _load(tmp_path / "train", val_split=0.25, test_split=0.0)
    assert torch.equal(s.val.x, train_only.val.x) and torch.equal(s.train.x, train_only.train.x)


def test_train_alone_is_cut_into_all_three(tmp_path):
    _folder(tmp_path / "train", per_class=10)
    s, flat = _load(tmp_path), _load(tmp_path / "train")
    assert s.classes == ["cat", "dog"] and _sizes(s) == _sizes(flat) == (12, 4, 4)
    assert torch.equal(s.test.x, flat.test.x)


def test_a_symlink_loop_does_not_repeat_images(tmp_path):
    _folder(tmp_path, per_class=4)
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "again")  # cat/again/again/... forever
    os.symlink(tmp_path, tmp_path / "dog" / "everything")  # the root, inside a class
    sub = tmp_path / "dog" / "more"
    sub.mkdir()
    Image.new("RGB", (6, 6)).save(sub / "extra.png")
    os.symlink(sub, tmp_path / "dog" / "more_again")  # the same real folder twice
    s = _load(tmp_path, val_split=0.0, test_split=0.0)
    assert s.classes == ["cat", "dog"]
    assert torch.bincount(s.train.y).tolist() == [4, 5]  # each real image once, under its own class
    files = _load(tmp_path, val_split=0.0, test_split=0.0, memory_budget_mb=0, loader="dataloader")
    assert [os.path.normpath(p) for p, _ in files.train.samples if "extra" in p] == [str(sub / "extra.png")]


def _grey(mode: str, value: float) -> Image.Image:
    """A 6x6 image in ``mode`` at ``value`` of the mode's range (0..1)."""
    if mode.startswith("I;16") or mode == "I":
        a = np.full((6, 6), round(value * 65535), dtype=np.uint16 if mode.startswith("I;16") else np.int32)
        return Image.fromarray(a, mode=mode) if mode != "I;16" else Image.fromarray(a)
    if mode == "F":
        return Image.fromarray(np.full((6, 6), value, dtype=np.float32))
    level = round(value * 255)
    if mode == "LA":
        return Image.new("LA", (6, 6), (level, 255))
    if mode == "CMYK":
        return Image.new("CMYK", (6, 6), (0, 0, 0, 255 - level))
    if mode == "P":  # a palette image whose index 0 is transparent, the grey is index 1
        im = Image.new("P", (6, 6), 1)
        im.putpalette([0, 0, 0, level, level, level] + [0] * (256 * 3 - 6))
        im.info["transparency"] = 0
        return im
    return Image.new(mode, (6, 6), level if mode == "L" else (level,) * 3)


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16", "I", "F", "LA", "CMYK", "P"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_mode_is_scaled_to_uint8_by_its_range(tmp_path, mode, in_chans, recwarn):
    path = tmp_path / ("x.tif" if mode in ("I", "F", "CMYK") else "x.png")
    _grey(mode, 0.5).save(path)
    x = read_image(path, in_chans, 4)
    assert x.dtype == torch.uint8 and x.shape == (in_chans, 4, 4)
    assert (x.int() - 128).abs().max() <= 1, (Image.open(path).mode, x.unique())
    assert not [w for w in recwarn if "Palette images with Transparency" in str(w.message)]


def test_valid_rgb_and_l_images_read_as_pil_converts_them(tmp_path):
    """The pixels of 8-bit images are PIL's convert + bilinear resize, as they always were."""
    g = np.random.default_rng(0)
    for mode, shape in (("RGB", (9, 7, 3)), ("L", (9, 7))):
        Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(tmp_path / f"{mode}.png")
        for c in (1, 3):
            want = np.array(Image.open(tmp_path / f"{mode}.png").convert("L" if c == 1 else "RGB")
                            .resize((5, 5), Image.BILINEAR)).reshape(5, 5, -1).transpose(2, 0, 1)
            assert np.array_equal(read_image(tmp_path / f"{mode}.png", c, 5).numpy(), want)


@pytest.mark.parametrize("pixels", [60, 150])  # 1x to 2x the limit (PIL warns), over 2x (PIL raises)
def test_a_decompression_bomb_is_skipped_with_a_warning_naming_it_and_the_limit(tmp_path, monkeypatch,
                                                                                 caplog, pixels):
    _folder(tmp_path, size=(6, 6))  # 36 pixels: under the limit
    Image.new("RGB", (pixels, 2)).save(tmp_path / "cat" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with caplog.at_level(logging.WARNING):
        s = _load(tmp_path, val_split=0.0, test_split=0.0)
    assert len(s.train) == 10
    line = next(r.getMessage() for r in caplog.records if "huge.png" in r.getMessage())
    assert "skipping unreadable image" in line and "PIL.Image.MAX_IMAGE_PIXELS=100" in line, line


def test_the_dataloader_path_skips_unreadable_images_before_training_as_the_tensor_path(tmp_path, caplog):
    _folder(tmp_path / "train", per_class=6)
    _folder(tmp_path / "val", per_class=2)
    _folder(tmp_path / "test", per_class=2)
    (tmp_path / "test" / "dog" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    in_memory = _load(tmp_path)
    tensor_log = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    files = _load(tmp_path, memory_budget_mb=0, loader="dataloader")
    assert isinstance(files.test, FileSplit)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == tensor_log
    assert len(tensor_log) == 2 and all("broken.png" in w for w in tensor_log)
    assert _sizes(files) == _sizes(in_memory) == (12, 4, 4)
    assert not any("broken" in p for split in (files.train, files.test) for p, _ in split.samples)
    assert torch.equal(torch.stack([files.test.read(i) for i in range(4)]), in_memory.test.x)


def test_a_folder_over_the_memory_available_is_refused_before_decoding_or_read_per_batch(tmp_path, monkeypatch):
    """The decoded size (N x C x S x S uint8) against MemAvailable (the /proc reading made small),
    before a single image is decoded; dataset.loader=dataloader reads the files per batch instead."""
    from cnnlab.data import imagefolder, registry

    _folder(tmp_path)  # 10 images: at 4096px, 10 x 3 x 4096^2 bytes = 480 MB decoded
    monkeypatch.setattr(registry, "available_mb", lambda: 100.0)

    class Decoding(Exception):
        pass

    def decode(*a):
        raise Decoding  # the in-memory path reached: nothing of 480 MB is made here
    monkeypatch.setattr(imagefolder, "_decode", decode)
    monkeypatch.setattr(imagefolder, "_readable", lambda samples, *a: ((None, x) for x in samples))
    with pytest.raises(DataError) as e:
        _load(tmp_path, image_size=4096, memory_budget_mb=2048)
    assert str(e.value) == (
        f"dataset.image_size=4096: dataset.root={str(tmp_path)!r}: its 10 images decoded at 4096px need 480 MB "
        "of memory, over the 100 MB available: lower dataset.image_size, or read the images from disk per batch "
        "with dataset.loader=dataloader")
    s = _load(tmp_path, image_size=4096, memory_budget_mb=2048, loader="dataloader")
    assert isinstance(s.train, FileSplit) and sum(_sizes(s)) == 10
    monkeypatch.setattr(registry, "available_mb", lambda: 1000.0)  # it fits: decoded in memory
    with pytest.raises(Decoding):
        _load(tmp_path, image_size=4096, memory_budget_mb=2048)


def test_digits_at_4096px_is_one_line_naming_dataset_image_size(monkeypatch):
    from cnnlab.data import registry

    monkeypatch.setattr(registry, "available_mb", lambda: 8000.0)
    with pytest.raises(DataError) as e:
        registry.load_dataset("digits", None, False, 4096, 1, 0.15, 0.15, 0, memory_budget_mb=2048)
    assert str(e.value) == ("dataset.image_size=4096: digits: its 1797 images decoded at 4096px need 28,752 MB of "
                            "memory, over the 8,000 MB available: lower dataset.image_size (this dataset is held in "
                            "memory with either dataset.loader)")
