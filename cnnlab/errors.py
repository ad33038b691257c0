"""cnnlab's errors, and the one error boundary every ``python -m cnnlab.*`` entry point runs in.

A bad input reaches the user as one line on stderr, ``error: <message>``, exit status 2,
no traceback. The line is ours (a :class:`CnnlabError`, whose message is the whole
story), Hydra's or OmegaConf's (:func:`describe` builds it from the exceptions'
attributes: the key, the value, the options), or a library's own first line, prefixed
with the config section being built (:func:`construction_errors`). Anything else is a
bug: one line naming the file that holds its traceback, exit status 3. Ctrl-C and
SIGTERM exit 130 and 143. The statuses and every message: docs/errors.md.
Only the standard library is imported at module level.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_USER, EXIT_BUG = 2, 3
# Flags that only print (help, the config): `... | head` ends them quietly by SIGPIPE, as it ends cat.
_PRINT_ONLY = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
# HYDRA_FULL_ERROR=1 as the user set it: every traceback in full. run_main sets it for Hydra
# either way, so that Hydra raises its errors instead of printing them over several lines.
_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"


class CnnlabError(Exception):
    """A user-facing error; its message is the whole story."""


class ConfigError(CnnlabError):
    """A config value is out of range or not one of the allowed choices."""


class DataError(CnnlabError):
    """A dataset cannot be found, read or downloaded."""


class ModelError(CnnlabError):
    """A model name is unknown, or weights don't fit the model."""


class CheckpointError(CnnlabError):
    """A checkpoint is missing, corrupt, unsafe, or belongs to another model."""


class DeviceError(CnnlabError):
    """The requested device is not available."""


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, or its type's name when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0].strip() if lines else type(e).__name__


@contextmanager
def construction_errors(section: str, node: Any) -> Iterator[None]:
    """Re-raise what building a config section raises as ``<section> (<target>): <its first line>``.

    For a ``_target_`` the schema cannot know (``optimizer._target_=torch.optim.RMSprop``),
    whose keywords only the target itself checks::

        with construction_errors("optimizer", cfg.optimizer):
            optimizer = instantiate(cfg.optimizer)(params)
    """
    from hydra.errors import InstantiationException

    try:
        yield
    except (ValueError, TypeError, InstantiationException) as e:
        cause: BaseException = e
        while cause.__cause__ is not None:  # Hydra wraps the target's own error (or the import's)
            cause = cause.__cause__
        if isinstance(cause, CnnlabError):
            raise cause from None
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        raise ConfigError(f"{section} ({target}): {first_line(cause)}") from e


def describe(e: BaseException) -> str | None:
    """The one line for an error the user can fix, or None for a bug."""
    from hydra import errors as he
    from omegaconf import errors as oce

    chain: list[BaseException] = []
    c: BaseException | None = e
    while c is not None and c not in chain:
        chain.append(c)
        c = c.__cause__ or c.__context__
    for c in chain:  # ours, also when Hydra or OmegaConf wrapped it (a resolver's)
        if isinstance(c, CnnlabError):
            return str(c)
    if isinstance(e, he.MissingConfigException) and e.missing_cfg_file:  # model=alexnett
        group, _, name = e.missing_cfg_file.rpartition("/")
        return f"{group}={name} is not an option of {group}: choose one of {', '.join(e.options or [])}"
    if isinstance(e, he.OverrideParseException):  # trainer.epochs=[
        return (f"the override {e.override!r} cannot be parsed ({first_line(e)}): write key=value, "
                "e.g. trainer.epochs=5")
    found = [c for c in chain if isinstance(c, oce.OmegaConfBaseException)]
    if found:
        oc = next((c for c in found if c.full_key), found[0])
        key = oc.full_key or ""
        if isinstance(oc, (oce.ConfigAttributeError, oce.ConfigKeyError)) and key:  # trainer.epoch=3
            return f"{key} is not a config key{_near_keys(oc)}"
        if key.startswith("[") and isinstance(e, he.ConfigCompositionException):
            # An item of a list value (dataset.mean=['${']): OmegaConf knows only its index,
            # Hydra's own first line names the override ("Error merging override ...").
            return f"{first_line(e)}: {first_line(oc)}"
        if key and oc.value is not None:  # trainer.epochs=abc, model.name='${'
            return f"{key}={oc.value!r}: {first_line(oc)}"
        # An interpolation read by `key` failed: the innermost OmegaConf error says why.
        said = first_line(found[-1]) + (f" (reading {key})" if key else "")
        if any(isinstance(c, oce.MissingMandatoryValue) for c in found):  # model=timm: model.arch is ???
            return f"{said}: it is ??? in the config; set it on the command line"
        return said + _cfg_hydra_hint()
    if isinstance(e, he.ConfigCompositionException):  # Hydra's own words, on one line
        return " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    for c in chain:
        if isinstance(c, OSError) and c.filename:
            return f"cannot write or read {c.filename!r}: {c.strerror or first_line(c)}"
    return None


