"""cnnlab.evaluate, cnnlab.predict and test_report: metrics by hand, a real tiny run, the CLIs.

One session-scoped run is trained (digits at 16x16, 600 training images, 4 epochs:
about 10-15 s on 2 cores, test accuracy 0.78) and evaluated in-process and through the CLIs.
The metric tests use small fixed arrays whose confusion matrix is written out by hand.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, assert_one_line_error, compose, run_cli

from cnnlab.errors import CheckpointError, CnnlabError, DataError
from cnnlab.evaluation.metrics import calibration, evaluate_arrays

RUN_ARGS = [*TINY, "trainer.epochs=4", "trainer.batch_size=32", "dataset.limit=600", "dataset.image_size=16",
            "trainer.log_feature_maps=false"]
DOC = REPO / "docs" / "errors.md"


# --------------------------------------------------------------------------- metrics by hand
def _fixed_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8 samples, 3 classes; logits put the predictions where the confusion matrix below says."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 1, 1, 1, 0, 2, 2])
    # rows = true, columns = predicted, counted from the two lines above
    cm = np.array([[2, 1, 0],
                   [0, 2, 0],
                   [1, 0, 2]])
    logits = np.full((8, 3), -2.0)
    logits[np.arange(8), preds] = 2.0
    return logits, labels, cm


def test_per_class_numbers_match_a_hand_computed_confusion_matrix():
    logits, labels, cm = _fixed_set()
    ev = evaluate_arrays(logits, labels, ["a", "b", "c"])
    assert np.array_equal(ev.confusion, cm)
    # precision = diagonal / column sum, recall = diagonal / row sum, by hand:
    want = {"a": (2 / 3, 2 / 3), "b": (2 / 3, 1.0), "c": (1.0, 2 / 3)}
    for row in ev.per_class:
        p, r = want[row["class"]]
        assert row["precision"] == pytest.approx(p) and row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(2 * p * r / (p + r))
        assert row["accuracy"] == pytest.approx(r)
    assert [r["support"] for r in ev.per_class] == [3, 2, 3]
    m = ev.metrics
    assert m["accuracy"] == pytest.approx(6 / 8) and m["n_images"] == 8
    assert m["macro_f1"] == pytest.approx(np.mean([2 / 3, 0.8, 0.8]))
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.8 + 3 * 0.8) / 8)
    assert "top5_accuracy" not in m  # 3 classes
    # Every sample has the same confidence e^2 / (e^2 + 2 e^-2): one bin, |acc - conf|.
    conf = np.exp(2) / (np.exp(2) + 2 * np.exp(-2))
    assert m["ece"] == pytest.approx(abs(6 / 8 - conf))
    assert m["loss"] == pytest.approx(-(6 * np.log(conf) + 2 * np.log(np.exp(-2) / (np.exp(2) + 2 * np.exp(-2)))) / 8)


def test_ece_bins_by_hand():
    # Two bins in use: confidences 0.95 (right, right) and 0.55 (right, wrong) -> |1 - .95|/2 + |.5 - .55|/2.
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 1])
    cal = calibration(probs, labels, n_bins=15)
    assert cal.count.sum() == 4 and (cal.count > 0).sum() == 2
    assert cal.ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)


def test_top5_where_more_than_five_classes():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    ev = evaluate_arrays(logits, labels, [str(i) for i in range(7)])
    ranks = (-logits).argsort(1)[:, :5]
    assert ev.metrics["top5_accuracy"] == pytest.approx(np.mean([y in r for y, r in zip(labels, ranks, strict=True)]))


def test_class_names_come_from_the_checkpoint_when_it_has_them():
    from cnnlab.evaluation.source import check_classes, saved_class_names

    assert saved_class_names({"class_names": ["cat", "dog"]}) == ["cat", "dog"]
    assert saved_class_names({"model": {}}) is None  # an older checkpoint: the dataset's names are used
    check_classes(["a", "b"], ["a", "b"], "x", "y")
    with pytest.raises(DataError, match="another order"):
        check_classes(["a", "b"], ["b", "a"], "x", "y")


# --------------------------------------------------------------------------- test_report in isolation
def test_test_report_writes_the_files_and_the_summary_fields(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from cnnlab.data import load_dataset
    from cnnlab.data.loader import make_loaders
    from cnnlab.device import resolve_device
    from cnnlab.evaluation.report import test_report

    data = load_dataset("digits", None, False, 16, 1, 0.15, 0.15, 0, 512, limit=100)
    policy = resolve_device("cpu", None, None, False)
    _, _, test_loader = make_loaders(data, "tensor", 16, 32, [0.5], [0.5], None, policy.device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))

    class Tracker:  # what RunTracker offers test_report: an enabled flag and its SummaryWriter
        enabled = True
        tb = SummaryWriter(log_dir=str(tmp_path / "tb"))

    fields = test_report(model, test_loader, policy, data.classes, tmp_path / "test_report", Tracker(), step=3)
    Tracker.tb.close()
    out = tmp_path / "test_report"
    for name in ("metrics.json", "per_class.csv", "confusion.csv", "confusion.png", "reliability.png"):
        assert (out / name).is_file(), name
    # The same predictions, computed here directly.
    with torch.no_grad():
        preds = model(data.test.x.float().div(255).sub(0.5).div(0.5)).argmax(1)
    y = data.test.y
    per_class = {r["class"]: r for r in fields["test_per_class"]}
    for c in range(10):
        n = int((y == c).sum())
        assert per_class[str(c)]["support"] == n
        if n:
            assert per_class[str(c)]["accuracy"] == pytest.approx(float(((preds == c) & (y == c)).sum()) / n)
    assert set(fields) >= {"test_macro_f1", "test_weighted_f1", "test_ece", "test_top5_acc", "test_per_class"}
    assert 0 <= fields["test_macro_f1"] <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float((preds == y).float().mean()))
    assert metrics["macro_f1"] == pytest.approx(fields["test_macro_f1"])
    with open(out / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true\\predicted", *data.classes] and sum(int(v) for r in rows[1:] for v in r[1:]) == len(y)
    events = b"".join(p.read_bytes() for p in (tmp_path / "tb").glob("events.*"))
    assert b"test/confusion" in events and b"test/reliability" in events


# --------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    from cnnlab.train import train

    run = tmp_path_factory.mktemp("evaluate") / "run"
    summary = train(compose(RUN_ARGS, output_dir=run))
    assert summary["status"] == "completed"
    return run


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_evaluate_writes_every_file_and_matches_the_runs_test_accuracy(trained_run):
    from cnnlab.evaluate import evaluate_run

    out, m = evaluate_run(str(trained_run))
    assert out == trained_run / "eval" / "test_digits"
    for name in ("metrics.json", "per_class.csv", "confusion.csv", "confusion_normalized.csv", "confusion.png",
                 "reliability.png", "misclassified.png"):
        assert (out / name).stat().st_size > 0, name
    s = _summary(trained_run)
    assert m["accuracy"] == pytest.approx(s["test_acc"])  # the same images, the same weights
    assert m["loss"] == pytest.approx(s["test_loss"], rel=1e-4)
    assert m["checkpoint_epoch"] == s["best_epoch"] and m["n_images"] == 270
    assert {"top5_accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
            "weighted_recall", "weighted_f1", "ece"} <= set(m)
    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == [str(i) for i in range(10)]
    assert sum(int(r["support"]) for r in rows) == 270
    assert list(rows[0]) == ["class", "support", "precision", "recall", "f1", "accuracy"]
    events = b"".join(p.read_bytes() for p in (trained_run / "tb").glob("events.*"))
    assert b"eval/test_digits/confusion" in events and b"eval/test_digits/misclassified" in events

    # Never over an earlier evaluation: the next one goes beside it.
    before = (out / "metrics.json").read_text()
    out2, m2 = evaluate_run(str(trained_run), checkpoint="last", split="val", tensorboard=False)
    assert out2.name == "val_digits"
    out3, _ = evaluate_run(str(trained_run), tensorboard=False)
    assert out3.name == "test_digits-2" and (out / "metrics.json").read_text() == before
    assert m2["checkpoint_epoch"] == s["epochs_completed"] == 4 and m2["n_images"] == 270
    with pytest.raises(CnnlabError, match="already exists"):
        evaluate_run(str(trained_run), out=str(out))


def _digit_folders(root: Path, names: list[str], n: int = 40) -> list[tuple[Path, int]]:
    """The digits test split as PNG files (RGB, 24x24: predict must convert and resize)."""
    from PIL import Image

    from cnnlab.data import load_dataset

    data = load_dataset("digits", None, False, 32, 1, 0.15, 0.15, 0, 512)
    out = []
    for i in range(n):
        label = int(data.test.y[i])
        d = root / names[label]
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{i}.png"
        Image.fromarray(data.test.x[i, 0].numpy()).convert("RGB").resize((24, 24)).save(f)
        out.append((f, label))
    return out


def test_evaluate_on_another_dataset_checks_its_classes(trained_run, tmp_path):
    from cnnlab.evaluate import evaluate_run

    good = tmp_path / "good"
    _digit_folders(good, [str(i) for i in range(10)], n=120)
    ds = {"name": "imagefolder", "root": str(good), "download": False, "val_split": 0.15, "test_split": 0.15,
          "split_seed": 0, "memory_budget_mb": 512, "limit": None, "loader": "tensor"}
    out, m = evaluate_run(str(trained_run), split="all", dataset=ds, dataset_is_new=True, tensorboard=False)
    assert out.name == "all_imagefolder" and m["n_images"] == 120 and m["dataset"] == "imagefolder"
    assert m["accuracy"] > 0.3  # the model's digits, in other files: far above chance (0.1)

    bad = tmp_path / "bad"
    _digit_folders(bad, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"], n=40)
    with pytest.raises(DataError) as e:
        evaluate_run(str(trained_run), dataset={**ds, "root": str(bad)}, dataset_is_new=True)
    msg = str(e.value)
    assert "\n" not in msg and "(a, b, c" in msg and "(0, 1, 2" in msg and "trained on digits" in msg


def test_predict_a_folder_of_digit_pngs(trained_run, tmp_path, capsys):
    from cnnlab.predict import predict

    files = _digit_folders(tmp_path / "imgs", [f"class_{i}" for i in range(10)], n=30)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    path, rows, columns = predict(str(trained_run), str(tmp_path / "imgs"), topk=3)
    assert "notes.txt" in capsys.readouterr().err  # named in a warning, then skipped
    assert path == trained_run / "predict" / "predictions.csv"
    assert columns == ["file", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    truth = {str(f): str(label) for f, label in files}
    assert sorted(r["file"] for r in rows) == sorted(truth)
    right = sum(r["class_1"] == truth[r["file"]] for r in rows)
    assert right >= 12, right  # chance is 3 of 30
    for r in rows:
        assert 1 >= r["prob_1"] >= r["prob_2"] >= r["prob_3"] >= 0
    with open(path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 30
    path2, _, _ = predict(str(trained_run), str(files[0][0]), topk=1)  # one file; never over the first csv
    assert path2.name == "predictions-2.csv"


def test_in_process_errors(trained_run, tmp_path):
    from cnnlab.evaluate import evaluate_run
    from cnnlab.predict import predict

    with pytest.raises(CnnlabError, match="topk=11 .*10 classes"):
        predict(str(trained_run), str(trained_run / "summary.json"), topk=11)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="empty folder"):
        predict(str(trained_run), str(tmp_path / "empty"))
    with pytest.raises(CnnlabError, match="split='dev'"):
        evaluate_run(str(trained_run), split="dev")
    import torch

    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="not a cnnlab training checkpoint"):
        evaluate_run(str(tmp_path / "weights.pt"))


# --------------------------------------------------------------------------- the command lines
def test_help_is_instant_and_the_configs_compose_offline():
    from cnnlab.compose import compose as compose_conf

    code = ("import sys; sys.argv = ['x', '--help']; from cnnlab.{m} import cli; cli(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    for m in ("evaluate", "predict"):
        p = subprocess.run([sys.executable, "-c", code.format(m=m)], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
        assert p.returncode == 0 and "usage: python -m cnnlab." + m in p.stdout, p.stderr
    cfg = compose_conf(["run=x", "dataset=imagefolder", "dataset.root=/r"], config_name="evaluate")
    assert cfg.dataset.root == "/r" and cfg.split == "test" and cfg.checkpoint == "best"
    assert compose_conf(["+dataset.limit=5"], config_name="evaluate").dataset.limit == 5
    assert compose_conf(["run=x", "images=y"], config_name="predict").topk is None


@pytest.mark.slow
def test_cli_evaluate(trained_run, tmp_path):
    res = run_cli([f"run={trained_run}", "split=val", "dataset.limit=100", "tensorboard=false",
                   f"out={tmp_path / 'ev'}"], tmp_path, module="cnnlab.evaluate", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "accuracy" in res.stdout and "wrote" in res.stdout
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_images"] == 100 and m["split"] == "val"  # dataset.limit applied to the run's own dataset


@pytest.mark.slow
def test_cli_predict(trained_run, tmp_path):
    files = _digit_folders(tmp_path / "imgs", [f"c{i}" for i in range(10)], n=5)
    out = tmp_path / "p.csv"
    res = run_cli([f"run={trained_run}", f"images={tmp_path / 'imgs'}", "topk=2", f"out={out}"], tmp_path,
                  module="cnnlab.predict", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0].split() == ["file", "top", "1", "top", "2"]
    assert len(res.stdout.splitlines()) == 1 + len(files) + 1 and out.is_file()


# --------------------------------------------------------------------------- the bad-input catalogue
# name -> (module, arguments, needles, slow); {run} is the trained run, {tmp} the case's folder.
ERROR_CASES = {
    "evaluate a run folder with no checkpoint": ("cnnlab.evaluate", ["run={tmp}/empty"],
                                                 ["run=", "holds no checkpoint"], False),
    "evaluate a path that does not exist": ("cnnlab.evaluate", ["run={tmp}/nowhere"],
                                            ["nowhere", "no such run folder or checkpoint file"], False),
    "evaluate a checkpoint that is not cnnlab's": ("cnnlab.evaluate", ["run={tmp}/weights.pt"],
                                                   ["weights.pt", "not a cnnlab training checkpoint"], True),
    "evaluate on a dataset whose classes differ": ("cnnlab.evaluate",
                                                   ["run={run}", "dataset=imagefolder", "dataset.root={tmp}/ab"],
                                                   ["2 classes (a, b)", "10 classes (0, 1, 2"], True),
    "evaluate an unknown split": ("cnnlab.evaluate", ["run={run}", "split=dev"], ["split='dev'", "test, val"],
                                  False),
    "predict images that do not exist": ("cnnlab.predict", ["run={run}", "images={tmp}/nowhere"],
                                         ["images=", "nowhere", "no such file or folder"], False),
    "predict an empty folder": ("cnnlab.predict", ["run={run}", "images={tmp}/empty"], ["empty folder"], False),
    "predict with topk=0": ("cnnlab.predict", ["run={run}", "images={tmp}/ab", "topk=0"],
                            ["topk=0", ">= 1"], False),
    "predict with topk above the classes": ("cnnlab.predict", ["run={run}", "images={tmp}/ab", "topk=11"],
                                            ["topk=11", "10 classes", "1 to 10"], True),
    "evaluate with tta=flip on a digit set": ("cnnlab.evaluate", ["run={run}", "tta=flip"],
                                              ["tta=flip is off for digits"], True),
    "TTA crops larger than the image": ("cnnlab.evaluate", ["run={run}", "tta=crops", "tta_padding=40"],
                                        ["tta_padding=40", "more than the image"], True),
}


def _error_inputs(tmp: Path) -> None:
    import torch
    from PIL import Image

    (tmp / "empty").mkdir()
    for c in ("a", "b"):
        (tmp / "ab" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (16, 16), 60 * i).save(tmp / "ab" / c / f"{i}.png")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp / "weights.pt")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if c[3] else [], id=n)
                                  for n, c in ERROR_CASES.items()])
def test_bad_input_fails_in_one_line(name, trained_run, tmp_path):
    module, args, needles, _ = ERROR_CASES[name]
    _error_inputs(tmp_path)
    res = run_cli([a.format(run=trained_run, tmp=tmp_path) for a in args], tmp_path, module=module,
                  env={"OMP_NUM_THREADS": "1"})
    assert_one_line_error(res, needles)


def test_every_error_case_is_in_the_catalogue():
    doc = DOC.read_text()
    missing = [name for name in ERROR_CASES if f"| {name} |" not in doc]
    assert not missing, f"add these rows to docs/errors.md: {missing}"


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from cnnlab.data import load_dataset
    from cnnlab.data.loader import make_loaders
    from cnnlab.device import resolve_device
    from cnnlab.dist import Dist
    from cnnlab.evaluation.report import test_report

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data = load_dataset("digits", None, False, 16, 1, 0.15, 0.15, 0, 512, limit=101)
        policy = resolve_device("cpu", None, None, False)
        _, _, test = make_loaders(data, "tensor", 16, 32, [0.5], [0.5], None, policy.device, rank=rank,
                                  world_size=world)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
        fields = test_report(model, test, policy, data.classes, Path(out) / "ddp", ddp=Dist(rank, world))
        Path(out, f"fields{rank}.json").write_text(json.dumps(fields))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_test_report_under_ddp_gathers_every_shard(tmp_path):
    """Two gloo ranks, each with half the test split: the report is the single-process one; rank 0 writes."""
    import socket

    import torch
    import torch.multiprocessing as mp

    from cnnlab.data import load_dataset
    from cnnlab.data.loader import make_loaders
    from cnnlab.device import resolve_device
    from cnnlab.evaluation.report import test_report

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    data = load_dataset("digits", None, False, 16, 1, 0.15, 0.15, 0, 512, limit=101)
    policy = resolve_device("cpu", None, None, False)
    _, _, test = make_loaders(data, "tensor", 16, 32, [0.5], [0.5], None, policy.device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    single = test_report(model, test, policy, data.classes, tmp_path / "single")
    for rank in (0, 1):
        got = json.loads((tmp_path / f"fields{rank}.json").read_text())
        assert got["test_per_class"] == single["test_per_class"]
        assert got["test_macro_f1"] == pytest.approx(single["test_macro_f1"])
    assert (tmp_path / "ddp" / "confusion.csv").read_text() == (tmp_path / "single" / "confusion.csv").read_text()


def test_evaluate_uses_the_ema_weights_the_run_tested_with(tmp_path):
    """With ema.enabled the run's val and test use the EMA's weights; evaluate must too."""
    from cnnlab.evaluate import evaluate_run
    from cnnlab.lifecycle.checkpoint import eval_state_dict, extract_state_dict, load_checkpoint
    from cnnlab.train import train

    run = tmp_path / "run"
    # decay 0.999 over 8 steps: the average is still mostly the initial weights, far from the live ones.
    summary = train(compose([*TINY, "dataset.image_size=16", "trainer.epochs=2", "ema.enabled=true",
                             "ema.decay=0.999", "optimizer.lr=0.2"], output_dir=run))
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    live, ema = extract_state_dict(ck), eval_state_dict(ck)
    assert any(not (live[k] == ema[k]).all() for k in live)  # two different sets of weights
    _, m = evaluate_run(str(run), tensorboard=False)
    assert m["accuracy"] == pytest.approx(summary["test_acc"])
    assert m["loss"] == pytest.approx(summary["test_loss"], rel=1e-4)


@pytest.mark.parametrize("arg, says", [
    ("batch_size=abc", "batch_size='abc' is not allowed: use null or an integer >= 1"),
    ("mistakes=-1", "mistakes=-1 is not allowed: use an integer in [0, 256]"),
    ("tensorboard=maybe", "tensorboard='maybe' is not allowed: use true or false"),
    ("dataset.limt=100", "dataset.limt is not a config key; did you mean dataset.limit?"),
    ("dataset.val_split=abc", "dataset.val_split='abc': "),
    ("dataset.limit=0", "dataset.limit=0 is not allowed: use null or an integer >= 1"),
])
def test_evaluate_keys_are_checked_before_anything_is_loaded(arg, says, tmp_path):
    res = run_cli([f"run={tmp_path}", arg], cwd=tmp_path, module="cnnlab.evaluate")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and says in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_predict_batch_size_is_checked(tmp_path):
    res = run_cli([f"run={tmp_path}", f"images={tmp_path}", "batch_size=0"], cwd=tmp_path, module="cnnlab.predict")
    assert res.returncode == 2 and res.stderr.strip() == "error: batch_size=0 is not allowed: use an integer >= 1"
