"""The cost of tracker=mlflow: the default run's wall time with it and with tracker=none.

    python scripts/bench_tracker.py [--repeats 3] [ARGS...]

Each repeat runs `python -m cnnlab.run` once with tracker=none and once with tracker=mlflow
(interleaved, so a change in the machine's load hits both), in a temp folder; extra ARGS go to
both (e.g. trainer.epochs=1). It also reports when the tracker's worker had everything (it runs
niced and may end after the run), and `--help` / `--cfg job` start-up times (mlflow not imported).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(args: list[str], cwd: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab.run", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def worker_done(cwd: str, timeout: float = 300) -> float:
    """Seconds until no tracker worker of ours runs (it may outlive the run)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        out = subprocess.run(["pgrep", "-f", "cnnlab.tracking.worker"], capture_output=True, text=True).stdout
        if not out.strip():
            break
        time.sleep(0.2)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("args", nargs="*", help="overrides for both runs")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        startup = {flag: min(timed([flag], tmp) for _ in range(3)) for flag in ("--help", "--cfg=job")}
        timed(["tracker=mlflow", "trainer.epochs=1", "dataset.limit=64", *a.args], tmp)  # the store's schema, once
        worker_done(tmp)
        none, tracked, tails = [], [], []
        for i in range(a.repeats):
            none.append(timed(["tracker=none", *a.args], tmp))
            tracked.append(timed(["tracker=mlflow", *a.args], tmp))
            tails.append(worker_done(tmp))
            print(f"repeat {i + 1}: none {none[-1]:.1f} s, mlflow {tracked[-1]:.1f} s "
                  f"(+ the worker {tails[-1]:.1f} s after)", flush=True)
    n, m = statistics.median(none), statistics.median(tracked)
    print(f"\nwall time, median of {a.repeats}: tracker=none {n:.1f} s, tracker=mlflow {m:.1f} s: "
          f"{100 * (m / n - 1):+.1f}% (target <= +3%); the worker finished a median "
          f"{statistics.median(tails):.1f} s after the run")
    print(f"start-up (best of 3): --help {startup['--help']:.2f} s, --cfg job {startup['--cfg=job']:.2f} s "
          "(target < 1.5 s)")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
