"""The tracker's part of a multirun's end (a Hydra callback, conf/hydra/default.yaml).

The jobs make the sweep's parent run when the first of them starts (cnnlab/tracking/mlflow_tracker.py:
any launcher, any process); at the end this attaches the comparison report to it and ends it. Listed
before ``comparison`` in the callbacks: Hydra calls ``on_multirun_end`` in reverse order, so the
report is written by then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab.tracking import NONE_TARGET, PROCESS_KEYS, spawn_worker


class SweepTracker(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import logging

        from cnnlab.reporting.callbacks import sweep_exit_code

        node = OmegaConf.to_container(config.tracker, resolve=True) if "tracker" in config else {}
        if node.get("_target_") in (None, NONE_TARGET):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        files = [str(sweep_dir / f"comparison.{ext}") for ext in ("csv", "md", "png")]
        msg = {"op": "sweep_end", "node": {k: v for k, v in node.items() if k not in PROCESS_KEYS[1:]},
               "sweep_dir": str(sweep_dir), "files": files, "failed": bool(sweep_exit_code())}
        try:
            proc = spawn_worker()
            proc.stdin.write(json.dumps(msg) + "\n")
            proc.stdin.close()
            if node.get("wait"):
                proc.wait(timeout=600)
        except Exception as e:  # noqa: BLE001 - the sweep folder keeps the report
            logging.getLogger("cnnlab").warning("tracker: the sweep's parent run did not get the report (%s)", e)
