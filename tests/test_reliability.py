"""Interruptions, resumes and unsafe checkpoints: nothing lost but the current epoch, nothing run.

The in-process tests interrupt ``train(cfg)`` by sending the test process itself a
real SIGTERM at a chosen moment (a wrapper around ``train_one_epoch``); the
subprocess tests kill ``python -m cnnlab.run`` with SIGTERM and SIGKILL. Every run
is deterministic (``trainer.deterministic=true``) and one torch thread, so a
resumed run can be compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, compose

import cnnlab.train as train_mod
from cnnlab.errors import CheckpointError, DeviceError
from cnnlab.lifecycle.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from cnnlab.lifecycle.signals import GracefulStop, Interrupted
from cnnlab.train import train

# Three tiny deterministic epochs: 64 images at 16x16, four steps an epoch.
BASE = [*TINY, "dataset.image_size=16", "trainer.deterministic=true", "trainer.epochs=3"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _cfg(run_dir: Path, *overrides: str):
    return compose([*BASE, *overrides], output_dir=run_dir)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(f)]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _assert_same_state(a: Path, b: Path) -> None:
    """Two checkpoints with bit-identical weights and optimizer state."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["epoch"] == cb["epoch"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for pid, st in ca["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(cb["optimizer"]["state"][pid][k])), (pid, k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("reference") / "run"
    assert train(_cfg(run))["status"] == "completed"
    torch.set_num_threads(before)
    return run


def _stop_in_epoch(monkeypatch, epoch: int, after: bool = False) -> None:
    """Send this process SIGTERM at the start (after=False) or the end of epoch ``epoch``'s training pass."""
    real = train_mod.train_one_epoch
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch and not after:
            os.kill(os.getpid(), signal.SIGTERM)  # the pass then stops after its first step
        out = real(*args, **kwargs)
        if calls["n"] == epoch and after:
            os.kill(os.getpid(), signal.SIGTERM)  # the epoch completes, then the run stops
        return out

    monkeypatch.setattr(train_mod, "train_one_epoch", wrapped)


# --------------------------------------------------------------------------- in-process
@pytest.mark.parametrize("after", [False, True], ids=["mid-epoch", "after-epoch"])
def test_sigterm_then_resume_is_bit_identical(after, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _stop_in_epoch(monkeypatch, epoch=2, after=after)
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        train(_cfg(run))
    assert stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == handler_before  # handlers restored
    summary = _summary(run)
    kept = 2 if after else 1  # a partial epoch is not kept
    assert summary["status"] == "interrupted" and f"last.pt holds epoch {kept}" in summary["error"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == kept
    monkeypatch.undo()

    if not after:
        # What a run killed after logging epoch 2 but before saving it leaves behind:
        # a metrics row and TensorBoard points for an epoch the resume will redo.
        with open(run / "metrics.csv", "a") as f:
            f.write("2,9,0,9,0,0.1,1.0\n")
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(str(run / "tb"))
        w.add_scalar("val/acc", 0.99, 2)
        w.close()

    summary = train(_cfg(run, f"resume={run}"))
    assert summary["status"] == "completed" and summary["resumed_at_epochs"] == [kept]
    assert _rows(run) == _rows(reference)  # no duplicate epochs, the same numbers
    _assert_same_state(run / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    ref = _summary(reference)
    for k in ("best_val_acc", "best_epoch", "test_acc", "epochs_completed"):
        assert summary[k] == ref[k], k

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    points = acc.Scalars("val/acc")
    assert [p.step for p in points] == [1, 2, 3]  # the stale step-2 point is purged
    assert [p.value for p in points] == pytest.approx([float(r["val_acc"]) for r in _rows(reference)])


def test_truncated_last_falls_back_to_best(reference, tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    _stop_in_epoch(monkeypatch, epoch=3, after=True)  # stopped after epoch 3's pass: 3 epochs kept
    with pytest.raises(Interrupted):
        train(_cfg(run, "trainer.epochs=3"))
    monkeypatch.undo()
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    best_epoch = load_checkpoint(run / "checkpoints" / "best.pt")["epoch"]

    summary = train(_cfg(run, "trainer.auto_resume=true"))
    assert "truncated or corrupt" in caplog.text and "resuming from best.pt" in caplog.text
    assert summary["status"] == "completed" and summary["resumed_at_epochs"] == [best_epoch]
    assert _rows(run) == _rows(reference)  # best.pt is a full checkpoint: still exact

    # Both unreadable: a clear error, and the run folder is left as it was.
    for name in ("last.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes(b"PK\x03\x04 not really")
    before = (run / "summary.json").read_text()
    with pytest.raises(CheckpointError, match="no checkpoint in .* loads: .*truncated or corrupt"):
        train(_cfg(run, "trainer.auto_resume=true"))
    assert (run / "summary.json").read_text() == before


def test_a_best_pt_left_behind_by_a_kill_is_rewritten_on_resume(reference, tmp_path, monkeypatch):
    """Killed after writing last.pt of a best epoch but before best.pt: the test must still use it."""
    best = _summary(reference)["best_epoch"]
    run = tmp_path / "run"
    _stop_in_epoch(monkeypatch, epoch=best, after=True)
    with pytest.raises(Interrupted):
        train(_cfg(run))
    monkeypatch.undo()
    stale = load_checkpoint(run / "checkpoints" / "best.pt")
    stale["model"] = {k: torch.zeros_like(v) for k, v in stale["model"].items()}  # not the best weights
    save_checkpoint(stale, run / "checkpoints" / "best.pt")

    summary = train(_cfg(run, "trainer.auto_resume=true"))
    assert summary["test_acc"] == _summary(reference)["test_acc"]
    _assert_same_state(run / "checkpoints" / "best.pt", reference / "checkpoints" / "best.pt")


def test_auto_resume_after_a_death_before_the_first_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "running"}))
    (run / "metrics.csv").write_text("epoch,train_loss\n1,5\n")
    summary = train(_cfg(run, "trainer.epochs=1", "trainer.auto_resume=true"))
    assert summary["status"] == "completed" and [r["epoch"] for r in _rows(run)] == ["1"]


@pytest.mark.parametrize("where", ["loss", "weights"])
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(where, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = train_mod.train_one_epoch
    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):
        calls["n"] += 1
        first = next(model.parameters())
        if calls["n"] == 2 and where == "loss":
            with torch.no_grad():
                first.fill_(float("nan"))  # the loss is NaN from the first step of epoch 2
        out = real(model, *args, **kwargs)
        if calls["n"] == 2 and where == "weights":
            with torch.no_grad():
                first.fill_(float("inf"))  # finite losses, broken weights
        return out

    monkeypatch.setattr(train_mod, "train_one_epoch", poisoned)
    summary = train(_cfg(run))
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 1
    msg = summary["error"]
    assert "epoch 2" in msg and "optimizer.lr" in msg and "grad_clip" in msg and "last.pt keeps epoch 1" in msg
    if where == "loss":
        assert "step 1 of 4" in msg
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_grad_clip_bounds_the_update():
    from cnnlab.device import resolve_device

    policy = resolve_device("cpu", "none", False, False)
    x = torch.randn(8, 4) * 100
    y = torch.randint(0, 3, (8,))

    def update_norm(clip: float | None) -> float:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        train_mod.train_one_epoch(model, [(x, y)], opt, sched, policy, grad_clip=clip)
        return torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]).norm().item()

    assert update_norm(None) > 1.0
    assert update_norm(0.01) == pytest.approx(0.01, rel=1e-4)  # lr 1: the step is the clipped gradient


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   MemoryError("host out of memory")],
                         ids=["OutOfMemoryError", "MemoryError"])
