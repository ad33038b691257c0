"""``build_model``: a name and a source in, a ready ``nn.Module`` out."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from cnnlab.errors import CnnlabError, ModelError
from cnnlab.models.adapt import adapt_small_input, set_in_chans_torchvision
from cnnlab.models.registry import LEGACY_ARCHS, cnnlab_models, extra_kwargs, is_cnnlab_model
from cnnlab.models.weights import reachable as _reachable


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return ", ".join(close) if close else "none close"


@contextmanager
def _hub_offline_unless_reachable() -> Iterator[None]:
    """Put huggingface_hub in offline mode while its host can't be reached.

    Offline, a hub download otherwise retries for about a minute before failing. In
    offline mode it reads the local cache only: cached weights still load, and
    missing ones fail at once. The flag is read per request, so setting it here works
    after import; it is restored on exit.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _reachable(constants.ENDPOINT):
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _build_timm(arch: str, pretrained: bool, num_classes: int, in_chans: int, drop_rate: float,
                drop_path_rate: float, **cnnlab_kw: Any) -> nn.Module:
    """``timm.create_model``; ``cnnlab_kw`` (small_input, img_size, batch_norm) go to cnnlab's
    own models, each only to the models that take it."""
    import timm

    if not timm.is_model(arch) and arch in LEGACY_ARCHS:
        # A name from before cnnlab's models were timm models (a run saved with
        # model.arch=alexnet resumes with it); timm's own models take precedence.
        arch = LEGACY_ARCHS[arch]
    if not timm.is_model(arch):
        raise ModelError(
            f"model.arch={arch!r} is not a timm model; closest: {_closest(arch, timm.list_models())}"
        )
    kw: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if drop_path_rate > 0:
        kw["drop_path_rate"] = drop_path_rate
    kw.update({k: cnnlab_kw[k] for k in extra_kwargs(arch) if k in cnnlab_kw})
    if not pretrained:
        return timm.create_model(arch, **kw)
    if is_cnnlab_model(arch):
        # cnnlab's models fetch their weights from the authors' release, not the HF hub, and
        # fail offline in one line themselves (cnnlab.models.weights).
        try:
            return timm.create_model(arch, pretrained=True, **kw)
        except CnnlabError:
            raise
        except Exception as e:  # noqa: BLE001 - download, unpickling and shape errors
            raise ModelError(
                f"model.pretrained=true: the weights of {arch!r} could not be loaded ({_first_line(e)}); "
                "use model.pretrained=false, or model.checkpoint=<file> for a local weights file"
            ) from None
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        with _hub_offline_unless_reachable():
            return timm.create_model(arch, pretrained=True, **kw)
    except LocalEntryNotFoundError:
        raise ModelError(
            f"model.pretrained=true: the weights of timm {arch!r} are not in the Hugging Face cache "
            "and the hub can't be reached; go online once (they are cached in "
            "~/.cache/huggingface), or use model.pretrained=false"
        ) from None
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
        raise ModelError(
            f"model.pretrained=true: the weights of timm {arch!r} could not be loaded ({_first_line(e)}); "
            "use model.pretrained=false, or model.checkpoint=<file> for a local weights file"
        ) from None


def _check_torchvision_download(arch: str, url: str) -> None:
    """Fail at once, not after a hung download, when weights are neither cached nor reachable."""
    import os

    import torch

    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.isfile(cached) and not _reachable(url):
        raise ModelError(
            f"model.pretrained=true: the weights of torchvision {arch!r} are not cached ({cached}) "
            "and their server can't be reached; go online once, or use model.pretrained=false"
        )


def _build_torchvision(arch: str, pretrained: bool, num_classes: int, in_chans: int,
                       drop_rate: float, aux_logits: bool) -> nn.Module:
    from torchvision import models as tvm

    names = tvm.list_models(module=tvm)
    if arch not in names:
        raise ModelError(
            f"model.arch={arch!r} is not a torchvision classification model; closest: {_closest(arch, names)}"
        )
    kw: dict[str, Any] = {}
    if arch in ("googlenet", "inception_v3"):
        kw["aux_logits"] = aux_logits
        kw["init_weights"] = True
    if drop_rate > 0 and arch in ("googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_large",
                                  "mobilenet_v3_small", "alexnet", "squeezenet1_0", "squeezenet1_1"):
        kw["dropout"] = drop_rate
    try:
        if pretrained:
            weights = tvm.get_model_weights(arch).DEFAULT
            _check_torchvision_download(arch, weights.url)
            model = tvm.get_model(arch, weights=weights, **kw)
        else:
            model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kw)
    except (OSError, RuntimeError) as e:
        if pretrained:
            raise ModelError(
                f"pretrained weights for torchvision {arch!r} could not be downloaded ({type(e).__name__}); "
                "go online once (they are cached in ~/.cache/torch), or use model.pretrained=false"
            ) from None
        raise
    if pretrained and num_classes != 1000:
        from cnnlab.models.adapt import reset_torchvision_head

        reset_torchvision_head(model, num_classes)
    if in_chans != 3:
        set_in_chans_torchvision(model, in_chans, pretrained)
    if arch == "googlenet":
        from cnnlab.models.adapt import googlenet_with_aux_loss

        model = googlenet_with_aux_loss(model)
    return model


def build_model(
    name: str,
    source: str,
    arch: str,
    num_classes: int,
    in_chans: int = 3,
    img_size: int = 224,
    small_input: bool = False,
    pretrained: bool = False,
    checkpoint: str | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    batch_norm: bool = True,
    aux_logits: bool = False,
    aux_weight: float = 0.3,
    sync_bn: bool = False,
) -> nn.Module:
    """Build ``arch`` from ``source`` with the dataset's classes and channels.

    ``small_input`` adapts an ImageNet stem to 32x32 images; ``checkpoint`` loads a
    weights file on top (a state dict or a checkpoint that holds one). ``name`` is
    the config's label, kept for reports; ``sync_bn`` is applied by the DDP wrapper.
    """
    del name, sync_bn  # labels/flags used elsewhere; accepted so every config is a valid call
    if num_classes is None or num_classes < 1:
        raise ModelError(f"model.num_classes={num_classes!r}: use an integer >= 1")
    if source == "cnnlab":
        # Kept as an alias: cnnlab's models are timm models now (alexnet -> cnnlab_alexnet).
        if not is_cnnlab_model(LEGACY_ARCHS.get(arch, arch)):
            raise ModelError(f"model.arch={arch!r} is not a cnnlab model; choose one of "
                             f"{', '.join(cnnlab_models())}, or model.source=timm")
        source = "timm"
    if source == "timm":
        model = _build_timm(arch, pretrained, num_classes, in_chans, drop_rate, drop_path_rate,
                            small_input=small_input, img_size=img_size, batch_norm=batch_norm)
        if small_input and "small_input" not in extra_kwargs(arch):
            adapt_small_input(model)
    elif source == "torchvision":
        model = _build_torchvision(arch, pretrained, num_classes, in_chans, drop_rate, aux_logits)
        if small_input:
            adapt_small_input(model)
    else:
        raise ModelError(f"model.source={source!r}: choose one of cnnlab, timm, torchvision")
    if aux_logits and hasattr(model, "aux_weight"):
        model.aux_weight = aux_weight
    if checkpoint:
        from cnnlab.models.weights import load_weights_file

        load_weights_file(model, checkpoint)  # ours, or the MogaNet release format
    return model
