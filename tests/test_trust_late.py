"""Issue #21 (late refusals): a full or read-only disk named in one line, reports that cannot be
written after training keep the trained run, predict's default top-k, val_split=0 refused.

Faults are injected at the OS call (``open`` / the file's ``write`` raising OSError with the
errno), since the tests run as root, where a read-only folder does not stop a write."""

from __future__ import annotations

import errno
import io
import json
import os
import threading

import pytest
import torch
from conftest import TINY, compose
from faults import DiskFault  # writes fail at the real call (atomic writes open no path)

from cnnlab.errors import CheckpointError, ConfigError

FAULTS = [errno.ENOSPC, errno.EROFS]


class _FailingFile(io.RawIOBase):
    """A file whose writes fail with ``code`` after the first few, as a disk that fills up."""

    def __init__(self, f, code):
        self.f, self.code, self.n = f, code, 0

    def writable(self):
        return True

    def write(self, b):
        self.n += 1
        if self.n > 2:
            raise OSError(self.code, os.strerror(self.code))
        return self.f.write(b)

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()
        super().close()


@pytest.mark.parametrize("code", FAULTS)
def test_checkpoint_write_failure_names_the_path_and_the_errno_not_torch(tmp_path, monkeypatch, code):
    from cnnlab.lifecycle.checkpoint import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FailingFile(real(fd, *a, **k), code))
    with pytest.raises(CheckpointError) as e:
        save_checkpoint({"w": torch.zeros(100_000)}, path)
    msg = str(e.value)
    assert str(path) in msg and os.strerror(code) in msg and "\n" not in msg
    assert "inline_container" not in msg and "enforce" not in msg
    assert path.read_bytes() == before  # the previous checkpoint is whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


@pytest.mark.slow  # trains a tiny run: about 6 s
@pytest.mark.parametrize("code", FAULTS)
def test_a_report_that_cannot_be_written_keeps_the_trained_run(tmp_path, monkeypatch, capsys, code):
    from cnnlab.evaluate import evaluate_run
    from cnnlab.lifecycle.record import ReportNotWritten
    from cnnlab.train import train

    run = tmp_path / "run"
    DiskFault(run, "test_report/*", code, spread=False).install(monkeypatch)  # only test_report/ fails
    with pytest.raises(ReportNotWritten) as e:
        train(compose([*TINY, "dataset.image_size=16", "trainer.log_feature_maps=false"], output_dir=run))
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and os.strerror(code) in msg and "test_report" in msg
    assert f"python -m cnnlab.evaluate run={run}" in msg and "best.pt" in msg
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "trained" and summary["error"] == msg
    assert (run / "checkpoints" / "best.pt").is_file()
    out, m = evaluate_run(str(run), tensorboard=False)  # the report is redone once the disk is fine
    assert (out / "metrics.json").is_file() and 0 <= m["accuracy"] <= 1

    # TensorBoard's writer thread meets the fault: no thread traceback, one line from evaluate.
    real_io_open = io.open

    def failing_events(file, mode="r", *a, **k):
        if "tfevents" in str(file) and "a" in mode:  # the file is made; the writer thread's appends fail
            raise OSError(code, os.strerror(code))
        return real_io_open(file, mode, *a, **k)

    monkeypatch.setattr(io, "open", failing_events)
    printed = []  # what would print a thread's traceback
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(type(args.thread).__name__))
    capsys.readouterr()
    with pytest.raises(ConfigError) as e:
        evaluate_run(str(run), out=str(tmp_path / "ev"))
    monkeypatch.undo()
    assert str(e.value).startswith("cannot write the evaluation to ") and os.strerror(code) in str(e.value)
    assert "Traceback" not in capsys.readouterr().err and printed == []


def test_val_split_of_zero_is_refused_at_composition():
    from cnnlab.config import validate

    with pytest.raises(ConfigError, match=r"dataset.val_split=0.0 is not allowed: use a fraction in \(0, 1\)"):
        validate(compose([*TINY, "dataset.val_split=0"]))


def test_predict_default_topk_fits_a_two_class_model(tmp_path):
    from PIL import Image

    from cnnlab.predict import predict
    from cnnlab.train import train

    root = tmp_path / "data"
    for c, v in (("cat", 0), ("dog", 255)):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (16, 16), (v, i * 10, 0)).save(root / c / f"{i}.png")
    run = tmp_path / "run"
    summary = train(compose([*TINY, "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=16",
                             "dataset.val_split=0.25", "dataset.test_split=0.25", "trainer.batch_size=4",
                             "trainer.log_feature_maps=false"], output_dir=run))
    assert summary["status"] == "completed"
    path, rows, columns = predict(str(run), str(root / "cat"))  # no topk: min(3, 2 classes)
    assert columns == ["file", "class_1", "prob_1", "class_2", "prob_2"] and len(rows) == 12


