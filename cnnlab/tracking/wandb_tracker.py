"""``tracker=wandb``: one W&B run per cnnlab run, a multirun's jobs grouped by their sweep folder.

Runs in the tracker's worker process, one run per process, ended with ``finish()`` (W&B merges
the jobs of a multirun into one run otherwise). The W&B run id is summary.json's ``run_id``, so a
resume continues it (``resume="allow"``). Its files go to ``<run folder>/wandb/``;
``WANDB_MODE=offline`` (or ``tracker.mode=offline``) needs no account: ``wandb sync`` uploads later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnlab.tracking.env import flat
from cnnlab.tracking.mlflow_tracker import EPOCH_KEYS, _number


class WandbTracker:
    """Backend of cnnlab/tracking (conf/tracker/wandb.yaml's keys)."""

    def __init__(self, project: str = "cnnlab", entity: str | None = None, mode: str | None = None,
                 group: str | None = None, tags: list[str] | None = None) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")  # its banner and links: not in the run's console
        import wandb

        self.wandb = wandb
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags = [str(t) for t in tags or []]
        self.run: Any = None

    def start(self, run_dir: Path, run_id: str, config: dict[str, Any], sweep_dir: Path | None,
              env: dict[str, Any]) -> None:
        self.run = self.wandb.init(
            project=self.project, entity=self.entity, mode=self.mode, id=run_id, resume="allow",
            name=run_dir.name, dir=str(run_dir), config={**config, "env": env},
            group=self.group or (sweep_dir.name if sweep_dir else None),
            job_type="sweep-job" if sweep_dir else "run", tags=self.tags or None)

    def log_epoch(self, row: dict[str, Any]) -> None:
        values = {k: _number(row.get(k)) for k in EPOCH_KEYS}
        self.run.log({"epoch": int(float(row["epoch"])), **{k: v for k, v in values.items() if v is not None}},
                     step=int(float(row["epoch"])))

    def finish(self, summary: dict[str, Any], run_dir: Path) -> None:
        """The summary (test metrics, per-class F1, status, fit, env) into the run's summary; finish."""
        fields = {k: v for k, v in flat({k: v for k, v in summary.items() if k != "test_per_class"}).items()
                  if isinstance(v, (int, float, str, bool))}
        for row in summary.get("test_per_class") or []:
            fields[f"test_f1.{row.get('class')}"] = row.get("f1")
        self.run.summary.update(fields)
        self.run.finish(exit_code=0 if summary.get("status") in ("completed", "trained") else 1)

    def sweep_end(self, sweep_dir: Path, files: list[Path], failed: bool) -> None:
        """W&B has no parent run: the jobs share their group, and the report stays in the sweep folder."""
