"""``train(cfg)``: the composition root and the course's two loops, read top to bottom.

``train`` builds data, model, optimizer, schedule and device policy from the config and
hands plain arguments to the passes (``train_one_epoch``, ``evaluate``) and the epoch
loop (``run_epochs``); cnnlab/lifecycle/ says what ends a run early, this file *when*.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import TrainerConfig, validate
from cnnlab.dist import Dist
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.lifecycle.record import (
    TRACES_BEFORE_HYDRA,
    Outcome,
    RunRecord,
    claim_run_dir,
    release_claim,
    report_writes,
)

log = logging.getLogger("cnnlab")


# --------------------------------------------------------------------------- the passes
@dataclass
class EpochSums:
    """A training pass's running sums. The tensors stay on the device until the epoch ends."""

    loss_sum: Any        # () float32: sum over samples of the main cross-entropy loss
    correct: Any         # () int64: samples whose argmax was the label
    first_bad_step: Any  # () int64: the first 0-based step whose loss was NaN/inf, -1 if none
    seen: int = 0        # samples
    steps: int = 0       # batches (micro-batches under trainer.accumulate)

    @classmethod
    def zeros(cls, device: Any) -> EpochSums:
        import torch

        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long),
                   torch.full((), -1, device=device, dtype=torch.long))

    def means(self) -> tuple[float, float]:
        """(mean loss, accuracy as a fraction): the one host read of a training pass."""
        n = max(self.seen, 1)
        return (self.loss_sum / n).item(), self.correct.item() / n

    def bad_step(self) -> int:
        return int(self.first_bad_step.item())

    def over_ranks(self, ddp: Dist) -> EpochSums:
        """The sums over every rank (single-process: unchanged); ``first_bad_step`` the earliest."""
        import torch

        if not ddp.enabled:
            return self
        loss_sum, correct, seen = ddp.all_reduce(self.loss_sum, self.correct, self.seen)
        none = 2**52  # "no bad step" must not win the MIN (and is exact in the all-reduce's float64)
        (bad,) = ddp.all_reduce(torch.where(self.first_bad_step < 0, none, self.first_bad_step), op="min")
        return EpochSums(loss_sum, correct, torch.where(bad == none, -1, bad), seen, self.steps)


def trained_batches(batches: int, accumulate: int) -> int:
    """The batches a training pass runs: whole groups of ``accumulate`` (a partial last group is skipped)."""
    return batches // accumulate * accumulate


def _autocast(policy: Any) -> Any:
    import torch

    return torch.autocast(policy.device.type, dtype=policy.amp_dtype) if policy.amp_dtype else nullcontext()


def train_one_epoch(model, loader, optimizer, scheduler, policy, grad_clip=None, scaler=None,
                    progress=None, should_stop=lambda: False, label_smoothing=0.0, mixer=None,
                    accumulate=1, ema=None, class_weights=None) -> EpochSums:
    """One pass over the training split; returns the sums, still on the device (no ``.item()``
    per step: the GPU never waits for the host).

    ``scaler``: a GradScaler, enabled for fp16; a disabled one (the default) passes every
    call through, so every precision has one code path. Recipes, each off by default:
    ``mixer`` (cnnlab/recipes/mix.py) gives soft targets, and the accuracy counts their
    argmax; ``accumulate`` micro-batches per optimizer step, DDP syncing on the last one;
    ``ema`` (cnnlab/recipes/ema.py) is updated after each optimizer step; ``class_weights``
    (K,) weighs each class's loss (cnnlab/recipes/imbalance.py).
    """
    import torch
    import torch.nn.functional as F

    from cnnlab.models.outputs import split_output

    model.train()
    if scaler is None:
        scaler = torch.amp.GradScaler(policy.device.type, enabled=False)
    sums = EpochSums.zeros(policy.device)
    batches = trained_batches(len(loader), accumulate)
    for step, (x, y) in enumerate(loader):
        if step >= batches:
            break
        # x: (B, C, H, W) float, normalised; y: (B,) int64
        target, label, smoothing = y, y, label_smoothing
        if mixer is not None:
            x, target = mixer(x, y)  # target: (B, K) soft, label smoothing already in it
            label, smoothing = target.argmax(1), 0.0
        inner = (step + 1) % accumulate != 0  # not the group's last micro-batch
        no_sync = getattr(model, "no_sync", None) if inner else None  # DDP: no all-reduce yet
        with no_sync() if no_sync is not None else nullcontext():
            with _autocast(policy):
                logits, extra = split_output(model(x))
                # mean over the batch (with class_weights: the weighted mean)
                loss = F.cross_entropy(logits, target, weight=class_weights, label_smoothing=smoothing)
                # Extra loss terms (e.g. GoogLeNet's auxiliary heads), weighted by the model.
                total = loss + sum(w * F.cross_entropy(aux, target, weight=class_weights, label_smoothing=smoothing)
                                   for w, aux in extra)
            if step % accumulate == 0:
                optimizer.zero_grad(set_to_none=True)
            # The group's mean loss: each micro-batch's mean / accumulate.
            scaler.scale(total / accumulate if accumulate > 1 else total).backward()
        if not inner:
            if grad_clip:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
            scaler.update()
            scheduler.step()  # the schedules are per optimizer step (cnnlab/schedulers.py)
            if ema is not None:
                ema.update(model)

        b = y.shape[0]
        loss_d = loss.detach().float()
        sums.loss_sum += loss_d * b
        sums.correct += (logits.detach().argmax(1) == label).sum()
        bad_now = ~torch.isfinite(loss_d)
        sums.first_bad_step = torch.where(bad_now & (sums.first_bad_step < 0), step, sums.first_bad_step)
        sums.seen += b
        sums.steps += 1
        if progress is not None:
            progress.update(1)
        if should_stop():  # a plain bool (a signal's flag): no device sync
            break
    return sums


