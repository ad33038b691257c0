"""The tensor-resident loader: the whole split uint8 on the device, batches cut by indexing.

Each batch is gathered, augmented (still uint8: 4x fewer bytes to move than float) and
normalised in a handful of batched ops: no workers, no per-image Python, no host syncs.
``make_loaders`` builds this kind or ``cnnlab.data.dataloader``'s; both yield normalised
float (x (B, C, H, W), y (B,) int64) on the device and have ``len()``, ``num_samples``,
``preview(n)`` and a ``generator`` whose state the checkpoint saves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cnnlab.data.augment import crop_flip_padded, cutout, pad_images
from cnnlab.errors import DataError


@dataclass
class Augment:
    crop_padding: int = 0
    pad_mode: str = "zero"  # zero | reflect
    flip: bool = False
    cutout: int = 0  # side of the zeroed square in pixels, 0 = off
    policy: str = "none"  # none | randaugment | trivialaugment | autoaugment: per image (cnnlab/recipes/policy.py)
    random_erasing: float = 0.0  # probability per image, on the normalised batch; 0 = off


class TensorLoader:
    """Batches of (x float (B, C, H, W) normalised, y int64 (B,)) from uint8 tensors.

    ``train=True`` shuffles each epoch, augments, and drops the last partial batch
    (a tiny last batch gives BatchNorm a noisy step); ``train=False`` keeps order and
    every sample. With ``world_size > 1`` each rank takes its share: in train mode
    rank r takes every world_size-th index of the same permutation, cut to a multiple
    of world_size so every rank runs the same number of steps (each sample at most
    once per epoch across ranks); in eval mode rank r takes indices r, r+W, ... with
    no cut (each sample exactly once across ranks, shares differ by at most one).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        train: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        sample_weights: torch.Tensor | None = None,
        num_draws: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment or Augment()
        self.x = x.to(self.device).contiguous()  # (N, C, H, W) uint8
        self.y = y.to(self.device)  # (N,) int64
        p = self.augment.crop_padding
        self._padded: torch.Tensor | None = None
        if train and p > 0:
            # Pad the whole split once ((H+2p)(W+2p)/HW more memory: 1.56x at 32px, p=4) so a
            # batch crop is a single row copy; x stays as the un-padded view of the centre.
            self._padded = pad_images(self.x, p, self.augment.pad_mode)
            self.x = self._padded[:, :, p : p + x.shape[2], p : p + x.shape[3]]
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        # dataset.sampler=balanced: (N,) weights, an epoch's num_draws indices drawn with replacement (train only)
        self.sample_weights = None if sample_weights is None else sample_weights.to(self.device, torch.float32)
        self.num_draws = num_draws if sample_weights is not None else None
        c = x.shape[1]
        mean_t, std_t = (torch.tensor([float(v) for v in vs], dtype=torch.float32).expand(c) for vs in (mean, std))
        # x_norm = (x/255 - mean) / std = x * scale + shift: one multiply and one add, (1, C, 1, 1) each.
        self.scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1).to(self.device)
        self.shift = (-mean_t / std_t).view(1, c, 1, 1).to(self.device)
        # The data-order and augmentation generator lives on the data's device, so
        # shuffling and the random draws need no host sync.
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # The recipes' augmentations (None when off: no op, no RNG draw). They draw from the
        # global RNGs (torch's, Python's), which the checkpoint saves, not from self.generator.
        from cnnlab.recipes.policy import make_policy, make_random_erasing

        self._policy = make_policy(self.augment.policy) if train else None
        self._erase = make_random_erasing(self.augment.random_erasing, self.device) if train else None

    def _shard_size(self) -> int:
        n, ws = self.num_draws or len(self.y), self.world_size
        if self.train:
            return n // ws
        return len(range(self.rank, n, ws))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n = self._shard_size()
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return len(self) * self.batch_size if self.train else self._shard_size()

    def _order(self) -> torch.Tensor:
        n = len(self.y)
        if self.train and self.num_draws:
            n = self.num_draws
        if not self.train:
            return torch.arange(self.rank, n, self.world_size, device=self.device)
        if self.sample_weights is not None:  # n draws, each class equally likely (the same on every rank)
            idx = torch.multinomial(self.sample_weights, n, replacement=True, generator=self.generator)  # (n,)
        else:
            idx = torch.randperm(n, generator=self.generator, device=self.device)
        if self.world_size > 1:
            per_rank = n // self.world_size
            idx = idx[: per_rank * self.world_size][self.rank :: self.world_size]
        return idx

    def _finish(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32, cutout (train only), memory format."""
        # A new float32 tensor (never the caller's), normalised in NCHW, where broadcasting
        # the per-channel scale is fast.
        x = xb.to(torch.float32, copy=True).mul_(self.scale).add_(self.shift)
        if self.train and self.augment.cutout > 0:
            x = cutout(x, self.augment.cutout, self.generator)
        if self._erase is not None:
            x = self._erase(x)  # in place, per image
        if self.channels_last:
            # copy_ into a channels_last buffer: ~4x faster on CPU than .contiguous(channels_last).
            x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
        return x

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of samples ``index`` (B,): augmented (train only), normalised, on the device."""
        a = self.augment
        if self._padded is not None:
            xb = crop_flip_padded(self._padded, a.crop_padding, a.flip, self.generator, index=index)
        elif self.train and a.flip:
            xb = crop_flip_padded(self.x, 0, True, self.generator, index=index)
        else:
            xb = self.x.index_select(0, index)
        if self._policy is not None:
            from cnnlab.recipes.policy import per_image

            xb = per_image(self._policy, xb)  # uint8, each image its own ops
        return self._finish(xb), self.y.index_select(0, index)

    def preview(self, n: int = 16) -> torch.Tensor:
        """The first ``n`` images, un-augmented, as uint8 (n, C, H, W) on the CPU."""
        return self.x[:n].cpu()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._order()
        for i in range(len(self)):
            yield self.batch(idx[i * self.batch_size : (i + 1) * self.batch_size])


def make_loaders(
    splits: Any,
    loader_kind: str,
    batch_size: int,
    eval_batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Augment | Mapping[str, Any] | None,
    device: torch.device | str,
    channels_last: bool = False,
    seed: int = 0,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    sampler: str = "none",
) -> tuple[Any, Any, Any]:
    """The (train, val, test) loaders of ``splits`` (an ImageSplits), of kind tensor or dataloader.

    Only train shuffles (with ``seed``), augments and drops the last partial batch. Every
    loader is sharded: rank r of val and test takes samples r, r+W, ..., so each sample is
    evaluated once across the ranks. ``num_workers`` is for the dataloader kind only.
    ``sampler="balanced"``: the train loader draws each epoch's samples with replacement, with
    weights 1 / class count, K x the largest class's count of them (cnnlab/recipes/imbalance.py),
    sharded like the permutation.
    """
    if not isinstance(augment, Augment):
        augment = Augment(**dict(augment or {}))
    if loader_kind != "dataloader":
        for split in (splits.train, splits.val, splits.test):
            if not isinstance(split.x, torch.Tensor) or split.x.is_meta:
                raise DataError(
                    "this dataset is over dataset.memory_budget_mb and is read from its files: "
                    "use dataset.loader=dataloader, or raise dataset.memory_budget_mb")

    def make(split: Any, bs: int, train: bool) -> Any:
        kw = dict(train=train, augment=augment if train else None, seed=seed, channels_last=channels_last,
                  rank=rank, world_size=world_size)
        if train and sampler == "balanced":
            from cnnlab.recipes.imbalance import sample_weights

            kw["sample_weights"], kw["num_draws"] = sample_weights(split.y, splits.num_classes)
        if loader_kind == "dataloader":
            from cnnlab.data.dataloader import build_dataloader

            return build_dataloader(split, bs, mean, std, device, num_workers=num_workers, **kw)
        return TensorLoader(split.x, split.y, bs, mean, std, device=device, **kw)

    return (make(splits.train, batch_size, True), make(splits.val, eval_batch_size, False),
            make(splits.test, eval_batch_size, False))
