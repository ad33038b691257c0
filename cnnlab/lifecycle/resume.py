"""Resuming: in the run's own folder, with the run's own config, from its own checkpoint.

At composition, the resolvers make Hydra's folder follow ``resume=`` (path arithmetic,
conf/hydra/default.yaml; a resumed run's Hydra files go to ``.hydra/resume-<stamp>/``).
In train, before the folder is touched, :func:`plan_resume` loads the checkpoint, and
:func:`resumed_config` is its config plus this command's overrides. Restoring every RNG
with the states makes a resumed deterministic run bit-for-bit the uninterrupted one.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.errors import CheckpointError, ConfigError

log = logging.getLogger("cnnlab")

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")  # a resume target named so is a file, else a run folder


def _run_dir(resume: Any, default: str) -> str:
    """Resolver ``cnnlab_run_dir``: the folder a resume continues in, else ``default``."""
    if not resume:
        return default
    target = Path(str(resume))
    if not target.exists():  # here, not later: Hydra makes this folder before the job starts
        raise CheckpointError(f"resume={str(resume)!r}: no such run folder or checkpoint file")
    if target.parent.name == "checkpoints":  # <run>/checkpoints/last.pt
        return str(target.parent.parent)
    return default if target.suffix in CHECKPOINT_SUFFIXES else str(target)


_subdirs: dict[tuple[str, ...], str] = {}  # (resume, stamp, job folder) -> the answer: once per launch


def _hydra_subdir(resume: Any, stamp: str, output_dir: str = "") -> str:
    """Resolver ``cnnlab_hydra_subdir``: ``.hydra``, or ``.hydra/resume-<stamp>`` in a resumed run's
    folder, or in any job folder (``output_dir``) whose ``.hydra/config.yaml`` an earlier launch wrote
    (``trainer.auto_resume=true``): Hydra's files never overwrite the first run's record.

    Read when Hydra writes its files (the job folder is then known, and claimed: cnnlab.run) and
    again later: the first answer is kept, so this launch's own config.yaml does not change it."""
    key = (str(resume), str(stamp), str(output_dir))
    if key not in _subdirs:
        earlier = bool(output_dir) and (Path(str(output_dir)) / ".hydra" / "config.yaml").exists()
        _subdirs[key] = f".hydra/resume-{stamp}" if earlier or _run_dir(resume, "") else ".hydra"
    return _subdirs[key]


