"""Resuming: in the run's own folder, with the run's own config, from its own checkpoint.

Two moments. **At composition** (the CLI registers the resolvers at startup), Hydra
picks the output folder before ``train`` runs, so the folder has to follow
``resume=``: conf/hydra/default.yaml sets

    hydra.run.dir:       ${cnnlab_run_dir:${resume},'outputs/...'}
    hydra.output_subdir: ${cnnlab_hydra_subdir:${hydra.runtime.output_dir}}

``cnnlab_run_dir`` is the resumed run's folder (a run folder, or the folder above
``checkpoints/`` for a checkpoint file inside one); any other checkpoint starts a
new folder. A path that does not exist fails here, before any folder is made.
``cnnlab_hydra_subdir`` keeps the run's original ``.hydra/`` files: a folder that
already holds them gets this launch's files in ``.hydra/resume-<n>/`` instead.
A resumed run keeps the config it was started with: :func:`resume_config` composes
the run's original overrides (its ``.hydra/overrides.yaml``), those of its earlier
resumes (``.hydra/resume-<n>/``) and then this command's, so ``resume=<folder>``
alone suffices and ``resume=<folder> trainer.epochs=20`` changes only the number
of epochs, for this resume and the next ones.

**In train**, before the run folder is touched: :func:`plan_resume` finds and loads
the checkpoint (:func:`load_resume`) and refuses a folder that already holds a run;
:func:`check_resume_fits` refuses a checkpoint of another model or dataset. A
training checkpoint (cnnlab/lifecycle/checkpoint.py) holds the model, optimizer,
scheduler and GradScaler states, the epoch, every RNG (:func:`rng_state`) and the
loop's own counters (:class:`LoopState`); restoring all of them
(:func:`restore_training`) is what makes a resumed deterministic run bit-for-bit
the uninterrupted one.

Only the standard library, OmegaConf and Hydra are imported at module level.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CheckpointError, ConfigError

log = logging.getLogger("cnnlab")



def run_folder_of(target: str | Path) -> Path | None:
    """The run folder a resume target belongs to, or None for a stray checkpoint file."""
    p = Path(target)
    if p.is_dir():
        return p
    if p.is_file() and p.parent.name == "checkpoints":
        return p.parent.parent
    return None


def _run_dir(resume: Any, default: str) -> str:
    """Resolver ``cnnlab_run_dir``: the resumed run's folder, else ``default``."""
    if not resume:
        return default
    if not Path(str(resume)).exists():
        raise CheckpointError(f"resume={str(resume)!r}: no such run folder or checkpoint file")
    folder = run_folder_of(str(resume))
    return str(folder) if folder is not None else default


def _hydra_subdir(output_dir: str) -> str:
    """Resolver ``cnnlab_hydra_subdir``: ``.hydra``, or ``.hydra/resume-<n>`` if that is taken."""
    hydra_dir = Path(output_dir) / ".hydra"
    if not (hydra_dir / "config.yaml").exists():
        return ".hydra"
    n = 1
    while (hydra_dir / f"resume-{n}").exists():
        n += 1
    return f".hydra/resume-{n}"


