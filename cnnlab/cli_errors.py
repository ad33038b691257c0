"""Hydra's and OmegaConf's errors, rewritten as the one line a user can act on.

``python -m cnnlab.run`` sets HYDRA_FULL_ERROR so that Hydra raises its errors instead
of printing them over several lines; :func:`describe_error` turns each one the user
can fix into ``<what is wrong>: <what is allowed>``, and returns None for a bug, which
keeps its traceback. Every message here has a row in docs/errors.md, and a test.
"""

from __future__ import annotations

import re

from cnnlab.errors import CnnlabError


def describe_error(e: BaseException, job_started: bool = True, argv: list[str] | None = None) -> str | None:
    """One line for an error the user can fix, or None for a bug (which keeps its traceback).

    ``argv`` (the command line) adds a hint where the cause is the command, not a value.
    """
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        GrammarParseError,
        InterpolationKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
        ValidationError,
    )

    def first_line(x: BaseException) -> str:
        text = str(x).strip()
        return text.splitlines()[0] if text else type(x).__name__

    chain, c = [], e
    while c is not None and c not in chain:
        chain.append(c)
        c = c.__cause__ or c.__context__
    # Ours, also when Hydra or OmegaConf wrapped it (a resolver's, an instantiate's).
    for c in chain:
        if isinstance(c, CnnlabError):
            return str(c)
    for c in chain:  # a `???` value, e.g. model=timm without model.arch
        if isinstance(c, MissingMandatoryValue):
            found = re.search(r"Missing mandatory value: ?([\w.]+)", str(c))
            key = found.group(1) if found else c.full_key
            return f"{key} has no value: set it on the command line, e.g. {key}=<value>"
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        allowed = f"choose one of {', '.join(e.options)}" if e.options else f"conf/{group}/ has no options"
        return f"{group}={name} is not an option of {group}: {allowed}"
    if isinstance(e, OverrideParseException):
        which = f" {e.override!r}" if getattr(e, "override", None) else ""
        return (f"an override{which} cannot be parsed ({first_line(e)}): write key=value, e.g. trainer.epochs=5 "
                "(grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(e, ConfigCompositionException):
        cause = e.__cause__
        if isinstance(cause, ValidationError) and cause.full_key:
            value = cause.value
            # 'abc' shows as abc (as typed); text with spaces or a newline as its repr, on one line.
            shown = value if isinstance(value, str) and value.isprintable() and " " not in value else repr(value)
            return f"{cause.full_key}={shown}: wrong type: {first_line(cause).rstrip('.')}{_allowed(str(cause.full_key))}"
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
            return f"{cause.full_key} is not a config key{_suggest_key(str(cause.full_key))}"
        if isinstance(cause, GrammarParseError):  # model.name='${': a broken interpolation
            override = first_line(e).removeprefix("Error merging override ")
            return f"{override}: a broken interpolation ({first_line(cause)}){_INTERPOLATION_HELP}"
        return " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    for c in chain:  # ${key} naming no key, e.g. trainer.epochs='${trainer.epoch}'
        if isinstance(c, InterpolationKeyError):
            where = f" in {c.full_key}" if c.full_key else ""
            args = argv or []
            cfg_hydra = any(a in ("--cfg", "-c") and args[i + 1:i + 2] == ["hydra"] for i, a in enumerate(args))
            # Hydra deletes every other key before it resolves the hydra node.
            hint = ("; `--cfg hydra --resolve` cannot resolve hydra.run.dir, which reads ${model.name}, "
                    "${dataset.name} and ${resume}: use `--cfg all --resolve`" if cfg_hydra else "")
            return f"an interpolation{where} names no key ({first_line(c)}){hint}"
    for c in chain:  # ${oc.env:NOPE}, a broken ${...}: found when the value is read
        if isinstance(c, (InterpolationResolutionError, GrammarParseError)):
            where = f" in {c.full_key}" if getattr(c, "full_key", None) else ""
            return f"an interpolation{where} cannot be resolved ({first_line(c)}){_INTERPOLATION_HELP}"
    for c in chain:
        if isinstance(c, OSError) and c.filename:
            where = ("cannot create the run folder or its run.log: choose a writable hydra.run.dir"
                     if not job_started else "a file or folder the run needs cannot be written or read")
            return f"{where} ({c.strerror or first_line(c)}: {c.filename!r})"
    return None


_INTERPOLATION_HELP = ("; ${key} reads a config key, ${oc.env:VAR,default} an environment variable, "
                       "and a literal $ is written \\$")


def _allowed(full_key: str) -> str:
    """'; use an integer >= 1': what the key's rule allows (cnnlab/config.py RULES), or ''."""
    from cnnlab.config import RULES

    rule = RULES.get(re.sub(r"\[\d+\]", "", full_key))  # dataset.std[0] -> dataset.std
    return f"; {rule.allowed}" if rule else ""


def _suggest_key(full_key: str) -> str:
    """'; did you mean trainer.epochs?' for a near miss of a schema key, else a pointer."""
    import dataclasses
    import difflib

    from cnnlab.config import Config

    node: object = Config
    *parents, leaf = full_key.split(".")
    for part in parents:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            node = None
            break
        f = fields[part]
        node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        node = type(node)
    keys = [f.name for f in dataclasses.fields(node)] if node and dataclasses.is_dataclass(node) else []
    close = difflib.get_close_matches(leaf, keys, n=1)
    prefix = ".".join(parents + [""])
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    if keys:
        return f"; keys under {prefix.rstrip('.') or 'the root'}: {', '.join(keys)}"
    return "; `python -m cnnlab.run --cfg job` lists every key"
