"""The command line as a user meets it: a real run. Bad inputs: tests/test_errors.py."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, run_cli

from cnnlab.reporting.track import METRIC_COLUMNS


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
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "cnnlab.run", *TINY, "dataset.limit=32", "trainer.save_checkpoints=false"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    assert len(list((tmp_path / "outputs").rglob("summary.json"))) == 2


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


@pytest.mark.parametrize("part", ["job", "all"])
def test_cfg_resolve_prints_the_resolved_config(part, tmp_path):
    """Nothing runs, so there is no run folder yet: paths.output_dir prints as null."""
    res = run_cli(["--cfg", part, "--resolve", "model=resnet18"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "${" not in res.stdout and "name: resnet18" in res.stdout
    assert "output_dir: null" in res.stdout
    if part == "all":
        assert "_resnet18_digits" in res.stdout  # hydra.run.dir, resolved
    assert list(tmp_path.iterdir()) == []
