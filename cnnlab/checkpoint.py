"""Checkpoints: atomic writes, safe loads, and weights that fit or say why not.

Writes go to a temp file in the same folder, are flushed and fsynced, then renamed
over the target with ``os.replace`` (atomic on POSIX): a crash mid-write leaves the
previous checkpoint whole. Loads use ``torch.load(weights_only=True)``, which
refuses any pickle that would run code; everything we save is tensors, numbers,
strings, lists and dicts, so nothing else needs allow-listing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CheckpointError

# Prefixes that wrappers add to state-dict keys: DDP's and torch.compile's.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; raise CheckpointError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"{str(path)!r} is not a plain-weights checkpoint: it needs code to load "
                f"(refused with weights_only=True): {msg[:120]}"
            ) from None
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (truncated or not a torch file): {msg[:120]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a checkpoint or state dict")
    return obj


def extract_state_dict(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint: ours ('model'), common ones, or a bare state dict."""
    for key in ("model", "state_dict", "model_state_dict", "model_ema"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        for p in _WRAPPER_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        sd[k] = v
    return sd


def check_compatible(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the first missing/unexpected key or mismatched shape."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in sd:
            raise CheckpointError(f"{source} does not fit this model: it has no weights for layer {k!r}")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source} does not fit this model: layer {k!r} is {tuple(sd[k].shape)} in the file "
                f"but {tuple(v.shape)} in the model"
            )
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


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load model weights from a file (state dict or a checkpoint holding one), strictly."""
    sd = extract_state_dict(load_checkpoint(path))
    model = unwrap(model)
    check_compatible(model, sd, f"weights file {str(path)!r}")
    model.load_state_dict(sd, strict=True)