def evaluate(model, loader, policy, ddp: Dist | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) over a split (under DDP: over every rank's
    shard); one host read at the end."""
    import torch
    import torch.nn.functional as F

    from cnnlab.models.outputs import split_output

    model.eval()
    dev = policy.device
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    n = 0
    with torch.no_grad(), _autocast(policy):
        for x, y in loader:
            logits, _ = split_output(model(x))
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
    if ddp is not None:
        loss_sum, correct, n = ddp.all_reduce(loss_sum, correct, n)
    if n == 0:
        return float("nan"), float("nan")
    return (loss_sum / n).item(), correct.item() / n


# --------------------------------------------------------------------------- the epoch loop
@dataclass
class LoopState:
    """The epoch loop's counters: saved in every checkpoint, restored on resume."""

    best_val_acc: float | None = None  # None: no epoch validated yet
    best_epoch: int = 0
    train_seconds: float = 0.0  # summed over the training passes, resumes included
    images_seen: int = 0
    epochs_since_best: int = 0  # early stopping: epochs without an improvement
    best_val_loss: float = math.inf

    def to_checkpoint(self) -> dict[str, Any]:
        return {"best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "train_seconds": self.train_seconds, "images_seen": self.images_seen,
                "early_stop": {"epochs_since_best": self.epochs_since_best,
                               "best_val_loss": self.best_val_loss}}

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> LoopState:
        early = ck.get("early_stop") or {}  # absent in checkpoints from before early stopping
        best = ck["best_val_acc"] if ck["best_val_acc"] != -1.0 else None  # -1.0: "none yet" in older ones
        return cls(best, ck["best_epoch"], ck.get("train_seconds", 0.0), ck.get("images_seen", 0),
                   early.get("epochs_since_best", 0), early.get("best_val_loss", math.inf))

    def update(self, epoch: int, val_loss: float, val_acc: float, patience: int | None,
               metric: str) -> tuple[bool, bool]:
        """After a val pass: (is this the best epoch so far, by val accuracy; should the run stop
        early: ``patience`` epochs without a better ``metric``). Before the checkpoint that holds them."""
        improved = val_acc > (self.best_val_acc if self.best_val_acc is not None else -math.inf)  # NaN: never
        if improved:
            self.best_val_acc, self.best_epoch = val_acc, epoch
        if not patience:
            return improved, False
        better = (val_loss < self.best_val_loss) if metric == "val_loss" else improved
        self.best_val_loss = min(self.best_val_loss, val_loss)
        self.epochs_since_best = 0 if better else self.epochs_since_best + 1
        return improved, self.epochs_since_best >= patience


