"""scripts/gpu_check.sh without a GPU: --dry-run checks the wheels and lists the steps (no network,
no torch), and scripts/gpu_report.py turns the steps' files into the report and docs/gpu.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _check(*args: str, wheels=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"GPU_WHEELS": str(wheels)} if wheels is not None else {})}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def _report_module():
    spec = importlib.util.spec_from_file_location("gpu_report", REPO / "scripts" / "gpu_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_names_the_missing_wheels_then_lists_the_steps(tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    res = _check("--dry-run", wheels=empty)
    assert res.returncode == 2 and res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert line.startswith("error: ") and "make gpu-wheels" in line
    missing = line.split("lacks the wheels of ", 1)[1].split(":", 1)[0].split()
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime"} <= set(missing)

    for name in missing:  # wheels' file names: the project name normalised (PEP 427)
        (empty / f"{name.replace('-', '_').lower()}-1.0-py3-none-any.whl").write_bytes(b"")
    res = _check("--dry-run", wheels=empty)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"all {len(missing)} in {empty}" in out
    for step in ("env", "wheels", "pytest", "digits", "bench-fp32", "bench-bf16", "bench-bf16-cl", "bench-compile"):
        assert f"  {step} " in out, step
    assert "-m pytest -q -m gpu tests/test_gpu.py" in out and "scripts/bench.py --device cuda" in out
    for model in ("alexnet", "resnet18", "mobilenet_v3", "moganet_xtiny"):
        assert model in out

    res = _check("--dry-run", "--only", "pytest,digits", wheels=empty)
    assert res.returncode == 0 and "  pytest " in res.stdout and "bench-fp32" not in res.stdout
    res = _check("--dry-run", "--only", "pytset", wheels=empty)
    assert res.returncode == 2 and res.stderr.startswith("error: --only pytset: no such step")


def test_dry_run_on_the_real_wheels():
    if not (REPO / ".gpu-wheels").is_dir():
        pytest.skip("no .gpu-wheels/ here: make gpu-wheels downloads them")
    res = _check("--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would run" in res.stdout


def _bench_run(amp: str, channels_last: bool, rows: list[tuple[str, bool, float, float]]) -> dict:
    return {"machine": {"device": "cuda:0"}, "settings": {"amp": amp, "channels_last": channels_last},
            "models": [{"model": m, "compile": c, "batch_size": 512, "bare_ips": ceiling, "cnnlab_loop_ips": ceiling,
                        "cnnlab_epoch_ips": epoch, "epoch_vs_ceiling": epoch / ceiling, "epoch_images": 50_000,
                        "peak_memory_mb": 1234.5} for m, c, ceiling, epoch in rows]}


def test_report_checks_the_targets_and_fills_the_docs(tmp_path):
    rep = _report_module()
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "bench").mkdir(parents=True)
    out.mkdir()
    (work / "env.json").write_text(json.dumps({"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.1", "torch": "2.11",
                                               "cuda": "13.0", "date": "2026-01-01 00:00 UTC"}))
    (work / "steps.jsonl").write_text(
        '{"name": "pytest", "status": "ok", "rc": 0, "seconds": 100, "limit": 240}\n'
        '{"name": "bench-compile-rest", "status": "skipped", "rc": null, "seconds": 0, "limit": 3}\n')
    bench = {"runs": {
        "a": _bench_run("none", False, [("resnet18", False, 10_000.0, 9_000.0)]),
        "b": _bench_run("bf16", True, [("resnet18", False, 30_000.0, 25_000.0)]),  # 0.83 of the ceiling
        "c": _bench_run("bf16", True, [("resnet18", True, 40_000.0, 38_000.0)]),  # 4.2x fp32 eager
        "cpu": {"machine": {"device": "cpu"}, "settings": {"amp": "none", "channels_last": False}, "models": []},
    }}
    (work / "bench" / "benchmarks.json").write_text(json.dumps(bench))
    (out / "pytest.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase name="test_tensor_loader_stays_on_the_gpu_without_host_syncs[bf16]" time="2"/>'
        '<testcase name="test_tensor_loader_stays_on_the_gpu_without_host_syncs[fp16]" time="2"/>'
        '<testcase name="test_one_process_nccl_ddp_smoke" time="3"><failure message="nccl: no">x</failure>'
        '</testcase></testsuite></testsuites>')
    (out / "digits_summary.json").write_text(json.dumps({"test_acc": 0.981, "train_seconds": 4.2,
                                                        "command_wall_seconds": 19.5}))
    res = rep.render(work, out)
    met = [t["met"] for t in res["targets"]]
    assert met == [False, True, True, True]  # 0.83 < 0.9; 38k / 9k >= 2; both sync tests passed; 0.981
    assert "4.22x (bf16 + channels_last + compile)" in res["targets"][1]["measured"]
    assert res["tests"]["counts"] == {"passed": 2, "failed": 1, "error": 0, "skipped": 0}
    md = (out / "gpu_check.md").read_text()
    assert "| test_one_process_nccl_ddp_smoke | failed | nccl: no |" in md
    assert "| resnet18 | bf16 | channels_last | yes | 512 | 40,000 | 38,000 | 0.950 | 4.22 | 1,234 |" in md
    assert "| bench-compile-rest | skipped | 0 | 3 |" in md

    doc = tmp_path / "gpu.md"
    doc.write_text((REPO / "docs" / "gpu.md").read_text())
    assert "not yet run" in doc.read_text()
    rep.fill_docs(out / "gpu_check.json", doc)
    filled = doc.read_text()
    assert "not yet run" not in filled and "NVIDIA H100 80GB HBM3" in filled and "# GPU" in filled
    assert filled.count(rep.START) == filled.count(rep.END) == 1


def test_report_of_a_run_that_measured_nothing(tmp_path):
    res = _report_module().render(tmp_path / "work", tmp_path / "out")  # every step's file missing
    assert [t["met"] for t in res["targets"]] == [None] * 4
    assert "not measured" in (tmp_path / "out" / "gpu_check.md").read_text()
