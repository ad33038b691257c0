"""``train(cfg)``: the composition root and the course's two loops.

Read it top to bottom: ``train`` builds the data, the model, the optimizer, the
schedule and the device policy from the config, then runs

    for epoch in 1..E:
        train_one_epoch   (zero_grad, forward, backward, step over the train split)
        evaluate          (forward only, over the val split)
        log, checkpoint, maybe stop early

and finally evaluates the best checkpoint on the test split. This is the only
module that reads the DictConfig; everything it calls takes plain arguments.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import validate
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError, DeviceError
from cnnlab.lifecycle.resume import resume_config
from cnnlab.lifecycle.signals import GracefulStop, Interrupted, signal_name
from cnnlab.lifecycle.state import (
    LoopState,
    check_resume_fits,
    load_resume,
    read_summary,
    restore_training,
    rng_state,
)

log = logging.getLogger("cnnlab")


# --------------------------------------------------------------------------- passes
def train_one_epoch(model, loader, optimizer, scheduler, policy, grad_clip=None, scaler=None,
                    progress=None, should_stop=lambda: False) -> dict[str, Any]:
    """One pass over the training split. Returns device tensors, read once by the caller.

    Loss and accuracy are summed on the device: no ``.item()`` per step, so the
    GPU never waits for the host. ``first_bad_step`` records (also on the device)
    the first step whose loss was NaN or inf, for the divergence report.
    """
    import torch
    import torch.nn.functional as F

    from cnnlab.models.outputs import split_output

    model.train()
    dev = policy.device
    loss_sum = torch.zeros((), device=dev)   # sum over samples of the main CE loss
    correct = torch.zeros((), device=dev, dtype=torch.long)
    first_bad_step = torch.full((), -1, device=dev, dtype=torch.long)
    seen = steps = 0
    autocast = (torch.autocast(dev.type, dtype=policy.amp_dtype) if policy.amp_dtype
                else nullcontext())
    for step, (x, y) in enumerate(loader):
        # x: (B, C, H, W) float, normalised; y: (B,) int64
        with autocast:
            logits, extra = split_output(model(x))
            loss = F.cross_entropy(logits, y)  # mean over the batch
            # Extra loss terms (e.g. GoogLeNet's auxiliary heads), weighted by the model.
            total = loss + sum(w * F.cross_entropy(aux, y) for w, aux in extra)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        scheduler.step()

        b = y.shape[0]
        loss_d = loss.detach().float()
        loss_sum += loss_d * b
        correct += (logits.detach().argmax(1) == y).sum()
        bad_now = ~torch.isfinite(loss_d)
        first_bad_step = torch.where(bad_now & (first_bad_step < 0), step, first_bad_step)
        seen += b
        steps += 1
        if progress is not None:
            progress.update(1)
        if should_stop():  # a plain bool (a signal's flag): no device sync
            break
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "steps": steps,
            "first_bad_step": first_bad_step}


def evaluate(model, loader, policy) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) over a split; one host read at the end."""
    import torch
    import torch.nn.functional as F

    from cnnlab.dist import reduce_sums
    from cnnlab.models.outputs import split_output

    model.eval()
    dev = policy.device
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    n = 0
    autocast = (torch.autocast(dev.type, dtype=policy.amp_dtype) if policy.amp_dtype
                else nullcontext())
    with torch.no_grad(), autocast:
        for x, y in loader:
            logits, _ = split_output(model(x))
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
    loss_sum, correct, n = reduce_sums(loss_sum, correct, n)  # DDP: the sums over every rank's shard
    if n == 0:
        return float("nan"), float("nan")
    return (loss_sum / n).item(), correct.item() / n


# --------------------------------------------------------------------------- set-up
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


def _make_optimizer(opt_cfg: DictConfig, model, policy):
    """Instantiate the partial optimizer; use the fused CUDA kernel where torch has one."""
    import inspect

    from hydra.utils import instantiate

    make = instantiate(opt_cfg)
    kwargs = {}
    if policy.device.type == "cuda" and "fused" in inspect.signature(make.func).parameters:
        kwargs["fused"] = True
    return make(model.parameters(), **kwargs)


def _preflight(cfg: DictConfig) -> None:
    """Path checks that need no torch: fail in a second, not after the imports and the data."""
    weights = cfg.model.get("checkpoint")
    if weights and not Path(weights).is_file():
        what = "is a folder, not a weights file" if Path(weights).is_dir() else "no such file"
        raise CheckpointError(f"model.checkpoint={weights!r}: {what}")


