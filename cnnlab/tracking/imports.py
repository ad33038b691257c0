"""``python -m cnnlab.track import <run or sweep folders...> [tracker=mlflow] [tracker.key=value...]``

Puts run folders into the tracker after the fact: runs trained with ``tracker=none``, runs whose
tracker failed, runs from another machine. Each folder is matched by summary.json's ``run_id``
(a folder without one: an id derived from its path), so importing again adds only what is missing:
the params, metric steps and tags the store lacks; the files are uploaded again, in place.
Runs in this process (it waits), with the same backends as a live run (cnnlab/tracking/).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

USAGE = ("usage: python -m cnnlab.track import <run or sweep folders...> [tracker=mlflow|wandb] "
         "[tracker.<key>=<value>...]")


STORES = {"mlartifacts", "mlruns", "wandb"}  # trackers' folders: their summary.json copies are not runs


def run_folders(paths: list[Path]) -> list[Path]:
    """The run folders (those holding summary.json) at or under ``paths``, each once, in order."""
    found: list[Path] = []
    for p in paths:
        for s in [p / "summary.json"] if (p / "summary.json").is_file() else sorted(p.rglob("summary.json")):
            if STORES.isdisjoint(s.relative_to(p).parts) and s.parent.resolve() not in found:
                found.append(s.parent.resolve())
    return found


def _config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config from .hydra/config.yaml (its Hydra-only interpolations as written)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    cfg = OmegaConf.load(path)
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir), force_add=True)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - ${hydra:...} and the like: keep the text
        return OmegaConf.to_container(cfg, resolve=False)


def import_run(backend: Any, run_dir: Path) -> int:
    """One run folder into ``backend``; returns the epochs it had to add."""
    from cnnlab.lifecycle.record import read_summary
    from cnnlab.tracking import run_id_of, sweep_dir_of

    summary = read_summary(run_dir) or {}
    backend.start(run_dir, run_id_of(summary, run_dir), _config(run_dir), sweep_dir_of(run_dir),
                  summary.get("env") or {})
    rows = []
    if (run_dir / "metrics.csv").is_file():
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    before = sum(len(v) for v in getattr(backend, "logged", {}).values())
    for row in rows:
        backend.log_epoch(row)
    added = sum(len(v) for v in getattr(backend, "logged", {}).values()) - before
    backend.finish(summary, run_dir)
    return added


def main(argv: list[str]) -> int:
    from cnnlab.compose import compose
    from cnnlab.errors import ConfigError
    from cnnlab.tracking import NONE_TARGET, PROCESS_KEYS
    from cnnlab.tracking.worker import build

    if not argv or argv[0] != "import" or len(argv) < 2:
        raise ConfigError(USAGE)
    overrides = [a for a in argv[1:] if "=" in a]
    paths = [Path(a) for a in argv[1:] if "=" not in a]
    if not any(o.startswith("tracker=") for o in overrides):
        overrides.insert(0, "tracker=mlflow")
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise ConfigError(f"{missing[0]}: no such folder")
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(compose(overrides).tracker, resolve=True)
    if node["_target_"] == NONE_TARGET:
        raise ConfigError("tracker=none has nothing to import into: use tracker=mlflow or tracker=wandb")
    folders = run_folders(paths)
    node = {k: v for k, v in node.items() if k not in PROCESS_KEYS[1:]}
    for run_dir in folders:
        added = import_run(build(node), run_dir)
        print(f"{run_dir}: {added} metric values added", flush=True)
    print(f"imported {len(folders)} run folder(s) into {node.get('tracking_uri') or node['_target_']}")
    return 0


def cli() -> None:
    from cnnlab.errors import CnnlabError

    try:
        sys.exit(main(sys.argv[1:]))
    except CnnlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
