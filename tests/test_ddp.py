"""DDP under torchrun, on the CPU with gloo: two processes, one model, one run folder.

Every test launches ``python -m torch.distributed.run --standalone --nproc_per_node=2``
(torchrun) as a user would, with one torch thread per process. ``CNNLAB_DDP_TIMEOUT``
is set short, so a broken test fails in seconds rather than after gloo's 30 minutes.

Why a 2-process run matches a 1-process one only within a tolerance, not bit for bit:
with the same global batch, each step sees the same samples (the ranks take
interleaved halves of the same shuffled order), but DDP computes the mean gradient as
(mean over rank 0's half + mean over rank 1's half) / 2, and the validation sums in
another order; float addition is not associative, so the last bits can differ, and
a longer run grows that (observed here: 7e-9 on the weights after 8 steps, metrics the
same to 7 digits; TOL leaves room for other CPUs and kernels). BatchNorm, dropout and random
crops are switched off for that comparison: each rank would normalise with its own
half-batch statistics and draw its own masks (exactly what a real DDP run does).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
# Tiny, deterministic and comparable: 64 images a split at 16x16, 4 steps an epoch
# (global batch 16: 8 per rank), no BatchNorm, dropout or augmentation (see above).
PARITY = [*TINY, "dataset.image_size=16", "trainer.epochs=2", "trainer.deterministic=true",
          "model.batch_norm=false", "model.drop_rate=0", "dataset.augment.crop_padding=0"]
TOL = 1e-4  # on losses and weights (observed: < 1e-8)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp),
            "CNNLAB_DDP_TIMEOUT": "20", **extra}


def torchrun(args: list[str], cwd: Path, nproc: int = 2, module: str | None = "cnnlab.run",
             timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=<nproc> -m cnnlab.run <args>`` (or a script) in ``cwd``."""
    scratch = cwd / "tmp"
    scratch.mkdir(exist_ok=True)
    cmd = [*TORCHRUN, f"--nproc_per_node={nproc}", *(["-m", module] if module else []), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_env(scratch, **env))


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _run_folders(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "outputs").glob("*/*") if p.is_dir())


# --------------------------------------------------------------------------- the helpers
WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import torch

    from cnnlab.dist import setup
    from cnnlab.errors import ConfigError
    from cnnlab.lifecycle.signals import GracefulStop
    from cnnlab.train import EpochSums

    d = setup("cpu")
    r = d.rank
    out = {"rank": r, "world": d.world_size, "backend": d.backend}
    # evaluate's sums: each rank evaluated its own shard
    loss, correct, n = d.all_reduce(torch.tensor(float(r + 1)), torch.tensor(r + 2), 10 + r)
    out["eval"] = [loss.item(), correct.item(), n, str(loss.dtype), str(correct.dtype)]
    # train sums; first_bad_step is the earliest bad step on any rank (-1 on rank 0: none)
    sums = EpochSums(torch.tensor(1.5), torch.tensor(3), torch.tensor(-1 if r == 0 else 2),
                     seen=8, steps=4).over_ranks(d)
    out["train"] = [sums.loss_sum.item(), sums.correct.item(), sums.seen, sums.first_bad_step.item()]
    # BatchNorm running stats: rank 0's everywhere after sync_buffers
    bn = torch.nn.BatchNorm1d(3)
    bn.running_mean.fill_(float(r))
    d.sync_buffers(bn)
    out["buffers"] = bn.running_mean.tolist()
    # the stop flag: only rank 1 is signalled (at step 4); both ranks stop at the same step
    stop = d.agreed_stop(GracefulStop())
    stopped = None
    for step in range(20):
        if r == 1 and step == 4:
            stop.request(15)
        if stop.poll():
            stopped = step
            break
    out["stop"] = [stopped, stop.signum]
    out["path"] = str(d.share_path(Path(f"/run-of-rank-{r}")))
    out["batch"] = d.local_batch(16)
    try:
        d.local_batch(15)
    except ConfigError as e:
        out["batch_error"] = str(e)
    try:
        d.convert_sync_bn(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), True, "cpu")
    except ConfigError as e:
        out["sync_bn_error"] = str(e)
    d.close()
    Path(sys.argv[1], f"rank{r}.json").write_text(json.dumps(out))
