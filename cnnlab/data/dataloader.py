"""The classic path, ``dataset.loader=dataloader``: torch's DataLoader and per-image transforms.

For data over ``dataset.memory_budget_mb`` (an image folder read file by file), or to
compare against the tensor path. Workers decode and augment one image at a time with
torchvision's transforms v2; the main process copies each batch to the device. A
:class:`ClassicLoader` has TensorLoader's interface, and with augmentation off and
world_size 1 yields its batches in the same order (the same permutation from the same
generator). A resume does not restore the per-image augmentation draws: they come from
the workers' own RNGs (seeded by torch's DataLoader from the global torch RNG).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from cnnlab.data.loader import Augment
from cnnlab.errors import DataError


class _Cutout(torch.nn.Module):
    """The per-image twin of ``augment.cutout``: zero a size x size square at a random centre."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (C, H, W) float, normalised
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        y0, x0 = cy - self.size // 2, cx - self.size // 2  # the square may overhang the border
        x = x.clone()
        x[..., max(y0, 0) : y0 + self.size, max(x0, 0) : x0 + self.size] = 0.0
        return x


def image_transform(mean: Sequence[float], std: Sequence[float], shape: Sequence[int],
                    augment: Augment | None) -> Any:
    """torchvision v2 transforms for one uint8 image of ``shape`` (C, H, W):
    [crop, flip, policy,] to float in [0, 1], normalise[, cutout]."""
    from torchvision.transforms import v2

    steps: list[Any] = []
    a = augment or Augment()
    if a.crop_padding > 0:
        mode = "reflect" if a.pad_mode == "reflect" else "constant"
        steps.append(v2.RandomCrop(tuple(shape[-2:]), padding=a.crop_padding, padding_mode=mode))
    if a.flip:
        steps.append(v2.RandomHorizontalFlip())
    if a.policy != "none":
        from cnnlab.recipes.policy import make_policy

        steps.append(make_policy(a.policy))  # on the uint8 image, before ToDtype
    # One mean/std value broadcasts over every channel.
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([float(m) for m in mean], [float(s) for s in std])]
    if a.cutout > 0:
        steps.append(_Cutout(a.cutout))
    return v2.Compose(steps)


