"""tracker=mlflow and tracker=wandb against the real libraries: a SQLite MLflow store in tmp read
back with MlflowClient, an `mlflow server` on a loopback port, W&B's offline run files."""

from __future__ import annotations

import csv
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from conftest import REPO, TINY, compose, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = [*TINY, "trainer.log_feature_maps=false"]


def _train(run_dir: Path, *overrides: str) -> dict:
    from cnnlab.train import train

    return train(compose([*FAST, *overrides], output_dir=run_dir))


def _mlflow(store: Path, *overrides: str) -> list[str]:
    return ["tracker=mlflow", f"tracker.tracking_uri=sqlite:///{store}", "tracker.wait=true", *overrides]


def _client(store: Path):
    mlflow = pytest.importorskip("mlflow")  # here, not at collection: its import takes seconds
    return mlflow.MlflowClient(f"sqlite:///{store}")


def _runs(store: Path, experiment: str | None = None) -> list:
    """The store's runs: all, or those of one experiment."""
    c = _client(store)
    exps = [e for e in c.search_experiments() if experiment in (None, e.name)]
    return c.search_runs([e.experiment_id for e in exps])


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One 2-epoch run with tracker=mlflow (wait=true) into a new SQLite store, which the tests
    below read back with MlflowClient. Made once: the store's schema (~50 migrations, ~9 s here)
    is built by the worker while the run trains. The worker runs at the test's priority, not
    niced: the test waits for it, and on 2 cores shared with another pytest worker a niced
    worker only makes the wait longer."""
    tmp = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_TRACKER_NICE", "0")
        summary = _train(tmp / "run", *_mlflow(tmp / "mlflow.db"), "trainer.epochs=2")
    return tmp, summary


def test_mlflow_run_holds_the_run_folder(tracked):
    tmp, summary = tracked
    run_dir = tmp / "run"
    (run,) = _runs(tmp / "mlflow.db", "cnnlab")
    c = _client(tmp / "mlflow.db")
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    # params: the flattened resolved config
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["model.name"] == "alexnet"
    assert run.data.params["optimizer._target_"] == "torch.optim.SGD"
    # each metric's history is metrics.csv's column, step = epoch
    rows = _rows(run_dir)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"):
        hist = sorted((m.step, m.value) for m in c.get_metric_history(rid, key))
        assert hist == [(int(r["epoch"]), pytest.approx(float(r[key]), rel=1e-6)) for r in rows], key
    assert run.data.metrics["test_acc"] == pytest.approx(summary["test_acc"])
    f1 = {r["class"]: r["f1"] for r in summary["test_per_class"]}
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("test_f1.")} == \
        pytest.approx({f"test_f1.{k}": v for k, v in f1.items()})
    # tags: model, dataset, status, fit, git commit; the run id that matches it to the folder
    tags = run.data.tags
    final = json.loads((run_dir / "summary.json").read_text())
    assert tags["model"] == "alexnet" and tags["dataset"] == "digits" and tags["status"] == "completed"
    assert tags["fit"] == final["fit"]["verdict"]
    assert tags["cnnlab.run_id"] == final["run_id"]
    assert tags.get("git_commit") == (final["env"]["git"] or {}).get("commit")
    # artifacts: summary.json, metrics.csv, test_report/ (no checkpoint by default)
    names = {a.path for a in c.list_artifacts(rid)}
    assert {"summary.json", "metrics.csv", "test_report"} <= names and "checkpoints" not in names
    assert {Path(a.path).name for a in c.list_artifacts(rid, "test_report")} >= {"metrics.json", "per_class.csv"}
    # env: versions, device, command, host, times
    env = final["env"]
    assert env["packages"]["torch"] and env["packages"]["cnnlab"] and env["python"]
    assert env["device"]["cpu_cores"] >= 1 and env["host"] and env["started"] <= env["ended"]
    assert tags["env.packages.torch"] == env["packages"]["torch"]
    # the run's own start and end (to the second, as env has them), not when the worker got there
    assert run.info.start_time == 1000 * datetime.fromisoformat(env["started"]).timestamp()
    assert run.info.end_time == 1000 * datetime.fromisoformat(env["ended"]).timestamp()


def test_import_twice_adds_nothing(tracked):
    """Into the live run's own experiment: nothing new; into another experiment of the same store
    (as good as a new store, without building a second schema): one run, then nothing more."""
    from cnnlab.tracking.imports import import_run
    from cnnlab.tracking.mlflow_tracker import MlflowTracker

    tmp, _ = tracked
    run_dir = tmp / "run"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    assert import_run(MlflowTracker(uri), run_dir) == 0
    assert len(_runs(tmp / "mlflow.db", "cnnlab")) == 1
    n = len(_rows(run_dir))
    assert import_run(MlflowTracker(uri, experiment="imported"), run_dir) == 6 * n
    assert import_run(MlflowTracker(uri, experiment="imported"), run_dir) == 0
    (run,) = _runs(tmp / "mlflow.db", "imported")
    c = _client(tmp / "mlflow.db")
    assert len(c.get_metric_history(run.info.run_id, "val_acc")) == n
    assert run.data.tags["status"] == "completed"


@pytest.mark.slow  # ~60-90 s on 2 loaded cores: a training, mlflow's import, a new store's schema
def test_untracked_run_records_env_and_imports_once(tmp_path, monkeypatch):
    """tracker=none: no worker, summary.json's run_id and env; then `import` twice into a new store:
    the metric histories equal metrics.csv, and the second import adds nothing."""
    import cnnlab.tracking as tracking
    from cnnlab.tracking.imports import main

    def no_worker():
        raise AssertionError("tracker=none started a worker")

    monkeypatch.setattr(tracking, "spawn_worker", no_worker)
    run_dir = tmp_path / "run"
    s = _train(run_dir, "trainer.epochs=2")
    assert s["status"] == "completed" and len(s["run_id"]) == 32
    env = json.loads((run_dir / "summary.json").read_text())["env"]
    assert env["ended"] and env["command"] and "timm" in env["packages"] and env["device"]["cpu_cores"] >= 1

    store = tmp_path / "store.db"
    for _ in range(2):  # the folder's parent: the search finds run/ below it
        assert main(["import", str(tmp_path), f"tracker.tracking_uri=sqlite:///{store}"]) == 0
    (run,) = _runs(store)
    assert run.data.tags["cnnlab.run_id"] == s["run_id"] and run.info.status == "FINISHED"
    c = _client(store)
    for key in ("train_loss", "val_acc", "lr"):
        hist = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, key))
        assert hist == [(int(r["epoch"]), pytest.approx(float(r[key]), rel=1e-6)) for r in _rows(run_dir)]


def test_missing_package_is_one_warning_naming_pip(tmp_path, capfd):
    """A tracker whose library is missing: the worker says so in one line and the run goes on."""
    from cnnlab.tracking import start_tracker
    from cnnlab.tracking.env import environment

    env = environment("cpu")
    assert env["packages"]["torch"] and env["device"]["cpu_cores"] >= 1 and env["ended"] is None
    node = {"_target_": "cnnlab_no_such_module.MlflowTracker", "wait": True}
    t = start_tracker(node, tmp_path, "0" * 32, {"model": {"name": "m"}}, env)
    t.log_epoch({"epoch": 1, "val_acc": 0.5})
    t.finish({"status": "completed"})
    err = capfd.readouterr().err
    assert err.count("warning: tracker failed") == 1, err
    assert "pip install -e '.[track]'" in err and "mlflow" in err
    assert t.proc.returncode == 1


@pytest.mark.slow  # ~40 s: three trainings and their workers
def test_tracker_failure_is_one_warning(tmp_path, capfd, monkeypatch):
    """The store turns unusable after the run has started logging: one warning, the run completes."""
    from cnnlab.lifecycle.record import RunRecord

    store = tmp_path / "mlflow.db"
    original = RunRecord.log_epoch

    def log_epoch(self, row):
        original(self, row)
        if row["epoch"] == 1:  # wait for epoch 1 in the store, then break the store
            deadline = time.time() + 120
            while time.time() < deadline and not any(r.data.metrics.get("val_acc") is not None for r in _runs(store)):
                time.sleep(0.5)
            store.write_bytes(b"this is not a database" * 100)  # root ignores a chmod: spoil it instead

    monkeypatch.setattr(RunRecord, "log_epoch", log_epoch)
    s = _train(tmp_path / "run", *_mlflow(store), "trainer.epochs=3")
    assert s["status"] == "completed"
    assert len(_rows(tmp_path / "run")) == 3
    err = capfd.readouterr().err
    assert err.count("tracker failed") == 1, err
    assert "python -m cnnlab.track import" in err


@pytest.mark.slow  # ~30 s: two trainings and their workers
def test_resume_continues_the_mlflow_run(tmp_path):
    store = tmp_path / "mlflow.db"
    first = _train(tmp_path / "run", *_mlflow(store), "trainer.epochs=2")
    second = _train(tmp_path / "run", *_mlflow(store), "trainer.epochs=3", f"resume={tmp_path / 'run'}")
    assert second["run_id"] == first["run_id"]
    (run,) = _runs(store)
    steps = [m.step for m in _client(store).get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3]
    assert run.info.status == "FINISHED"


@pytest.mark.slow  # ~90 s: a 2-job multirun through the CLI, then `mlflow server`
def test_sweep_parent_and_children_and_the_rest_api(tmp_path):
    store = tmp_path / "outputs" / "mlflow.db"
    r = run_cli(["-m", "optimizer.lr=0.01,0.02", *FAST, "tracker=mlflow", "tracker.wait=true"],
                cwd=tmp_path, timeout=600)  # each job waits for its worker; 2m12s measured under load
    assert r.returncode == 0, r.stderr[-2000:]
    runs = _runs(store)
    parents = [x for x in runs if "cnnlab.sweep" in x.data.tags]
    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(x.info.status == "FINISHED" for x in children)
    names = {a.path for a in _client(store).list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "comparison.md", "comparison.png"} <= names

    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{store}", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"experiment_ids": [parent.info.experiment_id], "max_results": 10}).encode()
        deadline, found = time.time() + 90, None
        while time.time() < deadline and found is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                             headers={"Content-Type": "application/json"})
                found = json.loads(urllib.request.urlopen(req, timeout=5).read())
            except OSError:
                time.sleep(1)
        assert found is not None, "mlflow server did not answer in 90 s"
        assert {x["info"]["run_id"] for x in found["runs"]} == {x.info.run_id for x in runs}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _wandb_records(path: Path):
    """The records of a .wandb file. W&B 0.31 ships no reader of its own: the file is LevelDB's log
    format (32 KiB blocks; records of crc32 (4), length (2), type (1): full/first/middle/last)
    after a 7-byte header ":W&B", 0xBEE1, version), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, out, pos, chunk = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += room  # padding to the block's end
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            rec = pb.Record()
            rec.ParseFromString(chunk)
            out.append(rec)
            chunk = b""
    return out


@pytest.mark.slow  # ~25 s: a training and W&B's service process
def test_wandb_offline_holds_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    s = _train(run_dir, "tracker=wandb", "tracker.wait=true", "trainer.epochs=2")
    (file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert s["run_id"] in file.name
    history = {}
    for rec in _wandb_records(file):
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history[int(items["epoch"])] = items
    rows = _rows(run_dir)
    assert sorted(history) == [1, 2]
    for r in rows:
        assert history[int(r["epoch"])]["val_acc"] == pytest.approx(float(r["val_acc"]))
    assert os.environ["WANDB_MODE"] == "offline"
    assert str(REPO)  # the repo's conftest is the one in use
