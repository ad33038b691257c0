"""Experiment trackers (``tracker=none|mlflow|wandb``, conf/tracker/): the run folder stays the record.

The training process never imports mlflow or wandb. With a tracker chosen it starts one worker
process (``python -m cnnlab.tracking.worker``, niced) and writes one JSON line to its stdin at the
start, once per epoch and at the end. The worker does the slow part (importing the library, the
store's set-up, uploads), so the loop neither waits for it nor fails with it: a worker that fails
says so in one warning and stops; the run goes on. ``python -m cnnlab.track import <folders>``
puts any run folder in later, without duplicates (matched by summary.json's ``run_id``).

A backend (mlflow_tracker.MlflowTracker, wandb_tracker.WandbTracker) is the ``_target_`` of the
tracker node, built in the worker with the node's other keys, and has the methods of
:class:`Backend`. Standard library only at import.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("cnnlab")

NONE_TARGET = "cnnlab.tracking.NoTracker"  # conf/tracker/none.yaml
# Keys of a tracker node that the training process reads; the worker gets the others.
PROCESS_KEYS = ("_target_", "wait")


class Backend(Protocol):
    """What a tracker does, in the worker process (one instance per run)."""

    def start(self, run_dir: Path, run_id: str, config: dict[str, Any], sweep_dir: Path | None,
              env: dict[str, Any]) -> None: ...
    def log_epoch(self, row: dict[str, Any]) -> None: ...
    def finish(self, summary: dict[str, Any], run_dir: Path) -> None: ...


def new_run_id() -> str:
    return uuid.uuid4().hex


def run_id_of(summary: dict[str, Any], run_dir: Path) -> str:
    """summary.json's ``run_id``; for a folder from before it existed, one derived from its path
    (the same on every import, so a folder is matched again)."""
    return summary.get("run_id") or uuid.uuid5(uuid.NAMESPACE_URL, str(Path(run_dir).resolve())).hex


def sweep_dir_of(run_dir: Path) -> Path | None:
    """The sweep folder a multirun job's folder sits in (Hydra writes multirun.yaml there first)."""
    parent = Path(run_dir).resolve().parent
    return parent if (parent / "multirun.yaml").exists() else None


class NoTracker:
    """``tracker=none``: every call does nothing."""

    enabled = False

    def log_epoch(self, row: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


class WorkerTracker:
    """The training process's side: JSON lines to a worker process; never raises, never blocks
    (a pipe write of a few hundred bytes), except :meth:`finish` with ``wait``."""

    enabled = True

    def __init__(self, node: dict[str, Any], messages: list[dict[str, Any]], wait: bool) -> None:
        self.name = str(node["_target_"]).rsplit(".", 1)[-1]
        self.wait = wait
        self.proc: subprocess.Popen | None = None
        try:
            self.proc = spawn_worker()
        except OSError as e:
            self._fail(e)
            return
        for msg in messages:
            self._send(msg)

    def _fail(self, e: BaseException) -> None:
        if self.enabled:
            log.warning("tracker %s is off for the rest of this run (%s); the run folder keeps everything: "
                        "python -m cnnlab.track import <run folder>", self.name, e)
        self.enabled = False

    def _send(self, msg: dict[str, Any]) -> None:
        if not self.enabled or self.proc is None:
            return
        try:
            self.proc.stdin.write(json.dumps(msg, default=str) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):  # the worker is gone: it said why on stderr
            self.enabled = False

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._send({"op": "epoch", "row": row})

    def finish(self, summary: dict[str, Any]) -> None:
        """The run's end: the worker logs the rest and exits; ``wait``: until it has (bounded)."""
        self._send({"op": "finish", "summary": summary})
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            if self.wait:
                self.proc.wait(timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            self._fail(e)


def spawn_worker() -> subprocess.Popen:
    """``python -m cnnlab.tracking.worker`` reading JSON lines; its own session, so a Ctrl-C of
    the run reaches the run alone and the worker still logs how it ended."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "cnnlab.tracking.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env, start_new_session=True)


def start_tracker(node: dict[str, Any], run_dir: Path, run_id: str, config: dict[str, Any],
                  env: dict[str, Any], enabled: bool = True) -> NoTracker | WorkerTracker:
    """The run's tracker: nothing for ``tracker=none`` (or a DDP rank > 0), else a worker told to
    start the run. ``node``: the resolved tracker config; ``config``: the whole resolved config."""
    if not enabled or node.get("_target_") in (None, NONE_TARGET):
        return NoTracker()
    backend = {k: v for k, v in node.items() if k not in PROCESS_KEYS[1:]}
    sweep = sweep_dir_of(run_dir)
    start = {"op": "start", "node": backend, "run_dir": str(Path(run_dir).resolve()), "run_id": run_id,
             "config": config, "env": env, "sweep_dir": str(sweep) if sweep else None}
    return WorkerTracker(node, [start], wait=bool(node.get("wait", False)))
