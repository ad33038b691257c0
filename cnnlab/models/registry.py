"""cnnlab's models (AlexNet, MogaNet) in timm's registry, so the factory builds every model
through one timm path; ``register(extra_kwargs=...)`` records the keywords a model takes
beyond timm's common ones (``small_input``, AlexNet's ``img_size`` and ``batch_norm``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

_logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# entrypoint name -> the cnnlab-specific kwargs its model takes (besides num_classes, in_chans,
# drop_rate, ...). Filled by `register`.
_EXTRA_KWARGS: dict[str, tuple[str, ...]] = {}

# Names a config could use with `model.source=cnnlab` before the models were registered in
# timm (the source is kept as an alias): the short name -> the timm name.
LEGACY_ARCHS: dict[str, str] = {"alexnet": "cnnlab_alexnet"}


def register(extra_kwargs: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorator: ``timm.models.register_model``, guarded against double registration: a
    reload of the defining module re-registers; a name another module owns (a copy of the
    file imported under another name, a future timm model) is left alone."""

    def deco(fn: F) -> F:
        import timm.models

        name = fn.__name__
        if timm.models.is_model(name):
            owner = timm.models.model_entrypoint(name).__module__
            if owner != fn.__module__:
                _logger.info("timm model %r already registered by %s; not re-registering", name, owner)
                return fn
        with warnings.catch_warnings():  # our own reload: replace without timm's overwrite warning
            warnings.simplefilter("ignore")
            timm.models.register_model(fn)
        _EXTRA_KWARGS[name] = tuple(extra_kwargs)
        return fn

    return deco


def is_cnnlab_model(arch: str) -> bool:
    """True for a timm name whose entrypoint cnnlab defines (``moganet_tiny``, ``cnnlab_alexnet``)."""
    import timm.models

    return timm.models.is_model(arch) and timm.models.model_entrypoint(arch).__module__.startswith("cnnlab.")


def cnnlab_models() -> list[str]:
    """Every model cnnlab registers, read from timm's registry (sorted)."""
    import timm

    import cnnlab.models  # noqa: F401  (imports the modules that register)

    return [n for n in timm.list_models() if is_cnnlab_model(n)]


def extra_kwargs(arch: str) -> tuple[str, ...]:
    """The cnnlab-specific constructor kwargs of ``arch`` (empty for timm's own models)."""
    return _EXTRA_KWARGS.get(arch, ()) if is_cnnlab_model(arch) else ()
