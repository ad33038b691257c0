"""Parameter and MAC counts, and per-layer output shapes, from one forward pass with hooks.

MACs count the multiply-accumulates of Conv2d and Linear layers, the convention of
fvcore and the papers' tables (BatchNorm, activations and pooling are left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LayerStat:
    name: str
    kind: str
    out_shape: tuple[int, ...]  # without the batch dimension; () for a layer that failed
    params: int
    macs: int
    in_hw: tuple[int, int] | None = None  # the input's spatial size, when it is 4-D


@dataclass
class Trace:
    """What one forward pass showed, up to where it stopped."""

    layers: list[LayerStat]  # one per leaf module that ran, in call order
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # every module's output, containers too
    failed: LayerStat | None = None  # the leaf that was running when the forward raised
    error: RuntimeError | None = None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_macs(m: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one call of ``m`` that produced ``out`` (batch of 1)."""
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        # per output element: (in/groups) * kh * kw multiply-adds
        return out[0].numel() * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return out[0].numel() * m.in_features
    return 0


def _first_tensor(x: object) -> torch.Tensor | None:
    t = x[0] if isinstance(x, (tuple, list)) and x else x
    return t if isinstance(t, torch.Tensor) else None


def _own_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


@torch.no_grad()
def trace_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> Trace:
    """One eval-mode forward of a (1, C, H, W) zero image, recorded by forward hooks.

    A RuntimeError in the forward pass (a map smaller than a kernel) does not propagate:
    the trace keeps the layers that ran, the one that failed, and the error.
    """
    trace = Trace([])
    running: list[tuple[str, nn.Module, tuple] | None] = [None]

    def in_hw(inp: tuple) -> tuple[int, int] | None:
        x = _first_tensor(inp)
        return tuple(x.shape[-2:]) if x is not None and x.dim() == 4 else None

    def pre(name: str):
        def fn(m: nn.Module, inp: tuple) -> None:
            running[0] = (name, m, inp)
        return fn

    def leaf(name: str):
        def fn(m: nn.Module, inp: tuple, out: object) -> None:
            t = _first_tensor(out)
            if t is not None:
                trace.layers.append(LayerStat(name, type(m).__name__, tuple(t.shape[1:]), _own_params(m),
                                              layer_macs(m, t), in_hw(inp)))
        return fn

    def container(name: str):
        def fn(m: nn.Module, inp: tuple, out: object) -> None:
            t = _first_tensor(out)
            if t is not None:
                trace.shapes[name] = tuple(t.shape[1:])
        return fn

    hooks = []
    for name, m in model.named_modules():
        if not name:
            continue
        if any(True for _ in m.children()):
            hooks.append(m.register_forward_hook(container(name)))
        else:
            hooks += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(leaf(name))]
    was_training = model.training
    model.eval()
    try:
        first = next(model.parameters(), None)  # a model of pools only has none
        device = first.device if first is not None else torch.device("cpu")
        model(torch.zeros(1, *input_shape, device=device))
    except RuntimeError as e:
        trace.error = e
        if running[0] is not None:
            name, m, inp = running[0]
            trace.failed = LayerStat(name, type(m).__name__, (), _own_params(m), 0, in_hw(inp))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return trace


def profile_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerStat]:
    """A row per leaf module that ran in one eval forward; the forward's error is raised."""
    trace = trace_layers(model, input_shape)
    if trace.error is not None:
        raise trace.error
    return trace.layers


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Conv + Linear multiply-accumulates for one image of ``input_shape`` (C, H, W)."""
    return sum(s.macs for s in profile_layers(model, input_shape))
