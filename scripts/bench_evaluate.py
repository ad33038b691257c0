"""Time ``python -m cnnlab.evaluate`` on the default run's test split (target: <= 10 s wall, start-up included).

    .venv/bin/python scripts/bench_evaluate.py [--run RUN] [--repeats 3] [--picture docs/img/confusion_digits.png]

Without ``--run`` it first trains the default run (``python -m cnnlab.run``: AlexNet on
digits, 5 epochs, what ``make run`` does) into a temp folder. Then it runs the
evaluation ``--repeats`` times as a fresh process each (what a user waits for), each
into its own ``out=`` folder, and prints the wall times (median, min, max), the
accuracy and the run's own test_acc. ``--picture`` copies the last confusion.png
there (the README's picture).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished run folder (default: train the default run first)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--picture", help="copy the last confusion.png to this path")
    ap.add_argument("--keep", action="store_true", help="keep the trained run (its path is printed)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    run = Path(args.run) if args.run else tmp / "run"
    if not args.run:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnnlab.run", f"hydra.run.dir={run}", "trainer.progress=log"],
                       cwd=REPO, env=env, check=True, capture_output=True)
        print(f"trained the default run in {time.perf_counter() - t:.1f} s: {run}")
    walls, cpus, m = [], [], {}
    for i in range(args.repeats):
        out = tmp / f"eval{i}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "cnnlab.evaluate", f"run={run}", f"out={out}"], cwd=REPO, env=env,
                           capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds (user + sys) of the evaluation: what it costs when the machine is shared.
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            return 1
        m = json.loads((out / "metrics.json").read_text())
        print(f"  repeat {i + 1}: {walls[-1]:.2f} s wall, {cpus[-1]:.2f} s CPU (user + sys)")
    summary = json.loads((run / "summary.json").read_text())
    print(f"cnnlab.evaluate, default run's test split ({m['n_images']} images), {os.cpu_count()} CPUs: "
          f"median {statistics.median(walls):.2f} s, min {min(walls):.2f} s, max {max(walls):.2f} s wall "
          f"(CPU median {statistics.median(cpus):.2f} s); load average (1 min) after: {os.getloadavg()[0]:.2f}; "
          f"accuracy {m['accuracy']:.4f} (the run's test_acc {summary['test_acc']:.4f}), "
          f"macro F1 {m['macro_f1']:.4f}, ECE {m['ece']:.4f}")
    if args.picture:
        Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp / f"eval{args.repeats - 1}" / "confusion.png", args.picture)
        print(f"copied confusion.png to {args.picture}")
    if not args.run and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
