"""``python -m cnnlab.run [overrides]``: the thin Hydra entry point around ``cnnlab.train.train``.

It returns the best val accuracy to Hydra (what a sweeper such as Optuna maximises); errors
leave through :func:`cnnlab.errors.run_main` (docs/errors.md), except in a multirun, where a
failing job is recorded and the sweep goes on. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.config import register_schema
from cnnlab.errors import ConfigError, describe, exit_status, first_line, hydra_task, run_main
from cnnlab.lifecycle.resume import register_resolvers

log = logging.getLogger("cnnlab")
register_schema()
register_resolvers()  # cnnlab_run_dir / cnnlab_hydra_subdir, used by conf/hydra/default.yaml


class ClaimRunFolder(Callback):
    """Claim ``hydra.run.dir`` before Hydra writes its .hydra/ and run.log there; refuse a folder
    that holds a run unless this launch resumes it (train() checks the rest with the claim held).
    A torchrun rank > 0 claims nothing: its Hydra folder is a throwaway (cnnlab.dist.rank_overrides),
    and the run folder is rank 0's to claim."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import atexit
        from pathlib import Path

        from cnnlab.dist import env_ranks
        from cnnlab.lifecycle.record import claim_run_dir, used_folder_error

        if env_ranks()[0] > 0:
            return
        try:  # Hydra turns a callback's exception into a warning and goes on: end here
            try:
                claim = claim_run_dir(Path(str(config.hydra.run.dir)))
            except OSError as e:
                raise _folder_error(e) from e
            if claim.traces and not (config.resume or config.trainer.auto_resume):
                claim.release(undo=True)
                raise used_folder_error(claim.run_dir, claim.traces)
        except Exception as e:
            sys.exit(exit_status(e))
        atexit.register(claim.release)  # also when the job ends before train() (released there)


def _folder_error(e: OSError) -> ConfigError:
    return ConfigError(f"cannot create the run folder or its run.log ({e.strerror or first_line(e)}: "
                       f"{e.filename!r}): choose a writable hydra.run.dir (hydra.sweep.dir with -m)")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@hydra_task
def main(cfg: DictConfig) -> float:
    """Train one configuration; return its best val accuracy (NaN if it failed)."""
    from cnnlab.train import train

    try:
        summary = train(cfg)
    except Exception as e:
        if not _is_multirun():
            raise  # hydra_task: one line and the exit status
        # Hydra's basic sweeper re-raises a job's exception after its batch, aborting the sweep
        # before the report: log it (a bug with its traceback), and let the report say it failed.
        message = describe(e)
        if message is None:
            log.exception("job failed: %s: %s", type(e).__name__, e)
        else:
            log.error("%s", message)
        _record_failure(cfg, message or f"{type(e).__name__}: {first_line(e)}")
        return _no_score()
    if summary.get("status") == "diverged" and not _is_multirun():
        print(f"error: diverged: {summary.get('error')}", file=sys.stderr)
        sys.exit(1)
    best = summary.get("best_val_acc")
    return float(best) if best is not None and best >= 0 else _no_score()


def _no_score() -> float:
    """What a job without a val accuracy returns: NaN, or under Optuna the worst value (-inf when
    maximising): hydra-optuna-sweeper 1.2 aborts the whole study on a NaN."""
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


def _cli() -> int:
    """main(), then exit 1 if a multirun had a job that did not complete."""
    from cnnlab.dist import rank_overrides
    from cnnlab.reporting.callbacks import sweep_exit_code

    # torchrun ranks > 0: a throwaway Hydra folder, so the run has one folder, rank 0's.
    sys.argv += rank_overrides(sys.argv[1:])
    if {"--help", "-h"} & set(sys.argv[1:]):
        from cnnlab.help import help_text  # Hydra's --help takes seconds; see cnnlab/help.py

        print(help_text([a for a in sys.argv[1:] if not a.startswith("-")]))
        return 0
    try:
        main()
    except OSError as e:  # in-job errors end in the job: this is Hydra making the run folder or its log
        if e.filename is None:
            raise
        raise _folder_error(e) from e
    return sweep_exit_code()


def cli() -> None:
    """``python -m cnnlab.run`` (and the ``cnnlab`` command)."""
    sys.exit(run_main(_cli))


if __name__ == "__main__":
    cli()
