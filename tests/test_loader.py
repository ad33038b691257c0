"""The data loaders: batched augmentation against a per-image reference, epoch coverage,
rank sharding, determinism, and the DataLoader path against the tensor path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.data.augment import crop_flip_padded, cutout, draw_crop_flip, pad_images
from cnnlab.data.dataloader import build_dataloader
from cnnlab.data.loader import Augment, TensorLoader, make_loaders
from cnnlab.data.splits import ImageSplits, Split
from cnnlab.errors import DataError

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def _images(n: int = 40, c: int = 3, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def _reference_crop_flip(x: torch.Tensor, dy, dx, flips, padding: int, pad_mode: str) -> torch.Tensor:
    """One image at a time with torchvision's own functional pad, crop and flip."""
    from torchvision.transforms.v2 import functional as TF

    h, w = x.shape[-2:]
    mode = "reflect" if pad_mode == "reflect" else "constant"
    out = []
    for i in range(x.shape[0]):
        img = x[i]
        if padding:
            img = TF.pad(img, [padding], padding_mode=mode)
            img = TF.crop(img, int(dy[i]), int(dx[i]), h, w)
        if flips is not None and flips[i]:
            img = TF.horizontal_flip(img)
        out.append(img)
    return torch.stack(out)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, -1, 1, 1)
    std = torch.tensor(STD).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


# ----------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("pad_mode", ["zero", "reflect"])
@pytest.mark.parametrize("flip", [False, True])
def test_batched_crop_flip_equals_per_image_reference(pad_mode, flip):
    x = _images(32)
    gen = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    out = crop_flip_padded(pad_images(x, 3, pad_mode), 3, flip, gen)
    dy, dx, flips = draw_crop_flip(32, 3, flip, replay)
    assert torch.equal(out, _reference_crop_flip(x, dy, dx, flips, 3, pad_mode))
    # Both generators made the same draws, no more: they are in the same state.
    assert torch.equal(gen.get_state(), replay.get_state())


@pytest.mark.parametrize("pad_mode", ["zero", "reflect"])
def test_loader_batches_equal_the_per_image_reference(pad_mode):
    """The loader's fast path (split padded once, rows picked by index) against the reference."""
    x, y = _images(40), torch.arange(40)
    aug = Augment(crop_padding=2, pad_mode=pad_mode, flip=True)
    loader = TensorLoader(x, y, 16, MEAN, STD, train=True, augment=aug, seed=3)
    replay = torch.Generator().manual_seed(3)
    order = torch.randperm(40, generator=replay)
    for k, (xb, yb) in enumerate(loader):
        idx = order[k * 16 : (k + 1) * 16]
        assert torch.equal(yb, idx)
        dy, dx, flips = draw_crop_flip(16, 2, True, replay)
        want = _normalise(_reference_crop_flip(x[idx], dy, dx, flips, 2, pad_mode))
        torch.testing.assert_close(xb, want, rtol=0, atol=1e-5)
    assert k == 1  # 40 // 16 = 2 full batches, the partial one dropped


def test_cutout_zeroes_the_right_square():
    x = torch.ones(6, 2, 10, 10)
    gen, replay = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out = cutout(x, 4, gen)
    cy = torch.randint(0, 10, (6,), generator=replay)
    cx = torch.randint(0, 10, (6,), generator=replay)
    for i in range(6):
        want = torch.ones(2, 10, 10)
        y0, x0 = max(int(cy[i]) - 2, 0), max(int(cx[i]) - 2, 0)
        want[:, y0 : int(cy[i]) + 2, x0 : int(cx[i]) + 2] = 0.0  # [c - 2, c + 2), clipped
        assert torch.equal(out[i], want), i


def test_pad_images_matches_torch_pad():
    x = _images(3)
    assert torch.equal(pad_images(x, 3, "zero"), torch.nn.functional.pad(x, (3,) * 4))
    assert torch.equal(pad_images(x, 3, "reflect"),
                       torch.nn.functional.pad(x.float(), (3,) * 4, mode="reflect").to(torch.uint8))


