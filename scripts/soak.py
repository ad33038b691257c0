"""Soak test: kill -9 a training run at a random moment, auto-resume it, compare. Repeat.

    python scripts/soak.py [--trials 20] [--epochs 4] [--seed 0] [--keep DIR]

One uninterrupted reference run first, then per trial: start the same experiment in
a fixed run folder with ``trainer.auto_resume=true``, SIGKILL it at a random moment,
check that its last.pt (if any) loads, re-run the same command, and compare the
finished run with the reference: every metrics.csv value but ``epoch_seconds``,
summary.json's best_val_acc/best_epoch/test_acc, and the final weights
(``torch.equal``). The experiment is tiny and deterministic (AlexNet on 64 digits
at 16x16, one torch thread), so equality is bit for bit.

The kill moment is uniform over the training (epoch ``e`` and the fraction of an epoch
drawn at random, placed by the trial's own metrics.csv and the reference's epoch
time), where a kill can lose work and can land in a checkpoint write;
``--from-start`` draws it over the whole run, start-up and final test included.
Exit status 0 only if every resume completed, no checkpoint was corrupt, and every
final result equals the reference.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = ["dataset=digits", "dataset.limit=64", "dataset.image_size=16", "trainer.batch_size=16",
              "trainer.eval_batch_size=64", "device=cpu", "trainer.progress=log",
              "trainer.deterministic=true", "seed=0"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _cmd(run_dir: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "cnnlab.run", *EXPERIMENT, f"trainer.epochs={epochs}",
            f"hydra.run.dir={run_dir}", "trainer.auto_resume=true"]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(f)]


def _rows_written(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "metrics.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _result(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: s.get(k) for k in ("status", "epochs_completed", "best_val_acc", "best_epoch", "test_acc")}


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    from cnnlab.lifecycle.checkpoint import load_checkpoint

    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _loads(path: Path) -> bool:
    from cnnlab.errors import CheckpointError
    from cnnlab.lifecycle.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
        return True
    except CheckpointError as e:
        print(f"    corrupt: {e}", flush=True)
        return False


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> float:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{path} never appeared (exit {proc.returncode})")
        time.sleep(0.02)
    return time.monotonic()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--from-start", action="store_true", help="draw the kill moment over the whole run")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="cnnlab-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    t_soak = time.monotonic()

    # ---- the uninterrupted reference, timed to place the kills -----------------------
    ref = work / "reference"
    t0 = time.monotonic()
    proc = subprocess.Popen(_cmd(ref, args.epochs), cwd=work, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t_first = _wait_for(ref / "checkpoints" / "last.pt", proc)
    # The training window ends when the last epoch's row is in metrics.csv (its checkpoint follows).
    while proc.poll() is None and _rows_written(ref) < args.epochs:
        time.sleep(0.02)
    t_trained = time.monotonic()
    err = proc.communicate()[1]
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
        return 1
    t_end = time.monotonic()
    startup, training, total = t_first - t0, t_trained - t_first, t_end - t0
    ref_metrics, ref_result = _metrics(ref), _result(ref)
    print(f"reference: {args.epochs} epochs, start-up {startup:.1f}s, training {training:.1f}s, "
          f"whole run {total:.1f}s, result {ref_result}", flush=True)

    # ---- the trials -----------------------------------------------------------------
    rows = []
    for i in range(1, args.trials + 1):
        run = work / f"trial{i:02d}"
        t0 = time.monotonic()
        proc = subprocess.Popen(_cmd(run, args.epochs), cwd=work, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if args.from_start:
            delay = rng.uniform(0, total)
            time.sleep(delay)
            at = f"{delay:5.1f}s after start"
        else:
            # A random point of the training, placed by the trial's own progress (the
            # machine's load varies): wait for epoch e's row, then a fraction of an epoch.
            target = rng.uniform(0, args.epochs)
            e, frac = int(target), target - int(target)
            _wait_for(run / "checkpoints" / "last.pt", proc)
            while proc.poll() is None and _rows_written(run) < e:
                time.sleep(0.01)
            time.sleep(frac * training / args.epochs)
            at = f"{frac:4.0%} of an epoch after epoch {e}'s metrics row"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished_before_kill = proc.returncode == 0
        last = run / "checkpoints" / "last.pt"
        had_ckpt = last.exists()
        killed_at_epoch = None
        corrupt = False
        if had_ckpt:
            corrupt = not _loads(last)
            if not corrupt:
                from cnnlab.lifecycle.checkpoint import load_checkpoint

                killed_at_epoch = load_checkpoint(last)["epoch"]
        temps = len(list((run / "checkpoints").glob(".*.tmp"))) if had_ckpt else 0

        res = subprocess.run(_cmd(run, args.epochs), cwd=work, env=_env(), capture_output=True, text=True)
        resumed = res.returncode == 0 and _result(run)["status"] == "completed"
        same_metrics = resumed and _metrics(run) == ref_metrics and _result(run) == ref_result
        same_weights = resumed and _same_weights(run / "checkpoints" / "last.pt", ref / "checkpoints" / "last.pt")
        rows.append(dict(trial=i, at=at, epoch_on_disk=killed_at_epoch, finished_before_kill=finished_before_kill,
                         corrupt=corrupt, temp_files_left=temps, resumed=resumed, same_metrics=same_metrics,
                         same_weights=same_weights, seconds=round(time.monotonic() - t0, 1)))
        if not resumed:
            print(res.stderr[-2000:], file=sys.stderr)
        on_disk = "no checkpoint yet" if killed_at_epoch is None else f"last.pt epoch {killed_at_epoch}"
        print(f"trial {i:2d}: killed {at} ({'had finished' if finished_before_kill else on_disk}"
              f"{', a temp file left' if temps else ''}) -> resume {'ok' if resumed else 'FAILED'}, "
              f"metrics {'equal' if same_metrics else 'DIFFER'}, weights {'equal' if same_weights else 'DIFFER'}",
              flush=True)

    # ---- the figures ----------------------------------------------------------------
    n = len(rows)
    figures = {
        "trials": n,
        "completed_resumes": sum(r["resumed"] for r in rows),
        "corrupt_checkpoints": sum(r["corrupt"] for r in rows),
        "final_metrics_equal": sum(r["same_metrics"] for r in rows),
        "final_weights_equal": sum(r["same_weights"] for r in rows),
        "killed_mid_training": sum(r["epoch_on_disk"] is not None and not r["finished_before_kill"] for r in rows),
        "killed_during_a_checkpoint_write": sum(r["temp_files_left"] > 0 for r in rows),
        "killed_before_first_checkpoint": sum(r["epoch_on_disk"] is None and not r["finished_before_kill"]
                                              for r in rows),
        "finished_before_kill": sum(r["finished_before_kill"] for r in rows),
        "minutes": round((time.monotonic() - t_soak) / 60, 1),
    }
    (work / "soak.json").write_text(json.dumps({"figures": figures, "trials": rows}, indent=2) + "\n")
    print("\n" + "\n".join(f"{k:32s} {v}" for k, v in figures.items()))
    ok = (figures["completed_resumes"] == n and figures["corrupt_checkpoints"] == 0
          and figures["final_metrics_equal"] == n and figures["final_weights_equal"] == n)
    if args.keep is None and ok:
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # a failure's folder is kept to look at
    else:
        print(f"details: {work / 'soak.json'}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
