"""What an optimizer or scheduler ``_target_`` raises when it is built, as one line naming the key.

cnnlab/config.py has rules for the keys of the optimizers and schedules cnnlab ships.
Any other target (``optimizer._target_=torch.optim.RMSprop``) takes keywords the
schema cannot know, so they are checked by the target itself: torch raises a
``ValueError`` ("Invalid alpha value: -1") or a ``TypeError`` ("got an unexpected
keyword argument 'nesterov'"), and :func:`construction_errors` re-raises it as a
:class:`~cnnlab.errors.ConfigError` that names the key, its value and the target::

    with construction_errors("optimizer", cfg.optimizer):
        optimizer = make_optimizer(...)

Only the standard library at import: hydra, omegaconf and the target are imported
when an error has to be described.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from cnnlab.errors import ConfigError

# Words torch uses for a keyword in its messages, where they differ from the keyword.
_ALIASES = {"lr": ("learning rate",), "eps": ("epsilon",), "betas": ("beta",)}
_SPECIAL = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


@contextmanager
def construction_errors(section: str, node: Any) -> Iterator[None]:
    """Re-raise a ValueError/TypeError/InstantiationException of the block as one ConfigError line.

    ``section`` is the config key of the node (``optimizer``, ``scheduler``) and
    ``node`` its config (a DictConfig or a dict). A CnnlabError passes through as is.
    """
    from hydra.errors import InstantiationException

    try:
        yield
    except (ValueError, TypeError, InstantiationException) as e:
        raise ConfigError(describe_construction_error(section, node, e)) from e


def describe_construction_error(section: str, node: Any, e: BaseException) -> str:
    """``<section>.<key>=<value> is not accepted by <target>: <what torch said>``, or the closest line."""
    settings = _plain(node)
    target = str(settings.get("_target_", "?"))
    said = _first_line(e)
    if "Error locating target" in str(e):
        # Hydra's cause: "Error loading 'x.Y':\nModuleNotFoundError(...)\nAre you sure ...?"
        lines = [line.strip() for line in str(e.__cause__ or e).splitlines() if line.strip()]
        why = lines[-1] if lines else said
        return (f"{section}._target_={target!r} cannot be imported ({why}): use an import path such as "
                f"{'torch.optim.SGD' if section == 'optimizer' else 'cnnlab.schedulers.cosine'}")
    keys = {k: v for k, v in settings.items() if k not in _SPECIAL}
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", said)
    if unexpected and unexpected.group(1) in keys:
        key = unexpected.group(1)
        takes = _keywords(target)
        listed = f" (it takes {', '.join(takes)})" if takes else ""
        return (f"{section}.{key}={keys[key]!r} is not accepted by {target}{listed}: "
                f"remove it with '~{section}.{key}'")
    key = _named_key(said, keys)
    if key is not None:
        return f"{section}.{key}={keys[key]!r} is not accepted by {target}: {said}"
    shown = ", ".join(f"{k}={v!r}" for k, v in keys.items())
    return f"{section} {target} cannot be built with {shown or 'no keywords'}: {said}"


def _named_key(said: str, keys: Mapping[str, Any]) -> str | None:
    """The keyword a torch message is about: by name, by torch's word for it, or by a value's type."""
    low = said.lower()
    for key in sorted(keys, key=len, reverse=True):  # weight_decay before decay
        if re.search(rf"(?<![\w]){re.escape(key.lower())}(?![\w])", low):
            return key
    for key in keys:
        if any(word in low for word in _ALIASES.get(key, ())):
            return key
    # "'<=' not supported between instances of 'float' and 'str'": the one key holding a str
    types = set(re.findall(r"'(\w+)'", said))
    typed = [k for k, v in keys.items() if type(v).__name__ in types and not isinstance(v, (int, float))]
    return typed[0] if len(typed) == 1 else None


def _keywords(target: str) -> list[str]:
    """The keyword parameters of ``target`` after the first (params / optimizer), or [] if unknown."""
    import inspect

    try:
        from hydra.utils import get_object

        params = list(inspect.signature(get_object(target)).parameters.values())
    except Exception:  # noqa: BLE001 - only a hint: the message stands without it
        return []
    return [p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _plain(node: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return dict(OmegaConf.to_container(node, resolve=False))
    return dict(node) if isinstance(node, Mapping) else {}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
