"""Pretrained weights of cnnlab's timm models: the release format, safe loading, offline errors.

The MogaNet release files are timm training checkpoints (``state_dict``, ``state_dict_ema``,
bookkeeping, and the training ``args`` as an ``argparse.Namespace``, the one class the
``weights_only=True`` unpickler may build here); docs/models.md describes them. No release
file could be downloaded here, so the tests use files written in that format.
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import ModelError, first_line


@contextmanager
def release_loading(variant: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """Allow ``argparse.Namespace`` in every ``torch.load(weights_only=True)`` inside (timm's
    loads of the entrypoint's weights, picked by ``kwargs``), and say a refused pickle in one
    ModelError line naming the globals it would import (torch's multi-line error doesn't)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            yield
        except (pickle.UnpicklingError, RuntimeError) as e:
            # torch refuses with an UnpicklingError; timm's file loader re-raises it as a RuntimeError
            if not isinstance(e.__cause__ if isinstance(e, RuntimeError) else e, pickle.UnpicklingError):
                raise
            cfg = _pretrained_cfg(variant, kwargs)
            try:
                path = cfg.get("file") or cached_path(cfg["url"])
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # noqa: BLE001 - no file to read the names from (a hub file, not a zip)
                names = []
            what = ", ".join(names) or "an object that is not plain data"
            raise ModelError(
                f"the {variant} weights file was refused: loading it would import {what}; a release "
                "checkpoint may hold only tensors, plain data and argparse.Namespace (weights_only=True)"
            ) from None


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn`` (the keys already match): the weights of a checkpoint,
    the EMA's first as timm's ``load_state_dict(use_ema=True)`` (the released small/base/large
    were evaluated with EMA; xtiny and tiny have none), without wrapper prefixes."""
    from cnnlab.lifecycle.checkpoint import extract_state_dict, tensors_only

    del model  # the layout is the release's: nothing to rename
    ema = state_dict.get("state_dict_ema")
    return tensors_only(ema) if isinstance(ema, dict) and "model" not in state_dict else extract_state_dict(state_dict)


def load_weights_file(model: nn.Module, path: str | os.PathLike, reset_head: bool = False) -> None:
    """``model.checkpoint=<file>``: load weights strictly from a cnnlab checkpoint, a bare
    state dict, or a release checkpoint (EMA weights first, as ``pretrained=True`` loads).
    ``reset_head`` (``model.reset_head``, transfer learning): every weight but the classifier's,
    which keeps its fresh initialisation (any class count). Errors are cnnlab.lifecycle.checkpoint's one-liners."""
    from cnnlab.lifecycle.checkpoint import check_compatible, load_checkpoint, unwrap

    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = load_checkpoint(path)
    sd = checkpoint_filter_fn(obj)
    model = unwrap(model)
    if reset_head:
        from cnnlab.recipes.freeze import classifier_prefix, under

        head = classifier_prefix(model)  # the file's head out, the model's fresh one in
        sd = {**{k: v for k, v in sd.items() if not under(k, head)},
              **{k: v for k, v in model.state_dict().items() if under(k, head)}}
    check_compatible(model, sd, f"weights file {str(path)!r}")
    model.load_state_dict(sd, strict=True)


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url``'s host accepts a TCP connection. Only for the Hugging Face hub, which
    retries a failed request with backoff (24 s offline, measured) and has no setting for it."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or 443), timeout=timeout):
            return True
    except OSError:  # DNS failure, refused, unreachable, timeout
        return False


def cached_path(url: str) -> Path:
    """Where timm and torchvision (via torch.hub) keep the download of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def download_weights(name: str, url: str, check_hash: bool = False) -> Path:
    """Download ``url`` into torch.hub's cache (where timm and torchvision look) unless it is
    there; a failure is one ModelError line naming the URL and where to put the file offline.
    ``check_hash``: the file name holds a prefix of its sha256 (torchvision's files)."""
    cached = cached_path(url)
    if cached.is_file():
        return cached
    found = torch.hub.HASH_REGEX.search(cached.name) if check_hash else None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), found.group(1) if found else None)
    except (OSError, RuntimeError) as e:  # URLError (offline, HTTP 404), a hash mismatch
        raise ModelError(
            f"model.pretrained=true: the {name} weights could not be downloaded ({type(e).__name__}: "
            f"{first_line(e)[:200]}); offline, download {url} and put it at {cached}, or pass the file as "
            "model.checkpoint=<file>, or use model.pretrained=false"
        ) from None
    return cached


def _pretrained_cfg(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pretrained cfg a timm entrypoint's ``kwargs`` pick: ``pretrained_cfg`` (a tag such
    as ``"in1k_256"``, or a cfg) and ``pretrained_cfg_overlay`` (e.g. ``dict(file=PATH)``)."""
    import timm.models

    return timm.models.resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    ).to_dict()


def check_weight_source(variant: str, kwargs: dict[str, Any]) -> None:
    """For a timm entrypoint's ``pretrained=True``: have the chosen weights in the cache
    before timm loads them, or fail in one line (none published, or the download failed)."""
    cfg = _pretrained_cfg(variant, kwargs)
    if cfg.get("file") or cfg.get("state_dict") or cfg.get("hf_hub_id"):
        return  # a local file, a state dict or a hub id: timm loads it
    name = f"{variant}.{cfg['tag']}" if cfg.get("tag") else variant
    if not cfg.get("url"):
        raise ModelError(
            f"model.pretrained=true: cnnlab has no published weights for {name!r}; use "
            "model.pretrained=false, or model.checkpoint=<file> for a weights file of your own"
        )
    download_weights(name, cfg["url"])
