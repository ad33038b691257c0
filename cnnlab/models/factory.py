"""``build_model``: a name and a source in, a ready ``nn.Module`` out."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from cnnlab.errors import ModelError
from cnnlab.models.adapt import adapt_small_input, set_in_chans_torchvision


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return ", ".join(close) if close else "none close"


def _build_cnnlab(arch: str, **kw: Any) -> nn.Module:
    from cnnlab.models.alexnet import AlexNet

    registry = {"alexnet": AlexNet}
    if arch not in registry:
        raise ModelError(f"model.arch={arch!r} is not a cnnlab model; choose one of {', '.join(registry)}")
    return registry[arch](**kw)


def _build_timm(arch: str, pretrained: bool, num_classes: int, in_chans: int, small_input: bool,
                drop_rate: float, drop_path_rate: float) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        raise ModelError(
            f"model.arch={arch!r} is not a timm model; closest: {_closest(arch, timm.list_models())}"
        )
    kw: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if drop_path_rate > 0:
        kw["drop_path_rate"] = drop_path_rate
    if arch.startswith("moganet"):
        # Our MogaNet takes small_input itself (stage-1 convs at stride 1).
        kw["small_input"] = small_input
    try:
        return timm.create_model(arch, pretrained=pretrained, **kw)
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
        if pretrained:
            raise ModelError(
                f"pretrained weights for {arch!r} could not be loaded ({type(e).__name__}); "
                "they download from the Hugging Face hub: go online, or use model.pretrained=false"
            ) from None
        raise


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
        model = _build_cnnlab(arch, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                              small_input=small_input, drop_rate=drop_rate, batch_norm=batch_norm)
    elif source == "timm":
        model = _build_timm(arch, pretrained, num_classes, in_chans, small_input, drop_rate, drop_path_rate)
        if small_input and not arch.startswith("moganet"):
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
        from cnnlab.checkpoint import load_weights

        load_weights(model, checkpoint)
    return model
