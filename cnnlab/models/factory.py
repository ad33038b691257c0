"""``build_model``: a name and a source in, a ready ``nn.Module`` out."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
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
    """Put huggingface_hub in offline mode (read per request) while its host can't be reached:
    it would otherwise retry for about a minute; offline, a cache miss fails at once."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = was or not _reachable(constants.ENDPOINT)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def _takes(model: nn.Module, key: str) -> bool:
    """Whether ``model``'s ``__init__``, or a base class's, names ``key`` (a class that
    swallows ``**kwargs`` accepts any keyword but did not size itself from it)."""
    import inspect

    return any(key in inspect.signature(c.__init__).parameters
               for c in type(model).__mro__ if "__init__" in vars(c) and c is not nn.Module)


def _create_sized(create: Callable[..., nn.Module], sizes: dict[str, Any], **kw: Any) -> tuple[nn.Module, bool]:
    """``create(**kw)`` with the first input-size keyword of ``sizes`` the model's class takes;
    (model, took one). timm's ViT, Swin, MaxViT ... (``img_size``) and torchvision's ViT
    (``image_size``) and MaxViT (``input_size``) size their grids from it; the others reject
    it at the call, before any layer is built.
    """
    for key, value in sizes.items():
        try:
            model = create(**kw, **{key: value})
        except TypeError as e:
            if f"'{key}'" not in str(e):
                raise
            continue
        if not _takes(model, key):  # swallowed by **kwargs (MobileNetV3 takes any keyword)
            return model, False
        log.info("small_input: %s: takes %s=%s (sizes its own grid)", type(model).__name__, key, value)
        return model, True
    return create(**kw), False


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
    said, side = _size_hint(source, arch)
    return ModelError(
        f"model.arch={arch!r} ({source}) can't take {img_size}x{img_size} images ({said}; "
        f"{first_line(why)}); use dataset.image_size={side}, which resizes every dataset's images"
    )


@contextmanager
def _build_errors(source: str, arch: str, img_size: int, pretrained: bool) -> Iterator[None]:
    """A library's error while ``arch`` is built (and its weights loaded), as one ModelError line."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        yield
    except CnnlabError:  # cnnlab's models and downloads fail in one line themselves (weights.py)
        raise
    except LocalEntryNotFoundError:
        raise ModelError(
            f"model.pretrained=true: the weights of timm {arch!r} are not in the Hugging Face cache "
            "and the hub can't be reached; go online once (they are cached in "
            "~/.cache/huggingface), or use model.pretrained=false"
        ) from None
    except TypeError as e:  # an argument this model doesn't take (drop_path_rate, in_chans ...)
        raise ModelError(f"{source} {arch!r} can't be built with these settings ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - hub, network, unpickling and shape errors come in many types
        if pretrained:
            raise ModelError(
                f"model.pretrained=true: the weights of {source} {arch!r} could not be loaded ({first_line(e)}); "
                "use model.pretrained=false, or model.checkpoint=<file> for a local weights file"
            ) from None
        if isinstance(e, (ValueError, AssertionError, RuntimeError)):
            # e.g. a window or patch size that doesn't divide the image: one line, and the fix.
            raise _size_error(source, arch, img_size, e) from None
        raise


def check_input(model: nn.Module, source: str, arch: str, in_chans: int, img_size: int) -> None:
    """Probe ``model`` with one zero image (:func:`cnnlab.models.profile.probe`) so a size it
    can't take fails in one ModelError line at build time, not at the first step.
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


