"""Checkpoints: atomic writes, safe loads, and weights that fit or say why not.

Loads use ``torch.load(weights_only=True)``, which refuses any pickle that would run code;
everything saved is tensors and plain data, so no safe globals need registering. The
order of the writes is part of the format (:func:`save_epoch`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CheckpointError, first_line
from cnnlab.lifecycle.atomic import os_error, write_atomic

# Prefixes that wrappers add to state-dict keys: DDP's and torch.compile's.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {e.strerror or e}") from None
    try:
        write_atomic(path, lambda f: torch.save(state, f), suffix=".tmp")
    except (OSError, RuntimeError) as e:
        # A full disk surfaces as OSError, or as torch's RuntimeError with the OSError as its context.
        err = os_error(e)
        why = (err.strerror or first_line(err)) if err is not None else first_line(e)
        raise CheckpointError(f"cannot write checkpoint {str(path)!r} ({why}); the previous "
                              "checkpoint there is intact: free space, then resume") from None


def training_state(model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, epoch: int,
                   counters: dict[str, Any], rng: dict[str, Any], model_name: str,
                   config: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """Everything a resume needs, as plain data: the checkpoint of ``epoch``. ``counters``:
    ``LoopState.to_checkpoint()``; ``class_names`` in label order (evaluate and predict read them)."""
    return {
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "epoch": epoch, **counters, "rng": rng, "model_name": model_name, "config": config,
        "class_names": list(class_names),
    }


def save_epoch(state: dict[str, Any], folder: Path, best: bool) -> None:
    """Save a completed epoch (epoch 0: before any step): best.pt first (if ``best``), then last.pt,
    so a kill between the two leaves last.pt an epoch behind, never best.pt older than it says."""
    if best:
        save_checkpoint(state, folder / "best.pt")
    save_checkpoint(state, folder / "last.pt")


def keep_best_in_step(state: dict[str, Any], source: Path, folder: Path) -> None:
    """On resume: if the checkpoint resumed from is the best epoch's, make best.pt hold it too (a
    kill inside :func:`save_epoch` can leave it behind; the final test must use the same weights)."""
    if state["best_epoch"] == state["epoch"] and source.name != "best.pt":
        save_checkpoint(state, folder / "best.pt")


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Delete temp files a killed save left behind (``.last.pt.*.tmp``)."""
    for p in Path(folder).glob(".*.tmp"):
        p.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; raise CheckpointError naming what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing a file; the error says it all.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(_describe_load_error(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a checkpoint or state dict")
    return obj


def _describe_load_error(path: Path, e: Exception) -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` failed: torch's own first line,
    or, for a pickle that would run code, the globals it would import (torch's own list)."""
    import pickle

    if isinstance(e, pickle.UnpicklingError):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a zip checkpoint: torch's own line says why
            names = []
        what = f"loading it would import {', '.join(names)}" if names else f"torch says: {first_line(e)}"
        return (f"{str(path)!r} was refused: {what}; a checkpoint may hold only tensors and plain data "
                "(torch.load weights_only=True), so a file from elsewhere cannot run code here")
    size = path.stat().st_size
    with open(path, "rb") as f:
        zip_magic = f.read(4) == b"PK\x03\x04"
    if zip_magic:
        return f"{str(path)!r} is truncated or corrupt ({size} bytes; torch says: {first_line(e)})"
    return f"{str(path)!r} is not a torch checkpoint ({size} bytes: neither a zip archive nor a pickle torch can read)"


def extract_state_dict(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint: ours ('model'), common ones, or a bare state dict."""
    for key in ("model", "state_dict", "model_state_dict", "model_ema"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    return tensors_only(obj)


def eval_state_dict(ck: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a run validated and tested with: the EMA's (``ema.enabled``), else the model's."""
    ema = ck.get("ema")
    return tensors_only(ema["weights"]) if isinstance(ema, dict) and "weights" in ema else extract_state_dict(ck)


def tensors_only(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor entries of a state dict, without DDP's and torch.compile's key prefixes."""
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        for p in _WRAPPER_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def check_compatible(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the first missing/unexpected key or mismatched shape."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in sd:
            raise CheckpointError(f"{source} does not fit this model: it has no weights for layer {k!r}")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source} does not fit this model: layer {k!r} is {tuple(sd[k].shape)} "
                                  f"in the file but {tuple(v.shape)} in the model")
    extra = [k for k in sd if k not in own]
    if extra:
        raise CheckpointError(f"{source} does not fit this model: unexpected layer {extra[0]!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