# ----------------------------------------------------------------------- coverage and order
def test_one_epoch_covers_every_index():
    n, bs = 53, 8
    x, y = _images(n), torch.arange(n)  # label = sample index
    train = TensorLoader(x, y, bs, MEAN, STD, train=True, augment=Augment(2, "zero", True), seed=0)
    seen = torch.cat([yb for _, yb in train])
    assert len(train) == n // bs and train.num_samples == len(seen) == (n // bs) * bs
    assert len(set(seen.tolist())) == len(seen)  # at most once each
    assert n - len(seen) < bs  # all but less than a batch
    evals = TensorLoader(x, y, bs, MEAN, STD)
    assert torch.equal(torch.cat([yb for _, yb in evals]), torch.arange(n))  # all, in order
    assert len(evals) == -(-n // bs) and evals.num_samples == n


def test_rank_sharding_covers_each_sample_once_across_ranks():
    n, bs, ws = 50, 4, 3
    x, y = _images(n), torch.arange(n)
    train_parts, eval_parts = [], []
    for rank in range(ws):
        tr = TensorLoader(x, y, bs, MEAN, STD, train=True, seed=5, rank=rank, world_size=ws)
        ev = TensorLoader(x, y, bs, MEAN, STD, rank=rank, world_size=ws)
        train_parts.append(torch.cat([yb for _, yb in tr]))
        eval_parts.append(torch.cat([yb for _, yb in ev]))
        assert len(tr) == (n // ws) // bs  # same number of steps on every rank
    every = torch.cat(train_parts).tolist()
    assert len(every) == len(set(every)) == ws * ((n // ws) // bs) * bs
    assert sorted(torch.cat(eval_parts).tolist()) == list(range(n))


def test_seed_fixes_every_batch():
    x, y = _images(30), torch.arange(30)
    aug = Augment(2, "reflect", True, cutout=3)

    def epochs(seed):
        loader = TensorLoader(x, y, 8, MEAN, STD, train=True, augment=aug, seed=seed)
        return [b for _ in range(2) for b in loader]

    a, b, c = epochs(0), epochs(0), epochs(1)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(a, c, strict=True))
    assert not torch.equal(a[0][1], a[3][1])  # epoch 2 has another order


def test_generator_state_resumes_the_order():
    """The checkpoint saves loader.generator's state; restoring it replays the next epoch."""
    x, y = _images(30), torch.arange(30)
    aug = Augment(2, "zero", True)
    loader = TensorLoader(x, y, 8, MEAN, STD, train=True, augment=aug, seed=0)
    list(loader)
    state = loader.generator.get_state()
    epoch2 = list(loader)
    fresh = TensorLoader(x, y, 8, MEAN, STD, train=True, augment=aug, seed=123)
    fresh.generator.set_state(state)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(epoch2, fresh, strict=True))


def test_channels_last_batches():
    x, y = _images(20), torch.arange(20)
    for train in (True, False):
        loader = TensorLoader(x, y, 8, MEAN, STD, train=train, augment=Augment(2, "zero", True),
                              channels_last=True)
        xb, _ = next(iter(loader))
        assert xb.is_contiguous(memory_format=torch.channels_last) and xb.dtype == torch.float32
    split = Split(x, y)
    xb, _ = next(iter(build_dataloader(split, 8, MEAN, STD, "cpu", channels_last=True, num_workers=0)))
    assert xb.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------- the DataLoader path
def _both(split: Split, bs: int, train: bool, seed: int = 0, workers: int = 0):
    tensor = TensorLoader(split.x, split.y, bs, MEAN, STD, train=train, seed=seed)
    classic = build_dataloader(split, bs, MEAN, STD, "cpu", train=train, seed=seed, num_workers=workers)
    return tensor, classic


@pytest.mark.parametrize("train", [False, True])
def test_dataloader_and_tensor_paths_give_the_same_batches(train):
    """Augmentation off: the same samples in the same order (2 epochs), the same values."""
    split = Split(_images(37), torch.arange(37))
    tensor, classic = _both(split, 8, train)
    assert len(tensor) == len(classic) and tensor.num_samples == classic.num_samples
    for _ in range(2):
        pairs = list(zip(tensor, classic, strict=True))
        for (xt, yt), (xc, yc) in pairs:
            assert torch.equal(yt, yc)
            torch.testing.assert_close(xt, xc, rtol=0, atol=1e-5)
    assert classic.generator.get_state().equal(tensor.generator.get_state())


def test_dataloader_with_workers_gives_the_same_eval_batches():
    split = Split(_images(20), torch.arange(20))
    tensor, classic = _both(split, 8, train=False, workers=2)
    for (xt, yt), (xc, yc) in zip(tensor, classic, strict=True):
        assert torch.equal(yt, yc)
        torch.testing.assert_close(xt, xc, rtol=0, atol=1e-5)


def test_dataloader_augmentation_is_a_padded_window():
    """The classic path's per-image crop+flip gives, for each image, one of the 2(2p+1)^2 windows."""
    x = _images(6, size=8)
    aug = Augment(crop_padding=2, pad_mode="reflect", flip=True)
    loader = build_dataloader(Split(x, torch.arange(6)), 6, [0.0], [1.0], "cpu", train=True,
                              augment=aug, num_workers=0)
    xb, yb = next(iter(loader))
    got = (xb * 255).round().to(torch.uint8)
    padded = pad_images(x, 2, "reflect")
    for img, i in zip(got, yb.tolist(), strict=True):
        windows = [padded[i, :, a : a + 8, b : b + 8] for a in range(5) for b in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(img, w) for w in windows)


def test_dataloader_rank_sharding():
    n, bs, ws = 50, 4, 3
    split = Split(_images(n), torch.arange(n))
    parts, eval_parts = [], []
    for rank in range(ws):
        tr = build_dataloader(split, bs, MEAN, STD, "cpu", train=True, seed=5, num_workers=0,
                              rank=rank, world_size=ws)
        ev = build_dataloader(split, bs, MEAN, STD, "cpu", num_workers=0, rank=rank, world_size=ws)
        parts.append(torch.cat([yb for _, yb in tr]))
        eval_parts.append(torch.cat([yb for _, yb in ev]))
    every = torch.cat(parts).tolist()
    assert len(every) == len(set(every)) == ws * ((n // ws) // bs) * bs
    assert sorted(torch.cat(eval_parts).tolist()) == list(range(n))


def test_make_loaders_kinds_and_shards():
    # val labels 0..10 and test labels 100..110 name each sample, to check the shards.
    splits = ImageSplits(Split(_images(30), torch.arange(30) % 3), Split(_images(11), torch.arange(11)),
                         Split(_images(11), torch.arange(100, 111)), ["a", "b", "c"])
    common = dict(batch_size=8, eval_batch_size=4, mean=MEAN, std=STD,
                  augment={"crop_padding": 2, "pad_mode": "zero", "flip": True, "cutout": 0},
                  device="cpu", num_workers=0, world_size=2)
    tr, va, te = make_loaders(splits, "tensor", rank=1, **common)
    assert isinstance(tr, TensorLoader) and tr.world_size == 2 and len(tr) == 15 // 8
    assert va.num_samples == 5 and te.num_samples == 5  # samples 1, 3, 5, 7, 9 of 11
    tr2, va2, _ = make_loaders(splits, "dataloader", rank=1, **common)
    assert len(tr2) == len(tr) and va2.num_samples == 5
    # Eval shards: every sample exactly once across the two ranks, for both kinds.
    for kind in ("tensor", "dataloader"):
        seen = {"val": [], "test": []}
        for rank in (0, 1):
            _, v, t = make_loaders(splits, kind, rank=rank, **common)
            seen["val"] += [int(y) for _, ys in v for y in ys]
            seen["test"] += [int(y) for _, ys in t for y in ys]
        assert sorted(seen["val"]) == list(range(11)), kind
        assert sorted(seen["test"]) == list(range(100, 111)), kind
    assert tr2.preview(4).shape == (4, 3, 12, 12) and tr.preview(4).dtype == torch.uint8
    # An unknown dataset.loader is refused once, by the config's rules (tests/test_config.py).


# ----------------------------------------------------------------------- big image folders
def _png_folder(root: Path, per_class: int = 5, size: tuple[int, int] = (20, 16)) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for ci, c in enumerate(("cat", "dog", "eel")):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
            arr[0, 0] = torch.tensor([ci, i, 0], dtype=torch.uint8)
            Image.fromarray(arr.numpy()).save(root / c / f"{i}.png")


def test_imagefolder_over_budget(tmp_path):
    from cnnlab.data.imagefolder import FileSplit, load_imagefolder

    _png_folder(tmp_path)
    kw = dict(root=str(tmp_path), image_size=16, in_chans=3, val_split=0.2, test_split=0.2, split_seed=0)
    with pytest.raises(DataError, match="dataset.loader=dataloader") as e:
        load_imagefolder(memory_budget_mb=0, **kw)
    assert "\n" not in str(e.value)

    in_memory = load_imagefolder(memory_budget_mb=100, **kw)
    files = load_imagefolder(memory_budget_mb=0, loader="dataloader", **kw)
    assert isinstance(files.train, FileSplit)
    assert (files.in_chans, files.image_size, files.num_classes) == (3, 16, 3)
    assert [len(s) for s in (files.train, files.val, files.test)] == [9, 3, 3]
    with pytest.raises(DataError, match="dataset.loader=dataloader"):
        make_loaders(files, "tensor", 4, 8, MEAN, STD, None, "cpu")

    # Read from disk per batch, the splits hold the same images as the decoded ones.
    _, val, _ = make_loaders(files, "dataloader", 4, 8, MEAN, STD, None, "cpu", num_workers=0)
    tensor_val = TensorLoader(in_memory.val.x, in_memory.val.y, 8, MEAN, STD)
    for (xf, yf), (xt, yt) in zip(val, tensor_val, strict=True):
        assert torch.equal(yf, yt)
        torch.testing.assert_close(xf, xt, rtol=0, atol=1e-5)
    assert torch.equal(val.preview(2), in_memory.val.x[:2])
    assert torch.equal(files.train.take(4).y, in_memory.train.y[:4])


def test_unreadable_file_at_batch_time_is_one_line(tmp_path):
    from cnnlab.data.imagefolder import load_imagefolder

    _png_folder(tmp_path / "train")
    _png_folder(tmp_path / "val", per_class=2)
    splits = load_imagefolder(str(tmp_path), image_size=16, memory_budget_mb=0, loader="dataloader")
    broken = tmp_path / "train" / "cat" / "0.png"
    broken.write_bytes(b"not a png")
    train, _, _ = make_loaders(splits, "dataloader", 15, 8, MEAN, STD, None, "cpu", num_workers=1)
    with pytest.raises(DataError) as e:
        list(train)
    assert "\n" not in str(e.value) and "0.png" in str(e.value)
