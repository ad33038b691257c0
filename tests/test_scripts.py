"""The benchmark scripts still run and write what the docs quote (their sizes shrunk; no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def _script(name: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bench_quick_writes_the_loader_and_loop_numbers(tmp_path):
    res = _script("bench.py", "--quick", "--out-dir", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = json.loads((tmp_path / "benchmarks.json").read_text())["runs"]
    (run,) = runs.values()
    assert run["machine"]["cores"] >= 1 and run["settings"]["quick"] is True
    loader = run["loader"]
    assert loader["cnnlab_tensor"] > 0 and loader["torchvision_dataloader"] > 0
    assert loader["ratio_tensor_vs_torchvision"] == loader["cnnlab_tensor"] / loader["torchvision_dataloader"]
    assert loader["cnnlab_tensor_randaugment"] > 0 and loader["cnnlab_tensor_random_erasing"] > 0
    (alexnet,) = [m for m in run["models"] if m["model"] == "alexnet"]
    assert alexnet["loop_ratio"] == alexnet["cnnlab_loop_ips"] / alexnet["bare_ips"]
    md = (tmp_path / "benchmarks.md").read_text()
    assert "alexnet" in md and "loader" in md and "policy=randaugment" in md and "random_erasing=0.25" in md


@pytest.mark.slow  # ~30 s: a script run end to end; make test-all
def test_bench_compare_times_the_report_over_generated_runs(tmp_path):
    res = _script("bench_compare.py", "--runs", "5", "--epochs", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "python -m cnnlab.compare (fresh process, csv+md+png)" in res.stdout
    assert "report callback at the end of a 10-job sweep" in res.stdout


@pytest.mark.slow  # ~30 s: a script run end to end; make test-all
def test_model_coverage_on_five_families(tmp_path):
    """scripts/model_coverage.py on five small timm families: the table, the summary, no traceback.

    starnet and lcnetv2 take the general small-input rule, swiftformer takes img_size,
    efficientformer (fixed 224x224) refuses 32x32 in one line and trains at 224.
    """
    out = tmp_path / "coverage.md"
    families = "starnet,lcnetv2,shvit,swiftformer,efficientformer"
    res = _script("model_coverage.py", "--families", families, "--torchvision", "none", "--out", str(out),
                  cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    md = out.read_text()
    rows = {ln.split(" | ")[1]: ln for ln in md.splitlines() if ln.startswith("| timm |")}
    assert sorted(rows) == sorted(families.split(","))
    assert "general rule: stem strides" in rows["starnet"] and "| yes | yes (224) |" in rows["starnet"]
    assert "takes img_size=32" in rows["swiftformer"]
    assert "| no | yes (224) |" in rows["efficientformer"] and "dataset.image_size=224" in rows["efficientformer"]
    assert not [r for r in rows.values() if "**error**" in r]
    assert "- timm: 5/5 families (100%) train at 32x32 or at their native size (4 at 32x32)" in md
