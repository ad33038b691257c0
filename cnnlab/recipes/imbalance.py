"""Imbalanced data: a long-tailed train split, class weights for the loss, and the weights of a
class-balanced sampler (``dataset.imbalance``, ``loss.class_weights``, ``dataset.sampler``).

Each is off by default and then draws nothing from any RNG: the default run is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnnlab.errors import ConfigError, DataError

LONG_TAIL_SEED = 0  # the long-tailed subset is one fixed subset, whatever the run's seed


def long_tail_counts(available: Sequence[int], ratio: float) -> list[int]:
    """The CIFAR-10-LT counts (Cao et al. 2019): class k keeps n_max * ratio^(-k/(K-1)) images,
    n_max the smallest class's count (so every class has the images it is asked for), at least 1.

    ``ratio`` = count of the first class / count of the last (1: balanced, 100: CIFAR-10-LT's hardest).
    """
    k_max = len(available) - 1
    n_max = min(available)
    return [max(1, int(n_max * ratio ** (-k / max(k_max, 1)))) for k in range(len(available))]


def long_tail(split: Any, num_classes: int, ratio: float, seed: int = LONG_TAIL_SEED) -> Any:
    """``split`` (a Split: x (N, C, H, W) uint8, y (N,) int64; or an image folder's FileSplit) cut to
    :func:`long_tail_counts`: each class keeps a seeded random subset of its images, in their order."""
    import torch

    from cnnlab.data.splits import Split

    y = split.y  # (N,) int64 (a FileSplit builds it on each access: once)
    counts = torch.bincount(y, minlength=num_classes).tolist()
    if min(counts) == 0:
        raise DataError(f"dataset.imbalance: class {counts.index(0)} has no training images")
    g = torch.Generator().manual_seed(seed)
    keep = []
    for k, n_k in enumerate(long_tail_counts(counts, ratio)):
        idx = torch.nonzero(y == k).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n_k]])
    kept = torch.cat(keep).sort().values  # the split is already shuffled: keep its order
    if isinstance(split, Split):
        return Split(split.x[kept], y[kept])
    return split.subset(kept)  # a FileSplit: the same files, fewer


def class_counts(y: Any, num_classes: int) -> list[int]:
    """Images per class of labels ``y`` (N,) int64."""
    import torch

    return torch.bincount(y.cpu(), minlength=num_classes).tolist()


def is_imbalanced(counts: Sequence[int], tolerance: float = 1.5) -> bool:
    """True when the largest class has over ``tolerance`` times the smallest's images (digits' own
    ~1.1 is balanced)."""
    return max(counts) > tolerance * max(min(counts), 1)


def class_weights(choice: Any, counts: Sequence[int]) -> list[float] | None:
    """``loss.class_weights`` as K floats, or None (``none``: plain cross-entropy).

    ``balanced``: n / (K * count_k) (scikit-learn's "balanced"), so the weighted classes each
    carry the same total weight and a balanced split gets weights of ~1. A list is checked
    against K here, where K is known (its values' signs are RULES' check).
    """
    if choice is None or choice == "none":
        return None
    k = len(counts)
    if choice == "balanced":
        if min(counts) == 0:
            raise DataError(f"loss.class_weights=balanced: class {list(counts).index(0)} has no training images")
        n = sum(counts)
        return [n / (k * c) for c in counts]
    weights = [float(w) for w in choice]
    if len(weights) != k:
        raise ConfigError(f"loss.class_weights has {len(weights)} values but the dataset has {k} classes: "
                          f"give {k} (one per class, in label order) or use balanced")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError("loss.class_weights must be >= 0 with at least one > 0")
    return weights


def sample_weights(y: Any, num_classes: int) -> tuple[Any, int]:
    """``dataset.sampler=balanced``: (one weight per sample, 1 / count of its class, (N,) float64;
    the draws per epoch). A draw with these weights picks each class equally often.

    An epoch draws K x (the largest class's count): random oversampling, as imbalanced-learn's
    RandomOverSampler balances a set (mmpretrain's ClassBalancedDataset also repeats the rare
    classes' images), so an epoch still shows the largest class about as often as plain
    training does, and every other class as often; on a long tail the epoch is longer.
    """
    import torch

    counts = torch.bincount(y, minlength=num_classes)
    present = int((counts > 0).sum())
    return (1.0 / counts.clamp(min=1).double())[y], present * int(counts.max())


def worst_class(per_class: list[dict[str, Any]]) -> dict[str, Any]:
    """The test report's row with the lowest F1 (a class never predicted has F1 0): its name, F1, support."""
    row = min(per_class, key=lambda r: r["f1"] if r["f1"] is not None else 0.0)
    return {"class": row["class"], "f1": row["f1"] or 0.0, "support": row["support"]}
