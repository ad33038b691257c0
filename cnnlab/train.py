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
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import validate
from cnnlab.errors import CnnlabError, ConfigError

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
    seen = 0
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
        if progress is not None:
            progress.update(1)
        if should_stop():
            break
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "first_bad_step": first_bad_step}


def evaluate(model, loader, policy) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) over a split; one host read at the end."""
    import torch
    import torch.nn.functional as F

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


def rng_state(loader) -> dict[str, Any]:
    """Every RNG a resumed run needs to continue bit for bit."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": loader.generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], loader) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader.generator.set_state(state["data"])


def _make_optimizer(opt_cfg: DictConfig, model, policy):
    """Instantiate the partial optimizer; use the fused CUDA kernel where torch has one."""
    import inspect

    from hydra.utils import instantiate

    make = instantiate(opt_cfg)
    kwargs = {}
    if policy.device.type == "cuda" and "fused" in inspect.signature(make.func).parameters:
        kwargs["fused"] = True
    return make(model.parameters(), **kwargs)


def _resolve_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: ``resume=`` (folder or file), or auto_resume's last.pt."""
    from cnnlab.errors import CheckpointError

    if cfg.resume:
        p = Path(cfg.resume)
        if p.is_dir():
            p = p / "checkpoints" / "last.pt"
        if not p.exists():
            raise CheckpointError(f"resume={cfg.resume!r}: no such checkpoint or run folder with checkpoints/last.pt")
        return p
    last = run_dir / "checkpoints" / "last.pt"
    if cfg.trainer.auto_resume and last.exists():
        return last
    return None


