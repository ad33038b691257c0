"""Time ``python -m cnnlab.inspect`` for every conf/model entry at 32x32: uncached, then cached.

    .venv/bin/python scripts/bench_inspect.py [--dataset cifar10] [--write docs/inspect_timing.md]

Each call is a fresh process, as a user runs it, with an empty cache of its own
(CNNLAB_CACHE_DIR in a temp folder): the first call per model computes the table
(importing torch, torchvision and timm), the second reads it from the cache.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import cpu_name, emit

REPO = Path(__file__).resolve().parents[1]
GENERIC = {"timm", "torchvision"}  # need model.arch=...: not a model of their own


def _timed(args: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cnnlab.inspect", *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"inspect {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--write", default=None, help="write a Markdown report here")
    a = ap.parse_args()

    models = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml") if p.stem not in GENERIC)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO), "CNNLAB_CACHE_DIR": f"{tmp}/cache"}
        for m in models:
            args = [f"model={m}", f"dataset={a.dataset}"]
            cold = _timed(args, env, tmp)
            cached = _timed(args, env, tmp)
            rows.append((m, cold, cached))
            print(f"{m:20s} uncached {cold:5.2f} s   cached {cached:5.2f} s", flush=True)

    colds, hits = [r[1] for r in rows], [r[2] for r in rows]
    lines = [
        "# Layer-shape inspector: time to answer",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}. Measured "
        f"{time.strftime('%Y-%m-%d')} with `.venv/bin/python scripts/bench_inspect.py`.",
        "Each call is a fresh `python -m cnnlab.inspect model=<m> dataset="
        f"{a.dataset}` process with an empty cache of its own. *Uncached* computes the table "
        "(and imports torch, torchvision and timm); *cached* is the same call again.",
        "",
        "| model | uncached | cached |",
        "|---|---|---|",
        *[f"| {m} | {c:.2f} s | {h:.2f} s |" for m, c, h in rows],
        f"| **median** | **{statistics.median(colds):.2f} s** | **{statistics.median(hits):.2f} s** |",
        f"| max | {max(colds):.2f} s | {max(hits):.2f} s |",
        "",
    ]
    emit(lines, a.write)


if __name__ == "__main__":
    main()