@dataclass
class Parts:
    """What the loop drives, reports to and listens to, built by :func:`train` from the config."""

    model: Any          # the bare model (weights, checkpoints, feature maps)
    train_model: Any    # what training steps call: DDP's wrapper and/or torch.compile
    eval_model: Any     # never DDP (no collective per batch); compiled with device.compile;
                        # the EMA's weights with ema.enabled
    optimizer: Any
    scheduler: Any
    scaler: Any         # a GradScaler, enabled only for fp16
    policy: Any         # cnnlab.device.DevicePolicy
    ddp: Dist           # single-process: every call a no-op
    record: RunRecord   # summary.json and metrics.csv
    stop: Any           # cnnlab.dist.AgreedStop: SIGINT/SIGTERM, agreed by every rank
    train_loader: Any
    val_loader: Any
    test_loader: Any
    config: dict[str, Any]  # the resolved config, into every checkpoint
    class_names: list[str]  # the dataset's, in label order
    ema: Any = None         # cnnlab.recipes.ema.WeightEma, or None
    mixer: Any = None       # cnnlab.recipes.mix.make_mixer's Mixup, or None
    label_smoothing: float = 0.0
    class_weights: Any = None   # (K,) float tensor on the device, or None (loss.class_weights)
    freezer: Any = None         # cnnlab.recipes.freeze.Freezer, or None (model.freeze=none)
    unfreeze_epoch: int | None = None

    def save(self, epoch: int, is_best: bool, state: LoopState) -> None:
        """The epoch's training checkpoint, written by rank 0 only (the ranks hold the same weights)."""
        from cnnlab.lifecycle.checkpoint import save_epoch, training_state
        from cnnlab.lifecycle.resume import rng_state

        if self.ddp.is_main:
            ck = training_state(self.model, self.optimizer, self.scheduler, self.scaler, epoch,
                                state.to_checkpoint(), rng_state(self.train_loader), self.config["model"]["name"],
                                self.config, self.class_names)
            if self.ema is not None:
                ck["ema"] = self.ema.state_dict()  # only then: an EMA-less checkpoint keeps its keys
            save_epoch(ck, self.record.run_dir / "checkpoints", is_best)


def run_epochs(p: Parts, s: TrainerConfig, state: LoopState, start_epoch: int) -> Outcome:
    """The epoch loop, from ``start_epoch`` to ``s.epochs``; returns how it ended.

    A signal lets the current step finish, then ends it ``interrupted``; the partial epoch
    is not kept, so a resume redoes it exactly. A NaN/inf loss or weight ends it
    ``diverged`` before anything is saved.
    """
    from tqdm import tqdm

    from cnnlab.lifecycle.guards import all_finite, oom_hint
    from cnnlab.recipes.bn import recalibrate_bn

    record, stop, ddp = p.record, p.stop, p.ddp
    steps_per_epoch = trained_batches(len(p.train_loader), s.accumulate)
    # A progress bar: trainer.progress=bar, or auto on a terminal (not CI, not a multirun); DDP: rank 0's.
    no_bar = not ddp.is_main or s.progress == "log" or (s.progress == "auto" and not sys.stderr.isatty())
    outcome = Outcome("finished", max(s.epochs, start_epoch - 1))
    for epoch in range(start_epoch, s.epochs + 1):
        if stop.requested:
            break
        if p.freezer is not None and p.freezer.frozen and p.unfreeze_epoch and epoch >= p.unfreeze_epoch:
            log.info("epoch %d: unfroze %d parameter tensors", epoch, p.freezer.unfreeze(p.optimizer))
        t0 = time.perf_counter()
        with (tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{s.epochs}", leave=False, unit="step",
                   dynamic_ncols=True, disable=no_bar) as bar, ddp.guard(),
              oom_hint("training", "trainer.batch_size", s.batch_size, record.device)):
            sums = train_one_epoch(p.train_model, p.train_loader, p.optimizer, p.scheduler, p.policy,
                                   grad_clip=s.grad_clip, scaler=p.scaler, progress=bar,
                                   should_stop=stop.poll, label_smoothing=p.label_smoothing,
                                   mixer=p.mixer, accumulate=s.accumulate, ema=p.ema,
                                   class_weights=p.class_weights)
        sums = sums.over_ranks(ddp)
        stop.sync()  # DDP: agree at each epoch's end
        if stop.requested and sums.steps < steps_per_epoch:
            outcome = Outcome("interrupted", epoch, steps=sums.steps)
            break
        train_loss, train_acc = sums.means()
        state.train_seconds += time.perf_counter() - t0
        state.images_seen += sums.seen
        bad_step = sums.bad_step()
        if bad_step >= 0 or not all_finite(p.model):
            outcome = Outcome("diverged", epoch, steps=bad_step)
            break

        if s.bn_recalibrate:  # precise BN: statistics of the current weights (cnnlab/recipes/bn.py)
            recalibrate_bn(p.ema.module if p.ema is not None else p.model, p.train_loader, s.bn_recalibrate)
        ddp.sync_buffers(p.model)  # DDP: evaluate (and save) rank 0's BatchNorm statistics
        if p.ema is not None:
            ddp.sync_buffers(p.ema.module)
        with oom_hint("evaluation", "trainer.eval_batch_size", s.eval_batch_size, record.device):
            val_loss, val_acc = evaluate(p.eval_model, p.val_loader, p.policy, ddp)
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": p.optimizer.param_groups[0]["lr"],
               "epoch_seconds": time.perf_counter() - t0}
        record.log_epoch(row)  # metrics.csv, TensorBoard and the experiment tracker
        log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs",
                 epoch, s.epochs, train_loss, train_acc, val_loss, val_acc, row["epoch_seconds"])

        improved, early_stop = state.update(epoch, val_loss, val_acc, s.early_stop_patience,
                                            s.early_stop_metric)
        if s.save_checkpoints:
            p.save(epoch, improved, state)
        record.epoch_done(epoch, state)
        if early_stop:
            log.info("early stop: no %s improvement for %d epochs", s.early_stop_metric,
                     state.epochs_since_best)
            outcome = Outcome("early_stopped", epoch)
            break
    if stop.requested and outcome.kind != "interrupted":
        # A signal after an epoch's last training step (during its val pass, or a stop at
        # the top of the loop): that epoch is complete and saved; the run still stops here.
        outcome = Outcome("interrupted", record.completed or 0)
    return outcome


