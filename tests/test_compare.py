"""Tests for the sweep report (cnnlab.reporting.compare): generated run folders, no training.

Every kind of folder a sweep can leave is here: completed runs (two of them seeds of
one configuration), failed, diverged, interrupted and still-running runs, a folder
with only .hydra/ (the job died before training), a garbled summary.json and a
half-written metrics.csv row. None of them may break the report.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.reporting import compare
from cnnlab.reporting.compare import COLUMNS, build_report, find_run_dirs, read_run, write_report

ROOT = Path(__file__).resolve().parents[1]

METRICS_HEADER = "epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_seconds\n"


def make_run(d: Path, *, overrides: list[str] | None = None, summary: dict | str | None = None,
             val_accs: list[float] | None = None, metrics_text: str | None = None,
             config: dict | None = None) -> Path:
    """A run folder as train() and Hydra leave it; ``summary`` may be raw text (garbled)."""
    (d / ".hydra").mkdir(parents=True)
    (d / "tb").mkdir()
    ov = overrides or []
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in ov) or "[]\n")
    cfg = config or {"model": {"name": "alexnet"}, "dataset": {"name": "digits"}, "seed": 0}
    (d / ".hydra" / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    if summary is not None:
        text = summary if isinstance(summary, str) else json.dumps(summary)
        (d / "summary.json").write_text(text)
    if metrics_text is not None:
        (d / "metrics.csv").write_text(metrics_text)
    elif val_accs is not None:
        rows = "".join(f"{e},1.0,0.5,1.0,{a},0.01,1.0\n" for e, a in enumerate(val_accs, 1))
        (d / "metrics.csv").write_text(METRICS_HEADER + rows)
    return d


def summary(model: str = "alexnet", status: str = "completed", test_acc: float | None = 0.9,
            best_val_acc: float | None = 0.9, params: int = 5_400_000, **kw) -> dict:
    s = {"model": model, "dataset": "digits", "device": "cpu", "params": params, "macs": params * 10,
         "epochs_completed": 3, "best_val_acc": best_val_acc, "best_epoch": 3, "test_acc": test_acc,
         "train_seconds": 12.5, "images_per_second": 300.0, "status": status, "error": None,
         "fit": None}
    s.update(kw)
    return s


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A sweep folder with one run of every kind."""
    s = tmp_path / "multirun" / "2026-01-01_00-00-00.000000"
    make_run(s / "0_model=alexnet", overrides=["model=alexnet", "seed=0"],
             summary=summary(test_acc=0.80, fit={"verdict": "underfit", "why": "..."}),
             val_accs=[0.5, 0.7, 0.8], config={"model": {"name": "alexnet"}, "seed": 0})
    make_run(s / "1_model=alexnet", overrides=["model=alexnet", "seed=1"],
             summary=summary(test_acc=0.90), val_accs=[0.6, 0.8, 0.9],
             config={"model": {"name": "alexnet"}, "seed": 1})
    make_run(s / "2_model=resnet18", overrides=["model=resnet18", "seed=0"],
             summary=summary("resnet18", test_acc=0.95, params=11_000_000), val_accs=[0.7, 0.9, 0.95])
    make_run(s / "3_model=googlenet", overrides=["model=googlenet"],
             summary=summary("googlenet", "failed", None, None, epochs_completed=0,
                             error="RuntimeError: boom"))
    make_run(s / "4_model=mobilenet_v3", overrides=["model=mobilenet_v3"],
             summary=summary("mobilenet_v3", "diverged", None, 0.3, error="loss became NaN"),
             val_accs=[0.3])
    make_run(s / "5_model=moganet_xtiny", overrides=["model=moganet_xtiny"],
             summary=summary("moganet_xtiny", "running", None, 0.4), val_accs=[0.4])
    make_run(s / "6_model=resnet34", overrides=["model=resnet34"],
             summary=summary("resnet34", "interrupted", None, 0.5), val_accs=[0.5])
    # Died before train() wrote anything: only Hydra's files.
    make_run(s / "7_model=resnet50", overrides=["model=resnet50"],
             config={"model": {"name": "resnet50"}, "dataset": {"name": "digits"}})
    # Killed while writing: half a summary.json, half a metrics.csv row.
    make_run(s / "8_model=mobilenet_v2", overrides=["model=mobilenet_v2"],
             summary=json.dumps(summary("mobilenet_v2"))[:40],
             metrics_text=METRICS_HEADER + "1,1.0,0.5,1.0,0.55,0.01,1.0\n2,0.9,0.")
    # A completed run whose metrics.csv lost its history.
    make_run(s / "9_model=resnet18", overrides=["model=resnet18", "seed=5"],
             summary=summary("resnet18", test_acc=0.5), metrics_text=METRICS_HEADER + "garbage,,\n")
    (s / "multirun.yaml").write_text("hydra: {}\n")
    return s


