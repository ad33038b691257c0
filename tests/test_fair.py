"""[fair]: the lr range test (trainer.lr_find), per-image predictions, significance in the sweep report."""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose

import cnnlab.train as train_mod
from cnnlab.data.loader import TensorLoader
from cnnlab.device import resolve_device
from cnnlab.evaluation.report import PREDICTION_COLUMNS, split_order, write_predictions
from cnnlab.recipes.lr_find import budget_steps, range_test
from cnnlab.reporting import compare
from cnnlab.reporting.significance import holm, mcnemar_exact, t_interval, wilson

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = resolve_device("cpu", None, False, False)


# --------------------------------------------------------------------------- the range test
def _images(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _snapshot(model, opt, loader) -> dict:
    """Everything the test must put back, compared by value."""
    return {"weights": {k: v.clone() for k, v in model.state_dict().items()},
            "opt": json.dumps(opt.state_dict()["param_groups"]),
            "momentum": [s["momentum_buffer"].clone() for s in opt.state.values()],
            "grads": [p.grad for p in model.parameters()],
            "data": loader.generator.get_state()}


def test_the_range_test_restores_weights_optimizer_rngs_and_loader_bit_for_bit():
    x, y = _images()
    loader = TensorLoader(x, y, 16, [0.5], [0.25], train=True, seed=3,
                          augment=None)
    loader.augment.flip, loader.augment.cutout = True, 2  # draws from the loader's generator
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 36, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for xb, yb in list(loader)[:2]:  # some optimizer state (momentum) and BN statistics to restore
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    before = _snapshot(model, opt, loader)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)

    res = range_test(model, model, opt, loader, CPU, lr=0.05, steps=12)  # 12 steps: more than an epoch (6)
    after = _snapshot(model, opt, loader)
    draws_after = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == draws_after  # every RNG put back

    assert len(res.lrs) >= 2 and res.lrs[0] == pytest.approx(0.05 / 100)
    assert res.losses[0] != res.losses[1]  # it did train (the weights moved) before the restore
    for k in before["weights"]:
        assert torch.equal(before["weights"][k], after["weights"][k]), k
    assert before["opt"] == after["opt"]  # lr, momentum, ... of every group
    assert all(torch.equal(a, b) for a, b in zip(before["momentum"], after["momentum"], strict=True))
    assert after["grads"] == [None] * len(after["grads"])
    assert torch.equal(before["data"], after["data"])


@pytest.mark.slow  # two training runs: ~30 s on the loaded 2-core machine
def test_a_run_with_lr_find_is_the_run_at_the_chosen_lr(tmp_path):
    """The same seed gives the same run apart from the lr: metrics.csv equal, timing aside."""
    tiny = [*TINY, "dataset.image_size=16", "trainer.epochs=2", "trainer.log_feature_maps=false"]
    found = train_mod.train(compose([*tiny, "trainer.lr_find=true"], output_dir=tmp_path / "found"))
    lr = found["lr_find"]["lr"]
    assert found["lr_find"]["steps"] == budget_steps(2 * 4) == 10
    assert (tmp_path / "found" / "lr_find.png").stat().st_size > 0
    plain = train_mod.train(compose([*tiny, f"optimizer.lr={lr!r}"], output_dir=tmp_path / "plain"))
    assert "lr_find" not in plain

    def rows(d):
        with open(tmp_path / d / "metrics.csv") as f:
            return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(f)]

    assert rows("found") == rows("plain")
    assert found["test_acc"] == plain["test_acc"]
    # predictions.csv.gz: the test pass's per-image rows, the same accuracy as summary.json's
    with gzip.open(tmp_path / "found" / "test_report" / "predictions.csv.gz", "rt") as f:
        preds = list(csv.DictReader(f))
    assert list(preds[0]) == PREDICTION_COLUMNS
    assert sum(r["label"] == r["prediction"] for r in preds) / len(preds) == found["test_acc"]


