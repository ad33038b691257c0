"""Pretrained weights of cnnlab's timm models: the release format, safe loading, offline errors.

The MogaNet authors publish their ImageNet-1K weights as the ``model.pth.tar`` of their
timm-based training script (their README; their ``extract_ckpt.py`` reads ``state_dict``,
``state_dict_ema``, ``arch`` and ``metric`` from such files). timm's checkpoint saver
writes a dict with ``state_dict``, ``state_dict_ema`` when training kept an EMA, and
bookkeeping: ``epoch``, ``arch``, ``optimizer``, ``version``, ``metric`` and ``args``, an
``argparse.Namespace`` of the training options. (Written from those sources: no release
file could be downloaded here, so the tests use files written in that format.) Loading
stays ``torch.load(weights_only=True)``: the only class the unpickler may build besides
tensors and plain data is ``argparse.Namespace`` (``RELEASE_SAFE_GLOBALS``), so a file
that would import anything else is refused.

Which weights: ``state_dict_ema`` when present, else ``state_dict`` (timm's
``load_state_dict(use_ema=True)`` rule). The released small/base/large were trained and
evaluated with EMA; xtiny and tiny have no EMA copy.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import ModelError

# The globals a release checkpoint needs beyond tensors and plain data: the training args.
RELEASE_SAFE_GLOBALS: list[Any] = [argparse.Namespace]


@contextmanager
def release_safe_globals() -> Iterator[None]:
    """Allow ``RELEASE_SAFE_GLOBALS`` in every ``torch.load(weights_only=True)`` inside."""
    with torch.serialization.safe_globals(RELEASE_SAFE_GLOBALS):
        yield


@contextmanager
def release_loading(variant: str) -> Iterator[None]:
    """``release_safe_globals``, and a refused pickle turned into one ModelError line.

    torch says "Weights only load failed ..." over many lines (timm's file loader adds
    "Unsupported globals: ..."); the one line names the class the file would import.
    """
    with release_safe_globals():
        try:
            yield
        except (pickle.UnpicklingError, RuntimeError) as e:
            text = str(e)
            if "Unsupported global" not in text:  # torch's and timm's refusals both say this
                raise
            found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported globals: ([\w.]+)", text)
            what = found.group(1) if found else "an object that is not plain data"
            raise ModelError(
                f"the {variant} weights file was refused: loading it would import {what}; a release "
                "checkpoint may hold only tensors, plain data and argparse.Namespace (weights_only=True)"
            ) from None


def is_release_format(obj: Any) -> bool:
    """A timm training checkpoint: ``state_dict`` (or ``state_dict_ema``) holding the weights."""
    return isinstance(obj, dict) and any(
        isinstance(obj.get(k), dict) for k in ("state_dict_ema", "state_dict")
    )


def release_state_dict(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a release checkpoint (EMA first), or ``obj`` itself if it is bare.

    Wrapper prefixes (``module.`` from DDP) are stripped; non-tensor entries dropped.
    """
    if is_release_format(obj):
        obj = obj["state_dict_ema"] if isinstance(obj.get("state_dict_ema"), dict) else obj["state_dict"]
    from cnnlab.lifecycle.checkpoint import tensors_only

    return tensors_only(obj)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: unwrap the release format; the keys already match.

    timm's file loader has unwrapped ``state_dict``/``state_dict_ema`` already; its URL
    loader hands over the whole checkpoint. timm then loads the result with
    ``strict=True`` (the head is dropped first when ``num_classes`` is not 1000).
    """
    del model  # the layout is the release's: nothing to rename
    return release_state_dict(state_dict)


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> None:
    """``model.checkpoint=<file>``: load weights strictly from a cnnlab checkpoint, a bare
    state dict, or a release checkpoint (EMA weights first, as ``pretrained=True`` loads).

    Errors are cnnlab.lifecycle.checkpoint's one-liners (missing file, refused pickle, first
    mismatched layer with both shapes).
    """
    from cnnlab.lifecycle.checkpoint import (
        check_compatible,
        extract_state_dict,
        load_checkpoint,
        unwrap,
    )

    with release_safe_globals():
        obj = load_checkpoint(path)
    sd = release_state_dict(obj) if "model" not in obj and is_release_format(obj) else extract_state_dict(obj)
    model = unwrap(model)
    check_compatible(model, sd, f"weights file {str(path)!r}")
    model.load_state_dict(sd, strict=True)


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url``'s host accepts a TCP connection.

    Only for the Hugging Face hub, which retries a failed request five times with
    backoff (24 s offline, measured) and has no setting for it; every other download is
    tried, and its failure reported (``download_weights``).
    """
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
    """Download ``url`` into torch.hub's cache unless it is there; a failure is one ModelError line.

    timm and torchvision then load the cached file without the network. ``check_hash``:
    the file name holds a prefix of its sha256 (torchvision's files), checked as
    torchvision would. The message names the URL and where to put the file offline.
    """
    cached = cached_path(url)
    if cached.is_file():
        return cached
    found = torch.hub.HASH_REGEX.search(cached.name) if check_hash else None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), found.group(1) if found else None)
    except (OSError, RuntimeError) as e:  # URLError (offline, HTTP 404), a hash mismatch
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelError(
            f"model.pretrained=true: the {name} weights could not be downloaded ({type(e).__name__}: "
            f"{first}); offline, download {url} and put it at {cached}, or pass the file as "
            "model.checkpoint=<file>, or use model.pretrained=false"
        ) from None
    return cached


def check_weight_source(variant: str, kwargs: dict[str, Any]) -> None:
    """For a timm entrypoint's ``pretrained=True``: have the chosen weights in the cache
    before timm loads them, or fail in one line (none published, or the download failed).

    ``kwargs`` are the entrypoint's: ``pretrained_cfg`` (a tag such as ``"in1k_256"``, or a
    cfg) and ``pretrained_cfg_overlay`` (e.g. ``dict(file=PATH)``) pick the weights.
    """
    import timm.models

    cfg = timm.models.resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    ).to_dict()
    if cfg.get("file") or cfg.get("state_dict") or cfg.get("hf_hub_id"):
        return  # a local file, a state dict or a hub id: timm loads it
    name = f"{variant}.{cfg['tag']}" if cfg.get("tag") else variant
    if not cfg.get("url"):
        raise ModelError(
            f"model.pretrained=true: cnnlab has no published weights for {name!r}; use "
            "model.pretrained=false, or model.checkpoint=<file> for a weights file of your own"
        )
    download_weights(name, cfg["url"])
