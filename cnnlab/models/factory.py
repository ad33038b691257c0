"""``build_model``: a name and a source in, a ready ``nn.Module`` out."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from cnnlab.errors import CnnlabError, ModelError, first_line
from cnnlab.models.adapt import adapt_small_input, set_in_chans_torchvision
from cnnlab.models.registry import LEGACY_ARCHS, cnnlab_models, extra_kwargs, is_cnnlab_model
from cnnlab.models.weights import download_weights
from cnnlab.models.weights import reachable as _reachable

log = logging.getLogger("cnnlab.models.adapt")  # the small-input decisions, in one logger


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


def _takes(model: nn.Module, key: str) -> bool:
    """Whether ``model``'s ``__init__``, or a base class's, names ``key``.

    A class that swallows ``**kwargs`` accepts any keyword but ignores the size: only
    a named parameter means the model sized itself from it.
    """
    import inspect

    return any(key in inspect.signature(c.__init__).parameters
               for c in type(model).__mro__ if "__init__" in vars(c) and c is not nn.Module)


def _create_timm(arch: str, img_size: int, **kw: Any) -> tuple[nn.Module, bool]:
    """``timm.create_model`` with ``img_size`` where the model takes one; (model, took it).

    The model's class decides: ViT, DeiT, Swin, MaxViT, CoAtNet, EVA, LeViT ... take
    ``img_size`` and size their position embeddings, windows and grids from it; the
    others reject it at the call, before any layer is built, and are built without.
    """
    import timm

    if is_cnnlab_model(arch):  # AlexNet takes img_size (its classifier's width), MogaNet does not
        size = {"img_size": img_size} if "img_size" in extra_kwargs(arch) else {}
        return timm.create_model(arch, **kw, **size), False
    try:
        model = timm.create_model(arch, img_size=img_size, **kw)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return timm.create_model(arch, **kw), False
    sized = _takes(model, "img_size")
    if sized:
        log.info("small_input: %s: takes img_size=%d (sizes its own grid)", type(model).__name__, img_size)
    return model, sized


def _size_hint(source: str, arch: str) -> tuple[str, int]:
    """(what the model says about its input size, the dataset.image_size to suggest)."""
    if source == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        side = int(cfg.input_size[-1]) if cfg is not None else 224
        if cfg is not None and cfg.fixed_input_size:
            return f"fixed input size {side}x{side} in its pretrained_cfg", side
        if cfg is not None and cfg.min_input_size:
            low = int(cfg.min_input_size[-1])
            return f"minimum input size {low}x{low} in its pretrained_cfg", max(low, 224)
        return f"trained at {side}x{side}", side
    from torchvision import models as tvm

    try:
        meta = tvm.get_model_weights(arch).DEFAULT.meta
        low = int(meta["min_size"][-1])
        return f"minimum input size {low}x{low} in its weights' meta", max(low, 224)
    except (KeyError, ValueError, AttributeError):
        return "trained at 224x224", 224


def _size_error(source: str, arch: str, img_size: int, why: BaseException) -> ModelError:
    """The one-line refusal of a model that can't take ``img_size`` x ``img_size`` images."""
    said, side = _size_hint(source, arch)
    return ModelError(
        f"model.arch={arch!r} ({source}) can't take {img_size}x{img_size} images ({said}; "
        f"{first_line(why)}); use dataset.image_size={side}, which resizes every dataset's images"
    )


def check_input(model: nn.Module, source: str, arch: str, in_chans: int, img_size: int) -> None:
    """Probe ``model`` with one zero image (:func:`cnnlab.models.profile.probe`); a failure is a
    one-line ModelError.

    This is the build-time check that a model takes the dataset's images, so a size it
    can't take fails before training starts, not with a traceback at the first step.
    Skipped on the meta device (``cnnlab.inspect`` builds there).
    """
    import torch

    from cnnlab.models.profile import probe

    p = next(model.parameters(), None)
    if p is None or p.device.type == "meta":
        return
    try:
        probe(model, (in_chans, img_size, img_size))
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - shape errors come as RuntimeError, AssertionError, ...
        raise _size_error(source, arch, img_size, e) from None


def _build_timm(arch: str, pretrained: bool, num_classes: int, in_chans: int, drop_rate: float,
                drop_path_rate: float, img_size: int = 224, **cnnlab_kw: Any) -> tuple[nn.Module, bool]:
    """The timm model, and whether it took ``img_size`` (then small_input leaves it alone).

    ``cnnlab_kw`` (small_input, batch_norm; img_size too) go to cnnlab's own models, each
    only to the models that take it.
    """
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
        try:
            return _create_timm(arch, img_size, **kw)
        except TypeError as e:  # an argument this model doesn't take (drop_path_rate, in_chans ...)
            raise ModelError(f"timm {arch!r} can't be built with these settings ({first_line(e)})") from None
        except (ValueError, AssertionError, RuntimeError) as e:
            # e.g. a window or patch size that doesn't divide the image: one line, and the fix.
            raise _size_error("timm", arch, img_size, e) from None
    if is_cnnlab_model(arch):
        # cnnlab's models fetch their weights from the authors' release, not the HF hub, and
        # fail offline in one line themselves (cnnlab.models.weights).
        try:
            return timm.create_model(arch, pretrained=True, **kw), False
        except CnnlabError:
            raise
        except Exception as e:  # noqa: BLE001 - download, unpickling and shape errors
            raise ModelError(
                f"model.pretrained=true: the weights of {arch!r} could not be loaded ({first_line(e)}); "
                "use model.pretrained=false, or model.checkpoint=<file> for a local weights file"
            ) from None
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        with _hub_offline_unless_reachable():
            return _create_timm(arch, img_size, pretrained=True, **kw)
    except LocalEntryNotFoundError:
        raise ModelError(
            f"model.pretrained=true: the weights of timm {arch!r} are not in the Hugging Face cache "
            "and the hub can't be reached; go online once (they are cached in "
            "~/.cache/huggingface), or use model.pretrained=false"
        ) from None
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
        raise ModelError(
            f"model.pretrained=true: the weights of timm {arch!r} could not be loaded ({first_line(e)}); "
            "use model.pretrained=false, or model.checkpoint=<file> for a local weights file"
        ) from None