def register_resolvers() -> None:
    """Register the two resolvers (idempotent); call before Hydra composes."""
    for name, fn in (("cnnlab_run_dir", _run_dir), ("cnnlab_hydra_subdir", _hydra_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def resumed_config(cfg: DictConfig, path: Path, ck: dict[str, Any]) -> DictConfig:
    """The checkpoint's config plus this command's key=value overrides (under Hydra; from Python
    ``cfg`` is the whole config); ``resume`` and ``paths`` are this launch's; a key newer than
    the checkpoint keeps its default. Refuses another model's or dataset's (:func:`check_resume_fits`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = ck.get("config") or {}
    if saved and HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        overrides = [o for o in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
                     if o.key_or_group != "resume"]
        new = cfg.copy()
        for key, value in saved.items():
            if key in ("resume", "paths") or key not in new:  # this launch's, or a key since removed
                continue
            if OmegaConf.get_type(new, key) is dict:  # optimizer, scheduler: the target's own keys
                new[key] = value
            else:
                new.merge_with({key: value})
        for o in overrides:
            key = o.key_or_group
            if key in hydra_cfg.runtime.choices and key not in new:
                raise ConfigError(f"{o.input_line}: a resumed run keeps its config; set its keys "
                                  "one by one (key=value), or start a new run")
            if o.is_delete():  # ~optimizer.nesterov
                parent, _, leaf = key.rpartition(".")
                with open_dict(node := OmegaConf.select(new, parent) if parent else new):
                    node.pop(leaf, None)
            else:  # the value as this command composed it (types and interpolations resolved)
                OmegaConf.update(new, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
        if overrides:
            log.warning("resuming %s with this command's changes: %s", path, " ".join(o.input_line for o in overrides))
        cfg = new
    check_resume_fits(cfg, path, ck)
    return cfg


def restore_training(ck: dict[str, Any], source: Path, model: Any, optimizer: Any, scheduler: Any,
                     scaler: Any, loader: Any, optimizer_name: str) -> None:
    """Load a training checkpoint (from ``source``) into the run's objects; the loop's counters:
    ``LoopState.from_checkpoint``."""
    from cnnlab.lifecycle.checkpoint import check_compatible

    check_compatible(model, ck["model"], f"checkpoint {str(source)!r}")
    model.load_state_dict(ck["model"])
    for obj, key, what, fix in (
            (optimizer, "optimizer", f"optimizer state does not fit optimizer={optimizer_name}", "optimizer"),
            (scheduler, "scheduler", "schedule state does not fit this scheduler",
             "scheduler and scheduler.warmup_epochs (0 and > 0 build different schedules)")):
        try:
            obj.load_state_dict(ck[key])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {str(source)!r}: its {what} ({type(e).__name__}: {e}); "
                                  f"resume with the run's own {fix}") from None
    if scaler.is_enabled() and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"], loader)


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


_TRAINING_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng")


def load_resume(resume: str | None, auto_resume: bool, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to continue from, loaded on the CPU, or None for a fresh start: ``resume=<file>``,
    or in a run folder last.pt, then (with a warning) best.pt, a full checkpoint of an earlier epoch."""
    from cnnlab.lifecycle.checkpoint import load_checkpoint, remove_stale_temps

    def load(path: Path) -> dict[str, Any]:
        ck = load_checkpoint(path)  # map_location cpu: RNG states must stay CPU tensors
        if not all(k in ck for k in _TRAINING_KEYS):
            raise CheckpointError(
                f"{str(path)!r} holds weights only (no optimizer, schedule or epoch), so it cannot be "
                f"resumed: start a new run from its weights with model.checkpoint={str(path)!r}")
        return ck

    if resume:
        target = Path(resume)
        if not target.exists():
            raise CheckpointError(f"resume={resume!r}: no such run folder or checkpoint file")
        if target.is_file():
            return target, load(target)
        folder, asked = target / "checkpoints", f"resume={resume!r}"
    elif auto_resume:
        folder, asked = run_dir / "checkpoints", "trainer.auto_resume"
    else:
        return None
    names = [n for n in ("last.pt", "best.pt") if (folder / n).is_file()]
    if not names:
        if resume:
            raise CheckpointError(f"{asked}: {str(folder.parent)!r} holds no checkpoints/last.pt to resume from")
        return None  # auto_resume in a new (or checkpoint-less) folder: a fresh start
    remove_stale_temps(folder)  # a save killed mid-write leaves its temp file behind
    problems = []
    for name in names:
        try:
            ck = load(folder / name)
        except CheckpointError as e:
            problems.append(str(e))
            log.warning("%s: cannot use %s: %s", asked, name, e)
            continue
        if problems:
            log.warning("%s: resuming from %s (epoch %d) instead; the epochs after it are redone",
                        asked, name, ck["epoch"])
        return folder / name, ck
    raise CheckpointError(f"{asked}: no checkpoint in {str(folder)!r} loads: {problems[0]}")


@dataclass(frozen=True)
class ResumePlan:
    """What this launch continues: ``checkpoint`` (path, loaded dict) or None for a fresh
    start; ``previous``: the folder's summary.json before this launch (None: a new folder)."""

    checkpoint: tuple[Path, dict[str, Any]] | None
    previous: dict[str, Any] | None

    @property
    def epoch(self) -> int | None:  # None for a fresh start
        return self.checkpoint[1]["epoch"] if self.checkpoint else None

    @property
    def purge_step(self) -> int | None:
        """TensorBoard's purge_step: hide what a killed run logged after the epoch resumed from."""
        if self.previous is None:
            return None
        return self.epoch + 1 if self.checkpoint else 0


def plan_resume(resume: str | None, auto_resume: bool, run_dir: Path, traces: list[str] = ()) -> ResumePlan:
    """Decide, before the run folder is touched, whether this launch starts or continues a run. A
    folder that holds a run (``traces``: what of one it held when claimed; or a summary.json) is
    refused unless this resumes it, or auto-resumes a run that did not complete: a mistyped command
    cannot train over a run or mark a finished one failed."""
    from cnnlab.lifecycle.record import read_summary, used_folder_error

    checkpoint = load_resume(resume, auto_resume, run_dir)
    try:
        previous = read_summary(run_dir)
    except (OSError, ValueError):
        previous = {}  # present but unreadable: still a used folder
    if checkpoint is None and (previous is not None or traces):
        if not (auto_resume and (previous or {}).get("status") != "completed"):
            raise used_folder_error(run_dir, list(traces) or ["summary.json"])
        log.warning("auto_resume: %s holds no checkpoint yet (the run died before its first one): "
                    "starting it over", run_dir)
    if checkpoint is not None and (previous or {}).get("status") == "trained":
        log.info("%s trained, but its report was not written: this resume writes the test report "
                 "(and trains only the epochs trainer.epochs adds)", run_dir)
    return ResumePlan(checkpoint, previous)


def check_resume_fits(cfg: DictConfig, path: Path, ck: dict[str, Any]) -> None:
    """Fail before touching the run folder if the checkpoint is of another model or data."""
    # AlexNet's arch was "alexnet" before timm held it (cnnlab_alexnet): the same model.
    from cnnlab.models.registry import LEGACY_ARCHS

    saved = OmegaConf.create(ck.get("config") or {})
    for key in ("model.name", "model.arch", "dataset.name", "dataset.in_chans", "dataset.image_size"):
        was, now = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if key == "model.name":
            was = ck.get("model_name")
        elif key == "model.arch":
            was, now = LEGACY_ARCHS.get(was, was), LEGACY_ARCHS.get(now, now)
        if was is not None and now is not None and was != now:
            fix = f"{key.split('.')[0]}={was}" if key.endswith(".name") else f"{key}={was}"
            raise CheckpointError(
                f"checkpoint {str(path)!r} belongs to another run: it was trained with {key}={was}, "
                f"this run has {key}={now}; resume with {fix}, or start a new run")