def test_the_chosen_lr_follows_the_known_curvature_of_a_linear_problem():
    """Softmax regression on random labels, full batch, from zero weights: the optimum stays near
    W = 0, where the Hessian is (diag(p) - p p^T) (x) E[x x^T] with p uniform, so its largest
    eigenvalue is L = lambda_max(E[x x^T]) / K, and a gradient step is stable only below 2/L.
    The chosen lr (the blow-up / 10) must lie below that bound and within 30x of it, and scale as
    1/L when the inputs are scaled."""
    def chosen(scale: float) -> tuple[float, float]:
        g = torch.Generator().manual_seed(0)
        k, n, d = 4, 512, 16
        y = torch.randint(0, k, (n,), generator=g)
        x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 2.0, d) * scale
        big_l = torch.linalg.eigvalsh(x.T @ x / n).max().item() / k
        model = torch.nn.Linear(d, k, bias=False)
        torch.nn.init.zeros_(model.weight)
        opt = torch.optim.SGD(model.parameters(), lr=1 / big_l)

        class Full:  # one full batch an "epoch": the problem's own curvature, no sampling noise
            generator = torch.Generator()

            def __iter__(self):
                return iter([(x, y)])

        res = range_test(model, model, opt, Full(), CPU, lr=1 / big_l, steps=100)
        return res.chosen_lr, big_l

    lr1, l1 = chosen(1.0)
    assert 2 / l1 / 30 <= lr1 <= 2 / l1
    lr10, l10 = chosen(10.0)
    assert 2 / l10 / 30 <= lr10 <= 2 / l10
    assert 50 <= lr1 / lr10 <= 200  # 100x the curvature, about 100x smaller


def test_lr_find_is_off_by_default():
    assert compose([]).trainer.lr_find is False  # a wrong value: tests/test_fuzz_config.py fuzzes every RULE


# --------------------------------------------------------------------------- statistics
Z = 1.959963984540054  # the standard normal's 97.5% quantile


def test_wilson_against_the_formula_and_newcombes_example():
    def by_hand(k, n):
        p = k / n
        centre, half = p + Z**2 / (2 * n), Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n * n))
        return (centre - half) / (1 + Z**2 / n), (centre + half) / (1 + Z**2 / n)

    for k, n in ((81, 263), (248, 270), (0, 10), (10, 10)):
        assert wilson(k, n) == pytest.approx(by_hand(k, n), abs=1e-9)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)  # Newcombe (1998), Table I


def test_mcnemar_exact_against_the_binomial_sum():
    def by_hand(b, c):
        n = b + c
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)

    for b, c in ((2, 8), (5, 5), (0, 7), (13, 30), (1, 0)):
        assert mcnemar_exact(b, c) == pytest.approx(by_hand(b, c), rel=1e-12)
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)  # 2 * (1 + 10 + 45) / 2^10
    assert mcnemar_exact(0, 0) == 1.0


def test_holm_step_down():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_t_interval_against_the_t_table():
    mean, sd, lo, hi = t_interval([0.90, 0.92, 0.94])
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2 df) = 4.303 from the table
    assert (mean, sd) == pytest.approx((0.92, 0.02))
    assert (lo, hi) == pytest.approx((0.92 - half, 0.92 + half), abs=1e-6)
    assert t_interval([0.5])[1:] == (None, None, None)


# --------------------------------------------------------------------------- predictions and the report
def test_predictions_csv_columns_order_and_ddp_positions(tmp_path):
    probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    labels = np.array([1, 2, 2, 0, 0])
    index = split_order(5, 2)  # DDP with 2 ranks: rows 0, 2, 4 from rank 0, then 1, 3
    assert index.tolist() == [0, 2, 4, 1, 3]
    write_predictions(tmp_path / "p.csv.gz", probs, labels, index)
    with gzip.open(tmp_path / "p.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == PREDICTION_COLUMNS
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3, 4]
    r = rows[1]  # split position 1 = the file's row 3 given
    assert (r["label"], r["prediction"], float(r["p_true"]), r["top5"]) == ("0", "2", 0.3, "2 0 1")
    assert (tmp_path / "p.csv.gz").read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0: reproducible bytes