def test_finds_every_run_folder_and_nothing_inside_them(sweep: Path) -> None:
    (sweep / "0_model=alexnet" / "tb" / "summary.json").write_text("{}")  # must not count
    dirs = find_run_dirs([sweep])
    assert [d.name.split("_")[0] for d in dirs] == [str(i) for i in range(10)]
    # The same folder reached twice (outputs/ and the sweep inside it) is one run.
    assert len(find_run_dirs([sweep.parent.parent, sweep])) == 10


def test_report_keeps_every_run_and_sorts_by_test_accuracy(sweep: Path) -> None:
    report = build_report([sweep])
    by_name = {r.run_dir.name: r for r in report.runs}
    assert len(report.runs) == 10
    # Completed runs first, best test accuracy first.
    assert [r.test_acc for r in report.runs[:3]] == [0.95, 0.90, 0.80]
    assert all(r.ok for r in report.runs[:3])
    assert not any(r.ok for r in report.runs[3:])
    assert by_name["3_model=googlenet"].status == "failed"
    assert by_name["3_model=googlenet"].error == "RuntimeError: boom"
    assert by_name["4_model=mobilenet_v3"].status == "diverged"
    assert by_name["5_model=moganet_xtiny"].status == "running"
    assert by_name["6_model=resnet34"].status == "interrupted"
    dead = by_name["7_model=resnet50"]
    assert dead.status == "incomplete" and dead.model == "resnet50" and "no summary.json" in dead.error
    half = by_name["8_model=mobilenet_v2"]
    assert half.status == "incomplete" and "summary.json unreadable" in half.error
    assert half.curve == [(1, 0.55)]  # the complete row is kept, the half row skipped
    assert half.best_val_acc == 0.55
    damaged = by_name["9_model=resnet18"]
    assert damaged.status == "incomplete" and "metrics.csv" in damaged.error
    assert by_name["0_model=alexnet"].fit == "underfit"
    assert {r.run_dir.name for r in report.failed} == {
        "3_model=googlenet", "4_model=mobilenet_v3", "5_model=moganet_xtiny", "6_model=resnet34",
        "7_model=resnet50", "8_model=mobilenet_v2", "9_model=resnet18"}


def test_seeds_are_grouped_with_mean_and_std(sweep: Path) -> None:
    report = build_report([sweep])
    [group] = [g for g in report.groups if g.model == "alexnet"]
    assert sorted(r.seed for r in group.runs) == [0, 1]
    mean, std, n = group.stat("test_acc")
    assert n == 2 and mean == pytest.approx(0.85) and std == pytest.approx(0.0707107, rel=1e-4)
    # resnet18 seed=0 and seed=5 are one configuration too (one of them damaged).
    assert {g.model for g in report.groups} == {"alexnet", "resnet18"}
    md = compare.render_markdown(report)
    assert "## Repeated seeds (mean ± std)" in md
    assert "85.00 ± 7.07%" in md


