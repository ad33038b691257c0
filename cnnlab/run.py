"""``python -m cnnlab.run [overrides]``: the thin Hydra entry point.

All the work is in ``cnnlab.train.train(cfg)``; this file only composes the config,
turns a user error into one line on stderr, and hands the best val accuracy back
to Hydra (which is what a sweeper such as Optuna maximises). Nothing heavy is
imported at module level, so ``--help`` and ``--cfg job`` are instant.

Errors reach the user as one line on stderr, ``error: <what is wrong and what is
allowed>``, with no traceback: ours (CnnlabError), and Hydra's and OmegaConf's own
composition errors, which :func:`cli` catches and :mod:`cnnlab.cli_errors` rewrites
(see docs/errors.md).
Exit status: 0 completed, 1 diverged (or a sweep with a job that did not
complete), 2 a bad input, 3 an unexpected error (a bug), 128 + N stopped by signal N
(130 Ctrl-C, 143 SIGTERM). A bug is one line too, naming the log file that holds its
traceback (the run folder's run.log); HYDRA_FULL_ERROR=1 shows every traceback on
the terminal instead. ``--help`` and ``--cfg job`` piped into ``head`` exit quietly.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback

import hydra
from omegaconf import DictConfig

from cnnlab.config import register_schema
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.lifecycle.resume import register_resolvers

log = logging.getLogger("cnnlab")
register_schema()
register_resolvers()  # cnnlab_run_dir / cnnlab_hydra_subdir, used by conf/hydra/default.yaml

# Set once Hydra hands the config to main: an OSError before that is Hydra failing to
# create the run folder (hydra.run.dir) or its run.log.
_job_started = False
# HYDRA_FULL_ERROR=1 as the user set it (cli() sets it for Hydra either way).
_user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
EXIT_BUG = 3
# Flags that only print (help, the config): killed quietly by SIGPIPE, as CLI tools are.
_PRINT_ONLY = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Train one configuration; return its best val accuracy (NaN if it failed)."""
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab.cli_errors import describe_error
    from cnnlab.train import train

    global _job_started
    _job_started = True
    try:
        try:
            summary = train(cfg)
        except OmegaConfBaseException as e:
            # A value the config cannot give, found when train reads it (a ${key} naming
            # no key): one line, like the errors Hydra meets while composing.
            message = describe_error(e)
            if message is None:
                raise
            raise ConfigError(message) from e
    except CnnlabError as e:
        log.error("%s", e)
        if _is_multirun():
            _record_failure(cfg, str(e))
            return _no_score()  # recorded in summary.json; the sweep goes on
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if not _is_multirun():
            if _user_wants_traceback or describe_error(e, argv=sys.argv[1:]) is not None:
                raise  # HYDRA_FULL_ERROR=1, or an error cli() makes one line (a file that cannot be written)
            # A bug (ours or a library's): one line here, the traceback in run.log.
            where = _log_traceback(e)
            print(f"error: {_bug_line(e, where)}", file=sys.stderr)
            sys.exit(EXIT_BUG)
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


def _bug_line(e: BaseException, log_file: str) -> str:
    """The one line a bug gets: its type, its message's first line and where the traceback is."""
    lines = str(e).strip().splitlines()
    return (f"unexpected {type(e).__name__}: {lines[0] if lines else 'no message'} (a bug, not a bad input; "
            f"the full traceback is in {log_file}; HYDRA_FULL_ERROR=1 prints it here)")


def _log_traceback(e: BaseException) -> str:
    """Write e's traceback to the run's log file only (not the console); return that file's path.

    Hydra's job logging gives the root logger a console handler and a FileHandler on
    the run folder's run.log. Before the job (or with logging disabled) there is no
    file handler: the traceback goes to a fresh file in the temp folder.
    """
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if files:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "unexpected error: %s: %s",
                                (type(e).__name__, e), (type(e), e, e.__traceback__))
        for handler in files:
            handler.handle(record)
            handler.flush()
        return files[0].baseFilename
    import tempfile

    fd, name = tempfile.mkstemp(prefix="cnnlab-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(f"cnnlab.run {' '.join(sys.argv[1:])}\n")
        traceback.print_exception(e, file=f)
    return name


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

    from cnnlab.lifecycle.record import mark_failed

    try:
        mark_failed(OmegaConf.select(cfg, "paths.output_dir"), error,
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
    from cnnlab.cli_errors import describe_error
    from cnnlab.dist import rank_overrides
    from cnnlab.lifecycle.signals import Interrupted
    from cnnlab.reporting.callbacks import sweep_exit_code

    global _user_wants_traceback
    user_wants_traceback = _user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if _PRINT_ONLY & set(sys.argv[1:]) and hasattr(signal, "SIGPIPE"):
        # `--help | head -1`: die quietly when the reader goes away, like cat or grep.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
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
    except BrokenPipeError:
        # stdout's reader went away (`... | head`): nothing left to say, and no one to say it to.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(128 + 13)  # as if killed by SIGPIPE
    except Exception as e:
        if user_wants_traceback:
            raise
        message = describe_error(e, job_started=_job_started, argv=sys.argv[1:])
        if message is None:  # a bug before the job started: one line, the traceback in a file
            print(f"error: {_bug_line(e, _log_traceback(e))}", file=sys.stderr)
            sys.exit(EXIT_BUG)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if not user_wants_traceback:
            os.environ.pop("HYDRA_FULL_ERROR", None)  # not inherited by anything started later
    sys.exit(sweep_exit_code())


if __name__ == "__main__":
    cli()
