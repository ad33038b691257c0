"""One tiny training run end to end: the run folder, TensorBoard, seeding, failures."""

from __future__ import annotations

import csv
import json

import pytest

from cnnlab.errors import ConfigError
from cnnlab.reporting.track import METRIC_COLUMNS
from cnnlab.train import train


def _read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_one_epoch_writes_the_run_folder(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_cfg("trainer.epochs=2", run_dir=run))

    rows = _read_metrics(run)
    assert list(rows[0].keys()) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= float(r["train_acc"]) <= 1.0 and 0.0 <= float(r["val_acc"]) <= 1.0
        assert float(r["epoch_seconds"]) > 0 and float(r["lr"]) >= 0

    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for field in ("model", "dataset", "device", "params", "macs", "epochs_completed", "best_val_acc",
                  "best_epoch", "test_acc", "train_seconds", "images_per_second", "status", "error", "fit"):
        assert field in on_disk, field
    assert on_disk["status"] == "completed" and on_disk["error"] is None
    assert on_disk["epochs_completed"] == 2 and on_disk["model"] == "alexnet"
    assert on_disk["params"] > 1_000_000 and on_disk["macs"] > 0
    assert on_disk["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    assert 0.0 <= on_disk["test_acc"] <= 1.0
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()


def test_tensorboard_scalars_read_back(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_cfg("trainer.epochs=2", run_dir=run))
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in acc.Scalars(tag)] == [1, 2]
    rows = _read_metrics(run)
    assert acc.Scalars("val/acc")[-1].value == pytest.approx(float(rows[-1]["val_acc"]), abs=1e-6)
    assert "inputs/train_batch" in tags["images"]


def test_same_seed_same_metrics(tiny_cfg, tmp_path):
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train(tiny_cfg("trainer.epochs=2", "seed=3", run_dir=a))
    train(tiny_cfg("trainer.epochs=2", "seed=3", run_dir=b))
    train(tiny_cfg("trainer.epochs=2", "seed=4", run_dir=c))
    assert drop_time(_read_metrics(a)) == drop_time(_read_metrics(b))
    assert drop_time(_read_metrics(a)) != drop_time(_read_metrics(c))


def test_a_finished_run_folder_is_never_overwritten(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(run_dir=run))
    before = (run / "metrics.csv").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_cfg(run_dir=run))
    assert (run / "metrics.csv").read_text() == before


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_other_optimizers_train(opt, tiny_cfg, tmp_path):
    summary = train(tiny_cfg(f"optimizer={opt}", "scheduler=onecycle", "dataset.limit=32",
                             "trainer.save_checkpoints=false", run_dir=tmp_path / opt))
    assert summary["status"] == "completed"


def test_the_default_recipe_learns(tmp_path):
    """AlexNet on digits, the default recipe, 80 SGD steps: far above chance (0.1) on the test split.

    The sweep preset's budget (512 training images, batch 32, 5 epochs). A change that
    breaks learning (a loss on the wrong logits, a schedule stuck at 0, labels shuffled
    against images) leaves the accuracy near 0.1 and fails here.
    """
    from conftest import compose

    cfg = compose(["device=cpu", "trainer.progress=log", "trainer.log_feature_maps=false",
                   "dataset.limit=512", "trainer.batch_size=32", "trainer.epochs=5"],
                  output_dir=tmp_path / "run")
    summary = train(cfg)
    rows = _read_metrics(tmp_path / "run")
    assert summary["status"] == "completed" and len(rows) == 5  # 5 epochs x 16 steps
    assert summary["test_acc"] >= 0.6, summary["test_acc"]
    assert float(rows[-1]["train_loss"]) < 0.5 * float(rows[0]["train_loss"])


def test_a_run_scores_its_test_split_per_class(tiny_cfg, tmp_path):
    """[evaluate] item 3: the final test split's per-class metrics and confusion matrix."""
    from cnnlab.lifecycle.checkpoint import load_checkpoint

    run = tmp_path / "run"
    summary = train(tiny_cfg(run_dir=run))
    names = [str(d) for d in range(10)]
    assert summary["class_names"] == names == load_checkpoint(run / "checkpoints" / "best.pt")["class_names"]
    per_class = summary["test_per_class"]
    assert [r["class"] for r in per_class] == names
    assert sum(int(r["support"]) for r in per_class) == 64  # dataset.limit=64 test images
    assert 0.0 <= summary["test_macro_f1"] <= 1.0
    for name in ("metrics.json", "per_class.csv", "confusion.csv", "confusion.png", "reliability.png"):
        assert (run / "test_report" / name).is_file(), name
    # The report's accuracy is the run's own test accuracy.
    report = json.loads((run / "test_report" / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["test_acc"])