def test_write_report_files(sweep: Path) -> None:
    files = write_report(build_report([sweep]), sweep)
    assert [f.name for f in files] == ["comparison.csv", "comparison.md", "comparison.png"]
    with open(sweep / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert len(rows) == 10
    assert rows[0]["model"] == "resnet18" and rows[0]["test_acc"] == "0.95"
    assert rows[0]["run_dir"] == "2_model=resnet18"  # relative to the report
    assert rows[-1]["status"] != "completed"
    assert {r["status"] for r in rows} == {"completed", "failed", "diverged", "running",
                                           "interrupted", "incomplete"}
    md = (sweep / "comparison.md").read_text()
    for status in ("failed", "diverged", "running", "interrupted", "incomplete"):
        assert f"| {status} |" in md
    assert "RuntimeError: boom" in md  # the error list
    assert (sweep / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_run_never_raises_on_junk(tmp_path: Path) -> None:
    d = make_run(tmp_path / "junk", summary="[1, 2]", metrics_text="\x00\x01 not a csv")
    (d / ".hydra" / "overrides.yaml").write_text(": : :\n- [")
    (d / ".hydra" / "config.yaml").write_text("{{{")
    run = read_run(d)
    assert run.status == "incomplete"
    assert run.overrides == [] and run.curve == []
    write_report(build_report([d]), tmp_path / "out")  # and the report still renders


def test_cli(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "cnnlab.compare", str(sweep), "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr
    assert "| resnet18 |" in p.stdout
    assert sorted(f.name for f in out.iterdir()) == ["comparison.csv", "comparison.md", "comparison.png"]
    strict = subprocess.run(cmd + ["--strict", "--no-plot", "--quiet"], capture_output=True, text=True,
                            cwd=ROOT, env=env)
    assert strict.returncode == 1 and strict.stdout == ""
    missing = subprocess.run([sys.executable, "-m", "cnnlab.compare", str(tmp_path / "nope")],
                             capture_output=True, text=True, cwd=ROOT, env=env)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = subprocess.run([sys.executable, "-m", "cnnlab.compare", str(empty)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert none.returncode == 2 and "no run folders" in none.stderr


def test_compare_never_imports_torch(sweep: Path) -> None:
    code = ("import sys; from cnnlab.reporting.compare import build_report, write_report; "
            f"write_report(build_report([{str(sweep)!r}]), {str(sweep)!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


def test_per_class_table_and_pareto_fronts_for_a_two_run_sweep(tmp_path: Path) -> None:
    s = tmp_path / "sweep"
    rows_a = [{"class": "cat", "support": 10, "accuracy": 0.9}, {"class": "dog", "support": 10, "accuracy": 0.5}]
    make_run(s / "0_model=alexnet", overrides=["model=alexnet"], val_accs=[0.7],
             summary=summary(test_acc=0.70, params=5_400_000, images_per_second=900.0, test_per_class=rows_a))
    # The other run's per-class numbers come from its per_class.csv (cnnlab.evaluate's file).
    b = make_run(s / "1_model=resnet18", overrides=["model=resnet18"], val_accs=[0.8],
                 summary=summary("resnet18", test_acc=0.80, params=11_000_000, images_per_second=300.0))
    (b / "eval" / "test_digits").mkdir(parents=True)
    (b / "eval" / "test_digits" / "per_class.csv").write_text(
        "class,support,precision,recall,f1,accuracy\ncat,10,1,0.6,0.75,0.6\ndog,10,1,1.0,1.0,1.0\n")
    report = build_report([s])
    assert [r.per_class for r in report.runs] == [{"cat": 0.6, "dog": 1.0}, {"cat": 0.9, "dog": 0.5}]
    md = compare.render_markdown(report)
    assert "## Test accuracy per class" in md
    assert "| cat | 60.00% | **90.00%** | alexnet |" in md
    assert "| dog | **100.00%** | 50.00% | resnet18 |" in md
    # Both runs are on the params front (resnet18 costs more but is more accurate) and the
    # images/s front (alexnet is faster); summary() gives MACs = 10 x params.
    assert "## Pareto fronts" in md
    assert "vs parameters: alexnet (5.40M, 70.00%) → resnet18 (11.00M, 80.00%)" in md
    assert "vs training images/s: alexnet (900, 70.00%) → resnet18 (300, 80.00%)" in md
    write_report(report, s)
    assert (s / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front() -> None:
    pts = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9), (1.5, 0.4)]
    assert compare.pareto_front(pts) == [0, 1, 3]  # cheapest first; (3, .6) and (1.5, .4) are dominated
    assert compare.pareto_front(pts, larger_x_better=True) == [3]  # larger x is better: (4, .9) beats all


def test_missing_numbers_are_empty_cells_never_placeholders(tmp_path: Path) -> None:
    """A run with no finished epoch has no best val accuracy: None in the Run, an empty
    cell in the CSV and the tables; an older summary's -1/epoch-0 placeholder reads the same."""
    s = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(s / f"{seed}_new", overrides=["model=alexnet", f"seed={seed}"],
                 summary=summary(status="running", test_acc=None, best_val_acc=None, best_epoch=None,
                                 epochs_completed=0, images_per_second=None))
        make_run(s / f"{seed}_old", overrides=["model=resnet18", f"seed={seed}"],
                 summary=summary("resnet18", test_acc=0.5 + seed / 10, best_val_acc=-1.0, best_epoch=0))
    report = build_report([s])
    assert all(r.best_val_acc is None and r.best_epoch is None for r in report.runs)
    # The group with a mean test accuracy comes first; the one without, last (not at -1).
    assert [g.model for g in report.groups] == ["resnet18", "alexnet"]
    write_report(report, s, plot=False)
    with open(s / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["best_val_acc"] == "" and r["best_epoch"] == "" for r in rows)
    assert [r["images_per_second"] for r in rows if r["model"] == "alexnet"] == ["", ""]
    md = (s / "comparison.md").read_text()
    assert not any("-1" in line for line in md.splitlines() if line.startswith("| "))
    assert "| 55.00 ± 7.07% |" in md
    assert compare.fmt(None, "%") == compare.fmt(None, "si") == ""
    assert [compare.fmt(v, "si") for v in (5_400_000, 2_470, 350)] == ["5.40M", "2.47k", "350"]
    assert compare.fmt(5_400_000, "tick") == "5.4M" and compare.fmt(0.9, "%") == "90.00%"


def test_environment_is_stated_once_and_the_runs_that_differ_are_named(tmp_path: Path) -> None:
    def env(torch: str = "2.14.0", commit: str = "81ad8ab0c1d2e3f4", dirty: bool = False) -> dict:
        return {"python": "3.11.2", "packages": {"torch": torch, "torchvision": "0.29.0", "timm": "1.0.20",
                                                 "hydra": "1.3.2", "cnnlab": "0.1.0"},
                "device": {"cpu": "AMD EPYC 7B13", "cpu_cores": 2}, "git": {"commit": commit, "dirty": dirty},
                "command": "run.py", "host": "box", "started": "2026-01-01T00:00:00+00:00", "ended": None}

    s = tmp_path / "sweep"
    for i in range(2):
        make_run(s / f"{i}_same", summary=summary(env=env()), val_accs=[0.9])
    shared = compare.console_text(build_report([s]))
    assert shared.count("Environment of all 2 runs: python 3.11.2, torch 2.14.0, torchvision 0.29.0, timm 1.0.20, "
                        "hydra 1.3.2, cnnlab 0.1.0, device AMD EPYC 7B13 (2 cores), git commit 81ad8ab0c1.") == 1
    assert "differs" not in shared

    make_run(s / "2_other", summary=summary(env=env(torch="2.13.1", dirty=True)), val_accs=[0.9])
    make_run(s / "3_old", summary=summary(), val_accs=[0.9])  # from before cnnlab recorded env
    write_report(build_report([s]), s, plot=False)
    md = (s / "comparison.md").read_text()
    assert md.count("Environment of 2 of 3 runs") == 1 and "torch 2.14.0" in md and "1 run(s) record no environment" in md
    (flag,) = [line for line in md.splitlines() if "differs:" in line]
    assert flag == "- `2_other` differs: torch 2.13.1; git commit 81ad8ab0c1 (dirty)"
