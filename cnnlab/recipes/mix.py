"""Mixup and CutMix on a training batch already on the device, through timm's ``Mixup``.

``Mixup(x, y)`` mixes each image with its mirror in the batch (``x.flip(0)``; timm's
"batch" mode: one lambda per batch, drawn from numpy's global RNG, which the
checkpoint saves) and returns soft targets (B, num_classes): ``lam * onehot(y) +
(1 - lam) * onehot(y.flip(0))``, each label-smoothed by ``label_smoothing``. The loss
then takes the soft targets as they are (smoothing is already in them). The batch
must be even, so an odd one fails at build time in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cnnlab.errors import ConfigError


def make_mixer(mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float,
               label_smoothing: float, num_classes: int, batch_size: int) -> Callable[[Any, Any], tuple[Any, Any]] | None:
    """timm's Mixup for batches of ``batch_size`` (this rank's), or None when mixing is off.

    Off (None, and no RNG draw ever) when both alphas are 0 or ``prob`` is 0.
    ``label_smoothing`` is passed explicitly: timm's default is 0.1, not 0.
    """
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
        return None
    if batch_size % 2:
        raise ConfigError(f"mix.* needs an even batch per process (timm's Mixup mixes each image with its "
                          f"mirror in the batch), got {batch_size}: use an even trainer.batch_size")
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                 mode="batch", label_smoothing=label_smoothing, num_classes=num_classes)