class _TensorDataset(torch.utils.data.Dataset):
    """Items (transform(x[i]), y[i]) of an in-memory uint8 split (N, C, H, W)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Any) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


class _PermutationSampler(torch.utils.data.Sampler[int]):
    """One ``randperm(n, generator)`` per epoch, exactly as TensorLoader draws it.

    (torch's RandomSampler draws a second, unused permutation at the end of each pass,
    which would put the two loader kinds out of step from the second epoch on.)
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class _WeightedSampler(torch.utils.data.Sampler[int]):
    """``dataset.sampler=balanced``: n indices drawn with replacement by ``weights`` from
    ``generator`` (the same draw on every rank), rank r taking every W-th of the first W*floor(n/W)."""

    def __init__(self, weights: torch.Tensor, n: int, generator: torch.Generator, rank: int,
                 world_size: int) -> None:
        self.weights, self.n, self.generator = weights.double(), n, generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        n, ws = self.n, self.world_size
        idx = torch.multinomial(self.weights, n, replacement=True, generator=self.generator)
        return iter(idx[: n // ws * ws][self.rank :: ws].tolist())


class ClassicLoader:
    """A torch DataLoader that yields normalised float batches on ``device`` (see the module doc)."""

    def __init__(self, dataset: Any, batch_size: int, device: torch.device | str, train: bool,
                 seed: int, channels_last: bool, num_workers: int, rank: int, world_size: int,
                 preview_source: Any = None, random_erasing: float = 0.0,
                 sample_weights: torch.Tensor | None = None, num_draws: int | None = None) -> None:
        from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.device = torch.device(device)
        self.train, self.batch_size = train, batch_size
        self.channels_last = channels_last
        self.generator = torch.Generator().manual_seed(seed)  # the shuffle order's RNG (CPU)
        n = len(dataset)
        if train and sample_weights is not None:
            self.sampler: Any = _WeightedSampler(sample_weights, num_draws or n, self.generator, rank, world_size)
        elif train and world_size > 1:
            # Same permutation on every rank (same seed), rank r takes every W-th index of
            # its first W*floor(n/W): each sample at most once per epoch across ranks.
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                   shuffle=True, seed=seed, drop_last=True)
        elif train:
            self.sampler = _PermutationSampler(n, self.generator)
        elif world_size > 1:
            # rank, rank + W, ...: every sample once across ranks (DistributedSampler pads the
            # shards with repeated samples, which an evaluation would count twice).
            self.sampler = range(rank, n, world_size)
        else:
            self.sampler = SequentialSampler(dataset)
        self._preview_source = preview_source
        from cnnlab.recipes.policy import make_random_erasing

        # On the normalised device batch in the main process, as in the tensor loader.
        self._erase = make_random_erasing(random_erasing, self.device) if train else None
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, drop_last=train,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",  # page-locked batches: async host->GPU copies
            persistent_workers=num_workers > 0,  # keep the workers (and their RNGs) across epochs
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return len(self) * self.batch_size if self.train else len(self.sampler)

    def preview(self, n: int = 16) -> torch.Tensor:
        """The first ``n`` images, un-augmented, as uint8 (n, C, H, W) on the CPU."""
        src = self._preview_source
        if isinstance(src, torch.Tensor):
            return src[:n].cpu()
        return torch.stack([src.read(i) for i in range(min(n, len(src)))])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.sampler, torch.utils.data.DistributedSampler):
            # DistributedSampler shuffles with seed + epoch; draw the "epoch" from our generator
            # so the order follows the generator's state (the same on every rank), and a
            # resumed run, whose generator state comes from the checkpoint, continues it.
            self.sampler.set_epoch(int(torch.randint(0, 2**31 - 1, (), generator=self.generator)))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        it = iter(self.loader)
        while True:
            try:
                x, y = next(it)
            except StopIteration:
                return
            except DataError as e:  # raised in a worker: keep the message's last line only
                raise DataError(str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None
            # non_blocking: from pinned memory the copy overlaps with compute (CUDA only).
            x = x.to(self.device, non_blocking=True)
            if self._erase is not None:
                x = self._erase(x)  # in place, per image
            x = x.contiguous(memory_format=fmt)
            yield x, y.to(self.device, non_blocking=True)


def build_dataloader(split: Any, batch_size: int, mean: Sequence[float], std: Sequence[float],
                     device: torch.device | str, train: bool = False, augment: Augment | None = None,
                     seed: int = 0, channels_last: bool = False, num_workers: int = 2,
                     rank: int = 0, world_size: int = 1,
                     sample_weights: torch.Tensor | None = None, num_draws: int | None = None) -> ClassicLoader:
    """A classic DataLoader over ``split``: an in-memory Split (uint8 x, int64 y) or a FileSplit.

    Only train shuffles (with ``seed``), augments per image and drops the last partial batch;
    ``world_size > 1`` shards by ``rank`` (DistributedSampler for training).
    """
    transform = image_transform(mean, std, tuple(split.x.shape[1:]), augment if train else None)
    if isinstance(split.x, torch.Tensor) and not split.x.is_meta:
        # Workers read the CPU copy (shared with them by fork, not pickled per item).
        x_cpu = split.x.cpu()
        dataset, preview = _TensorDataset(x_cpu, split.y.cpu(), transform), x_cpu
    else:  # a FileSplit: torchvision's ImageFolder reads the files
        dataset, preview = split.dataset(transform), split
    return ClassicLoader(dataset, batch_size, device, train, seed, channels_last, num_workers,
                         rank, world_size, preview_source=preview,
                         random_erasing=augment.random_erasing if (train and augment) else 0.0,
                         sample_weights=sample_weights, num_draws=num_draws)