def _near_keys(e: Any) -> str:
    """'; did you mean trainer.epochs?', else the keys next to the unknown one."""
    import difflib

    keys = [str(k) for k in e.parent_node.keys() if k != "hydra"] if e.parent_node is not None else []
    parent = e.full_key.rpartition(".")[0]
    close = difflib.get_close_matches(str(e.key), keys, n=1)
    if close:
        return f"; did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"; the keys of {parent or 'the config'}: {', '.join(keys)}" if keys else ""


def _cfg_hydra_hint() -> str:
    """Hydra deletes every other key before it resolves the hydra node: say what works instead."""
    args = sys.argv[1:]
    if any(a in ("--cfg", "-c") and args[i + 1:i + 2] == ["hydra"] for i, a in enumerate(args)):
        return ("; `--cfg hydra --resolve` cannot resolve hydra.run.dir, which reads ${model.name}, "
                "${dataset.name} and ${resume}: use `--cfg all --resolve`")
    return ""


def run_main(main: Callable[..., int | None], *args: Any) -> int:
    """The error boundary of every ``python -m cnnlab.*``: ``main(*args)``'s exit status, or the error's::

        if __name__ == "__main__":
            sys.exit(run_main(main))  # main returns an exit status (None: 0)

    A Hydra task runs inside it too, under :func:`hydra_task`.
    """
    global _full_error
    _full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if _PRINT_ONLY & set(sys.argv[1:]) and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return main(*args) or 0
    except (Exception, KeyboardInterrupt) as e:
        return exit_status(e)
    finally:
        if not _full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)  # not inherited by anything started later


def hydra_task(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A Hydra task in the boundary: an error ends the job here, so Hydra adds no "Error executing
    job" line and a bug's traceback goes to the job's run.log. Put it under ``@hydra.main``."""

    @functools.wraps(fn)  # Hydra finds config_path from the task's module
    def task(cfg: Any) -> Any:
        try:
            return fn(cfg)
        except Exception as e:
            sys.exit(exit_status(e))

    return task


def exit_status(e: BaseException) -> int:
    """Say ``e`` on one line of stderr and return the exit status it means (docs/errors.md)."""
    from cnnlab.lifecycle.signals import Interrupted

    if isinstance(e, KeyboardInterrupt):
        print(f"interrupted: {e}" if isinstance(e, Interrupted) else "interrupted", file=sys.stderr)
        return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT
    if isinstance(e, BrokenPipeError):  # stdout's reader went away (`... | head`): no one to tell
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as if killed by SIGPIPE
    if _full_error:
        raise e
    message = describe(e)
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER
    print(f"error: unexpected {type(e).__name__}: {first_line(e)} (a bug, not a bad input; the full traceback "
          f"is in {log_traceback(e)}; HYDRA_FULL_ERROR=1 prints it here)", file=sys.stderr)
    return EXIT_BUG


def log_traceback(e: BaseException) -> str:
    """Write ``e``'s traceback to the run's log file only (a Hydra job's run.log, else a fresh
    ``cnnlab-error-*.log`` in the temp folder); return that file's path."""
    import traceback

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if files:
        log = logging.getLogger("cnnlab")
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "unexpected error: %s: %s",
                                (type(e).__name__, e), (type(e), e, e.__traceback__))
        for handler in files:
            handler.handle(record)
            handler.flush()
        return files[0].baseFilename
    import tempfile

    fd, name = tempfile.mkstemp(prefix="cnnlab-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(" ".join(sys.argv) + "\n")
        traceback.print_exception(e, file=f)
    return name
