"""The tracker's worker process: ``python -m cnnlab.tracking.worker`` reads JSON lines on stdin.

Messages (cnnlab/tracking/__init__.py writes them):
    {"op": "start", "node": {...}, "run_dir", "run_id", "config", "env", "sweep_dir"}
    {"op": "epoch", "row": {epoch, train_loss, ...}}          one per epoch
    {"op": "finish", "summary": {...}}                         then stdin closes
    {"op": "sweep_end", "node": {...}, "sweep_dir", "files"}   a multirun's end (parent run)

It runs niced, so on a busy CPU it takes what the training leaves. The first failure is one
warning on stderr; the worker then stops (the training process sees a closed pipe and stops
sending), and the run folder can be imported later.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PACKAGE_OF = {"MlflowTracker": "mlflow", "WandbTracker": "wandb"}


def build(node: dict[str, Any]) -> Any:
    """The backend the node's ``_target_`` names, built with its other keys."""
    import importlib

    module, _, name = str(node["_target_"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as e:
        package = PACKAGE_OF.get(name, e.name or "?")
        raise RuntimeError(f"tracker needs the {package} package: pip install -e '.[track]' "
                           f"(or pip install {package})") from None
    return cls(**{k: v for k, v in node.items() if k != "_target_"})


def handle(msg: dict[str, Any], state: dict[str, Any]) -> None:
    op = msg["op"]
    if op == "start":
        state["backend"] = backend = build(msg["node"])
        state["run_dir"] = Path(msg["run_dir"])
        backend.start(state["run_dir"], msg["run_id"], msg["config"],
                      Path(msg["sweep_dir"]) if msg.get("sweep_dir") else None, msg.get("env") or {})
    elif op == "epoch":
        state["backend"].log_epoch(msg["row"])
    elif op == "finish":
        state["backend"].finish(msg["summary"], state["run_dir"])
    elif op == "sweep_end":
        build(msg["node"]).sweep_end(Path(msg["sweep_dir"]), [Path(f) for f in msg["files"]], msg["failed"])
    else:
        raise ValueError(f"unknown message {op!r}")


def main() -> int:
    try:
        os.nice(int(os.environ.get("CNNLAB_TRACKER_NICE", "10")))  # the training comes first
    except OSError:
        pass
    state: dict[str, Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        try:
            handle(msg, state)
        except Exception as e:  # noqa: BLE001 - one warning, then stop: the run folder is the record
            where = state.get("run_dir") or msg.get("sweep_dir") or ""
            print(f"warning: tracker failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}) "
                  f"and is off for the rest of the run; the run folder keeps everything: "
                  f"python -m cnnlab.track import {where}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