# --------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured model; write the run folder; return the summary dict (status
    ``diverged`` after a NaN/inf loss). Raises :class:`cnnlab.lifecycle.signals.Interrupted`
    after a SIGINT/SIGTERM, a CnnlabError for a user error (``failed``)."""
    try:
        _check(cfg)
    except CnnlabError:
        release_claim(OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False))
        raise
    from cnnlab.dist import setup as setup_distributed
    from cnnlab.lifecycle.guards import oom_hint
    from cnnlab.lifecycle.resume import plan_resume, resumed_config
    from cnnlab.lifecycle.signals import GracefulStop
    from cnnlab.reporting.track import RunTracker

    # Under torchrun: join the process group; every rank takes rank 0's run folder
    # (ranks > 0 composed a throwaway one). Single-process: a no-op. cnnlab/dist.py.
    ddp = setup_distributed(cfg.device.name)
    run_dir = ddp.share_path(Path(cfg.paths.output_dir))
    t_start = time.perf_counter()
    # One launch per folder: claimed before anything is read or written (under Hydra already by
    # cnnlab.run.ClaimRunFolder, before Hydra's own files); a refused launch removes what it wrote.
    claim = claim_run_dir(run_dir) if ddp.is_main else None
    try:
        traces = claim.traces if claim else [t for t in TRACES_BEFORE_HYDRA if (run_dir / t).exists()]
        plan = plan_resume(cfg.resume, cfg.trainer.auto_resume, run_dir, traces)  # before the folder is touched
        if plan.checkpoint is not None:
            cfg = resumed_config(cfg, *plan.checkpoint)  # the checkpoint's config + this command's overrides
            _check(cfg)
    except BaseException as e:
        if claim:
            claim.release(undo=isinstance(e, CnnlabError))
        raise
    tc = cfg.trainer
    ddp.barrier()  # every rank has read the folder's state before rank 0 writes to it
    tracker = RunTracker(run_dir, purge_step=plan.purge_step, enabled=ddp.is_main)  # rank 0 writes
    record = RunRecord(tracker, run_dir, plan.previous, plan.epoch, tc.save_checkpoints)
    record.start(cfg.model.name, cfg.dataset.name, cfg.device.name)
    stop = ddp.agreed_stop(GracefulStop().install())  # SIGINT/SIGTERM: finish the step, stop cleanly
    unwritten: list[str] = []  # reports that a full or read-only disk kept from being written
    try:
        with record, oom_hint("setup", "trainer.batch_size", tc.batch_size, record.device):
            seed_everything(cfg.seed, tc.deterministic)
            p = _build(cfg, ddp, record, stop, fresh=plan.checkpoint is None)
            state, start_epoch = _resume(cfg, plan, p)
            record.track(OmegaConf.to_container(cfg.tracker, resolve=True), p.config, str(p.policy.device))

        with record:
            maps = _feature_maps(cfg, p)
            maps(start_epoch - 1)
            if plan.checkpoint is None:
                tracker.add_images("inputs/train_batch", p.train_loader.preview(16).float() / 255.0, 0)
                if tc.save_checkpoints:
                    p.save(0, False, state)  # epoch 0: the state before any step, so even epoch 1 resumes exactly
            record.completed = start_epoch - 1
            outcome = run_epochs(p, OmegaConf.to_object(tc), state, start_epoch)

            steps_per_epoch = trained_batches(len(p.train_loader), tc.accumulate)
            if outcome.kind == "interrupted":
                raise record.interrupted(outcome, stop.signum or 2, steps_per_epoch)
            if outcome.kind == "diverged":
                record.diverged(outcome, steps_per_epoch, cfg.optimizer.lr, tc.grad_clip)
            else:
                with oom_hint("evaluation", "trainer.eval_batch_size", tc.eval_batch_size, record.device), \
                        report_writes(unwritten, "the test report (test_report/, summary.json)"):
                    maps(outcome.epoch)
                    _test_best(p, state, tc.save_checkpoints)
            with report_writes(unwritten, "the fit diagnosis (summary.json, TensorBoard)"):
                _finish(cfg, record, outcome, t_start)
        if unwritten:
            raise record.report_not_written(unwritten, tc.save_checkpoints)
    finally:
        stop.restore()
        record.track_end()  # env's end time; the experiment tracker's last call
        tracker.close()
        ddp.close()
        if claim:
            claim.release()
    return dict(tracker.summary)  # after track_end: what summary.json holds, end time included


# --------------------------------------------------------------------------- set-up
def _check(cfg: DictConfig) -> None:
    """Fail in a second, before torch is imported: missing values, ranges, paths."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} has no value: set it on the command line, e.g. {missing[0]}=<value>")
    validate(cfg)  # ranges, choices and paths (model.checkpoint, resume, dataset.root): cnnlab/config.py


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (CPU and CUDA); optionally force deterministic kernels."""
    import os

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _build(cfg: DictConfig, ddp: Dist, record: RunRecord, stop: Any, fresh: bool = True) -> Parts:
    """Device policy, data, model, optimizer and schedule, in the order that fixes the RNG draws
    (``fresh``: not a resume, whose optimizer and schedule come from the checkpoint)."""
    import torch

    from cnnlab.data import load_dataset
    from cnnlab.data.loader import make_loaders
    from cnnlab.device import resolve_device
    from cnnlab.models.factory import instantiate_model
    from cnnlab.recipes.ema import WeightEma
    from cnnlab.recipes.mix import make_mixer

    tc, dc = cfg.trainer, cfg.dataset
    policy = resolve_device(cfg.device.name, cfg.device.amp, cfg.device.channels_last,
                            cfg.device.compile, local_rank=ddp.local_rank)
    record.update(device=policy.name)

    # ---- data: uint8 splits, decoded once
    data = load_dataset(dc.name, dc.root, dc.download, dc.image_size, dc.in_chans, dc.val_split,
                        dc.test_split, dc.split_seed, dc.memory_budget_mb, dc.limit, loader=dc.loader,
                        imbalance=dc.imbalance)
    log.info("data: %s train %d / val %d / test %d, %d classes, %dx%dx%d", dc.name, len(data.train),
             len(data.val), len(data.test), data.num_classes, data.in_chans, data.image_size, data.image_size)
    record.update(class_names=list(data.classes))
    if len(data.train) < tc.batch_size:
        raise ConfigError(f"trainer.batch_size={tc.batch_size} is larger than the training split "
                          f"({len(data.train)} images): use a smaller batch size")
    # trainer.batch_size is the global batch: each DDP rank takes its share of every step.
    train_loader, val_loader, test_loader = make_loaders(
        data, dc.loader, ddp.local_batch(tc.batch_size), tc.eval_batch_size, list(dc.mean), list(dc.std),
        dict(dc.augment), policy.device, channels_last=policy.channels_last, seed=cfg.seed,
        num_workers=dc.num_workers, rank=ddp.rank, world_size=ddp.world_size, sampler=dc.sampler)
    class_weights = _imbalance(cfg, data, record, policy.device)

    # ---- model
    model = instantiate_model(cfg.model, num_classes=data.num_classes, in_chans=data.in_chans,
                               img_size=data.image_size)
    from cnnlab.models.profile import count_macs, count_params  # timm: imported once data is in

    params, macs = count_params(model), count_macs(model, (data.in_chans, data.image_size, data.image_size))
    record.update(params=params, macs=macs)
    log.info("model: %s, %.2fM params, %.1fM MACs/image", cfg.model.name, params / 1e6, macs / 1e6)
    memory_format = torch.channels_last if policy.channels_last else torch.preserve_format
    model = model.to(policy.device, memory_format=memory_format)
    model = ddp.convert_sync_bn(model, cfg.model.sync_bn, policy.device.type)

    freezer = _freeze(cfg, model, ddp)
    optimizer, scheduler = _optimization(cfg, model, policy, len(train_loader), freezer)
    scaler = torch.amp.GradScaler(policy.device.type, enabled=policy.use_grad_scaler)
    step_model = torch.compile(model) if policy.compile else model
    # DDP: training steps go through the wrapper (gradient all-reduce); evaluation uses
    # step_model (or the EMA's copy), with no collective per batch.
    train_model = ddp.wrap(model, compile=policy.compile) if ddp.enabled else step_model
    if tc.lr_find and fresh:  # Smith's range test, every state restored after it; the schedule on its lr
        from cnnlab.recipes.lr_find import find_lr

        found = find_lr(model, train_model, optimizer, train_loader, policy, lr=float(cfg.optimizer.lr),
                        total_steps=tc.epochs * (len(train_loader) // tc.accumulate), scaler=scaler,
                        accumulate=tc.accumulate, grad_clip=tc.grad_clip, ddp=ddp, out_dir=record.run_dir)
        record.update(lr_find=found)
        optimizer, scheduler = _optimization(cfg, model, policy, len(train_loader), freezer, lr=found["lr"])
    elif tc.lr_find and (record.previous or {}).get("lr_find"):  # a resume keeps the first launch's choice
        record.update(lr_find=record.previous["lr_find"])
    ema = WeightEma(model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
    eval_model = step_model if ema is None else torch.compile(ema.module) if policy.compile else ema.module
    if ema is not None:
        record.update(ema=True)
        log.info("ema: validation and test use the EMA weights (decay %g per step, warmup %s)",
                 cfg.ema.decay, cfg.ema.warmup)
    m = cfg.mix
    mixer = make_mixer(m.mixup_alpha, m.cutmix_alpha, m.prob, m.switch_prob, cfg.loss.label_smoothing,
                       data.num_classes, ddp.local_batch(tc.batch_size))
    return Parts(model, train_model, eval_model, optimizer, scheduler, scaler, policy, ddp, record, stop,
                 train_loader, val_loader, test_loader, OmegaConf.to_container(cfg, resolve=True),
                 list(data.classes), ema, mixer, cfg.loss.label_smoothing, class_weights, freezer,
                 cfg.model.unfreeze_epoch)


def _imbalance(cfg: DictConfig, data: Any, record: RunRecord, device: Any) -> Any:
    """The train split's class counts into the summary when they are uneven; ``loss.class_weights``
    as a (K,) tensor on the device, or None (cnnlab/recipes/imbalance.py)."""
    import torch

    from cnnlab.recipes.imbalance import class_counts, class_weights, is_imbalanced

    counts = class_counts(data.train.y, data.num_classes)
    if is_imbalanced(counts):
        record.update(train_class_counts=counts)
        log.info("data: imbalanced train split, %d to %d images per class", min(counts), max(counts))
    weights = class_weights(OmegaConf.to_container(cfg.loss, resolve=True)["class_weights"], counts)
    if weights is None:
        return None
    log.info("loss: class weights %s", " ".join(f"{w:.3g}" for w in weights))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _freeze(cfg: DictConfig, model: Any, ddp: Dist) -> Any:
    """``model.freeze``: the Freezer that froze the model's backbone or first stages, or None."""
    from cnnlab.recipes.freeze import Freezer, frozen_names

    if cfg.model.freeze == "none":
        return None
    if cfg.model.unfreeze_epoch and ddp.enabled:  # DDP's gradient buckets are fixed when it wraps
        raise ConfigError("model.unfreeze_epoch is not supported under torchrun (DDP fixes the trained "
                          "parameters when it wraps the model): freeze for the whole run, or train on one process")
    names = frozen_names(model, cfg.model.freeze)
    freezer = Freezer()
    freezer.freeze(model, names)
    total = sum(1 for _ in model.parameters())
    log.info("freeze: %s, %d of %d parameter tensors frozen%s", cfg.model.freeze, len(names), total,
             f" until epoch {cfg.model.unfreeze_epoch}" if cfg.model.unfreeze_epoch else "")
    return freezer