def register_resolvers() -> None:
    """Register the two resolvers (idempotent); call before Hydra composes."""
    for name, fn in (("cnnlab_run_dir", _run_dir), ("cnnlab_hydra_subdir", _hydra_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def _override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~a`` -> ``a``; ``model=x`` -> ``model``."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def merge_overrides(original: list[str], current: list[str]) -> list[str]:
    """The run's original overrides, minus those this command sets again, then this command's."""
    now = {_override_key(o) for o in current}
    return [o for o in original if _override_key(o) not in now] + list(current)


def resume_config(cfg: DictConfig) -> DictConfig:
    """Under Hydra, with ``resume=<run>``: the config of the run's overrides + this command's.

    Returns ``cfg`` unchanged outside a Hydra app (tests call ``train(cfg)`` with the
    full config), for a checkpoint outside a run folder, or when nothing differs.
    """
    from hydra.core.hydra_config import HydraConfig

    if not cfg.get("resume") or not HydraConfig.initialized():
        return cfg
    folder = run_folder_of(cfg.resume)
    saved = folder / ".hydra" / "overrides.yaml" if folder is not None else None
    if saved is None or not saved.is_file():
        return cfg
    # The launch that started the run, then each earlier resume in order (a resume that
    # changed trainer.epochs keeps its change), then this command.
    numbered = {p.parent.name.removeprefix("resume-"): p for p in saved.parent.glob("resume-*/overrides.yaml")}
    later = [numbered[n] for n in sorted((n for n in numbered if n.isdigit()), key=int)]
    original: list[str] = []
    for path in [saved, *later]:
        original = merge_overrides(original, [str(o) for o in OmegaConf.load(path)])
    current = [str(o) for o in HydraConfig.get().overrides.task]
    merged = merge_overrides(original, current)
    if merged == current:
        return cfg
    from hydra import compose

    try:
        new = compose(config_name=HydraConfig.get().job.config_name, overrides=merged)
    except Exception as e:  # noqa: BLE001 - Hydra raises several types; the first line says which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"resume={cfg.resume!r}: the run's overrides {original} plus this "
                          f"command's {current} do not compose: {first}") from None
    log.info("resume: the run's overrides %s, then this command's %s", original, current)
    return new


# --------------------------------------------------------------------------- in train
@dataclass
class LoopState:
    """The epoch loop's counters: saved in every checkpoint, restored on resume."""

    best_val_acc: float = -1.0
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

    def update(self, epoch: int, val_loss: float, val_acc: float, patience: int | None,
               metric: str) -> tuple[bool, bool]:
        """After a val pass: (is this the best epoch so far, should the run stop early).

        The best epoch is the one with the highest val accuracy (best.pt holds it). Early
        stopping counts epochs without a better ``metric`` (val_loss or val_acc); its
        counters are updated here, before the checkpoint that holds them.
        """
        improved = val_acc > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch = val_acc, epoch
        if not patience:
            return improved, False
        better = (val_loss < self.best_val_loss) if metric == "val_loss" else improved
        self.best_val_loss = min(self.best_val_loss, val_loss)
        self.epochs_since_best = 0 if better else self.epochs_since_best + 1
        return improved, self.epochs_since_best >= patience

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> LoopState:
        early = ck.get("early_stop") or {}  # absent in checkpoints from before early stopping
        return cls(ck["best_val_acc"], ck["best_epoch"], ck.get("train_seconds", 0.0),
                   ck.get("images_seen", 0), early.get("epochs_since_best", 0),
                   early.get("best_val_loss", math.inf))


def restore_training(ck: dict[str, Any], source: Path, model: Any, optimizer: Any, scheduler: Any,
                     scaler: Any, loader: Any, optimizer_name: str) -> LoopState:
    """Load a training checkpoint into the run's objects; return the loop's counters.

    ``source`` names the checkpoint in messages; ``optimizer_name`` the configured one;
    ``scaler`` is a GradScaler, enabled or not.
    """
    from cnnlab.lifecycle.checkpoint import check_compatible

    check_compatible(model, ck["model"], f"checkpoint {str(source)!r}")
    model.load_state_dict(ck["model"])
    try:
        optimizer.load_state_dict(ck["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {str(source)!r}: its optimizer state does not fit "
                              f"optimizer={optimizer_name} ({e}); resume with the run's own optimizer") from None
    try:
        scheduler.load_state_dict(ck["scheduler"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {str(source)!r}: its schedule state does not fit this scheduler "
                              f"({type(e).__name__}: {e}); resume with the run's own scheduler and "
                              "scheduler.warmup_epochs (0 and > 0 build different schedules)") from None
    if scaler.is_enabled() and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"], loader)
    return LoopState.from_checkpoint(ck)


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
    """The checkpoint to continue from, loaded on the CPU, or None for a fresh start.

    ``resume=<file>`` loads that file. ``resume=<run folder>``, and auto_resume when
    the run folder holds checkpoints, try last.pt, then best.pt with a warning if
    last.pt does not load: best.pt is a full checkpoint of an earlier epoch, and
    the run continues exactly from there.
    """
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
    def epoch(self) -> int | None:
        """The resumed checkpoint's epoch; None for a fresh start."""
        return self.checkpoint[1]["epoch"] if self.checkpoint else None

    @property
    def purge_step(self) -> int | None:
        """TensorBoard's purge_step: hide what a killed run logged after the epoch resumed from."""
        if self.previous is None:
            return None
        return self.epoch + 1 if self.checkpoint else 0


def plan_resume(resume: str | None, auto_resume: bool, run_dir: Path) -> ResumePlan:
    """Decide, before the run folder is touched, whether this launch starts or continues a run.

    A folder that already holds a run is refused unless the launch resumes it, or is
    ``trainer.auto_resume`` on a run that did not complete (one that died before its
    first checkpoint starts over, with a warning). So a mistyped command cannot mark
    a finished run failed.
    """
    from cnnlab.lifecycle.record import read_summary

    checkpoint = load_resume(resume, auto_resume, run_dir)
    try:
        previous = read_summary(run_dir)
    except (OSError, ValueError):
        previous = {}  # present but unreadable: still a used folder
    if checkpoint is None and previous is not None:
        if not (auto_resume and previous.get("status") != "completed"):
            raise ConfigError(f"run folder {str(run_dir)!r} already holds a run; use resume={str(run_dir)!r} "
                              "or trainer.auto_resume=true to continue it, or pick a new folder")
        log.warning("auto_resume: %s holds no checkpoint yet (the run died before its first one): "
                    "starting it over", run_dir)
    return ResumePlan(checkpoint, previous)


def _select(d: dict[str, Any], dotted: str) -> Any:
    """``d["a"]["b"]`` for ``"a.b"``; None where a key is missing."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def check_resume_fits(config: dict[str, Any], path: Path, ck: dict[str, Any]) -> None:
    """Fail before touching the run folder if the checkpoint is of another model or data.

    ``config``: this run's resolved config as a plain dict; changed settings are logged.
    """
    # AlexNet's arch was "alexnet" before timm held it (cnnlab_alexnet): the same model.
    from cnnlab.models.registry import LEGACY_ARCHS

    saved = ck.get("config") or {}
    arch = saved.get("model", {}).get("arch")
    pairs = [("model.name", ck.get("model_name")), ("model.arch", LEGACY_ARCHS.get(arch, arch)),
             ("dataset.name", saved.get("dataset", {}).get("name")),
             ("dataset.in_chans", saved.get("dataset", {}).get("in_chans")),
             ("dataset.image_size", saved.get("dataset", {}).get("image_size"))]
    for key, was in pairs:
        now = _select(config, key)
        if was is not None and now is not None and was != now:
            fix = f"{key.split('.')[0]}={was}" if key.endswith(".name") else f"{key}={was}"
            raise CheckpointError(
                f"checkpoint {str(path)!r} belongs to another run: it was trained with {key}={was}, "
                f"this run has {key}={now}; resume with {fix}, or start a new run")
    changed = _changed_settings(saved, config)
    if changed:
        log.warning("resuming with changed settings: %s", "; ".join(changed))


def _changed_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs (bookkeeping keys left out)."""
    skip = {"resume", "paths", "trainer.auto_resume", "trainer.progress"}
    out = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        if key in skip:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_settings(a, b, key + ".")
        elif a != b:
            out.append(f"{key}: {a} -> {b}")
    return out
