"""Parameter groups for the optimizer: norm and bias parameters without weight decay; fine-tuning's
groups (frozen, per-layer lr) in cnnlab/recipes/freeze.py."""

from __future__ import annotations

from typing import Any


def param_groups(model: Any, weight_decay: float, no_weight_decay_norm_bias: bool, freezer: Any = None,
                 lr: float = 0.0, head_lr_mult: float = 1.0, layer_decay: float | None = None) -> Any:
    """``model.parameters()``, or timm's two groups: 1-D params (norm scales/shifts, biases) at
    weight decay 0 and the rest at ``weight_decay``. With a ``freezer`` that froze something, a
    ``head_lr_mult`` != 1 or a ``layer_decay``: cnnlab/recipes/freeze.py's groups, each with its lr. A timm model's own ``no_weight_decay()``
    names (position embeddings, ...) join the first group, as timm's create_optimizer does."""
    if (freezer is not None and freezer.frozen) or head_lr_mult != 1.0 or layer_decay is not None:
        from cnnlab.recipes.freeze import Freezer, lr_groups, split_frozen

        groups = lr_groups(model, lr, weight_decay, no_weight_decay_norm_bias, head_lr_mult, layer_decay)
        return split_frozen(groups, freezer or Freezer())
    if not no_weight_decay_norm_bias:
        return model.parameters()
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