def _resume(cfg: DictConfig, plan: Any, p: Parts) -> tuple[LoopState, int]:
    """Load the resumed checkpoint into the parts; return the loop's counters and the first epoch
    (a fresh start: new counters and epoch 1; an auto_resume that starts over drops the dead
    start's metrics rows)."""
    from cnnlab.lifecycle.checkpoint import keep_best_in_step
    from cnnlab.lifecycle.resume import restore_training

    record = p.record
    if plan.checkpoint is None:
        if plan.previous is not None:
            record.tracker.truncate_metrics(0)
        return LoopState(), 1
    source, ck = plan.checkpoint
    if p.freezer is not None and p.unfreeze_epoch and ck["epoch"] >= p.unfreeze_epoch:
        p.freezer.unfreeze(p.optimizer)  # saved in the unfrozen phase: its optimizer has every group
    restore_training(ck, source, p.model, p.optimizer, p.scheduler, p.scaler, p.train_loader,
                     optimizer_name=_optimizer_name(cfg))
    state = LoopState.from_checkpoint(ck)
    if p.ema is not None:
        _load_ema(p.ema, ck, source)
    record.tracker.truncate_metrics(ck["epoch"])
    record.resumed(state, source)
    if cfg.trainer.save_checkpoints and p.ddp.is_main:
        keep_best_in_step(ck, source, record.run_dir / "checkpoints")
    return state, ck["epoch"] + 1


