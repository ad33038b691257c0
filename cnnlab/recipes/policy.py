"""Stronger augmentation: an auto-augment policy per image, and random erasing per batch.

``dataset.augment.policy`` is torchvision.transforms.v2's op on each uint8 image (its own
ops and magnitudes, from torch's global RNG), after the crop and flip and before the
normalisation, as torchvision's and timm's recipes order it; AutoAugment uses the CIFAR-10
policy (small images). The per-image loop's cost: docs/benchmarks.md.
``dataset.augment.random_erasing`` is timm's RandomErasing (mode "pixel": normal noise) on
the normalised device batch; its draws come from Python's ``random`` (saved by the checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")


def make_policy(name: str) -> Callable[[Any], Any] | None:
    """The torchvision v2 transform for one uint8 image (C, H, W), or None for ``none``."""
    if name == "none":
        return None
    from torchvision.transforms import v2

    if name == "randaugment":
        return v2.RandAugment()  # 2 ops at magnitude 9 of 31, torchvision's defaults
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)


def per_image(policy: Callable[[Any], Any], xb: Any) -> Any:
    """``policy`` applied to each image of the uint8 batch xb (B, C, H, W); a new tensor."""
    import torch

    out = torch.empty_like(xb)
    for i in range(xb.shape[0]):
        out[i] = policy(xb[i])
    return out


def make_random_erasing(probability: float, device: Any) -> Callable[[Any], Any] | None:
    """timm's RandomErasing for normalised (B, C, H, W) batches on ``device`` (in place), or None at 0."""
    if probability <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability=probability, mode="pixel", device=str(device))