def _tv_get_model(tvm: Any, arch: str, img_size: int, **kw: Any) -> tuple[nn.Module, bool]:
    """``tvm.get_model`` with the input size where the model's class takes one; (model, took it).

    torchvision's ViT takes ``image_size`` (a side) and its MaxViT ``input_size`` (H, W);
    the others reject both at the call, before any layer is built.
    """
    for key, value in (("image_size", img_size), ("input_size", (img_size, img_size))):
        try:
            model = tvm.get_model(arch, **kw, **{key: value})
        except TypeError as e:
            if f"'{key}'" not in str(e):
                raise
            continue
        if not _takes(model, key):  # swallowed by **kwargs (MobileNetV3 takes any keyword)
            return model, False
        log.info("small_input: %s: takes %s=%s (sizes its own grid)", type(model).__name__, key, value)
        return model, True
    return tvm.get_model(arch, **kw), False


def _build_torchvision(arch: str, pretrained: bool, num_classes: int, in_chans: int,
                       drop_rate: float, aux_logits: bool, img_size: int = 224) -> tuple[nn.Module, bool]:
    """The torchvision model, and whether it took ``img_size`` (then small_input leaves it alone)."""
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
            download_weights(f"torchvision {arch!r}", weights.url, check_hash=True)
            model, sized = tvm.get_model(arch, weights=weights, **kw), False
        else:
            model, sized = _tv_get_model(tvm, arch, img_size, weights=None, num_classes=num_classes, **kw)
    except TypeError as e:  # an argument this model doesn't take
        raise ModelError(f"torchvision {arch!r} can't be built with these settings ({first_line(e)})") from None
    except (OSError, RuntimeError, ValueError, AssertionError) as e:
        if pretrained:
            raise ModelError(
                f"pretrained weights for torchvision {arch!r} could not be downloaded ({type(e).__name__}); "
                "go online once (they are cached in ~/.cache/torch), or use model.pretrained=false"
            ) from None
        raise _size_error("torchvision", arch, img_size, e) from None
    if pretrained and num_classes != 1000:
        from cnnlab.models.adapt import reset_torchvision_head

        reset_torchvision_head(model, num_classes)
    if in_chans != 3:
        set_in_chans_torchvision(model, in_chans, pretrained)
    if arch == "googlenet":
        from cnnlab.models.adapt import googlenet_with_aux_loss

        model = googlenet_with_aux_loss(model)
    return model, sized


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
    if source == "cnnlab":
        # Kept as an alias: cnnlab's models are timm models now (alexnet -> cnnlab_alexnet).
        if not is_cnnlab_model(LEGACY_ARCHS.get(arch, arch)):
            raise ModelError(f"model.arch={arch!r} is not a cnnlab model; choose one of "
                             f"{', '.join(cnnlab_models())}, or model.source=timm")
        source = "timm"
    if source == "timm":
        model, sized = _build_timm(arch, pretrained, num_classes, in_chans, drop_rate, drop_path_rate,
                                   img_size=img_size, small_input=small_input, batch_norm=batch_norm)
        # A model that took img_size has sized itself for the input; cnnlab's take small_input.
        if small_input and not sized and "small_input" not in extra_kwargs(LEGACY_ARCHS.get(arch, arch)):
            adapt_small_input(model, img_size)
        check_input(model, source, arch, in_chans, img_size)
    else:  # torchvision (model.source's choices are checked with the config)
        model, sized = _build_torchvision(arch, pretrained, num_classes, in_chans, drop_rate, aux_logits,
                                          img_size)
        if small_input and not sized:
            adapt_small_input(model, img_size)
        check_input(model, source, arch, in_chans, img_size)
    if aux_logits and hasattr(model, "aux_weight"):
        model.aux_weight = aux_weight
    if checkpoint:
        from cnnlab.models.weights import load_weights_file

        load_weights_file(model, checkpoint)  # ours, or the MogaNet release format
    return model


def instantiate_model(node: Any, **kwargs: Any) -> nn.Module:
    """``hydra.utils.instantiate(node, **kwargs)`` for a model node, re-raising a user error as itself.

    Hydra wraps whatever the target raises in an InstantiationException whose text is
    a repr and a traceback hint; ours (a bad weights file, an unknown arch) already say
    what is wrong in one line.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, CnnlabError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