def _optimization(cfg: DictConfig, model: Any, policy: Any, batches: int, freezer: Any = None,
                  lr: float | None = None) -> tuple[Any, Any]:
    """The optimizer and its per-optimizer-step schedule (warm-up: cnnlab/schedulers.py); a bad
    ``_target_`` is one line naming the section and target (cnnlab.errors.construction_errors).
    ``lr``: instead of ``optimizer.lr`` (the range test's choice)."""
    from hydra.utils import instantiate

    from cnnlab.errors import construction_errors
    from cnnlab.schedulers import with_warmup

    tc = cfg.trainer
    with construction_errors("optimizer", cfg.optimizer):
        optimizer = _make_optimizer(cfg.optimizer if lr is None else OmegaConf.merge(cfg.optimizer, {"lr": lr}),
                                    model, policy, freezer)
    steps = batches // tc.accumulate  # optimizer steps an epoch
    if steps == 0:
        raise ConfigError(f"trainer.accumulate={tc.accumulate} is more than the {batches} batches "
                          f"of an epoch: use at most {batches}")
    with construction_errors("scheduler", cfg.scheduler):
        make_schedule = instantiate(_without(cfg.scheduler, "warmup_epochs"))
        scheduler = with_warmup(make_schedule, optimizer, tc.epochs * steps, steps,
                                cfg.scheduler.get("warmup_epochs") or 0.0)
    return optimizer, scheduler