def test_batchnorm_on_a_batch_of_one_names_trainer_batch_size():
    from cnnlab.errors import DeviceError
    from cnnlab.lifecycle.guards import oom_hint

    bn = torch.nn.BatchNorm2d(3).train()
    with pytest.raises(DeviceError) as e, oom_hint("training", "trainer.batch_size", 1, lambda: "cpu"):
        bn(torch.zeros(1, 3, 1, 1))  # one value per channel: torch's ValueError
    assert str(e.value).startswith("trainer.batch_size=1 is too small") and "trainer.batch_size=2" in str(e.value)
    with pytest.raises(ValueError), oom_hint("training", "trainer.batch_size", 4, lambda: "cpu"):
        raise ValueError("another batch size's error is not re-worded")


def test_an_in_memory_dataset_too_large_for_memory_is_refused_before_decoding(monkeypatch):
    from cnnlab.data import registry
    from cnnlab.errors import DataError

    monkeypatch.setattr(registry, "available_mb", lambda: 100.0)  # the machine's MemAvailable, made small
    with pytest.raises(DataError) as e:
        registry.load_dataset("digits", None, False, 512, 1, 0.15, 0.15, 0, memory_budget_mb=2048)
    msg = str(e.value)
    assert msg.startswith("dataset.image_size=512: digits: its 1797 images") and "449 MB" in msg and "100 MB" in msg
    assert registry.load_dataset("digits", None, False, 16, 1, 0.15, 0.15, 0, memory_budget_mb=2048).train.x.shape[-1] == 16


def _one_run(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(json.dumps({"model": {"name": "alexnet"}, "dataset": {"name": "digits"}}))
    (run / "summary.json").write_text(json.dumps({"model": "alexnet", "dataset": "digits", "status": "completed",
                                                  "test_acc": 0.9, "best_val_acc": 0.9, "best_epoch": 1}))
    return run


def test_compare_out_an_existing_file_is_refused(tmp_path):
    from cnnlab.reporting.compare import main

    run, f = _one_run(tmp_path), tmp_path / "report.txt"
    f.write_text("mine")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        main([str(run), "--out", str(f), "--quiet"])
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["report.txt", "run"]


@pytest.mark.parametrize("code", FAULTS)
def test_compare_on_a_full_or_read_only_folder_is_one_line(tmp_path, monkeypatch, code):
    from cnnlab.reporting.compare import main

    run, out = _one_run(tmp_path), tmp_path / "out"
    DiskFault(out, "comparison.csv", code).install(monkeypatch)
    with pytest.raises(ConfigError) as e:
        main([str(run), "--out", str(out), "--quiet", "--no-plot"])
    assert str(e.value) == f"cannot write the report in {str(out)!r} ({os.strerror(code)}): give a writable folder with --out"


@pytest.mark.parametrize("code", FAULTS)
def test_a_failed_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, code):
    from cnnlab.errors import describe
    from cnnlab.lifecycle.atomic import write_json_atomic

    path = tmp_path / "summary.json"
    write_json_atomic(path, {"status": "running"})
    before = path.read_bytes()
    real = os.fdopen

    class Full(io.TextIOWrapper):
        def write(self, s):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Full(real(fd, "wb")) if "w" in mode else real(fd, mode))
    with pytest.raises(OSError) as e:
        write_json_atomic(path, {"status": "completed"})
    assert describe(e.value) == f"cannot write or read {str(path)!r}: {os.strerror(code)}"
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_trained_run_is_not_complete_resume_and_auto_resume_redo_its_report(tmp_path, monkeypatch):
    """Status ``trained`` (weights kept, the test report not written): ``trainer.auto_resume`` (and
    ``resume=``, the same plan_resume: scripts/trust_cases.py) counts it as not completed; it trains
    no epoch again and writes the report."""
    from cnnlab.lifecycle.record import ReportNotWritten
    from cnnlab.train import train

    run, tiny = tmp_path / "run", [*TINY, "dataset.image_size=16", "trainer.log_feature_maps=false"]
    DiskFault(run, "test_report/*", errno.ENOSPC, spread=False).install(monkeypatch)  # only test_report/ fails
    with pytest.raises(ReportNotWritten):
        train(compose(tiny, output_dir=run))
    monkeypatch.undo()
    rows = (run / "metrics.csv").read_text()
    best = (run / "checkpoints" / "best.pt").read_bytes()
    assert json.loads((run / "summary.json").read_text())["status"] == "trained"
    summary = train(compose([*tiny, "trainer.auto_resume=true"], output_dir=run))
    assert summary["status"] == "completed" and summary["error"] is None and summary["test_acc"] is not None
    assert (run / "test_report" / "metrics.json").is_file()
    assert (run / "metrics.csv").read_text() == rows and (run / "checkpoints" / "best.pt").read_bytes() == best
    assert json.loads((run / "summary.json").read_text())["resumed_at_epochs"] == [1]
