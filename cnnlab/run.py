"""``python -m cnnlab.run [overrides]``: the thin Hydra entry point.

All the work is in ``cnnlab.train.train(cfg)``; this file only composes the config,
turns a user error into one line on stderr, and hands the best val accuracy back
to Hydra (which is what a sweeper such as Optuna maximises). Nothing heavy is
imported at module level, so ``--help`` and ``--cfg job`` are instant.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from cnnlab.config import register_schema
from cnnlab.errors import CnnlabError

log = logging.getLogger("cnnlab")
register_schema()


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Train one configuration; return its best val accuracy (NaN if it failed)."""
    from cnnlab.train import train

    try:
        summary = train(cfg)
    except CnnlabError as e:
        log.error("%s", e)
        if _is_multirun():
            _record_failure(cfg, str(e))
            return float("nan")  # recorded in summary.json; the sweep goes on
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
        return float("nan")
    best = summary.get("best_val_acc")
    return float(best) if best is not None else float("nan")


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
    """``python -m cnnlab.run``: main(), then exit 1 if a multirun had a job that did not complete."""
    from cnnlab.callbacks import sweep_exit_code

    main()
    sys.exit(sweep_exit_code())


if __name__ == "__main__":
    cli()
