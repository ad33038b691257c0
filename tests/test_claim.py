"""One launch per run folder: the create-exclusive claim (cnnlab/lifecycle/record.py), a refused
launch that leaves no trace, a killed launch's lock taken over, and two launches racing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, TINY

from cnnlab.errors import ConfigError
from cnnlab.lifecycle.record import LOCK, claim_run_dir


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"/"
            for p in sorted(folder.rglob("*"))}


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "cnnlab.run", *TINY, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_live_launchs_folder_is_refused_and_a_killed_ones_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    host = socket.gethostname()
    (run / LOCK).write_text(f"{os.getppid()} {host}\n")  # a live process of this host
    with pytest.raises(ConfigError, match="is in use by another launch"):
        claim_run_dir(run)
    assert (run / LOCK).read_text() == f"{os.getppid()} {host}\n"

    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid runs no more, as after a kill -9
    (run / LOCK).write_text(f"{dead.pid} {host}\n")
    claim = claim_run_dir(run)
    assert (run / LOCK).read_text().split()[:2] == [str(os.getpid()), host]
    assert claim_run_dir(run) is claim  # re-entrant: Hydra's callback, then train()
    claim.release()
    assert os.listdir(run) == []


def test_another_hosts_lock_is_live_and_a_reused_pid_is_stale(tmp_path):
    from cnnlab.lifecycle.record import _started

    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / LOCK).write_text(f"{dead.pid} another-host.example 123\n")  # its pid can't be checked from here
    with pytest.raises(ConfigError, match=r"in use by another launch \(pid \d+ another-host.example, "):
        claim_run_dir(run)

    host, parent = socket.gethostname(), os.getppid()  # a live process of this host
    assert _started(parent).isdigit()
    (run / LOCK).write_text(f"{parent} {host} {_started(parent)}\n")  # the very process: live
    with pytest.raises(ConfigError, match="in use by another launch"):
        claim_run_dir(run)
    (run / LOCK).write_text(f"{parent} {host} {int(_started(parent)) - 1}\n")  # the pid, reused since
    claim = claim_run_dir(run)
    assert (run / LOCK).read_text().split() == [str(os.getpid()), host, _started(os.getpid())]
    claim.release()
    assert os.listdir(run) == []


def test_torchrun_ranks_above_0_claim_nothing_and_leave_nothing(tmp_path, monkeypatch):
    """A rank > 0 composes a throwaway Hydra folder (cnnlab.dist.rank_overrides): no lock there, none in
    the run folder (rank 0's), and the folder is removed at exit."""
    import atexit

    from omegaconf import OmegaConf

    from cnnlab.dist import rank_overrides
    from cnnlab.lifecycle import record
    from cnnlab.run import ClaimRunFolder

    at_exit = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: at_exit.append((fn, a, k)))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        overrides = rank_overrides([])
        run_dir = overrides[0].partition("=")[2] if overrides else str(tmp_path / "run0")
        cfg = OmegaConf.create({"hydra": {"run": {"dir": run_dir}}, "resume": None, "trainer": {"auto_resume": False}})
        ClaimRunFolder().on_run_start(cfg)
        assert (Path(run_dir) / LOCK).exists() == (rank == "0"), rank
        assert (run_dir in record._held) == (rank == "0")
    assert overrides == [] and len(at_exit) == 2  # rank 1: the scratch folder's removal; rank 0: its claim
    for fn, a, k in at_exit:
        fn(*a, **k)
    assert os.listdir(tmp_path) == []  # the scratch folder removed; run0, made by the claim, too


