"""cnnlab.export and ONNX predict, against real onnxruntime sessions on a tiny trained run.

One session-scoped run is trained in-process (digits at 16x16, 64 images per split, one
epoch: a few seconds) and exported as ONNX (torch's default dynamo exporter), TorchScript,
torch.export and int8. Speed is measured for 0.02 s per figure: the figures are recorded,
not judged, here. The coverage over every conf/model entry is marked slow; AlexNet runs
in the quick suite with the TorchScript-based ONNX exporter (seconds, not tens of them), and
the command-line cases of docs/errors.md are slow (their checks run in-process here).
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

from cnnlab.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_ARGS = [*TINY, "dataset.image_size=16", "trainer.log_feature_maps=false"]
FAST = {"speed_seconds": 0.02}
DOC = REPO / "docs" / "errors.md"


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    from cnnlab.train import train

    out = tmp_path_factory.mktemp("export") / "run"
    assert train(compose(RUN_ARGS, output_dir=out))["status"] == "completed"
    return out


@pytest.fixture(scope="session")
def onnx_export(run) -> tuple[Path, dict]:
    """The default export: format=onnx, exporter=auto (dynamo), into <run>/export."""
    from cnnlab.export.app import export_run

    return export_run(str(run), **FAST)


def _eager_and_test_images(run: Path, n: int = 64):
    """The checkpoint's eager model and the first n test images, normalised (numpy float32)."""
    from cnnlab.evaluation import source as src_mod
    from cnnlab.export.preprocess import to_input

    ck = src_mod.load(src_mod.resolve(str(run)))
    ds = src_mod.dataset_config(ck)
    data = src_mod.load_data(ds)
    model = src_mod.build_model(ck, len(data.classes))
    return model, to_input(data.test.x[:n].numpy(), ds["mean"], ds["std"]), data.test.y[:n].numpy()


