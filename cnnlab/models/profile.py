"""Probing a model: one forward pass with hooks, and the parameter and MAC counts it gives.

Every probe goes through :func:`probe`, which gives back the model's mode and torch's
random states: a probe draws nothing from the streams a training run uses afterwards.
MACs are ``FlopCounterMode``'s FLOPs / 2: convolutions and matrix products (attention's
too); BatchNorm, activations and pooling count nothing (fvcore's convention and the papers').
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Hook = tuple[nn.Module, Callable[..., Any]]  # (module, hook function), registered for one probe


def probe(model: nn.Module, x: torch.Tensor | tuple[int, int, int], hooks: Iterable[Hook] = (),
          pre_hooks: Iterable[Hook] = (), call: Callable[[torch.Tensor], Any] | None = None) -> Any:
    """``call(x)`` (default ``model(x)``) once, eval mode, no_grad, with these forward hooks.

    ``x`` is a batch, or a (C, H, W) shape: a zero image of batch 1 on the model's device
    and dtype. Whatever the pass does or raises, the hooks are removed and the model's
    mode and the CPU/CUDA RNG states are restored. Returns the call's output.
    """
    if not isinstance(x, torch.Tensor):
        p = next(model.parameters(), None)  # a model of pools only has none
        x = torch.zeros(1, *x, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None else None)
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    handles += [m.register_forward_pre_hook(fn) for m, fn in pre_hooks]
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
            model.eval()
            return (call or model)(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


@contextmanager
def one_thread(on: bool = True) -> Iterator[None]:
    """torch on one CPU thread inside, when ``on``: for a tiny input, more threads only add
    sync costs (measured 3x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    if on:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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

    layers: list[LayerStat]  # one per leaf module call, in call order
    # every module's (output shape, MACs), containers too: a block's output is not its
    # last leaf's (an Inception block concatenates its branches)
    modules: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)
    macs: int = 0  # the whole pass's, up to the failure
    failed: LayerStat | None = None  # the leaf that was running when the forward raised
    error: RuntimeError | None = None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flop_counter() -> Any:
    """torch's FlopCounterMode, taught the CPU's fused attention kernel (torch 2.x counts
    the CUDA kernels' FLOPs but not ``_scaled_dot_product_flash_attention_for_cpu``'s)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(q, k, v)  # the shapes: FlopCounterMode passes those

    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa})


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates for one image of ``input_shape`` (C, H, W); the forward's error is raised."""
    with _flop_counter() as counter:
        probe(model, input_shape)
    return counter.get_total_flops() // 2


def first_tensor(x: object) -> torch.Tensor | None:
    t = x[0] if isinstance(x, (tuple, list)) and x else x
    return t if isinstance(t, torch.Tensor) else None


def in_hw(inp: tuple) -> tuple[int, int] | None:
    x = first_tensor(inp)
    return tuple(x.shape[-2:]) if x is not None and x.dim() == 4 else None


def trace_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> Trace:
    """One probe of a zero image, every module hooked: a row per leaf call, each module's MACs.

    A module's MACs are the counter's growth while it ran. A RuntimeError in the forward
    (a map smaller than a kernel) does not propagate: the trace keeps the layers that
    ran, the one that failed, and the error.
    """
    counter = _flop_counter()
    trace = Trace([])
    started: dict[str, tuple[int, tuple[int, int] | None]] = {}  # name -> (MACs so far, input side)
    running: list[str] = []  # the leaves that started, the last one running

    def macs() -> int:
        return counter.get_total_flops() // 2

    def pre(name: str, leaf: bool) -> Callable[..., None]:
        def fn(m: nn.Module, inp: tuple) -> None:
            started[name] = (macs(), in_hw(inp))
            if leaf:
                running.append(name)
        return fn

    def post(name: str, leaf: bool) -> Callable[..., None]:
        def fn(m: nn.Module, inp: tuple, out: object) -> None:
            t = first_tensor(out)
            if t is None:
                return
            shape, done = tuple(t.shape[1:]), macs() - started[name][0]
            trace.modules[name] = (shape, trace.modules.get(name, ((), 0))[1] + done)
            if leaf:
                trace.layers.append(LayerStat(name, type(m).__name__, shape, count_params(m), done,
                                              started[name][1]))
        return fn

    named = [(n, m, not any(True for _ in m.children())) for n, m in model.named_modules() if n]
    try:
        with counter:
            probe(model, input_shape, [(m, post(n, leaf)) for n, m, leaf in named],
                  [(m, pre(n, leaf)) for n, m, leaf in named])
    except RuntimeError as e:
        trace.error = e
        if running:
            m = model.get_submodule(running[-1])
            trace.failed = LayerStat(running[-1], type(m).__name__, (), count_params(m), 0,
                                     started[running[-1]][1])
    trace.macs = macs()
    return trace
