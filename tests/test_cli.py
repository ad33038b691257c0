"""The command line as a user meets it: a real run, and every bad input of [core]."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, run_cli
from cnnlab.track import METRIC_COLUMNS


def _summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in root.rglob("summary.json")]


def test_run_writes_every_contract_file(tmp_path):
    res = run_cli([*TINY, "trainer.epochs=2"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = [p.parent for p in (tmp_path / "outputs").rglob("summary.json")]
    assert len(runs) == 1
    run = runs[0]
    for rel in (".hydra/config.yaml", ".hydra/overrides.yaml", "run.log", "metrics.csv", "summary.json",
                "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / rel).is_file(), rel
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "metrics.csv").read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    assert "epoch 2/2" in (run / "run.log").read_text()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_two_runs_in_the_same_second_get_two_folders(tmp_path):
    import subprocess
    import sys
    import os

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "cnnlab.run", *TINY, "dataset.limit=32", "trainer.save_checkpoints=false"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    assert len(list((tmp_path / "outputs").rglob("summary.json"))) == 2


def _imagefolder(root: Path, classes: int, per_class: int = 3) -> Path:
    from PIL import Image

    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 12), (40 * c, 10 * i, 0)).save(root / f"class{c}" / f"{i}.png")
    return root


BAD = {
    "unknown model": (["model=alexnett"], "alexnet"),
    "unknown dataset": (["dataset=cifar11"], "cifar10"),
    "unknown optimizer": (["optimizer=sgdd"], "sgd"),
    "unknown scheduler": (["scheduler=cosin"], "cosine"),
    "unknown device": (["device=tpu"], "cuda"),
    "zero epochs": (["trainer.epochs=0"], "trainer.epochs=0"),
    "negative batch": (["trainer.batch_size=-1"], "trainer.batch_size=-1"),
    "zero lr": (["optimizer.lr=0"], "optimizer.lr=0"),
    "cuda without cuda": (["device=cuda"], "device=cuda"),
    "imagefolder missing root": (["dataset=imagefolder", "dataset.root={tmp}/nowhere"], "nowhere"),
    "imagefolder without images": (["dataset=imagefolder", "dataset.root={tmp}/empty"], "no class subfolders"),
    "imagefolder one class": (["dataset=imagefolder", "dataset.root={tmp}/one"], "1 class"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_fails_in_one_line(case, tmp_path):
    (tmp_path / "empty").mkdir()
    _imagefolder(tmp_path / "one", classes=1)
    overrides, needle = BAD[case]
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    if case == "cuda without cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    res = run_cli([*TINY, *overrides], cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout
    assert needle in res.stderr
    first = res.stderr.strip().splitlines()[0]
    if first.startswith("error:"):  # our own messages are exactly one line
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not any(s.get("status") == "completed" for s in _summaries(tmp_path))


def test_help_does_not_import_torch(tmp_path):
    res = run_cli(["--help"], cwd=tmp_path, env={"PYTHONVERBOSE": ""})
    assert res.returncode == 0 and "model: " in res.stdout
    res = run_cli(["--cfg", "job"], cwd=tmp_path)
    assert res.returncode == 0 and "trainer:" in res.stdout
    import subprocess
    import sys

    probe = "import sys, runpy; sys.argv=['x','--help']\ntry:\n runpy.run_module('cnnlab.run', run_name='__main__')\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "False"
