"""The epoch loop's outcomes and the lifecycle pieces it calls (cnnlab/train.py, cnnlab/lifecycle/).

``run_epochs`` returns how it ended (finished, early_stopped, interrupted, diverged) as
a value; ``train`` turns that into the run record. These tests read the returned
Outcome itself, by wrapping ``run_epochs``, and check the record's messages.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import TINY, compose

import cnnlab.train as train_mod
from cnnlab.errors import DeviceError
from cnnlab.lifecycle.guards import OutOfMemory, oom_hint
from cnnlab.lifecycle.record import Outcome, RunRecord, read_summary
from cnnlab.lifecycle.signals import Interrupted

BASE = [*TINY, "dataset.image_size=16", "trainer.log_feature_maps=false"]


def _run(tmp_path, monkeypatch, *overrides: str) -> tuple[dict | None, list[Outcome]]:
    """train(cfg) with run_epochs wrapped: (the summary or None if it raised, the outcomes)."""
    seen: list[Outcome] = []
    real = train_mod.run_epochs

    def wrapped(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(train_mod, "run_epochs", wrapped)
    cfg = compose([*BASE, *overrides], output_dir=tmp_path / "run")
    try:
        return train_mod.train(cfg), seen
    except Interrupted:
        return None, seen


def test_finished(tmp_path, monkeypatch):
    summary, [outcome] = _run(tmp_path, monkeypatch, "trainer.epochs=2")
    assert outcome == Outcome("finished", 2) and summary["status"] == "completed"


def test_early_stopped(tmp_path, monkeypatch):
    # lr ~ 0 and no BatchNorm statistics to drift: the val accuracy cannot improve after
    # epoch 1, so patience 1 stops at epoch 2.
    summary, [outcome] = _run(tmp_path, monkeypatch, "trainer.epochs=5", "optimizer.lr=1e-12", "model.batch_norm=false",
                              "trainer.early_stop_patience=1", "trainer.early_stop_metric=val_acc")
    assert outcome == Outcome("early_stopped", 2)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2


def test_diverged(tmp_path, monkeypatch):
    real = train_mod.train_one_epoch

    def poisoned(model, *args, **kwargs):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", poisoned)
    summary, [outcome] = _run(tmp_path, monkeypatch, "trainer.epochs=2")
    assert outcome == Outcome("diverged", 1, steps=0)  # NaN from the first step of epoch 1
    assert summary["status"] == "diverged" and "step 1 of 4" in summary["error"]
    assert "last.pt keeps epoch 0" in summary["error"]


@pytest.mark.parametrize("partial", [True, False], ids=["mid-epoch", "between-epochs"])
def test_interrupted(partial, tmp_path, monkeypatch):
    real = train_mod.train_one_epoch

    def signalled(*args, **kwargs):
        if partial:
            os.kill(os.getpid(), signal.SIGTERM)  # the pass stops after its first step
        out = real(*args, **kwargs)
        if not partial:
            os.kill(os.getpid(), signal.SIGTERM)  # the epoch completes, then the loop stops
        return out

    monkeypatch.setattr(train_mod, "train_one_epoch", signalled)
    summary, [outcome] = _run(tmp_path, monkeypatch, "trainer.epochs=3")
    assert summary is None
    want = Outcome("interrupted", 1, steps=1) if partial else Outcome("interrupted", 1)
    assert outcome == want
    on_disk = read_summary(tmp_path / "run")
    assert on_disk["status"] == "interrupted"
    assert ("partial epoch is not kept" in on_disk["error"]) == partial
    assert f"last.pt holds epoch {0 if partial else 1}" in on_disk["error"]


def test_out_of_memory_in_evaluation_names_the_eval_batch_size(tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod, "evaluate", oom)
    with pytest.raises(OutOfMemory) as e:
        _run(tmp_path, monkeypatch, "trainer.epochs=1")
    msg = str(e.value)
    assert isinstance(e.value, DeviceError) and "\n" not in msg
    assert "during evaluation with trainer.eval_batch_size=64: try trainer.eval_batch_size=32" in msg
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["error"] == msg


def test_oom_hint_leaves_other_errors_alone():
    with pytest.raises(ValueError, match="not memory"), oom_hint("training", "k", 8, lambda: "cpu"):
        raise ValueError("not memory")
    with pytest.raises(OutOfMemory, match="on cpu during setup with k=1: try k=1"):
        with oom_hint("setup", "k", 1, lambda: "cpu"):
            raise MemoryError()
    # By type, never by wording: a RuntimeError that mentions memory is left as torch raised it.
    with pytest.raises(RuntimeError, match="can't allocate memory"), oom_hint("setup", "k", 1, lambda: "cpu"):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")


class _Tracker:
    enabled = False

    def __init__(self):
        self.summary = {}

    def update_summary(self, **fields):
        self.summary.update(fields)


def test_record_keeps_a_run_whose_resume_did_not_fit(tmp_path):
    """A CnnlabError before the resumed checkpoint is loaded leaves the named run's summary as it was."""
    from cnnlab.errors import CheckpointError

    previous = {"status": "completed", "test_acc": 0.9}
    record = RunRecord(_Tracker(), tmp_path, previous, resume_epoch=3, save_checkpoints=True)
    record.start("alexnet", "digits", "cpu")
    with pytest.raises(CheckpointError), record:
        raise CheckpointError("does not fit")
    assert record.summary == previous
    # ...but once it is loaded, a failure is the run's own.
    record.resumed(type("S", (), {"best_val_acc": 0.5, "best_epoch": 2, "train_seconds": 1.0})(), tmp_path)
    with pytest.raises(CheckpointError), record:
        raise CheckpointError("disk full")
    assert record.summary["status"] == "failed" and record.summary["error"] == "disk full"
    assert record.saved_epoch == 3


def test_turning_ema_on_at_resume_tests_an_ema_less_best_checkpoint(tmp_path):
    """best.pt saved with ema.enabled=false (no "ema" key) still tests: the EMA starts from its weights."""
    run = tmp_path / "run"
    frozen = ["optimizer.lr=1e-12", "model.batch_norm=false"]  # epoch 2 cannot beat epoch 1: best.pt stays
    assert train_mod.train(compose([*BASE, *frozen, "trainer.epochs=1"], output_dir=run))["status"] == "completed"
    summary = train_mod.train(compose([*BASE, *frozen, "trainer.epochs=2", "ema.enabled=true", f"resume={run}"],
                                      output_dir=run))
    assert summary["status"] == "completed" and summary["best_epoch"] == 1 and summary.get("ema") is True


def test_a_schedule_that_does_not_fit_the_checkpoint_says_so(tmp_path):
    """warm-up 0 -> 1 at a resume builds another schedule (SequentialLR): the message names it."""
    from cnnlab.errors import CheckpointError

    run = tmp_path / "run"
    assert train_mod.train(compose([*BASE, "trainer.epochs=1"], output_dir=run))["status"] == "completed"
    with pytest.raises(CheckpointError, match="schedule state does not fit") as e:
        train_mod.train(compose([*BASE, "trainer.epochs=2", "scheduler.warmup_epochs=1", f"resume={run}"],
                                output_dir=run))
    assert "scheduler.warmup_epochs" in str(e.value) and "optimizer state" not in str(e.value)
    assert read_summary(run)["status"] == "completed"  # the run it named is left as it was
