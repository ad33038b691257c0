"""Benchmark ``cnnlab.reporting.compare`` on generated run folders (target: 200 runs in <= 3 s).

    .venv/bin/python scripts/bench_compare.py [--runs 200] [--epochs 30] [--keep]

Times ``python -m cnnlab.compare`` as a fresh process on N fake job folders (every status,
repeated seeds, half-written files), the in-process report with and without the plot,
and what the multirun callback adds to a 10-job sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

MODELS = [("alexnet", 5_400_000), ("resnet18", 11_170_000), ("googlenet", 5_600_000),
          ("mobilenet_v3", 4_200_000), ("moganet_xtiny", 2_900_000)]

# What the report reads of .hydra/config.yaml (when a summary lacks it), amid other keys.
CONFIG_YAML = """\
model: {{_target_: cnnlab.models.build_model, name: {model}, source: timm, num_classes: 10}}
dataset: {{name: digits, root: ./data, num_classes: 10, in_chans: 1, image_size: 32}}
optimizer: {{_target_: torch.optim.SGD, _partial_: true, lr: {lr}, momentum: 0.9, weight_decay: 0.0005}}
trainer: {{epochs: {epochs}, batch_size: 64, eval_batch_size: 512, grad_clip: null}}
seed: {seed}
"""


def make_runs(root: Path, n: int, epochs: int, rng: random.Random) -> None:
    """n job folders under root, numbered like a Hydra sweep."""
    for i in range(n):
        model, params = MODELS[i % len(MODELS)]
        lr = [0.01, 0.05, 0.1, 0.2][(i // len(MODELS)) % 4]
        seed = (i // (len(MODELS) * 4)) % 10
        overrides = [f"model={model}", f"optimizer.lr={lr}", f"seed={seed}"]
        d = root / f"{i}_model={model},optimizer.lr={lr}"
        for sub in (".hydra", "tb", "checkpoints"):
            (d / sub).mkdir(parents=True)
        (d / "tb" / "events.out.tfevents.0.host").write_bytes(b"\0" * 4096)
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (d / ".hydra" / "config.yaml").write_text(CONFIG_YAML.format(model=model, lr=lr, seed=seed, epochs=epochs))
        (d / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n" * 40)
        kind = i % 20
        if kind == 19:
            continue  # died before train() wrote anything: .hydra only
        status = {17: "failed", 18: "diverged", 16: "running"}.get(kind, "completed")
        done = epochs if status == "completed" else rng.randint(0, epochs - 1)
        acc = 0.5 + 0.4 * rng.random()
        lines = ["epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_seconds"]
        for e in range(1, done + 1):
            v = acc * (1 - 0.5 ** e)
            lines.append(f"{e},{1 / e:.4f},{v:.4f},{1.1 / e:.4f},{v:.4f},{lr:.5f},{rng.uniform(5, 60):.2f}")
        if kind == 15:
            lines.append("7,0.12")  # a half-written row
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
        summary = {
            "model": model, "dataset": "digits", "device": "cpu", "status": status,
            "error": "RuntimeError: boom" if status == "failed" else None,
            "params": params, "macs": params * 7, "epochs_completed": done,
            "best_val_acc": acc if done else None, "best_epoch": done or None,
            "test_acc": acc - 0.01 if status == "completed" else None,
            "train_seconds": 30.0 * done, "images_per_second": 400.0,
            "fit": {"verdict": rng.choice(["good", "underfit", "overfit"])} if status == "completed" else None,
        }
        text = json.dumps(summary, indent=2)
        if kind == 14:
            text = text[: len(text) // 2]  # a garbled (half-written) summary
        (d / "summary.json").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir and print its path")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cnnlab_bench_compare_"))
    sweep = tmp / "multirun" / "2026-01-01_00-00-00.000000"
    make_runs(sweep, args.runs, args.epochs, random.Random(0))

    # Wall time is what a user waits for; CPU time (user+sys of the child) is what the
    # report costs when other processes share the cores, as on a busy 2-core machine.
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cnnlab.compare", str(sweep), "--quiet"],
                          capture_output=True, text=True)
    cli_s = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"compare failed ({proc.returncode}): {proc.stderr}")

    from cnnlab.reporting.compare import build_report, write_report

    t0 = time.perf_counter()
    report = build_report([sweep])
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_report(report, tmp / "noplot", plot=False)
    table_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_report(report, tmp / "plot", plot=True)
    plot_s = time.perf_counter() - t0

    # What the multirun callback adds to a sweep: a fresh process that has already
    # imported torch (as a sweep has), then on_multirun_end over a 10-job sweep folder.
    small = tmp / "multirun" / "small"
    make_runs(small, 10, args.epochs, random.Random(1))
    code = ("import time, contextlib, io, torch\n"
            "from omegaconf import OmegaConf\n"
            "from cnnlab.reporting.callbacks import ComparisonReport\n"
            f"cfg = OmegaConf.create({{'hydra': {{'sweep': {{'dir': {str(small)!r}}}}}}})\n"
            "t, c = time.perf_counter(), time.process_time()\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    ComparisonReport().on_multirun_end(cfg)\n"
            "print(f'{time.perf_counter() - t:.2f} {time.process_time() - c:.2f}')\n")
    cb = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    cb_time = "{} s wall, {} s CPU".format(*cb.stdout.split()) if cb.returncode == 0 else "FAILED"

    statuses = Counter(r.status for r in report.runs)
    print(f"runs: {len(report.runs)} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}), "
          f"seed groups: {len(report.groups)}")
    print(f"python -m cnnlab.compare (fresh process, csv+md+png): {cli_s:.2f} s wall, "
          f"{cli_cpu:.2f} s CPU  (target <= 3 s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)")
    print(f"  in process: read {read_s:.3f} s, csv+md {table_s:.3f} s, csv+md+png {plot_s:.2f} s "
          f"(matplotlib already imported)")
    print(f"report callback at the end of a 10-job sweep: {cb_time} (target <= 2 s)"
          + ("" if cb.returncode == 0 else f": {cb.stderr[-500:]}"))
    if args.keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