""")


def test_collectives_two_ranks(tmp_path):
    """cnnlab.dist's reductions, buffer sync, agreed stop and path broadcast on 2 real ranks."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = torchrun([str(script), str(tmp_path)], tmp_path, module=None, timeout=120,
                   CNNLAB_DDP_STOP_EVERY="3")
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for out in ranks:
        assert (out["world"], out["backend"]) == (2, "gloo")
        # (1 + 2), (2 + 3), (10 + 11), each in its own type
        assert out["eval"] == [3.0, 5, 21, "torch.float32", "torch.int64"]
        assert out["train"] == [3.0, 6, 16, 2]
        assert out["buffers"] == [0.0, 0.0, 0.0]
        # polls agree every 3rd step (steps 2, 5, ...): rank 1's signal at step 4 stops both at 5
        assert out["stop"] == [5, 15]
        assert out["path"] == "/run-of-rank-0"
        assert out["batch"] == 8
        assert "split evenly over 2 processes: use 14 or 16" in out["batch_error"]
        assert "model.sync_bn=true needs CUDA" in out["sync_bn_error"]


# --------------------------------------------------------------------------- one run
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same tiny deterministic config (global batch 16) with 2 processes and with 1."""
    ddp_cwd = tmp_path_factory.mktemp("ddp")
    t0 = time.perf_counter()
    res = torchrun(PARITY, ddp_cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp_seconds = time.perf_counter() - t0
    single_cwd = tmp_path_factory.mktemp("single")
    single = subprocess.run([sys.executable, "-m", "cnnlab.run", *PARITY, "hydra.run.dir=run"],
                            cwd=single_cwd, capture_output=True, text=True, timeout=240,
                            env=_env(single_cwd))
    assert single.returncode == 0, single.stderr[-3000:]
    folders = _run_folders(ddp_cwd)
    return {"ddp_cwd": ddp_cwd, "ddp": folders[0] if folders else ddp_cwd, "single": single_cwd / "run",
            "ddp_log": res.stdout + res.stderr, "ddp_seconds": ddp_seconds}


def test_one_run_folder(runs):
    """One folder in outputs/ (rank 0's), one summary.json; rank 1 left nothing behind."""
    cwd = runs["ddp_cwd"]
    assert len(_run_folders(cwd)) == 1, _run_folders(cwd)
    assert [p.parent for p in cwd.rglob("summary.json")] == [runs["ddp"]]
    assert len(list(cwd.rglob("config.yaml"))) == 1  # one .hydra/, rank 0's
    assert not list((cwd / "tmp").glob("cnnlab-rank*"))  # rank 1's throwaway Hydra folder is gone
    summary = json.loads((runs["ddp"] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert Path(summary["run_dir"]).resolve() == runs["ddp"].resolve()  # rank 0's, on every rank
    assert {p.name for p in (runs["ddp"] / "checkpoints").iterdir()} >= {"last.pt", "best.pt"}
    assert "distributed: 2 processes, backend gloo" in runs["ddp_log"]
    # rank 1 logs warnings only: each epoch line appears once
    assert runs["ddp_log"].count("epoch 2/2  train loss") == 1


def test_two_processes_match_one(runs):
    """Same global batch, deterministic: the metrics and the weights agree within TOL."""
    ddp, single = _rows(runs["ddp"]), _rows(runs["single"])
    assert len(ddp) == len(single) == 2
    for a, b in zip(ddp, single, strict=True):
        for k in ("train_loss", "val_loss", "lr"):
            assert float(a[k]) == pytest.approx(float(b[k]), abs=TOL), (a["epoch"], k)
        for k in ("train_acc", "val_acc"):  # one image is 1/64
            assert abs(float(a[k]) - float(b[k])) <= 1 / 64 + 1e-9, (a["epoch"], k)
    wa = torch.load(runs["ddp"] / "checkpoints" / "last.pt", weights_only=False)["model"]
    wb = torch.load(runs["single"] / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert wa.keys() == wb.keys()  # no DDP "module." prefix in the checkpoint
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst < TOL, worst
    sa = json.loads((runs["ddp"] / "summary.json").read_text())
    sb = json.loads((runs["single"] / "summary.json").read_text())
    assert abs(sa["test_acc"] - sb["test_acc"]) <= 1 / 64 + 1e-9


# --------------------------------------------------------------------------- failures
def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (a child of ``parent`` with RANK=<rank>)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int(next(line for line in (proc / "status").read_text().splitlines()
                            if line.startswith("PPid:")).split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    scratch = cwd / "tmp"
    scratch.mkdir(exist_ok=True)
    return subprocess.Popen([*TORCHRUN, "--nproc_per_node=2", "-m", "cnnlab.run", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(scratch, **env), start_new_session=True)


def _wait_for_epochs(run: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.csv").exists() and len(_rows(run)) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {n} epochs in {timeout}s")


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    """Wait for torchrun to exit; (status, output, seconds waited). Kills it on timeout."""
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"still running {timeout}s later (hung): {out[-3000:]}")
    return proc.returncode, out, time.monotonic() - t0


def _signal_rank1(proc: subprocess.Popen, run: Path, sig: int, after_epochs: int,
                  timeout: float) -> tuple[int, str, float]:
    """After ``after_epochs`` epochs, send ``sig`` to rank 1 and wait for torchrun to end."""
    try:
        _wait_for_epochs(run, after_epochs, proc)
        victim = _worker_pid(proc.pid, 1)
        assert victim is not None, "rank 1's process not found"
        os.kill(victim, sig)
        return _finish(proc, timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# Long enough to be killed mid-run: 64 images at 16x16, about a second an epoch.
LONG = [*TINY, "dataset.image_size=16", "trainer.epochs=200", "hydra.run.dir=run"]


def test_dead_rank_stops_the_others(tmp_path):
    """kill -9 of rank 1 mid-run: rank 0 exits with an error within seconds, no hang."""
    proc = _start(LONG, tmp_path)
    status, out, waited = _signal_rank1(proc, tmp_path / "run", signal.SIGKILL, 1, timeout=60)
    assert status != 0
    assert waited < 45, waited
    assert "exitcode" in out and "-9" in out, out[-3000:]  # torchrun's report names the dead rank
    assert "another rank probably died or hung" in out  # rank 0's one-line error
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed", summary
    assert "another rank probably died or hung" in summary["error"], summary["error"]


@pytest.mark.slow
def test_hung_rank_times_out(tmp_path):
    """SIGSTOP of rank 1 (alive, silent): rank 0's next collective times out with a clear error."""
    proc = _start(LONG, tmp_path, CNNLAB_DDP_TIMEOUT="8")
    status, out, waited = _signal_rank1(proc, tmp_path / "run", signal.SIGSTOP, 1, timeout=120)
    assert status != 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed", summary
    assert "another rank probably died or hung" in summary["error"], summary["error"]


@pytest.mark.slow
def test_sigterm_on_one_rank_then_resume(tmp_path):
    """SIGTERM to rank 1 only: both ranks stop at the same step, rank 0 records it; resume finishes."""
    args = [*TINY, "dataset.image_size=16", "trainer.epochs=40", "hydra.run.dir=run"]
    run = tmp_path / "run"
    proc = _start(args, tmp_path)
    status, out, _ = _signal_rank1(proc, run, signal.SIGTERM, 2, timeout=90)
    assert status != 0, out[-3000:]
    assert "exitcode  : 143" in out or "exitcode: 143" in out or "143" in out, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    kept = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"]
    assert summary["epochs_completed"] == kept == len(_rows(run))

    res = torchrun([f"resume={run}", "trainer.epochs=" + str(kept + 2)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at_epochs"] == [kept]
    assert [int(r["epoch"]) for r in _rows(run)] == list(range(1, kept + 3))
    assert len(_run_folders(tmp_path)) == 0  # resumed in place: no new folder in outputs/