def _build_model(cfg: DictConfig, **kwargs: Any):
    """``instantiate(cfg.model)``, re-raising a user error (bad weights file, unknown arch) as itself.

    Hydra wraps whatever the target raises in an InstantiationException whose text is
    a repr and a traceback hint; ours already say what is wrong in one line.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.model, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, CnnlabError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _all_finite(model) -> bool:
    """Every parameter finite: one host read, once per epoch, before a checkpoint is written."""
    import torch

    flags = [p.detach().isfinite().all() for p in model.parameters()]
    return bool(torch.stack(flags).all().item()) if flags else True


# --------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured model; write the run folder; return the summary dict.

    Raises :class:`cnnlab.lifecycle.signals.Interrupted` after a SIGINT/SIGTERM (the run folder
    then says ``interrupted`` and last.pt holds the last completed epoch), and a
    CnnlabError for a user error (``failed``). A NaN/inf loss returns the summary
    with status ``diverged``.
    """
    cfg = resume_config(cfg)  # under Hydra: the resumed run's own overrides + this command's
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} has no value: set it on the command line, e.g. {missing[0]}=<value>")
    validate(cfg)
    _preflight(cfg)
    import torch
    from hydra.utils import instantiate

    from cnnlab.data import load_dataset
    from cnnlab.data.loader import make_loaders
    from cnnlab.device import resolve_device
    from cnnlab.dist import setup as setup_distributed
    from cnnlab.lifecycle.checkpoint import load_checkpoint, save_checkpoint, unwrap
    from cnnlab.reporting.track import RunTracker

    # Under torchrun: join the process group; every rank takes rank 0's run folder
    # (ranks > 0 composed a throwaway one). Single-process: a no-op. cnnlab/dist.py.
    ddp = setup_distributed(cfg.device.name)
    run_dir = ddp.share_path(Path(cfg.paths.output_dir))
    t_start = time.perf_counter()
    tc, dc = cfg.trainer, cfg.dataset
    # Everything about a resume is checked before the run folder is touched, so a
    # mistyped command cannot mark a finished run failed.
    resumed = load_resume(cfg.resume, tc.auto_resume, run_dir)  # (path, checkpoint on the CPU) or None
    previous = read_summary(run_dir)
    if resumed is None and previous is not None:
        if not (tc.auto_resume and previous.get("status") != "completed"):
            raise ConfigError(f"run folder {str(run_dir)!r} already holds a run; use resume={str(run_dir)!r} "
                              "or trainer.auto_resume=true to continue it, or pick a new folder")
        log.warning("auto_resume: %s holds no checkpoint yet (the run died before its first one): "
                    "starting it over", run_dir)
    if resumed is not None:
        check_resume_fits(OmegaConf.to_container(cfg, resolve=True), *resumed)
    resume_epoch = resumed[1]["epoch"] if resumed else 0
    # TensorBoard: hide what a killed run logged after the epoch we resume from.
    purge = None if previous is None else resume_epoch + 1 if resumed else 0
    ddp.barrier()  # every rank has read the folder's state before rank 0 writes to it
    tracker = RunTracker(run_dir, purge_step=purge, enabled=ddp.is_main)  # only rank 0 writes
    tracker.update_summary(
        model=cfg.model.name, dataset=dc.name, device=cfg.device.name, status="running", error=None,
        params=None, macs=None, epochs_completed=0, best_val_acc=None, best_epoch=None, test_acc=None,
        train_seconds=0.0, images_per_second=None, fit=None, run_dir=str(run_dir),
        resumed_at_epochs=((previous or {}).get("resumed_at_epochs") or []) + ([resume_epoch] if resumed else []),
    )
    stop = GracefulStop().install()  # SIGINT/SIGTERM: finish the step, stop cleanly
    stop = ddp.agreed_stop(stop)  # DDP: every rank stops at the same step
    resume_checked = resumed is None
    last_saved = resume_epoch if resumed else None  # the epoch last.pt holds
    phase = "setup"
    try:
        seed_everything(cfg.seed, tc.deterministic)
        policy = resolve_device(cfg.device.name, cfg.device.amp, cfg.device.channels_last,
                                cfg.device.compile, local_rank=ddp.local_rank)
        tracker.update_summary(device=policy.name)

        # ---- data: uint8 splits, decoded once ------------------------------------------
        data = load_dataset(dc.name, dc.root, dc.download, dc.image_size, dc.in_chans, dc.val_split,
                            dc.test_split, dc.split_seed, dc.memory_budget_mb, dc.limit,
                            loader=dc.loader)
        log.info("data: %s train %d / val %d / test %d, %d classes, %dx%dx%d", dc.name,
                 len(data.train), len(data.val), len(data.test), data.num_classes, data.in_chans,
                 data.image_size, data.image_size)
        if len(data.train) < tc.batch_size:
            raise ConfigError(f"trainer.batch_size={tc.batch_size} is larger than the training split "
                              f"({len(data.train)} images): use a smaller batch size")
        # trainer.batch_size is the global batch: each DDP rank takes its share of every step.
        train_loader, val_loader, test_loader = make_loaders(
            data, dc.loader, ddp.local_batch(tc.batch_size), tc.eval_batch_size, list(dc.mean), list(dc.std),
            dict(dc.augment), policy.device, channels_last=policy.channels_last, seed=cfg.seed,
            num_workers=dc.num_workers, rank=ddp.rank, world_size=ddp.world_size)

        # ---- model, optimizer, schedule ------------------------------------------------
        model = _build_model(cfg, num_classes=data.num_classes, in_chans=data.in_chans,
                             img_size=data.image_size)
        from cnnlab.models.profile import count_macs, count_params  # timm: imported once data is in

        params = count_params(model)
        macs = count_macs(model, (data.in_chans, data.image_size, data.image_size))
        tracker.update_summary(params=params, macs=macs)
        log.info("model: %s, %.2fM params, %.1fM MACs/image", cfg.model.name, params / 1e6, macs / 1e6)
        memory_format = torch.channels_last if policy.channels_last else torch.preserve_format
        model = model.to(policy.device, memory_format=memory_format)
        model = ddp.convert_sync_bn(model, cfg.model.sync_bn, policy.device.type)
        optimizer = _make_optimizer(cfg.optimizer, model, policy)
        steps_per_epoch = len(train_loader)
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=tc.epochs * steps_per_epoch,
                                               steps_per_epoch=steps_per_epoch)
        scaler = torch.amp.GradScaler(policy.device.type) if policy.use_grad_scaler else None
        step_model = torch.compile(model) if policy.compile else model
        # DDP: training steps go through the wrapper (gradient all-reduce); evaluation uses
        # step_model, with no collective per batch.
        train_model = ddp.wrap(model, compile=policy.compile) if ddp.enabled else step_model

        # ---- resume --------------------------------------------------------------------
        # The loop's counters (best epoch, time, early stopping), saved with every checkpoint.
        state, start_epoch = LoopState(), 1
        if resumed is not None:
            resume_from, ck = resumed
            state = restore_training(ck, resume_from, model, optimizer, scheduler, scaler, train_loader,
                                     optimizer_name=cfg.optimizer._target_.rsplit(".", 1)[-1])
            start_epoch = ck["epoch"] + 1
            tracker.truncate_metrics(ck["epoch"])
            resume_checked = True
            tracker.update_summary(epochs_completed=ck["epoch"], best_val_acc=state.best_val_acc,
                                   best_epoch=state.best_epoch, train_seconds=state.train_seconds)
            log.info("resumed from %s at epoch %d", resume_from, ck["epoch"])
            if tc.save_checkpoints and ddp.is_main and ck["best_epoch"] == ck["epoch"] and resume_from.name != "best.pt":
                # This checkpoint is the best epoch's: make sure best.pt holds it too (a kill
                # between the two writes, or a checkpoint brought from elsewhere), so the
                # final test uses the same weights as an uninterrupted run.
                save_checkpoint(ck, run_dir / "checkpoints" / "best.pt")
        elif previous is not None:
            tracker.truncate_metrics(0)  # auto_resume starting over: drop a dead start's rows

        def checkpoint_state(epoch: int) -> dict[str, Any]:
            return {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, **state.to_checkpoint(), "rng": rng_state(train_loader),
                "model_name": cfg.model.name, "config": OmegaConf.to_container(cfg, resolve=True),
            }

        # ---- the epoch loop ------------------------------------------------------------
        from cnnlab.progress import epoch_progress

        ckpt_dir = run_dir / "checkpoints"
        # Feature maps (the course's conv/pool images) at the start and the end of training.
        fm_images = _preview(train_loader, 8) if tc.log_feature_maps and tracker.enabled else None
        if fm_images is not None:
            from cnnlab.lessons.featuremaps import log_feature_maps

            log_feature_maps(unwrap(model), fm_images, tracker, start_epoch - 1, mean=list(dc.mean),
                             std=list(dc.std))
        if resumed is None:
            tracker.add_images("inputs/train_batch", _preview(train_loader), 0)
            if tc.save_checkpoints:
                # Epoch 0: the state before any step, so even a run stopped in its first
                # epoch resumes exactly (and auto_resume has something to find).
                if ddp.is_main:
                    save_checkpoint(checkpoint_state(0), ckpt_dir / "last.pt")
                last_saved = 0
        epoch = completed = start_epoch - 1
        stopped_at = None  # (epoch, steps done) when a signal ended an epoch early
        for epoch in range(start_epoch, tc.epochs + 1):
            if stop.requested:
                break
            t0 = time.perf_counter()
            phase = "training"
            mode = tc.progress if ddp.is_main else "log"  # DDP: one progress bar, rank 0's
            with epoch_progress(epoch, tc.epochs, steps_per_epoch, mode) as bar, ddp.guard():
                acc = train_one_epoch(train_model, train_loader, optimizer, scheduler, policy,
                                      grad_clip=tc.grad_clip, scaler=scaler, progress=bar,
                                      should_stop=stop.poll)
            acc = ddp.reduce_train(acc)  # DDP: the sums over every rank
            stop.sync()  # DDP: agree at each epoch's end
            if stop.requested and acc["steps"] < steps_per_epoch:
                # A partial epoch is not kept: last.pt holds the last completed epoch,
                # so the resumed run redoes this one from its start, exactly.
                stopped_at = (epoch, acc["steps"])
                break
            # The one host read of the training pass:
            train_loss = (acc["loss_sum"] / max(acc["seen"], 1)).item()
            train_acc = acc["correct"].item() / max(acc["seen"], 1)
            train_time = time.perf_counter() - t0
            state.train_seconds += train_time
            state.images_seen += acc["seen"]
            bad_step = int(acc["first_bad_step"].item())
            if bad_step >= 0 or not _all_finite(model):
                # Stop before anything is saved: last.pt and best.pt keep the last good epoch.
                where = (f"at epoch {epoch}, step {bad_step + 1} of {steps_per_epoch}" if bad_step >= 0
                         else f"in the weights after epoch {epoch}")
                kept = f"; checkpoints/last.pt keeps epoch {last_saved}" if last_saved is not None else ""
                clip = (f"lower trainer.grad_clip (now {tc.grad_clip})" if tc.grad_clip
                        else "set trainer.grad_clip=1.0")
                tracker.update_summary(status="diverged", epochs_completed=epoch - 1,
                                       error=f"loss became NaN/inf {where}: lower optimizer.lr (now "
                                             f"{cfg.optimizer.lr}, try {cfg.optimizer.lr / 10:g}) or {clip}{kept}")
                log.error("diverged: %s", tracker.summary["error"])
                break

            phase = "evaluation"
            ddp.sync_buffers(model)  # DDP: evaluate (and save) rank 0's BatchNorm statistics
            val_loss, val_acc = evaluate(step_model, val_loader, policy)
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
                   "epoch_seconds": time.perf_counter() - t0}
            tracker.log_epoch(row)
            log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs",
                     epoch, tc.epochs, train_loss, train_acc, val_loss, val_acc, row["epoch_seconds"])

            improved = val_acc > state.best_val_acc
            if improved:
                state.best_val_acc, state.best_epoch = val_acc, epoch
            # Early stopping's counters are updated before the checkpoint, which holds them.
            early_stop = False
            if tc.early_stop_patience:
                better = (val_loss < state.best_val_loss) if tc.early_stop_metric == "val_loss" else improved
                state.best_val_loss = min(state.best_val_loss, val_loss)
                state.epochs_since_best = 0 if better else state.epochs_since_best + 1
                early_stop = state.epochs_since_best >= tc.early_stop_patience
            if tc.save_checkpoints:
                if ddp.is_main:  # the ranks hold the same weights: one writer
                    ck = checkpoint_state(epoch)
                    # best.pt first: a kill between the two writes then leaves last.pt an
                    # epoch behind (redone on resume), never a best.pt older than last.pt says.
                    if improved:
                        save_checkpoint(ck, ckpt_dir / "best.pt")
                    save_checkpoint(ck, ckpt_dir / "last.pt")
                last_saved = epoch
            tracker.update_summary(epochs_completed=epoch, best_val_acc=state.best_val_acc,
                                   best_epoch=state.best_epoch, train_seconds=state.train_seconds,
                                   images_per_second=state.images_seen / max(state.train_seconds, 1e-9))

            completed = epoch
            if early_stop:
                log.info("early stop: no %s improvement for %d epochs", tc.early_stop_metric,
                         state.epochs_since_best)
                break

        if stop.requested:
            name = signal_name(stop.signum or 2)
            where = (f"during epoch {stopped_at[0]} after step {stopped_at[1]} of {steps_per_epoch} (that "
                     "partial epoch is not kept)" if stopped_at else f"after epoch {completed}")
            kept = (f"checkpoints/last.pt holds epoch {last_saved}" if last_saved is not None
                    else "no checkpoint was saved (trainer.save_checkpoints=false)")
            msg = f"{name} {where}: {kept}; continue with resume={str(run_dir)!r}"
            tracker.update_summary(status="interrupted", error=msg)
            log.warning("interrupted: %s", msg)
            raise Interrupted(stop.signum or 2, msg)

        if fm_images is not None and tracker.summary["status"] == "running":
            log_feature_maps(unwrap(model), fm_images, tracker, epoch, mean=list(dc.mean),
                             std=list(dc.std))

        # ---- test the best checkpoint --------------------------------------------------
        if tracker.summary["status"] == "running":
            best_path = ckpt_dir / "best.pt"
            if tc.save_checkpoints and ddp.is_main and best_path.exists():
                unwrap(model).load_state_dict(load_checkpoint(best_path, policy.device)["model"])
            ddp.broadcast_module(model)  # DDP: every rank tests rank 0's best weights
            phase = "evaluation"
            test_loss, test_acc = evaluate(step_model, test_loader, policy)
            tracker.update_summary(status="completed", test_acc=test_acc, test_loss=test_loss)
            log.info("test (best epoch %d): loss %.4f acc %.4f", state.best_epoch, test_loss, test_acc)

        # ---- the fit diagnosis: under/overfitting from the metric curves -----------------
        from cnnlab.reporting.fit import diagnose, fit_text

        fit = diagnose(tracker.read_metrics(), status=tracker.summary["status"],
                       **OmegaConf.to_container(cfg.fit))
        tracker.update_summary(fit=fit, wall_seconds=time.perf_counter() - t_start)
        if fit is not None:
            log.info("fit: %s", fit_text(fit))
            tracker.add_text("fit", fit_text(fit, markdown=True), max(epoch, 0))
        # TensorBoard's HParams tab: this run's settings against its results, so a sweep
        # folder opened in TensorBoard compares its jobs in one table.
        tracker.log_hparams({
            "model": cfg.model.name, "dataset": dc.name,
            "optimizer": str(cfg.optimizer._target_).rsplit(".", 1)[-1].lower(),
            "lr": float(cfg.optimizer.lr), "weight_decay": float(cfg.optimizer.get("weight_decay") or 0.0),
            "batch_size": int(tc.batch_size), "epochs": int(tc.epochs), "seed": int(cfg.seed),
            "status": tracker.summary["status"],
        })
        return dict(tracker.summary)
    except KeyboardInterrupt as e:
        if tracker.summary.get("status") != "interrupted":  # a second signal, or a bare Ctrl-C
            kept = f"checkpoints/last.pt holds epoch {last_saved}" if last_saved is not None else "no checkpoint"
            tracker.update_summary(status="interrupted",
                                   error=f"{str(e) or 'interrupted by the user'}: {kept}; continue with "
                                         f"resume={str(run_dir)!r}")
        raise
    except CnnlabError as e:
        if not resume_checked and previous is not None:
            # The resume did not fit (e.g. another model's weights): the run it named stays as it was.
            tracker.summary = dict(previous)
            tracker.update_summary()
        else:
            tracker.update_summary(status="failed", error=str(e))
        raise
    except Exception as e:
        if not _is_oom(e):
            tracker.update_summary(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        batch = (f"trainer.batch_size={cfg.trainer.batch_size}" if phase != "evaluation"
                 else f"trainer.eval_batch_size={cfg.trainer.eval_batch_size}")
        half = max(1, (cfg.trainer.batch_size if phase != "evaluation" else cfg.trainer.eval_batch_size) // 2)
        err = DeviceError(
            f"out of memory on {tracker.summary.get('device')} during {phase} with {batch}: try "
            f"{batch.split('=')[0]}={half}, device.amp=bf16 or device.channels_last=true")
        tracker.update_summary(status="failed", error=str(err))
        e.__traceback__ = None  # drop the frames that hold the device tensors
        raise err from None
    finally:
        stop.restore()
        tracker.close()
        ddp.close()


def _preview(loader, n: int = 16):
    """The first training images of a batch, un-normalised to [0, 1], for TensorBoard."""
    return loader.preview(n).float() / 255.0
