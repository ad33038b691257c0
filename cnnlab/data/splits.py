"""The in-memory form of a dataset, and seeded splitting."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Split:
    """Images (N, C, H, W) uint8 in [0, 255] and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, n: int | None) -> Split:
        """The first ``n`` samples (all if None); splits are already shuffled."""
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])


@dataclass
class ImageSplits:
    train: Split
    val: Split
    test: Split
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.x.shape[-1]

    def limit(self, n: int | None) -> ImageSplits:
        return ImageSplits(self.train.take(n), self.val.take(n), self.test.take(n), self.classes)


def seeded_split(x: torch.Tensor, y: torch.Tensor, fractions: list[float], seed: int) -> list[Split]:
    """Shuffle with ``seed`` and cut into len(fractions)+1 parts; the first part takes the rest.

    ``fractions`` are the sizes of the later parts, e.g. [0.15, 0.15] gives
    (train 70%, val 15%, test 15%). The same seed always gives the same split.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    sizes = [round(f * len(y)) for f in fractions]
    first = len(y) - sum(sizes)
    bounds = [0, first]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    return [Split(x[perm[a:b]], y[perm[a:b]]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to size x size, once, at load time."""
    if x.shape[-2:] == (size, size):
        return x
    import torch.nn.functional as F

    out = []
    for chunk in x.split(4096):  # bounded float memory for large sets
        f = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(f.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)