def _run(root: Path, name: str, correct: np.ndarray, labels: np.ndarray, improving: bool = True) -> Path:
    d = root / name
    (d / "test_report").mkdir(parents=True)
    k = 10
    preds = np.where(correct, labels, (labels + 1) % k)
    probs = np.full((len(labels), k), 0.05)
    probs[np.arange(len(labels)), preds] = 0.55
    write_predictions(d / "test_report" / "predictions.csv.gz", probs, labels)
    acc = float(correct.mean())
    (d / "summary.json").write_text(json.dumps({
        "model": name, "dataset": "digits", "status": "completed", "test_acc": acc, "best_val_acc": acc,
        "epochs_completed": 1, "class_names": [f"c{i}" for i in range(k)], "test_report": "test_report",
        "test_per_class": [{"class": f"c{i}", "accuracy": float(correct[labels == i].mean())} for i in range(k)],
        "fit": {"verdict": "good fit", "val_still_improving": improving}}))
    (d / "metrics.csv").write_text(f"epoch,train_loss,train_acc,val_loss,val_acc,lr\n1,1,0.5,1,{acc},0.1\n")
    return d


def test_a_three_run_report_marks_the_ties(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 10, n)
    best = rng.random(n) < 0.90
    close = best.copy()
    close[np.flatnonzero(best)[:4]] = False   # 4 images fewer: b = 4, c = 0 -> p = 0.125, tied
    far = rng.random(n) < 0.60               # about 120 images fewer: worse, p far below 0.001
    sweep = tmp_path / "sweep"
    _run(sweep, "alexnet", best, labels)
    _run(sweep, "mobilenet_v3", close, labels, improving=False)
    base = _run(sweep, "resnet18", far, labels)
    report = compare.build_report([sweep])
    (sentence, table), = compare.significance(report)
    # Holm: resnet18's tiny p x 2, then mobilenet_v3's 2 * 2^-4 = 0.125 x 1
    assert sentence.startswith("alexnet and mobilenet_v3 are tied (p = 0.12)")
    assert "resnet18 is worse than alexnet (p < 0.001)" in sentence
    assert "2 of 3 runs were still improving" in sentence
    rows = {line.split("|")[2].strip(): line for line in table.splitlines()[2:]}
    assert "tied for first" in rows["mobilenet_v3"] and "worse" in rows["resnet18"]
    assert "4 / 0" in rows["mobilenet_v3"] and "| 0.125 | 0.125 |" in rows["mobilenet_v3"]
    md = compare.render_markdown(report)
    assert md.index("are tied") < md.index("| # |")  # the sentence at the top

    # --against: every run against resnet18; the per-class table counts the disagreements
    assert compare.main([str(sweep), "--against", str(base), "--no-plot", "--quiet"]) == 0
    md = (sweep / "comparison.md").read_text()
    assert "vs resnet18" in md and "alexnet and mobilenet_v3 are better than resnet18 (p < 0.001" in md
    assert "ahead of every" not in md
    assert "right in only #3 / only #1" in md and "disagree most on class" in md


@pytest.mark.slow  # torchrun, 2 processes: ~1 min on the loaded 2-core machine
def test_lr_find_under_ddp_every_rank_takes_rank_0s_choice(tmp_path):
    """Two gloo ranks with fp-free CPU steps: the test runs in lockstep (no hang), every rank
    trains at the same lr, and rank 0's summary records it."""
    from test_ddp import PARITY, torchrun

    res = torchrun([*PARITY, "trainer.lr_find=true", "trainer.accumulate=2", "hydra.run.dir=run"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["lr_find"]["steps"] == 10
    with open(tmp_path / "run" / "metrics.csv") as f:
        first = next(csv.DictReader(f))
    # the schedule is built on the chosen lr: cosine over 4 optimizer steps (64 images / global
    # batch 16 / accumulate 2 = 2 an epoch) is half-way down at epoch 1's end
    assert float(first["lr"]) == pytest.approx(0.5 * summary["lr_find"]["lr"])