def _load_ema(ema: Any, ck: dict[str, Any], source: Path) -> None:
    """The checkpoint's EMA state, bit for bit; one saved with ema.enabled=false starts the EMA
    from its weights (a resume that turned EMA on, or a best.pt from before it)."""
    if "ema" not in ck:
        log.warning("%s holds no EMA weights (saved with ema.enabled=false): the EMA starts from its "
                    "weights", source)
    ema.load_state_dict(ck.get("ema") or {"weights": ck["model"], "updates": 0})


def _make_optimizer(opt_cfg: DictConfig, model, policy, freezer=None):
    """Instantiate the partial optimizer, fused where torch has the kernel; norm and bias parameters
    without weight decay with ``optimizer.no_weight_decay_norm_bias`` (cnnlab/recipes/optim.py)."""
    import inspect

    from hydra.utils import instantiate

    from cnnlab.recipes.optim import param_groups

    make = instantiate(_without(opt_cfg, "no_weight_decay_norm_bias", "head_lr_mult", "layer_decay"))
    # fused unless the config chose: optimizer.fused=false, or foreach (torch refuses both at once)
    chosen = opt_cfg.get("fused") is not None or opt_cfg.get("foreach")
    fused = policy.fused_optimizer and not chosen and "fused" in inspect.signature(make.func).parameters
    params = param_groups(model, float(opt_cfg.get("weight_decay") or 0.0),
                          bool(opt_cfg.get("no_weight_decay_norm_bias") or False), freezer, float(opt_cfg.lr),
                          float(opt_cfg.get("head_lr_mult") or 1.0), opt_cfg.get("layer_decay"))
    return make(params, **({"fused": True} if fused else {}))


