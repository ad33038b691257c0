"""What a run carries from epoch to epoch, what a checkpoint saves of it, and how a
run picks the checkpoint to resume from.

A training checkpoint (written by ``train``; its format is in cnnlab/checkpoint.py)
holds the model, optimizer, scheduler and GradScaler states, the epoch, every RNG
(:func:`rng_state`) and the loop's own counters (:class:`LoopState`). Restoring all
of them is what makes a resumed deterministic run bit-for-bit the uninterrupted one.
:func:`load_resume` finds and loads the checkpoint; :func:`check_resume_fits` refuses
one of another model or dataset before the run folder is touched.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CheckpointError

log = logging.getLogger("cnnlab")


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

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> LoopState:
        early = ck.get("early_stop") or {}  # absent in checkpoints from before early stopping
        return cls(ck["best_val_acc"], ck["best_epoch"], ck.get("train_seconds", 0.0),
                   ck.get("images_seen", 0), early.get("epochs_since_best", 0),
                   early.get("best_val_loss", math.inf))


def restore_training(ck: dict[str, Any], source: Path, model: Any, optimizer: Any, scheduler: Any,
                     scaler: Any, loader: Any, optimizer_name: str) -> LoopState:
    """Load a training checkpoint into the run's objects; return the loop's counters.

    ``source`` names the checkpoint in messages; ``optimizer_name`` the configured one.
    """
    from cnnlab.lifecycle.checkpoint import check_compatible

    check_compatible(model, ck["model"], f"checkpoint {str(source)!r}")
    model.load_state_dict(ck["model"])
    try:
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {str(source)!r}: its optimizer state does not fit "
                              f"optimizer={optimizer_name} ({e}); resume with the run's own optimizer") from None
    if scaler is not None and ck.get("scaler"):
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
    saved = ck.get("config") or {}
    pairs = [("model.name", ck.get("model_name")), ("model.arch", saved.get("model", {}).get("arch")),
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


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # present but unreadable: still a used folder
