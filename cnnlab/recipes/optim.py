"""Parameter groups for the optimizer: norm and bias parameters without weight decay."""

from __future__ import annotations

from typing import Any


def param_groups(model: Any, weight_decay: float, no_weight_decay_norm_bias: bool) -> Any:
    """``model.parameters()``, or timm's two groups: 1-D params (norm scales/shifts, biases) at
    weight decay 0 and the rest at ``weight_decay``. A timm model's own ``no_weight_decay()``
    names (position embeddings, ...) join the first group, as timm's create_optimizer does."""
    if not no_weight_decay_norm_bias:
        return model.parameters()
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
