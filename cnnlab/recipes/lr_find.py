"""Smith's learning-rate range test (``trainer.lr_find=true``), run once before training.

From the initial weights, the lr grows exponentially over a bounded number of optimizer
steps on the training split while the loss is recorded; the chosen lr is the one at the
point where the smoothed loss blows up, divided by 10 (below). Then the model, the optimizer, the
GradScaler, every RNG and the training loader are put back exactly as they were, so the
run starts as if fresh, with the chosen lr (L. N. Smith, "Cyclical Learning Rates for
Training Neural Networks", 2017, section 3.3).

Written here rather than taken from ``torch-lr-finder``: that package restores the model
and the optimizer only, not the RNGs (python, numpy, torch, CUDA) nor cnnlab's loaders
(their shuffle generator, a DataLoader's persistent workers), so a run with the test would
not be the same run as without it; and it has its own training step, while this one is
the loop's: AMP through autocast and the GradScaler, ``trainer.accumulate``'s micro-batches
with DDP's ``no_sync``, gradient clipping, and every rank agreeing on the loss (DDP).

**The rule: the blow-up lr / 10.** The blow-up lr is the last lr tried before the smoothed
loss first rises above twice its lowest value: the edge of stability, Smith's "max lr"
(where the loss turns ragged and climbs). The run trains one decade below it. Measured first
with the other common rule, fastai v1's min-loss lr / 10: on a 10-step test (the default and
`make sweep` runs can afford no more, see :func:`budget_steps`) AlexNet's loss barely moves
before it climbs (2.33 -> 2.31 -> 2.35 over lr 5e-4 .. 0.08), so its minimum is noise, and
the choice (0.001) left AlexNet at chance after 2 epochs where lr 0.05 reaches 92%. A loss
that doubles is a strong signal even in 10 noisy steps; the steepest-descent point needs a
smooth derivative, which they do not give either. With no blow-up in the range, the
largest lr tried / 10.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

SPAN = 100.0          # the test sweeps [lr / SPAN, lr * SPAN]: the configured lr is the prior
MAX_STEPS = 100       # Smith's test length
MIN_STEPS = 10        # fewer points than this do not make a curve
SHARE = 10            # at most 1/SHARE of the run's optimizer steps (its cost: <= ~10% of the run)
BLOW_UP = 2.0         # the blow-up: the smoothed loss above this x its lowest so far (or not finite)
DIVERGED = 4.0        # stop once the smoothed loss is above this x its lowest (or not finite)
RULE = "blow_up/10"   # the documented rule, recorded in summary.json


def budget_steps(total_steps: int) -> int:
    """The test's optimizer steps for a run of ``total_steps``: a tenth of it, in [10, 100]."""
    return max(MIN_STEPS, min(MAX_STEPS, total_steps // SHARE))


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (as Adam's moments); ``beta`` 0: unchanged."""
    out, avg = [], 0.0
    for i, v in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


@dataclass
class LrFind:
    """The test's curve and its choice."""

    start_lr: float
    end_lr: float
    lrs: list[float] = field(default_factory=list)     # the lr of each optimizer step
    losses: list[float] = field(default_factory=list)  # that step's loss (mean over ranks, micro-batches)
    smoothed: list[float] = field(default_factory=list)
    chosen_lr: float = math.nan
    min_loss_lr: float = math.nan
    blow_up_lr: float = math.nan  # the last lr before the smoothed loss first passed BLOW_UP x its lowest
    stopped_early: bool = False  # the loss diverged before the last step
    seconds: float = 0.0

    def choose(self, beta: float) -> float:
        """The rule (module docstring): the blow-up lr / 10, kept inside the range."""
        self.smoothed = smooth(self.losses, beta)
        finite = [(s, lr) for s, lr in zip(self.smoothed, self.lrs, strict=True) if math.isfinite(s)]
        if not finite:  # the very first step diverged: the smallest lr tried
            self.min_loss_lr = self.blow_up_lr = self.chosen_lr = self.start_lr
            return self.chosen_lr
        self.min_loss_lr = min(finite)[1]
        lowest, self.blow_up_lr = math.inf, self.lrs[0]
        for s, lr in zip(self.smoothed, self.lrs, strict=True):
            if not math.isfinite(s) or s > BLOW_UP * lowest:
                break
            lowest, self.blow_up_lr = min(lowest, s), lr
        self.chosen_lr = max(self.start_lr, self.blow_up_lr / 10)
        return self.chosen_lr

    def summary(self, configured_lr: float) -> dict[str, Any]:
        """summary.json's ``lr_find``: the choice, the rule, and the curve (None for a non-finite loss)."""
        def fin(v: float) -> float | None:
            return v if math.isfinite(v) else None

        best = min((s for s in self.smoothed if math.isfinite(s)), default=math.nan)
        return {"lr": self.chosen_lr, "configured_lr": configured_lr, "rule": RULE,
                "blow_up_lr": self.blow_up_lr, "min_loss_lr": self.min_loss_lr, "min_loss": fin(best), "start_lr": self.start_lr,
                "end_lr": self.end_lr, "steps": len(self.lrs), "stopped_early": self.stopped_early,
                "seconds": round(self.seconds, 3),
                "curve": {"lr": self.lrs, "loss": [fin(v) for v in self.losses],
                          "smoothed": [fin(v) for v in self.smoothed]}}


@contextlib.contextmanager
def restored(model: Any, optimizer: Any, scaler: Any, loader: Any) -> Iterator[None]:
    """Snapshot the weights (and buffers), the optimizer's and scaler's state, every RNG and the
    loader's generator; put them back bit for bit on the way out."""
    from cnnlab.lifecycle.resume import rng_state, set_rng_state

    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(optimizer.state_dict())
    scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None and scaler.is_enabled() else None
    rngs = copy.deepcopy(rng_state(loader))
    try:
        yield
    finally:
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt_state)
        model.zero_grad(set_to_none=True)  # a fresh model has no gradients
        if scaler_state is not None:
            scaler.load_state_dict(scaler_state)
        set_rng_state(rngs, loader)
        # A DataLoader's persistent workers drew their seeds when the test first iterated, and
        # their RNGs have moved on: drop them, so training's first epoch starts new workers,
        # seeded from the restored torch RNG, exactly as without the test.
        inner = getattr(loader, "loader", None)
        if getattr(inner, "_iterator", None) is not None:
            inner._iterator._shutdown_workers()
            inner._iterator = None


def _batches(loader: Any) -> Iterator[tuple[Any, Any]]:
    """The training split's batches, epoch after epoch (the test may be longer than an epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def range_test(model: Any, step_model: Any, optimizer: Any, loader: Any, policy: Any, *,
               lr: float, steps: int, scaler: Any = None, accumulate: int = 1,
               grad_clip: float | None = None,
               mean_over_ranks: Callable[[Any], Any] = lambda t: t) -> LrFind:
    """Run the test and restore everything (:func:`restored`); returns the curve and the choice.

    ``model``: the bare module (its weights are snapshot); ``step_model``: what training steps
    call (DDP's wrapper, compiled...). The lr of step i (0-based) is ``lr/SPAN *
    SPAN**(2i/(steps-1))``; every param group is scaled alike. ``mean_over_ranks``: DDP's mean
    of a 0-d tensor, so every rank sees the same curve and stops at the same step.
    """
    import torch

    res = LrFind(start_lr=lr / SPAN, end_lr=lr * SPAN)
    # Groups keep their proportions (initial_lr: a schedule built on this optimizer may have moved lr).
    ratio = [g.get("initial_lr", g["lr"]) / lr for g in optimizer.param_groups]
    if scaler is None:
        scaler = torch.amp.GradScaler(policy.device.type, enabled=False)
    autocast = (torch.autocast(policy.device.type, dtype=policy.amp_dtype) if policy.amp_dtype
                else contextlib.nullcontext())
    t0 = time.perf_counter()
    with restored(model, optimizer, scaler, loader):
        model.train()
        batches = _batches(loader)
        beta, best = _beta(steps), math.inf
        for i in range(steps):
            step_lr = res.start_lr * (res.end_lr / res.start_lr) ** (i / max(steps - 1, 1))
            for g, r in zip(optimizer.param_groups, ratio, strict=True):
                g["lr"] = step_lr * r
            loss = _step(step_model, model, optimizer, scaler, batches, autocast, accumulate, grad_clip)
            if loss is None:  # the loader gave no batch (an empty split)
                break
            res.lrs.append(step_lr)
            res.losses.append(float(mean_over_ranks(loss).item()))  # one host read per step
            now = smooth(res.losses, beta)[-1]
            best = min(best, now)
            if not math.isfinite(now) or now > DIVERGED * best:
                res.stopped_early = i < steps - 1
                break
    res.choose(_beta(steps))
    res.seconds = time.perf_counter() - t0
    return res


def _step(step_model: Any, model: Any, optimizer: Any, scaler: Any, batches: Iterator[tuple[Any, Any]],
          autocast: Any, accumulate: int, grad_clip: float | None) -> Any:
    """One optimizer step of ``accumulate`` micro-batches, as train_one_epoch takes it; returns the
    step's mean loss as a 0-d float32 tensor (None when the loader is empty)."""
    import torch
    import torch.nn.functional as F

    from cnnlab.models.outputs import split_output

    optimizer.zero_grad(set_to_none=True)
    total = None
    for micro in range(accumulate):
        batch = next(batches, None)
        if batch is None:
            return None
        x, y = batch  # x: (B, C, H, W) float, normalised; y: (B,) int64
        no_sync = getattr(step_model, "no_sync", None) if micro < accumulate - 1 else None  # DDP
        with no_sync() if no_sync is not None else contextlib.nullcontext(), autocast:
            logits, _ = split_output(step_model(x))
            loss = F.cross_entropy(logits.float(), y)  # plain cross-entropy: the lr that fits the data
        scaler.scale(loss / accumulate).backward()
        part = loss.detach().float() / accumulate
        total = part if total is None else total + part
    if grad_clip:
        scaler.unscale_(optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total


def _beta(steps: int) -> float:
    """The smoothing: a window of about a tenth of the test (100 steps: 0.9; 10 steps: none)."""
    return 1.0 - 1.0 / max(1.0, steps / 10)


def plot(res: LrFind, path: Any) -> None:
    """lr_find.png: the loss (raw and smoothed) against the lr on a log axis, the choice marked."""
    from cnnlab.evaluation import plots

    fig = plots.figure(7, 4.5)
    ax = fig.subplots()
    ax.plot(res.lrs, res.losses, color="0.7", lw=1, label="loss per step")
    ax.plot(res.lrs, res.smoothed, color="C0", lw=2, label="smoothed")
    ax.axvline(res.blow_up_lr, color="C3", ls=":", label=f"blow-up at lr {res.blow_up_lr:.3g}")
    ax.axvline(res.chosen_lr, color="C2", ls="--", label=f"chosen lr {res.chosen_lr:.3g} ({RULE})")
    ax.set_xscale("log")
    finite = [v for v in res.smoothed if math.isfinite(v)]
    if finite:  # the diverging tail would flatten the rest
        ax.set_ylim(min(finite) * 0.9, min(max(finite), DIVERGED * min(finite)) * 1.1)
    ax.set(xlabel="learning rate (log)", ylabel="training loss",
           title=f"LR range test: {len(res.lrs)} steps" + (" (stopped: diverged)" if res.stopped_early else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save_rgb(plots.render(fig), path)


def find_lr(model: Any, step_model: Any, optimizer: Any, loader: Any, policy: Any, *, lr: float,
            total_steps: int, scaler: Any, accumulate: int, grad_clip: float | None, ddp: Any,
            out_dir: Any) -> dict[str, Any]:
    """The run's range test (:func:`range_test`, :func:`budget_steps` of the run's ``total_steps``):
    every rank takes part (DDP steps) and uses rank 0's choice; rank 0 draws lr_find.png into
    ``out_dir``. Returns summary.json's ``lr_find`` (its ``lr``: the chosen lr)."""
    import logging
    from pathlib import Path

    steps = budget_steps(total_steps)
    mean = (lambda t: ddp.all_reduce(t)[0] / ddp.world_size) if ddp.enabled else (lambda t: t)
    res = range_test(model, step_model, optimizer, loader, policy, lr=lr, steps=steps, scaler=scaler,
                     accumulate=accumulate, grad_clip=grad_clip, mean_over_ranks=mean)
    found = ddp.gather(res.summary(lr))[0]  # rank 0's choice on every rank
    if ddp.is_main:
        plot(res, Path(out_dir) / "lr_find.png")
    logging.getLogger("cnnlab").info(
        "lr_find: %d steps over lr [%.3g, %.3g] in %.1fs; blow-up at %.3g, chosen lr %.3g (%s; configured %g)",
        found["steps"], found["start_lr"], found["end_lr"], found["seconds"], found["blow_up_lr"],
        found["lr"], RULE, lr)
    return found