# --------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured model; write the run folder; return the summary dict."""
    validate(cfg)
    import torch
    from hydra.utils import instantiate

    from cnnlab.checkpoint import load_checkpoint, save_checkpoint, unwrap
    from cnnlab.data import load_dataset
    from cnnlab.data.loader import Augment, TensorLoader
    from cnnlab.device import resolve_device
    from cnnlab.models.profile import count_macs, count_params
    from cnnlab.track import RunTracker

    run_dir = Path(cfg.paths.output_dir)
    t_start = time.perf_counter()
    tc, dc = cfg.trainer, cfg.dataset
    resume_from = _resolve_resume(cfg, run_dir)
    if resume_from is None and (run_dir / "summary.json").exists():
        raise ConfigError(f"run folder {str(run_dir)!r} already holds a run; use resume={str(run_dir)!r} "
                          "or trainer.auto_resume=true to continue it, or pick a new folder")

    tracker = RunTracker(run_dir)
    tracker.update_summary(
        model=cfg.model.name, dataset=dc.name, device=cfg.device.name, status="running", error=None,
        params=None, macs=None, epochs_completed=0, best_val_acc=None, best_epoch=None, test_acc=None,
        train_seconds=0.0, images_per_second=None, fit=None, run_dir=str(run_dir),
    )
    try:
        seed_everything(cfg.seed, tc.deterministic)
        policy = resolve_device(cfg.device.name, cfg.device.amp, cfg.device.channels_last,
                                cfg.device.compile)
        tracker.update_summary(device=policy.name)

        # ---- data: uint8 splits, decoded once ------------------------------------------
        data = load_dataset(dc.name, dc.root, dc.download, dc.image_size, dc.in_chans, dc.val_split,
                            dc.test_split, dc.split_seed, dc.memory_budget_mb, dc.limit)
        log.info("data: %s train %d / val %d / test %d, %d classes, %dx%dx%d", dc.name,
                 len(data.train), len(data.val), len(data.test), data.num_classes, data.in_chans,
                 data.image_size, data.image_size)
        if len(data.train) < tc.batch_size:
            raise ConfigError(f"trainer.batch_size={tc.batch_size} is larger than the training split "
                              f"({len(data.train)} images): use a smaller batch size")
        common = dict(mean=list(dc.mean), std=list(dc.std), device=policy.device,
                      channels_last=policy.channels_last)
        train_loader = TensorLoader(data.train.x, data.train.y, tc.batch_size, train=True,
                                    augment=Augment(**dc.augment), seed=cfg.seed, **common)
        val_loader = TensorLoader(data.val.x, data.val.y, tc.eval_batch_size, **common)
        test_loader = TensorLoader(data.test.x, data.test.y, tc.eval_batch_size, **common)

        # ---- model, optimizer, schedule ------------------------------------------------
        model = instantiate(cfg.model, num_classes=data.num_classes, in_chans=data.in_chans,
                            img_size=data.image_size)
        params = count_params(model)
        macs = count_macs(model, (data.in_chans, data.image_size, data.image_size))
        tracker.update_summary(params=params, macs=macs)
        log.info("model: %s, %.2fM params, %.1fM MACs/image", cfg.model.name, params / 1e6, macs / 1e6)
        memory_format = torch.channels_last if policy.channels_last else torch.preserve_format
        model = model.to(policy.device, memory_format=memory_format)
        optimizer = _make_optimizer(cfg.optimizer, model, policy)
        steps_per_epoch = len(train_loader)
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=tc.epochs * steps_per_epoch,
                                               steps_per_epoch=steps_per_epoch)
        scaler = torch.amp.GradScaler(policy.device.type) if policy.use_grad_scaler else None
        step_model = torch.compile(model) if policy.compile else model

        # ---- resume --------------------------------------------------------------------
        start_epoch, best_val_acc, best_epoch, train_seconds, images_seen = 1, -1.0, 0, 0.0, 0
        if resume_from is not None:
            from cnnlab.checkpoint import check_compatible

            ck = load_checkpoint(resume_from, map_location=policy.device)
            check_compatible(model, ck["model"], f"checkpoint {str(resume_from)!r}")
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            set_rng_state(ck["rng"], train_loader)
            start_epoch = ck["epoch"] + 1
            best_val_acc, best_epoch = ck["best_val_acc"], ck["best_epoch"]
            train_seconds, images_seen = ck.get("train_seconds", 0.0), ck.get("images_seen", 0)
            tracker.truncate_metrics(ck["epoch"])
            log.info("resumed from %s at epoch %d", resume_from, ck["epoch"])

        def checkpoint_state(epoch: int) -> dict[str, Any]:
            return {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "best_val_acc": best_val_acc, "best_epoch": best_epoch,
                "train_seconds": train_seconds, "images_seen": images_seen,
                "rng": rng_state(train_loader), "model_name": cfg.model.name,
                "config": OmegaConf.to_container(cfg, resolve=True),
            }

        # ---- the epoch loop ------------------------------------------------------------
        from cnnlab.progress import epoch_progress

        ckpt_dir = run_dir / "checkpoints"
        tracker.add_images("inputs/train_batch", _preview(train_loader), 0)
        epochs_since_best, best_val_loss = 0, math.inf
        epoch = start_epoch - 1
        for epoch in range(start_epoch, tc.epochs + 1):
            t0 = time.perf_counter()
            with epoch_progress(epoch, tc.epochs, steps_per_epoch, tc.progress) as bar:
                acc = train_one_epoch(step_model, train_loader, optimizer, scheduler, policy,
                                      grad_clip=tc.grad_clip, scaler=scaler, progress=bar)
            # The one host read of the training pass:
            train_loss = (acc["loss_sum"] / max(acc["seen"], 1)).item()
            train_acc = acc["correct"].item() / max(acc["seen"], 1)
            train_time = time.perf_counter() - t0
            train_seconds += train_time
            images_seen += acc["seen"]
            bad_step = int(acc["first_bad_step"].item())
            if bad_step >= 0:
                tracker.update_summary(status="diverged", epochs_completed=epoch - 1,
                                       error=f"loss became NaN/inf at epoch {epoch}, step {bad_step}: "
                                             f"lower optimizer.lr (now {cfg.optimizer.lr}) or set trainer.grad_clip")
                log.error("diverged: %s", tracker.summary["error"])
                break

            val_loss, val_acc = evaluate(step_model, val_loader, policy)
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
                   "epoch_seconds": time.perf_counter() - t0}
            tracker.log_epoch(row)
            log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs",
                     epoch, tc.epochs, train_loss, train_acc, val_loss, val_acc, row["epoch_seconds"])

            improved = val_acc > best_val_acc
            if improved:
                best_val_acc, best_epoch = val_acc, epoch
            if tc.save_checkpoints:
                state = checkpoint_state(epoch)
                save_checkpoint(state, ckpt_dir / "last.pt")
                if improved:
                    save_checkpoint(state, ckpt_dir / "best.pt")
            tracker.update_summary(epochs_completed=epoch, best_val_acc=best_val_acc,
                                   best_epoch=best_epoch, train_seconds=train_seconds,
                                   images_per_second=images_seen / max(train_seconds, 1e-9))

            # Early stopping on the chosen val metric, with a patience in epochs.
            if tc.early_stop_patience:
                better = (val_loss < best_val_loss) if tc.early_stop_metric == "val_loss" else improved
                best_val_loss = min(best_val_loss, val_loss)
                epochs_since_best = 0 if better else epochs_since_best + 1
                if epochs_since_best >= tc.early_stop_patience:
                    log.info("early stop: no %s improvement for %d epochs", tc.early_stop_metric,
                             epochs_since_best)
                    break

        # ---- test the best checkpoint --------------------------------------------------
        if tracker.summary["status"] == "running":
            best_path = ckpt_dir / "best.pt"
            if tc.save_checkpoints and best_path.exists():
                unwrap(model).load_state_dict(load_checkpoint(best_path, policy.device)["model"])
            test_loss, test_acc = evaluate(step_model, test_loader, policy)
            tracker.update_summary(status="completed", test_acc=test_acc, test_loss=test_loss)
            log.info("test (best epoch %d): loss %.4f acc %.4f", best_epoch, test_loss, test_acc)
        tracker.update_summary(wall_seconds=time.perf_counter() - t_start)
        return dict(tracker.summary)
    except KeyboardInterrupt:
        tracker.update_summary(status="interrupted", error="interrupted by the user")
        raise
    except CnnlabError as e:
        tracker.update_summary(status="failed", error=str(e))
        raise
    except Exception as e:
        tracker.update_summary(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        tracker.close()


def _preview(loader, n: int = 16):
    """The first training images of a batch, un-normalised to [0, 1], for TensorBoard."""
    x = loader.x[:n].float() / 255.0
    return x.cpu()
