"""Measure [core]'s targets: the default run's wall time and test accuracy, and CLI start-up.

    .venv/bin/python scripts/bench_default.py [--repeats 3] [--write docs/default_run.md]

Each measurement runs the real command in a fresh process, as `make run` does, so the
wall time includes Python start-up, imports, data loading and the test evaluation.
"""

from __future__ import annotations

import argparse
import json
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


def _timed(args: list[str], cwd: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cnnlab.run", *args], cwd=cwd, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0, res


def _feature_map_seconds() -> float:
    """Wall time of the two ``log_feature_maps`` calls a default run makes (start and end).

    Measured in a fresh process, as in a run: AlexNet on digits, 8 images; the first
    call pays the lazy imports (the image encoder), as a run's first call does.
    """
    import torch

    from cnnlab.lessons.featuremaps import log_feature_maps
    from cnnlab.models import build_model
    from cnnlab.reporting.track import RunTracker

    model = build_model("alexnet", "cnnlab", "alexnet", num_classes=10, in_chans=1, img_size=32,
                        small_input=True)
    images = torch.rand(8, 1, 32, 32)
    with tempfile.TemporaryDirectory() as d:
        tracker = RunTracker(d)
        t0 = time.perf_counter()
        for step in (0, 5):
            log_feature_maps(model, images, tracker, step, mean=[0.5], std=[0.5])
        took = time.perf_counter() - t0
        tracker.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", default=None, help="write a Markdown report here")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cli = {}
        for name, args in (("--help", ["--help"]), ("--cfg job", ["--cfg", "job"])):
            times = [_timed(args, tmp)[0] for _ in range(a.repeats)]
            cli[name] = min(times)
        runs = []
        for i in range(a.repeats):
            wall, res = _timed([f"hydra.run.dir={tmp}/run{i}", "trainer.progress=log"], tmp)
            if res.returncode != 0:
                sys.exit(f"default run failed:\n{res.stderr[-2000:]}")
            s = json.loads((Path(tmp) / f"run{i}" / "summary.json").read_text())
            runs.append({"wall_s": wall, "test_acc": s["test_acc"], "train_s": s["train_seconds"]})
            print(f"run {i}: wall {wall:.1f}s, train {s['train_seconds']:.1f}s, test_acc {s['test_acc']:.4f}")
    walls = [r["wall_s"] for r in runs]
    fm = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'scripts'); "
                         "import bench_default as b; print(b._feature_map_seconds())"],
                        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if fm.returncode != 0:
        sys.exit(f"feature-map timing failed:\n{fm.stderr[-2000:]}")
    fm_s = float(fm.stdout.strip().splitlines()[-1])
    accs = [r["test_acc"] for r in runs]
    import torch

    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
    lines = [
        "# The default run and CLI start-up",
        "",
        f"Machine: {machine}. Measured {time.strftime('%Y-%m-%d')} with "
        f"`.venv/bin/python scripts/bench_default.py --repeats {a.repeats}`.",
        "",
        "| measurement | target | measured |",
        "|---|---|---|",
        f"| default run wall time (AlexNet on digits, incl. start-up), median of {a.repeats} | <= 60 s | "
        f"{statistics.median(walls):.1f} s (min {min(walls):.1f}, max {max(walls):.1f}) |",
        f"| default run test accuracy | >= 0.97 | {statistics.median(accs):.4f} (min {min(accs):.4f}) |",
        f"| feature-map logging (`trainer.log_feature_maps=true`, on by default): its two calls, "
        f"share of the median run | <= 3% | {fm_s:.2f} s = {100 * fm_s / statistics.median(walls):.1f}% |",
        f"| `python -m cnnlab.run --help` | <= 1.5 s | {cli['--help']:.2f} s (best of {a.repeats}) |",
        f"| `python -m cnnlab.run --cfg job` | <= 1.5 s | {cli['--cfg job']:.2f} s (best of {a.repeats}) |",
        "",
    ]
    emit(lines, a.write)


if __name__ == "__main__":
    main()