def _build_timm(arch: str, pretrained: bool, img_size: int, **kw: Any) -> tuple[nn.Module, bool]:
    """The timm model, and whether it sized itself for ``img_size`` (then small_input leaves it
    alone). ``kw``'s cnnlab-only keys (small_input, batch_norm) go to the models that take them."""
    import timm

    if not timm.is_model(arch) and arch in LEGACY_ARCHS:
        # A name from before cnnlab's models were timm models (a run saved with
        # model.arch=alexnet resumes with it); timm's own models take precedence.
        arch = LEGACY_ARCHS[arch]
    if not timm.is_model(arch):
        raise ModelError(
            f"model.arch={arch!r} is not a timm model; closest: {_closest(arch, timm.list_models())}"
        )
    extra = extra_kwargs(arch)
    kw = {k: v for k, v in kw.items() if k not in ("small_input", "batch_norm") or k in extra}
    if kw["drop_path_rate"] <= 0:
        del kw["drop_path_rate"]
    if is_cnnlab_model(arch):
        # AlexNet takes img_size (its classifier's width), MogaNet does not; both take small_input.
        # Their weights come from the authors' release, not the HF hub (cnnlab.models.weights).
        sizes, hub = {}, nullcontext()
        kw.update({"img_size": img_size} if "img_size" in extra else {})
    else:
        sizes, hub = {"img_size": img_size}, _hub_offline_unless_reachable() if pretrained else nullcontext()
    with _build_errors("timm", arch, img_size, pretrained), hub:
        model, sized = _create_sized(timm.create_model, sizes, model_name=arch, pretrained=pretrained, **kw)
    return model, sized or "small_input" in extra


def _build_torchvision(arch: str, pretrained: bool, img_size: int, num_classes: int, in_chans: int,
                       drop_rate: float, aux_logits: bool) -> tuple[nn.Module, bool]:
    """The torchvision model, and whether it sized itself for ``img_size`` (then small_input leaves it alone)."""
    from torchvision import models as tvm

    from cnnlab.models.adapt import googlenet_with_aux_loss, reset_torchvision_head

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
    with _build_errors("torchvision", arch, img_size, pretrained):
        if pretrained:
            weights = tvm.get_model_weights(arch).DEFAULT
            download_weights(f"torchvision {arch!r}", weights.url, check_hash=True)
            model, sized = tvm.get_model(arch, weights=weights, **kw), False
        else:
            sizes = {"image_size": img_size, "input_size": (img_size, img_size)}
            model, sized = _create_sized(tvm.get_model, sizes, name=arch, weights=None, num_classes=num_classes, **kw)
    if pretrained and num_classes != 1000:
        reset_torchvision_head(model, num_classes)
    if in_chans != 3:
        set_in_chans_torchvision(model, in_chans, pretrained)
    if arch == "googlenet":
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
    freeze: str = "none",
    unfreeze_epoch: int | None = None,
    reset_head: bool = False,
) -> nn.Module:
    """Build ``arch`` from ``source`` with the dataset's classes and channels.

    ``small_input`` adapts an ImageNet stem to 32x32 images; ``checkpoint`` loads a
    weights file on top (a state dict or a checkpoint that holds one; ``reset_head``: all but the
    classifier, which stays freshly initialised: transfer to new classes). ``name`` is
    the config's label, kept for reports; ``sync_bn`` is applied by the DDP wrapper.
    """
    del name, sync_bn, freeze, unfreeze_epoch  # used elsewhere (DDP, cnnlab/recipes/freeze.py); accepted
    # so every config is a valid call
    if source == "cnnlab":
        # Kept as an alias: cnnlab's models are timm models now (alexnet -> cnnlab_alexnet).
        if not is_cnnlab_model(LEGACY_ARCHS.get(arch, arch)):
            raise ModelError(f"model.arch={arch!r} is not a cnnlab model; choose one of "
                             f"{', '.join(cnnlab_models())}, or model.source=timm")
        source = "timm"
    if source == "timm":
        model, sized = _build_timm(arch, pretrained, img_size, num_classes=num_classes, in_chans=in_chans,
                                   drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                                   small_input=small_input, batch_norm=batch_norm)
    else:  # torchvision (model.source's choices are checked with the config)
        model, sized = _build_torchvision(arch, pretrained, img_size, num_classes, in_chans, drop_rate, aux_logits)
    if small_input and not sized:  # a model that sized itself (or takes small_input) is left alone
        adapt_small_input(model, img_size)
    check_input(model, source, arch, in_chans, img_size)
    if aux_logits and hasattr(model, "aux_weight"):
        model.aux_weight = aux_weight
    if checkpoint:
        from cnnlab.models.weights import load_weights_file

        load_weights_file(model, checkpoint, reset_head)  # ours, or the MogaNet release format
    return model


def instantiate_model(node: Any, **kwargs: Any) -> nn.Module:
    """``hydra.utils.instantiate(node, **kwargs)``, re-raising a CnnlabError cause as itself
    (Hydra's InstantiationException text is a repr and a traceback hint; ours is one line)."""
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