def test_a_refused_launch_removes_exactly_what_it_wrote(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("the first launch's config\n")
    (run / "run.log").write_text("the first launch's log\n")
    before = _snapshot(run)
    claim = claim_run_dir(run)
    assert claim.traces == ["run.log"]
    (run / ".hydra" / "resume-1").mkdir()  # what Hydra writes for this launch
    (run / ".hydra" / "resume-1" / "config.yaml").write_text("x")
    with open(run / "run.log", "a") as f:
        f.write("[ERROR] this launch's line\n")
    claim.release(undo=True)
    assert _snapshot(run) == before

    fresh = tmp_path / "outputs" / "day" / "run"
    claim = claim_run_dir(fresh)
    (fresh / ".hydra").mkdir()
    (fresh / "run.log").write_text("x")
    claim.release(undo=True)
    assert os.listdir(tmp_path) == ["run"]  # outputs/day/ made by this launch, removed too


def test_a_folder_with_checkpoints_but_no_summary_is_refused_untouched(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    (run / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    before = _snapshot(run)
    proc = _cli(f"hydra.run.dir={run}", cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip().splitlines() == [
        f"error: run folder {str(run)!r} already holds a run (checkpoints, metrics.csv); use resume={str(run)!r} "
        "or trainer.auto_resume=true to continue it, or pick a new folder"]
    assert _snapshot(run) == before and os.listdir(tmp_path) == ["run"]


def _race(tmp_path: Path, i: int) -> None:
    run = tmp_path / f"run{i}"
    procs = [_cli(f"hydra.run.dir={run}", cwd=tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in results) == [0, 2], [r[2][-2000:] for r in results]
    (lost,) = [err for rc, _, err in results if rc == 2]
    lines = lost.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run folder {str(run)!r} "), lost
    assert "is in use by another launch" in lines[0] or "already holds a run" in lines[0]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert (run / "metrics.csv").read_text().count("\n1,") == 1  # one epoch-1 row
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert (run / "run.log").read_text().count("epoch 1/1") == 1
    assert not (run / LOCK).exists() and not (run / ".hydra" / "resume").exists()


@pytest.mark.slow  # 10 tiny trainings: about 2-3 minutes on 2 shared cores
def test_two_launches_into_one_folder_never_both_train(tmp_path):
    """10 rounds of two `python -m cnnlab.run` started together into one hydra.run.dir (two rounds at a time)."""
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: _race(tmp_path, i), range(10)))


def test_a_launch_into_a_folder_with_hydra_files_writes_its_own_beside_them(tmp_path):
    """conf/hydra/default.yaml's output_subdir, as Hydra reads it once the job folder is known: a folder
    whose .hydra/config.yaml an earlier launch wrote (trainer.auto_resume=true) gets .hydra/resume-<stamp>;
    a new folder .hydra, and keeps it after this launch has written its own config.yaml."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from cnnlab.compose import CONF_DIR
    from cnnlab.config import register_schema
    from cnnlab.lifecycle.resume import register_resolvers

    register_schema()
    register_resolvers()
    used, fresh = tmp_path / "used", tmp_path / "fresh"
    (used / ".hydra").mkdir(parents=True)
    (used / ".hydra" / "config.yaml").write_text("the first run's config\n")
    subdirs = {}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for folder in (used, fresh):
            cfg = compose("config", [f"hydra.run.dir={folder}", "trainer.auto_resume=true"], return_hydra_config=True)
            with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
                cfg.hydra.runtime.output_dir = str(folder)  # as Hydra's run_job sets it
            HydraConfig.instance().set_config(cfg)
            try:
                subdirs[folder.name] = cfg.hydra.output_subdir
                (folder / ".hydra").mkdir(parents=True, exist_ok=True)
                (folder / ".hydra" / "config.yaml").touch()  # this launch's, written by Hydra
                assert cfg.hydra.output_subdir == subdirs[folder.name]
            finally:
                HydraConfig.instance().cfg = None
    assert subdirs["used"].startswith(".hydra/resume-") and subdirs["fresh"] == ".hydra"


@pytest.mark.slow  # three tiny launches (subprocesses)
def test_auto_resume_and_resume_leave_the_first_runs_hydra_files_byte_identical(tmp_path):
    run = tmp_path / "run"
    tiny = ["dataset.image_size=16", "trainer.log_feature_maps=false"]
    for args in ([f"hydra.run.dir={run}"], [f"hydra.run.dir={run}", "trainer.auto_resume=true", "trainer.epochs=2"],
                 [f"resume={run}", "trainer.epochs=3"]):
        proc = _cli(*tiny, *args, cwd=tmp_path)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        if args == [f"hydra.run.dir={run}"]:
            first = {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")}
    assert {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")} == first
    assert len(list((run / ".hydra").glob("resume-*/config.yaml"))) == 2
    assert json.loads((run / "summary.json").read_text())["resumed_at_epochs"] == [1, 2]