def _without(node: DictConfig, *keys: str) -> DictConfig:
    """``node`` less ``keys``: the recipe keys that are not the target's keyword arguments."""
    return OmegaConf.masked_copy(node, [k for k in node if k not in keys])


def _optimizer_name(cfg: DictConfig) -> str:
    return str(cfg.optimizer._target_).rsplit(".", 1)[-1]


def _feature_maps(cfg: DictConfig, p: Parts) -> Callable[[int], None]:
    """``maps(step)``: the course's conv/pool images in TensorBoard, at the start and the end."""
    tracker = p.record.tracker
    if not (cfg.trainer.log_feature_maps and tracker.enabled):
        return lambda step: None
    from cnnlab.lessons.featuremaps import log_feature_maps
    from cnnlab.lifecycle.checkpoint import unwrap

    images = p.train_loader.preview(8).float() / 255.0  # the same 8 images each time, in [0, 1]
    mean, std = list(cfg.dataset.mean), list(cfg.dataset.std)
    return lambda step: log_feature_maps(unwrap(p.model), images, tracker, step, mean=mean, std=std)


# --------------------------------------------------------------------------- the end
def _test_best(p: Parts, state: LoopState, save_checkpoints: bool) -> None:
    """Evaluate the best epoch's weights (best.pt; its EMA weights with ema.enabled) on the test
    split: the test loss and accuracy and the per-class report come from the same logits."""
    from cnnlab.evaluation.report import test_report
    from cnnlab.lifecycle.checkpoint import load_checkpoint, unwrap

    record = p.record
    best = record.run_dir / "checkpoints" / "best.pt"
    if save_checkpoints and p.ddp.is_main and best.exists():
        ck = load_checkpoint(best, p.policy.device)
        unwrap(p.model).load_state_dict(ck["model"])
        if p.ema is not None:
            _load_ema(p.ema, ck, best)
    p.ddp.sync_buffers(p.model, weights=True)  # DDP: every rank tests rank 0's best weights
    if p.ema is not None:
        p.ddp.sync_buffers(p.ema.module, weights=True)
    report = test_report(p.eval_model, p.test_loader, p.policy, p.class_names, record.run_dir / "test_report",
                         tracker=record.tracker, step=state.best_epoch, ddp=p.ddp)
    record.completed_test(state.best_epoch, **report)
    if "train_class_counts" in record.summary:  # an imbalanced train split: accuracy hides the small classes
        from cnnlab.recipes.imbalance import worst_class

        record.update(test_worst_class=worst_class(report["test_per_class"]))
        log.info("test macro-F1 %.4f, worst class %s", report["test_macro_f1"] or 0.0,
                 record.summary["test_worst_class"])


def _finish(cfg: DictConfig, record: RunRecord, outcome: Outcome, t_start: float) -> None:
    """The fit diagnosis (under/overfitting from the curves) and TensorBoard's HParams row."""
    from cnnlab.reporting.fit import diagnose, fit_text

    tracker = record.tracker
    fit = diagnose(tracker.read_metrics(), status=record.summary["status"], **OmegaConf.to_container(cfg.fit))
    if fit is not None and "test_worst_class" in record.summary:  # imbalanced: beside accuracy
        fit["imbalanced"] = {"test_macro_f1": record.summary.get("test_macro_f1"),
                             "worst_class": record.summary["test_worst_class"]}
    record.update(fit=fit, wall_seconds=time.perf_counter() - t_start)
    if fit is not None:
        log.info("fit: %s", fit_text(fit))
        tracker.add_text("fit", fit_text(fit, markdown=True), max(outcome.epoch, 0))
    # The HParams tab: this run's settings against its results, so a sweep folder opened
    # in TensorBoard compares its jobs in one table.
    tc = cfg.trainer
    tracker.log_hparams({
        "model": cfg.model.name, "dataset": cfg.dataset.name, "optimizer": _optimizer_name(cfg).lower(),
        "lr": float((record.summary.get("lr_find") or {}).get("lr", cfg.optimizer.lr)),  # lr_find's choice "weight_decay": float(cfg.optimizer.get("weight_decay") or 0.0),
        "batch_size": int(tc.batch_size), "epochs": int(tc.epochs), "seed": int(cfg.seed),
        "status": record.summary["status"],
    })
