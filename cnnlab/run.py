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
            return float("nan")  # recorded in summary.json; the sweep goes on
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    best = summary.get("best_val_acc")
    return float(best) if best is not None else float("nan")


if __name__ == "__main__":
    main()
