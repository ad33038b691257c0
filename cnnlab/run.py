"""``python -m cnnlab.run [overrides]``: the thin Hydra entry point.

All the work is in ``cnnlab.train.train(cfg)``; this file only composes the config,
turns a user error into one line on stderr, and hands the best val accuracy back
to Hydra (which is what a sweeper such as Optuna maximises). Nothing heavy is
imported at module level, so ``--help`` and ``--cfg job`` are instant.

Errors reach the user as one line on stderr, ``error: <what is wrong and what is
allowed>``, with no traceback: ours (CnnlabError), and Hydra's and OmegaConf's own
composition errors, which :func:`cli` catches and rewrites (see docs/errors.md).
Exit status: 0 completed, 1 diverged (or a sweep with a job that did not
complete), 2 a bad input, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM).
A bug keeps its traceback; HYDRA_FULL_ERROR=1 shows every error's traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys

import hydra
from omegaconf import DictConfig

from cnnlab.config import register_schema
from cnnlab.errors import CnnlabError
from cnnlab.resume import register_resolvers

log = logging.getLogger("cnnlab")
register_schema()
register_resolvers()  # cnnlab_run_dir / cnnlab_hydra_subdir, used by conf/hydra/default.yaml

# Set once Hydra hands the config to main: an OSError before that is Hydra failing to
# create the run folder (hydra.run.dir) or its run.log.
_job_started = False


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Train one configuration; return its best val accuracy (NaN if it failed)."""
    from cnnlab.train import train

    global _job_started
    _job_started = True
    try:
        summary = train(cfg)
    except CnnlabError as e:
        log.error("%s", e)
        if _is_multirun():
            _record_failure(cfg, str(e))
            return _no_score()  # recorded in summary.json; the sweep goes on
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if not _is_multirun():
            raise
        # Hydra's basic sweeper re-raises a job's exception once its batch is done,
        # which would abort the sweep before the report. One broken job should not
        # cost the others their report: log the traceback to run.log, return NaN,
        # and let the report (and the exit status) say it failed.
        log.exception("job failed: %s: %s", type(e).__name__, e)
        _record_failure(cfg, f"{type(e).__name__}: {e}")
        return _no_score()
    if summary.get("status") == "diverged" and not _is_multirun():
        print(f"error: diverged: {summary.get('error')}", file=sys.stderr)
        sys.exit(1)
    best = summary.get("best_val_acc")
    return float(best) if best is not None and best >= 0 else _no_score()


def _no_score() -> float:
    """What a job without a val accuracy returns: NaN, or the worst value under Optuna.

    hydra-optuna-sweeper 1.2 aborts the whole study on a NaN (optuna rejects it, and
    the sweeper's fallback then fails too), so there a failed trial scores -inf when
    maximising (+inf when minimising): the study goes on and never picks it.
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        sweeper = HydraConfig.get().sweeper
        if "optuna" in str(sweeper.get("_target_", "")).lower():
            return float("inf") if str(sweeper.get("direction", "")).endswith("minimize") else float("-inf")
    return float("nan")


def _record_failure(cfg: DictConfig, error: str) -> None:
    """Leave a failed summary.json when the job died before train() wrote one."""
    from omegaconf import OmegaConf

    from cnnlab.track import record_failure

    try:
        record_failure(OmegaConf.select(cfg, "paths.output_dir"), error,
                       model=OmegaConf.select(cfg, "model.name"),
                       dataset=OmegaConf.select(cfg, "dataset.name"))
    except Exception:  # noqa: BLE001 - never let the bookkeeping hide the real error
        log.exception("could not record the failure in summary.json")


def cli() -> None:
    """``python -m cnnlab.run``: main(), then exit 1 if a multirun had a job that did not complete.

    Hydra prints its own errors (an unknown option, a wrong type, an unknown key) over
    several lines. With HYDRA_FULL_ERROR set it raises them instead, so it is set for
    the call and :func:`describe_error` makes each one line; a user who set it
    themselves gets Hydra's full tracebacks as usual.
    """
    from cnnlab.callbacks import sweep_exit_code
    from cnnlab.dist import rank_overrides
    from cnnlab.signals import Interrupted

    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        # torchrun ranks > 0: a throwaway Hydra folder, so the run has one folder, rank 0's.
        sys.argv += rank_overrides(sys.argv[1:])
        if {"--help", "-h"} & set(sys.argv[1:]):
            from cnnlab.help import help_text  # Hydra's --help takes seconds; see cnnlab/help.py

            print(help_text([a for a in sys.argv[1:] if not a.startswith("-")]))
            return
        main()
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        message = None if user_wants_traceback else describe_error(e, job_started=_job_started)
        if message is None:
            raise  # a bug: keep the traceback
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if not user_wants_traceback:
            os.environ.pop("HYDRA_FULL_ERROR", None)  # not inherited by anything started later
    sys.exit(sweep_exit_code())


def describe_error(e: BaseException, job_started: bool = True) -> str | None:
    """One line for an error the user can fix, or None for a bug (which keeps its traceback)."""
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
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
        return (f"an override cannot be parsed ({first_line(e)}): write key=value, e.g. trainer.epochs=5 "
                "(grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(e, ConfigCompositionException):
        cause = e.__cause__
        if isinstance(cause, ValidationError) and cause.full_key:
            return f"{cause.full_key}={cause.value}: wrong type: {first_line(cause)}"
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
            return f"{cause.full_key} is not a config key{_suggest_key(str(cause.full_key))}"
        return " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    for c in chain:
        if isinstance(c, OSError) and c.filename:
            where = ("cannot create the run folder or its run.log: choose a writable hydra.run.dir"
                     if not job_started else "a file or folder the run needs cannot be written or read")
            return f"{where} ({c.strerror or first_line(c)}: {c.filename!r})"
    return None


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


if __name__ == "__main__":
    cli()
