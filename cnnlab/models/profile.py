"""Parameter and MAC counts, and per-layer output shapes, from one forward pass with hooks.

MACs count the multiply-accumulates of Conv2d and Linear layers, the convention of
fvcore and the papers' tables (BatchNorm, activations and pooling are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerStat:
    name: str
    kind: str
    out_shape: tuple[int, ...]  # without the batch dimension
    params: int
    macs: int


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_macs(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        # per output element: (in/groups) * kh * kw multiply-adds
        return out[0].numel() * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return out[0].numel() * m.in_features
    return 0


@torch.no_grad()
def profile_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerStat]:
    """One eval-mode forward of a (1, C, H, W) zero image; a row per leaf module that ran."""
    stats: list[LayerStat] = []
    hooks = []

    def hook(name: str):
        def fn(m: nn.Module, _inp: object, out: object) -> None:
            t = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(t, torch.Tensor):
                return
            own = sum(p.numel() for p in m.parameters(recurse=False))
            stats.append(LayerStat(name, type(m).__name__, tuple(t.shape[1:]), own, _layer_macs(m, t)))
        return fn

    for name, m in model.named_modules():
        if name and not list(m.children()):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return stats


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Conv + Linear multiply-accumulates for one image of ``input_shape`` (C, H, W)."""
    return sum(s.macs for s in profile_layers(model, input_shape))