def test_onnx_export_writes_the_model_and_a_complete_record(run, onnx_export):
    import onnxruntime as ort
    import torch

    dest, rec = onnx_export
    assert dest == run / "export" and sorted(p.name for p in dest.iterdir()) == ["export.json", "model.onnx"]
    assert not [p for p in run.iterdir() if p.name.startswith(".export-")]  # the temp folder was renamed
    on_disk = json.loads((dest / "export.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    summary = json.loads((run / "summary.json").read_text())
    assert rec["format"] == "onnx" and rec["exporter"] in ("dynamo", "legacy") and rec["opset"] >= 7
    assert rec["input"] == {"name": "input", "shape": ["batch", 1, 16, 16], "dtype": "float32", "layout": "NCHW"}
    assert rec["dynamic_axes"] == {"input": {"0": "batch"}, "logits": {"0": "batch"}}
    assert rec["class_names"] == [str(i) for i in range(10)]
    assert rec["preprocess"]["mean"] == [0.5] and rec["preprocess"]["std"] == [0.5]
    assert rec["source"]["checkpoint"] == str(run / "checkpoints" / "best.pt")
    assert rec["source"]["epoch"] == summary["best_epoch"] and rec["model"] == "alexnet"
    assert rec["parity"]["ok"] and rec["parity"]["n_images"] == 64 and rec["parity"]["max_abs_diff"] <= 1e-4
    assert rec["parity"]["top1_agreement"] == 1.0
    for b in ("batch_1", "batch_64"):
        v = rec["speed"][b]
        assert v["eager"] > 0 and v["exported"] > 0 and v["speedup"] == pytest.approx(v["exported"] / v["eager"],
                                                                                       rel=0.01)

    # The file itself, in a fresh onnxruntime session, at a batch size it was not exported with.
    model, x, _ = _eager_and_test_images(run, 5)
    sess = ort.InferenceSession(str(dest / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and sess.get_inputs()[0].shape[0] == "batch"
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(None, {"input": x})[0] - ref).max() <= 1e-4


def test_an_earlier_export_is_never_overwritten(run, onnx_export):
    from cnnlab.export.app import export_run

    dest, _ = onnx_export
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises(ConfigError, match="already exists .*never overwritten.*out="):
        export_run(str(run), **FAST)
    with pytest.raises(ConfigError, match="already exists"):
        export_run(str(run), fmt="torchscript", **FAST)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_torchscript_and_pt2(run, tmp_path):
    import torch

    from cnnlab.export.app import export_run

    model, x, _ = _eager_and_test_images(run, 3)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    ts_dir, ts = export_run(str(run), fmt="torchscript", out=str(tmp_path / "ts"), **FAST)
    pt_dir, pt = export_run(str(run), fmt="pt2", checkpoint="last", out=str(tmp_path / "pt2"), **FAST)
    assert ts["exporter"] == "torch.jit.trace" and ts["parity"]["ok"] and ts["opset"] is None
    assert pt["exporter"] == "torch.export" and pt["parity"]["ok"]
    assert pt["source"]["checkpoint"].endswith("last.pt")
    loaded = torch.jit.load(str(ts_dir / "model.ts"))
    program = torch.export.load(str(pt_dir / "model.pt2")).module()
    with torch.no_grad():
        assert np.abs(loaded(torch.from_numpy(x)).numpy() - ref).max() <= 1e-4  # batch 3: dynamic
        assert np.abs(program(torch.from_numpy(x)).numpy() - ref).max() <= 1e-4


def test_int8_reports_both_accuracies(run, tmp_path):
    import onnxruntime as ort

    from cnnlab.export.app import export_run
    from cnnlab.export.quantize import accuracy

    dest, rec = export_run(str(run), exporter="legacy", quantize="int8", calibration=32, out=str(tmp_path / "q"),
                           **FAST)
    q = rec["int8"]
    assert (dest / "model.int8.onnx").is_file() and q["calibration_images"] == 32 and q["test_images"] == 64
    assert q["drop_points"] == pytest.approx(100 * (q["fp32_test_acc"] - q["int8_test_acc"]), abs=1e-3)
    assert q["bytes"]["int8"] < q["bytes"]["fp32"] / 2  # int8 weights: about a quarter of fp32
    assert q["batch_64"]["int8"] > 0 and q["batch_64"]["speedup"] > 0
    # The accuracy figure is the int8 file's, run here in a fresh session on the same test split.
    _, x, y = _eager_and_test_images(run, 64)
    sess = ort.InferenceSession(str(dest / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert accuracy(sess, x, y) == pytest.approx(q["int8_test_acc"])


@pytest.mark.slow
def test_int8_past_max_drop_is_refused_and_nothing_is_kept(run, tmp_path):
    from cnnlab.export.app import export_run

    # A bound no model can meet (max_drop below any possible drop): refused, nothing kept.
    with pytest.raises(ConfigError, match=r"quantize.max_drop=-101: int8 loses .*\(fp32 .* -> int8 .*nothing was kept"):
        export_run(str(run), exporter="legacy", quantize="int8", calibration=8, max_drop=-101,
                   out=str(tmp_path / "q2"), **FAST)
    assert not (tmp_path / "q2").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".q2-")]


def test_parity_compare_flags_a_difference_and_a_top1_change():
    from cnnlab.export.parity import compare

    a = np.array([[1.0, 2.0], [3.0, 0.0]])
    assert compare(a, a + 5e-5).ok
    bad = compare(a, a + 2e-4)
    assert not bad.ok and bad.max_abs_diff == pytest.approx(2e-4) and bad.top1_agreement == 1.0
    swapped = compare(a, a[:, ::-1])
    assert not swapped.ok and swapped.top1_agreement == 0.0
    assert not compare(a, a * np.nan).ok


def _digit_pngs(root: Path, n: int = 12) -> None:
    """Digits test images as RGB 24x24 PNGs: predict converts and resizes them."""
    from PIL import Image

    from cnnlab.data import load_dataset

    data = load_dataset("digits", None, False, 32, 1, 0.15, 0.15, 0, 512)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(data.test.x[i, 0].numpy()).convert("RGB").resize((24, 24)).save(root / f"{i}.png")


def test_predict_from_onnx_agrees_with_the_checkpoint_and_imports_no_torch(run, onnx_export, tmp_path):
    from cnnlab.predict import predict

    dest, _ = onnx_export
    _digit_pngs(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    _, ck_rows, _ = predict(str(run), str(tmp_path / "imgs"), topk=3, out=str(tmp_path / "ck.csv"))
    code = ("import runpy, sys; sys.argv = ['predict', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('cnnlab.predict', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    res = subprocess.run([sys.executable, "-c", code, f"model={dest / 'model.onnx'}", f"images={tmp_path / 'imgs'}",
                          "topk=3"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "notes.txt" in res.stderr  # named in a warning and skipped, as from the checkpoint
    with open(dest / "predict" / "predictions.csv", newline="") as f:
        onnx_rows = list(csv.DictReader(f))
    assert len(onnx_rows) == len(ck_rows) == 12
    for o, c in zip(onnx_rows, ck_rows, strict=True):
        assert o["file"] == c["file"]
        assert [o[f"class_{i}"] for i in (1, 2, 3)] == [c[f"class_{i}"] for i in (1, 2, 3)]
        assert abs(float(o["prob_1"]) - c["prob_1"]) <= 1e-5


def test_bad_inputs_in_process(run, onnx_export, tmp_path):
    """Each bad input of docs/errors.md's export rows, one line, before anything is written."""
    from cnnlab.export.app import export_run
    from cnnlab.predict import predict

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        export_run(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="format='tflite' is not allowed: choose one of onnx, torchscript, pt2"):
        export_run(str(run), fmt="tflite")
    with pytest.raises(ConfigError, match="quantize=int8 needs format=onnx"):
        export_run(str(run), fmt="torchscript", quantize="int8")
    with pytest.raises(ConfigError, match=r"opset=99 is not one torch .* can emit: use 7 to \d+"):
        export_run(str(run), opset=99, out=str(tmp_path / "o"))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.onnx").write_bytes((onnx_export[0] / "model.onnx").read_bytes())
    with pytest.raises(CheckpointError, match="no export.json beside it"):
        predict(None, str(tmp_path), model=str(tmp_path / "bare" / "model.onnx"))
    assert not (tmp_path / "o").exists()


def test_help_is_instant():
    code = ("import sys; sys.argv = ['x', '--help']; from cnnlab.export.app import cli; cli(); "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert p.returncode == 0 and "usage: python -m cnnlab.export" in p.stdout, p.stderr


# --------------------------------------------------------------------------- the CLI and its bad inputs
@pytest.mark.slow
def test_cli_export(run, tmp_path):
    res = run_cli([f"run={run}", "speed.seconds=0.02", f"out={tmp_path / 'e'}", "exporter=legacy"], tmp_path,
                  module="cnnlab.export", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "parity: max abs diff" in res.stdout and "speed, batch 64" in res.stdout
    assert (tmp_path / "e" / "export.json").is_file()


# name -> (module, arguments, needles, slow); {run} is the trained run (exported), {tmp} the case's folder.
# All slow (a subprocess each, 3-10 s): test_bad_inputs_in_process checks the same in the quick suite.
ERROR_CASES = {
    "export a run with no checkpoint": ("cnnlab.export", ["run={tmp}/empty"], ["run=", "holds no checkpoint"], True),
    "export to an unknown format": ("cnnlab.export", ["run={run}", "format=tflite"],
                                    ["format='tflite'", "onnx, torchscript, pt2"], True),
    "quantize a torchscript export": ("cnnlab.export", ["run={run}", "format=torchscript", "quantize=int8"],
                                      ["quantize=int8 needs format=onnx"], True),
    "export into a folder that exists": ("cnnlab.export", ["run={run}"], ["export' already exists",
                                                                         "never overwritten"], True),
    "export with an opset torch cannot emit": ("cnnlab.export", ["run={run}", "opset=99", "out={tmp}/o"],
                                               ["opset=99", "can emit"], True),
    "predict with an ONNX file that has no export.json": ("cnnlab.predict", ["model={tmp}/bare/model.onnx",
                                                                            "images={tmp}/empty"],
                                                          ["no export.json beside it"], True),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if c[3] else [], id=n)
                                  for n, c in ERROR_CASES.items()])
def test_bad_input_fails_in_one_line(name, run, onnx_export, tmp_path):
    module, args, needles, _ = ERROR_CASES[name]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.onnx").write_bytes(b"not checked: export.json is looked for first")
    res = run_cli([a.format(run=run, tmp=tmp_path) for a in args], tmp_path, module=module,
                  env={"OMP_NUM_THREADS": "1"})
    assert_one_line_error(res, needles)


def test_every_error_case_is_in_the_catalogue():
    doc = DOC.read_text()
    missing = [name for name in ERROR_CASES if f"| {name} |" not in doc]
    assert not missing, f"add these rows to docs/errors.md: {missing}"


# --------------------------------------------------------------------------- coverage (scripts/export_coverage.py)
def _coverage():
    sys.path.insert(0, str(REPO / "scripts"))
    import export_coverage

    return export_coverage


QUICK = ("alexnet",)  # the rest (resnet18: ~15 s, MogaNets: minutes) with -m slow


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in QUICK else [pytest.mark.slow], id=n)
                                  for n in _coverage().ENTRIES])
def test_every_model_exports_with_parity_or_is_refused_in_one_line(name):
    cov = _coverage()
    exporter = "legacy" if name in QUICK else "auto"  # the quick ones: seconds; the slow ones as a user exports
    for fmt in ("onnx", "torchscript"):
        r = cov.check(name, cov.ENTRIES[name], fmt, exporter)
        if r.ok:
            assert r.max_abs_diff <= 1e-4 and r.top1 == 1.0, r
        else:
            assert r.reason and "\n" not in r.reason, r
    if name in QUICK:
        assert r.ok, r