def test_out_of_memory_is_one_clear_line(error, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise error

    monkeypatch.setattr(train_mod, "train_one_epoch", oom)
    run = tmp_path / "run"
    with pytest.raises(DeviceError) as e:
        train(_cfg(run, "trainer.epochs=1"))
    msg = str(e.value)
    assert "\n" not in msg and "out of memory" in msg and "trainer.batch_size=16" in msg
    assert "trainer.batch_size=8" in msg and "device.amp=bf16" in msg and "device.channels_last" in msg
    assert _summary(run)["status"] == "failed" and _summary(run)["error"] == msg


def test_graceful_stop_flag_second_signal_and_restore():
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT  # the first only sets the flag
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode
        assert e.value.immediate and e.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) == before


# --------------------------------------------------------------------------- unsafe files
class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle protocol 2"])
def test_a_pickle_that_runs_code_is_refused(fmt, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"epoch": 1, "extra": _RunsCode(marker)}
    if fmt == "torch.save":
        torch.save(payload, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    # A torch.save file: torch lists the globals it would import; a bare pickle: torch's own line.
    said = "refused: loading it would import posix.system" if fmt == "torch.save" else "refused: torch says"
    with pytest.raises(CheckpointError, match=said):
        load_checkpoint(evil)
    # The same file handed to a run, as a resume or as weights: refused, nothing runs.
    for override in (f"resume={evil}", f"model.checkpoint={evil}"):
        with pytest.raises(CheckpointError, match="refused"):
            train(_cfg(tmp_path / override.split("=")[0], override))
    assert not marker.exists()
    # The file is truly malicious: an unsafe load does run the command.
    if fmt == "torch.save":
        torch.load(evil, weights_only=False)
    else:
        with open(evil, "rb") as f:
            pickle.load(f)  # noqa: S301 - the point of the test
    assert marker.exists()


def test_a_checkpoint_of_another_model_is_named(tmp_path):
    from cnnlab.models import build_model

    model = build_model(name="alexnet", source="cnnlab", arch="alexnet", num_classes=10, in_chans=1,
                        img_size=16, small_input=True)
    key = next(k for k, v in model.state_dict().items() if v.ndim == 2)  # a Linear weight
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd[key] = torch.zeros(sd[key].shape[0] + 1, sd[key].shape[1])
    with pytest.raises(CheckpointError) as e:
        check_compatible(model, sd, "weights file 'x.pt'")
    assert key in str(e.value) and str(tuple(sd[key].shape)) in str(e.value)

    # A resume of another model's training checkpoint fails before the folder is touched.
    other = tmp_path / "other.pt"
    save_checkpoint({"model": sd, "optimizer": {}, "scheduler": {}, "epoch": 1, "rng": {},
                     "model_name": "resnet18"}, other)
    with pytest.raises(CheckpointError, match="model.name=resnet18"):
        train(_cfg(tmp_path / "run", f"resume={other}"))
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- subprocesses
def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnlab.run", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab.run", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=240)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_on_the_cli_then_resume_in_its_own_folder(tmp_path):
    run = tmp_path / "run"
    proc = _start([*BASE, f"hydra.run.dir={run}"], tmp_path)
    _wait_for(run / "checkpoints" / "last.pt", proc)  # epoch 0 is saved before the first step
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: SIGTERM") and "resume=" in lines[-1]
    assert "Traceback" not in err
    assert _summary(run)["status"] == "interrupted"
    saved = load_checkpoint(run / "checkpoints" / "last.pt")  # whole, and loads
    original = (run / ".hydra" / "overrides.yaml").read_text()

    # `resume=<folder>` alone: the run's own overrides, in its own folder.
    res = _run(["resume=run"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()
    assert (run / ".hydra" / "overrides.yaml").read_text() == original
    assert len(list((run / ".hydra").glob("resume-*/overrides.yaml"))) == 1
    summary = _summary(run)
    assert summary["status"] == "completed" and summary["resumed_at_epochs"] == [saved["epoch"]]
    assert [int(r["epoch"]) for r in _rows(run)] == [1, 2, 3]


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_auto_resume_matches(reference, tmp_path):
    run = tmp_path / "run"
    args = [*BASE, f"hydra.run.dir={run}", "trainer.auto_resume=true"]
    proc = _start(args, tmp_path)
    _wait_for(run / "checkpoints" / "last.pt", proc)
    time.sleep(random.Random().uniform(0.0, 3.0))  # somewhere in the three epochs (about 1 s each)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL or proc.returncode == 0
    load_checkpoint(run / "checkpoints" / "last.pt")  # never corrupt

    res = _run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _summary(run)["status"] == "completed"
    assert _rows(run) == _rows(reference)
    _assert_same_state(run / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")


def test_the_resume_folder_is_path_arithmetic(tmp_path, monkeypatch):
    """hydra.run.dir and output_subdir follow resume= by path arithmetic; one that does not exist fails."""
    from cnnlab.lifecycle.resume import _hydra_subdir, _run_dir

    monkeypatch.chdir(tmp_path)
    for d in ("runs/a/checkpoints", "runs/12-00-00.123456_alexnet_digits", "elsewhere"):
        Path(d).mkdir(parents=True)
    for f in ("runs/a/checkpoints/last.pt", "runs/a/checkpoints/best.pt", "elsewhere/weights.pt"):
        Path(f).touch()
    with pytest.raises(CheckpointError, match="no such run folder"):
        _run_dir("runs/missing", "outputs/new")
    assert _run_dir(None, "outputs/new") == "outputs/new"
    assert _run_dir("runs/a", "outputs/new") == "runs/a"
    assert _run_dir("runs/12-00-00.123456_alexnet_digits", "outputs/new") == "runs/12-00-00.123456_alexnet_digits"
    assert _run_dir("runs/a/checkpoints/last.pt", "outputs/new") == "runs/a"
    assert _run_dir("elsewhere/weights.pt", "outputs/new") == "outputs/new"  # not in a run folder: a new one
    assert _hydra_subdir(None, "T") == ".hydra"
    assert _hydra_subdir("elsewhere/weights.pt", "T") == ".hydra"  # a new folder: its own .hydra
    assert _hydra_subdir("runs/a", "T") == _hydra_subdir("runs/a/checkpoints/best.pt", "T") == ".hydra/resume-T"


def test_a_resume_is_the_checkpoints_config_plus_this_commands_overrides(reference, tmp_path):
    """`resume=<run> trainer.epochs=5 device=cpu` on a command whose defaults differ from the run's."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.compose import CONF_DIR
    from cnnlab.config import register_schema
    from cnnlab.errors import ConfigError
    from cnnlab.lifecycle.resume import register_resolvers, resumed_config

    register_schema()
    register_resolvers()
    ck = load_checkpoint(reference / "checkpoints" / "last.pt")
    path = reference / "checkpoints" / "last.pt"

    def resumed(*overrides: str):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", [f"resume={reference}", *overrides], return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            try:
                return resumed_config(cfg, path, ck)
            finally:
                HydraConfig.instance().cfg = None

    cfg = resumed("trainer.epochs=5", "device=cpu", "~optimizer.nesterov")
    assert cfg.trainer.epochs == 5 and cfg.resume == str(reference)
    assert cfg.trainer.batch_size == 16 and cfg.dataset.limit == 64  # the run's, not this command's defaults
    assert cfg.dataset.image_size == 16 and cfg.model.img_size == 16
    assert "nesterov" not in cfg.optimizer and cfg.optimizer.lr == ck["config"]["optimizer"]["lr"]
    with pytest.raises(CheckpointError, match="model.name=alexnet, this run has model.name=resnet18"):
        resumed("model=resnet18")
    with pytest.raises(ConfigError, match="experiment=sweep_zoo"):
        resumed("experiment=sweep_zoo")


def test_a_checkpoint_holds_everything_a_resume_needs(reference):
    ck = load_checkpoint(reference / "checkpoints" / "last.pt")  # weights_only=True
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "best_val_acc", "best_epoch",
                "early_stop", "rng", "config", "model_name"):
        assert key in ck, key
    assert ck["scaler"] is None  # a GradScaler only exists with fp16 on a GPU; then its state is here
    assert set(ck["rng"]) == {"python", "numpy", "torch", "cuda", "data"}
    assert isinstance(ck["config"], dict) and ck["config"]["trainer"]["epochs"] == 3  # resolved, plain
    assert "${" not in json.dumps(ck["config"])


def test_write_json_atomic_keeps_the_old_file_and_no_temp_file_when_the_dump_fails(tmp_path):
    from cnnlab.lifecycle.atomic import write_json_atomic

    path = tmp_path / "summary.json"
    write_json_atomic(path, {"status": "running"})

    class Boom:
        def __str__(self) -> str:  # json.dump's default=str hook runs this mid-file
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"status": "completed", "bad": Boom()})
    assert json.loads(path.read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
