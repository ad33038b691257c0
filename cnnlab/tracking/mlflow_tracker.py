"""``tracker=mlflow``: one MLflow run per cnnlab run, through MLflow's own client (MlflowClient).

Runs in the tracker's worker process (cnnlab/tracking/worker.py) and in ``python -m cnnlab.track
import``. A run is found again by its tag ``cnnlab.run_id`` (summary.json's ``run_id``), so a
resumed run continues its MLflow run and an import adds only what is missing. A multirun's jobs
are children (tag ``mlflow.parentRunId``) of one parent run per sweep folder, made by whichever
process needs it first, under a file lock beside the SQLite store (jobs of a parallel launcher
run in other processes), which also keeps two writers from meeting in SQLite.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnnlab.tracking.env import flat

# summary.json's status -> MLflow's run status
STATUS = {"completed": "FINISHED", "trained": "FINISHED", "failed": "FAILED", "diverged": "FAILED",
          "interrupted": "KILLED", "running": "RUNNING"}
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds")
MAX_PARAM = 6000  # MLflow's longest param value (a longer one is refused)


def absolute_uri(uri: str) -> str:
    """``sqlite:///outputs/mlflow.db`` (relative to where the run was started, as Hydra's outputs/
    is) -> ``sqlite:////abs/outputs/mlflow.db``, its folder made; any other URI unchanged."""
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(os.path.abspath(uri.removeprefix("sqlite:///")))
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class MlflowTracker:
    """Backend of cnnlab/tracking (conf/tracker/mlflow.yaml's keys)."""

    def __init__(self, tracking_uri: str, experiment: str = "cnnlab", tags: dict[str, Any] | None = None,
                 log_checkpoint: bool = False) -> None:
        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." (after the
            logging.getLogger(name).setLevel(logging.WARNING)  # import: mlflow sets its level there)

        self.uri = absolute_uri(tracking_uri)
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.log_checkpoint = bool(log_checkpoint)
        with self.lock():
            self.client = MlflowClient(self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is not None:
                self.experiment_id = exp.experiment_id
            else:  # artifacts beside the database, not in ./mlruns of whatever folder this runs in
                where = (str(Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts")
                         if self.uri.startswith("sqlite:///") else None)
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=where)
        self.run_id: str | None = None
        self.logged: dict[str, set[int]] = {}  # metric -> steps already in the store

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on ``<store>.lock`` for a SQLite store (one cnnlab writer at a time)."""
        if not self.uri.startswith("sqlite:///"):
            yield
            return
        import fcntl

        with open(self.uri.removeprefix("sqlite:///") + ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def find(self, tag: str, value: str) -> Any:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                       max_results=1)
        return runs[0] if runs else None

    def parent(self, sweep_dir: Path) -> str:
        """The sweep's parent run id, made if no process has made it yet (call with the lock held)."""
        run = self.find("cnnlab.sweep", str(sweep_dir))
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=f"sweep {sweep_dir.name}",
                                         tags={"cnnlab.sweep": str(sweep_dir), **self.tags})
        return run.info.run_id

    # ---- one run ---------------------------------------------------------------------------
    def start(self, run_dir: Path, run_id: str, config: dict[str, Any], sweep_dir: Path | None,
              env: dict[str, Any]) -> None:
        """Make the run (or find it again: a resume, an import) and log its params and tags."""
        from mlflow.entities import Param, RunTag

        c = self.client
        tags = {"cnnlab.run_id": run_id, "cnnlab.run_dir": str(run_dir), "status": "running", **self.tags,
                "model": str((config.get("model") or {}).get("name")),
                "dataset": str((config.get("dataset") or {}).get("name")), **self._env_tags(env)}
        with self.lock():
            if sweep_dir is not None:
                tags.update({"mlflow.parentRunId": self.parent(sweep_dir), "cnnlab.in_sweep": str(sweep_dir)})
            run = self.find("cnnlab.run_id", run_id)
            if run is None:
                # The run's own start (env.started), not the worker's: the worker may start late.
                run = c.create_run(self.experiment_id, run_name=run_dir.name, start_time=_ms(env.get("started")))
                have: dict[str, str] = {}
            else:
                c.update_run(run.info.run_id, status="RUNNING")
                self.logged = {k: {m.step for m in c.get_metric_history(run.info.run_id, k)}
                               for k in run.data.metrics}
                have = run.data.params
            self.run_id = run.info.run_id
            # A resumed run may change a key (trainer.epochs): MLflow keeps a param's first value.
            params = [Param(k, str(v)[:MAX_PARAM]) for k, v in flat(config).items() if k not in have]
            run_tags = [RunTag(k, v) for k, v in tags.items()]
            for i in range(0, max(len(params), 1), 100):  # MLflow takes at most 100 params a batch
                c.log_batch(self.run_id, params=params[i:i + 100], tags=run_tags if i == 0 else [])

    @staticmethod
    def _env_tags(env: dict[str, Any]) -> dict[str, str]:
        tags = {f"env.{k}": str(v) for k, v in flat(env).items() if v is not None and k != "git.commit"}
        commit = (env.get("git") or {}).get("commit")
        if commit:
            tags.update({"git_commit": commit, "mlflow.source.git.commit": commit})
        return tags

    def _metrics(self, values: dict[str, Any], step: int) -> list[Any]:
        """MLflow Metrics of the finite ``values`` not already in the store at ``step``."""
        from mlflow.entities import Metric

        ms, now = [], int(time.time() * 1000)
        for k, v in values.items():
            x = _number(v)
            if x is not None and step not in self.logged.get(k, ()):
                self.logged.setdefault(k, set()).add(step)
                ms.append(Metric(k, x, now, step))
        return ms

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One metrics.csv row, at step = its epoch."""
        metrics = self._metrics({k: row.get(k) for k in EPOCH_KEYS}, int(float(row["epoch"])))
        if metrics:
            with self.lock():
                self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any], run_dir: Path) -> None:
        """Test metrics and per-class F1, tags, the run folder's files, and the run's status."""
        from mlflow.entities import RunTag

        c, step = self.client, int(summary.get("best_epoch") or 0)
        values = {k: v for k, v in summary.items()
                  if k in ("best_val_acc", "train_seconds", "images_per_second") or k.startswith("test_")}
        for row in summary.get("test_per_class") or []:
            values[f"test_f1.{_safe(row.get('class'))}"] = row.get("f1")
        fit = summary.get("fit")
        tags = {"status": str(summary.get("status")),
                "fit": str(fit.get("verdict") if isinstance(fit, dict) else fit),
                **self._env_tags(summary.get("env") or {})}
        with self.lock():
            c.log_batch(self.run_id, metrics=self._metrics(values, step),
                        tags=[RunTag(k, v) for k, v in tags.items()])
            for name, where in (("summary.json", None), ("metrics.csv", None), (".hydra/config.yaml", "hydra")):
                if (run_dir / name).is_file():
                    c.log_artifact(self.run_id, str(run_dir / name), where)
            if (run_dir / "test_report").is_dir():
                c.log_artifacts(self.run_id, str(run_dir / "test_report"), "test_report")
            best = run_dir / "checkpoints" / "best.pt"
            if self.log_checkpoint and best.is_file():
                c.log_artifact(self.run_id, str(best), "checkpoints")
            status = STATUS.get(str(summary.get("status")), "FAILED")
            if status != "RUNNING":  # ended when the run ended (env.ended), not when the worker caught up
                c.set_terminated(self.run_id, status, end_time=_ms((summary.get("env") or {}).get("ended")))

    # ---- a multirun's end ----------------------------------------------------------------
    def sweep_end(self, sweep_dir: Path, files: list[Path], failed: bool) -> None:
        """The comparison report onto the sweep's parent run, which then ends."""
        with self.lock():
            run_id = self.parent(sweep_dir)
            for f in files:
                if f.is_file():
                    self.client.log_artifact(run_id, str(f))
            self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def _ms(iso: Any) -> int | None:
    """An ISO 8601 time (env.py's ``started``/``ended``) in ms since the epoch; None if absent or bad."""
    import datetime

    try:
        return int(datetime.datetime.fromisoformat(str(iso)).timestamp() * 1000) if iso else None
    except ValueError:
        return None


def _safe(name: Any) -> str:
    """A class name as part of a metric key (MLflow allows letters, digits, _ - . / and spaces)."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in str(name))
