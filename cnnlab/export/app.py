"""``python -m cnnlab.export run=<run> [format=onnx|torchscript|pt2] [quantize=int8] [key=value ...]``.

The model is rebuilt from the checkpoint's own config (the EMA weights where the run tested
with them), in eval mode, on the CPU, and exported with a dynamic batch dimension. Before
anything is kept, the exported model and eager PyTorch run the same 64 images of the run's
test split: their logits must agree (:mod:`cnnlab.export.parity`); both are timed at batch 1
and 64 (:mod:`cnnlab.export.speed`). Everything is written into a hidden temp folder beside
the destination and renamed to ``<run>/export/`` only at the end, so a failed export leaves
nothing that looks good. An existing export folder is refused, never overwritten.
Keys: conf/export.yaml; the files: export.json's fields are listed in docs/export.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from cnnlab.errors import CnnlabError, ConfigError, ModelError, first_line, hydra_task, run_main
from cnnlab.evaluation.app import app

USAGE = """\
usage: python -m cnnlab.export run=<run folder or checkpoint file> [key=value ...]

Exports a trained model to <run>/export/: the model file, export.json (input shape,
class names, mean/std, source checkpoint, parity and speed figures). Checks parity with
eager PyTorch on 64 test images and times both at batch 1 and 64.

  run=PATH             a run folder (outputs/<date>/<run>) or a checkpoint file (required)
  checkpoint=best      best | last | a checkpoint file
  format=onnx          onnx | torchscript | pt2 (torch.export's ExportedProgram)
  exporter=auto        ONNX: auto (torch's dynamo exporter, the TorchScript-based one where it fails)
                       | dynamo | legacy
  opset=null           ONNX opset (null: the exporter's default)
  quantize=null        int8: also model.int8.onnx (onnxruntime static quantization, calibrated
                       on the train split), with its test accuracy next to fp32's
  quantize.max_drop=null   refuse an int8 model that loses more test accuracy (points)
  quantize.calibration=256 train images to calibrate on
  quantize.keep_first_last=true   the first and last Conv/Gemm stay fp32
  out=null             another output folder (must not exist); null: <run>/export
  speed.seconds=1.0    seconds per speed measurement (4 of them; 6 with quantize)
Then: python -m cnnlab.predict model=<run>/export/model.onnx images=<folder> (no torch).
Keys and defaults: conf/export.yaml."""

QUANTIZE = ("none", "int8")


def check_options(fmt: str, exporter: str, opset: Any, quantize: str | None, max_drop: Any) -> str:
    """The checks the keys alone allow (no torch): return ``quantize`` as none or int8."""
    from cnnlab.export.formats import EXPORTERS, FORMATS

    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not allowed: choose one of {', '.join(FORMATS)}")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter={exporter!r} is not allowed: choose one of {', '.join(EXPORTERS)}")
    quantize = quantize or "none"
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize={quantize!r} is not allowed: choose one of null, int8")
    if quantize == "int8" and fmt != "onnx":
        raise ConfigError(f"quantize=int8 needs format=onnx (onnxruntime quantizes ONNX models), not "
                          f"format={fmt}: drop quantize= or use format=onnx")
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"opset={opset} applies to format=onnx only, not format={fmt}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise ConfigError(f"opset={opset!r} is not allowed: use null or an integer (an ONNX opset version)")
    if max_drop is not None and quantize != "int8":
        raise ConfigError(f"quantize.max_drop={max_drop} needs quantize=int8")
    return quantize


def check_opset(opset: int | None, exporter: str) -> None:
    """An opset this torch can emit (needs torch: its own constants)."""
    if opset is None:
        return
    import torch

    from cnnlab.export.formats import opset_range

    lo, hi = opset_range(exporter)
    if not lo <= opset <= hi:
        legacy = "" if exporter == "legacy" else f" (exporter=legacy: up to {opset_range('legacy')[1]})"
        raise ConfigError(f"opset={opset} is not one torch {torch.__version__.split('+')[0]} can emit: use "
                          f"{lo} to {hi}{legacy}, or null for the exporter's default")


def _source(run: str | None, checkpoint: str) -> Any:
    """``run=`` and ``checkpoint=best|last|<file>`` -> the Source (path checks only, no torch)."""
    from cnnlab.evaluation import source as src_mod

    if checkpoint not in src_mod.CHECKPOINT_CHOICES and checkpoint:
        src = src_mod.resolve(checkpoint, "best")  # a checkpoint file
        return src_mod.Source(src.checkpoint, Path(run) if run else src.run_dir)
    return src_mod.resolve(run, checkpoint)


def _images(part: Any, n: int) -> tuple[Any, Any]:
    """The first ``n`` images of a split as uint8 numpy (n, C, H, W) and their int64 labels."""
    import numpy as np
    import torch

    n = min(n, len(part))
    if hasattr(part, "samples"):  # FileSplit: read per file
        x = torch.stack([part.read(i) for i in range(n)]).numpy()
        return x, np.array([part.samples[i][1] for i in range(n)], np.int64)
    return part.x[:n].cpu().numpy(), part.y[:n].cpu().numpy().astype(np.int64)


def _spread(part: Any, n: int) -> Any:
    """``n`` images spread evenly over a split (the calibration set: every part of the split,
    not only its start), as uint8 numpy."""
    import numpy as np
    import torch

    idx = np.unique(np.linspace(0, len(part) - 1, min(n, len(part))).astype(np.int64))
    if hasattr(part, "samples"):
        return torch.stack([part.read(int(i)) for i in idx]).numpy()
    return part.x[torch.as_tensor(idx)].cpu().numpy()


def export_run(run: str | None, checkpoint: str = "best", fmt: str = "onnx", exporter: str = "auto",
               opset: int | None = None, quantize: str | None = None, max_drop: float | None = None,
               calibration: int = 256, out: str | None = None, speed_seconds: float = 1.0,
               parity_images: int = 64, keep_first_last: bool = True) -> tuple[Path, dict[str, Any]]:
    """Export a run's checkpoint; return (the export folder, export.json's content)."""
    from cnnlab.evaluation import source as src_mod

    t0 = time.perf_counter()
    quantize = check_options(fmt, exporter, opset, quantize, max_drop)
    src = _source(run, checkpoint)
    dest = Path(out) if out else src.home / "export"
    if dest.exists():
        raise ConfigError(f"{str(dest)!r} already exists (an earlier export): an export is never overwritten; "
                          "move it away, or give another folder with out=")
    from cnnlab.export.formats import require

    if fmt == "onnx":  # onnxscript: only torch's dynamo exporter needs it
        require("onnx", "onnxruntime", *(("onnxscript",) if exporter != "legacy" else ()))
    check_opset(opset, exporter)

    import torch

    from cnnlab.export.preprocess import to_input

    ck = src_mod.load(src)
    ds = src_mod.dataset_config(ck)
    data = src_mod.load_data(ds)
    names = src_mod.saved_class_names(ck) or data.classes
    model = src_mod.build_model(ck, len(names), "cpu")
    mean, std = [float(v) for v in ds["mean"]], [float(v) for v in ds["std"]]
    xs, _ = _images(data.test, parity_images)
    if len(xs) == 0:
        raise ConfigError(f"the test split of {ds['name']} is empty: there is nothing to check the export on")
    x = to_input(xs, mean, std)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Written here, renamed to dest at the end (the same file system: an atomic rename).
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        record = _export_into(tmp, model, x, fmt, exporter, opset, torch.get_num_threads(), speed_seconds)
        if quantize == "int8":
            calib = to_input(_spread(data.train, calibration), mean, std)
            tx, ty = _images(data.test, len(data.test))
            record["int8"] = _int8(tmp, calib, to_input(tx, mean, std), ty, max_drop, speed_seconds,
                                   keep_first_last)
        record |= _describe(ck, src, names, ds, x.shape, fmt)
        record["seconds"] = round(time.perf_counter() - t0, 2)
        text = json.dumps(record, indent=2) + "\n"
        record = json.loads(text)  # what a reader of the file gets (its dict keys are strings)
        (tmp / "export.json").write_text(text)
        os.rename(tmp, dest)  # all or nothing; fails if dest appeared meanwhile (a non-empty folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, record


def export_checked(model: Any, x: Any, fmt: str, path: Path, opset: int | None = None, exporter: str = "auto",
                   threads: int | None = None) -> tuple[dict[str, Any], Any, Any, Any]:
    """Export ``model`` to ``path`` and check it on ``x`` (normalised float32 (N, C, H, W)):
    return (the exporter's record, the Parity, the eager and the exported functions). A model
    the exporter cannot take, or an export whose logits differ, is a one-line ModelError."""
    import numpy as np
    import torch

    from cnnlab.export import formats, parity

    example = torch.from_numpy(np.resize(x, (2, *x.shape[1:])))  # batch 2: not specialised to 1
    name = type(model).__name__
    try:
        meta = formats.export_model(fmt, model, example, path, opset, exporter)
    except CnnlabError:
        raise
    except Exception as e:  # the exporter's own words: the operator it has no translation for, ...
        fell = " (and the TorchScript-based exporter after dynamo)" if fmt == "onnx" and exporter == "auto" else ""
        raise ModelError(f"{name} cannot be exported to {fmt}{fell}: {type(e).__name__}: {first_line(e)}"[:600]) from None
    eager = formats.eager_runner(model)
    exported = formats.load_runner(fmt, path, threads)
    p = parity.compare(eager(x), exported(x))
    if not p.ok:
        raise ModelError(f"the {fmt} export of {name} does not match eager PyTorch: {p.describe()}; nothing was "
                         f"kept (exporter={meta['exporter']}; try exporter=legacy or another opset)")
    return meta, p, eager, exported


def _export_into(tmp: Path, model: Any, x: Any, fmt: str, exporter: str, opset: int | None, threads: int,
                 speed_seconds: float) -> dict[str, Any]:
    """Export, load back, check parity and time: export.json's format/parity/speed part."""
    from cnnlab.export import formats, speed
    from cnnlab.tracking.env import cpu_model

    path = tmp / formats.FORMATS[fmt]
    meta, p, eager, exported = export_checked(model, x, fmt, path, opset, exporter, threads)
    figures = speed.compare_speed(eager, exported, x, seconds=speed_seconds)
    return {"format": fmt, "file": path.name, **meta, "parity": p.as_dict(),
            "speed": {"device": "cpu", "cpu": cpu_model(), "threads": threads, **figures}}


def _int8(tmp: Path, calib: Any, test_x: Any, test_y: Any, max_drop: float | None,
          speed_seconds: float, keep_first_last: bool = True) -> dict[str, Any]:
    """model.int8.onnx beside model.onnx, and its report; refused past ``max_drop`` points."""
    import torch

    from cnnlab.export.quantize import int8_report, quantize_int8

    quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx", calib, keep_first_last=keep_first_last)
    rep = int8_report(tmp / "model.onnx", tmp / "model.int8.onnx", test_x, test_y, torch.get_num_threads(),
                      speed_seconds)
    rep["calibration_images"] = int(len(calib))
    rep["max_drop"] = max_drop
    rep["fp32_layers"] = "first and last" if keep_first_last else "none"
    if max_drop is not None and rep["drop_points"] > max_drop:
        raise ConfigError(
            f"quantize.max_drop={max_drop}: int8 loses {rep['drop_points']:.2f} points of test accuracy "
            f"(fp32 {100 * rep['fp32_test_acc']:.2f}% -> int8 {100 * rep['int8_test_acc']:.2f}% on "
            f"{rep['test_images']} images), more than allowed; nothing was kept: raise quantize.max_drop "
            "or export without quantize")
    return rep


def _describe(ck: dict[str, Any], src: Any, names: list[str], ds: dict[str, Any], shape: tuple[int, ...],
              fmt: str) -> dict[str, Any]:
    """What a user of the file needs (inputs, classes, preprocessing) and where it came from."""
    import importlib.metadata as md

    from cnnlab.export.formats import DYNAMIC_AXES, INPUT, OUTPUT

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    c, s = int(ds["in_chans"]), int(ds["image_size"])
    ema = isinstance(ck.get("ema"), dict) and "weights" in ck["ema"]
    return {
        "model": ck.get("model_name") or ck["config"]["model"].get("name"),
        "input": {"name": INPUT, "shape": ["batch", c, s, s], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": OUTPUT, "shape": ["batch", len(names)], "meaning": "logits (softmax gives probabilities)"},
        "dynamic_axes": DYNAMIC_AXES,
        "class_names": list(names),
        "preprocess": {"in_chans": c, "color": "L" if c == 1 else "RGB", "image_size": s, "resize": "bilinear",
                       "mean": [float(v) for v in ds["mean"]], "std": [float(v) for v in ds["std"]],
                       "formula": "x = (pixel / 255 - mean) / std, per channel"},
        "source": {"checkpoint": str(src.checkpoint), "epoch": int(ck.get("epoch", 0)),
                   "weights": "ema" if ema else "model", "run": str(src.run_dir) if src.run_dir else None,
                   "dataset": ds["name"]},
        "versions": {p: version(p) for p in ("torch", "onnx", "onnxruntime", "onnxscript")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report_lines(dest: Path, r: dict[str, Any]) -> list[str]:
    """What the console shows: where, parity, speed, int8."""
    kind = {"onnx": "onnxruntime", "torchscript": "TorchScript", "pt2": "torch.export"}[r["format"]]
    how = f"ONNX opset {r['opset']}, {r['exporter']} exporter" if r["format"] == "onnx" else r["exporter"]
    if r.get("fallback"):
        how += f"; dynamo failed: {r['fallback']}"
    p = r["parity"]
    lines = [f"exported {r['model']} (epoch {r['source']['epoch']}, {Path(r['source']['checkpoint']).name}) "
             f"to {dest / r['file']} ({how})",
             f"parity: max abs diff {p['max_abs_diff']:.2e}, top-1 agreement {100 * p['top1_agreement']:.1f}% "
             f"on {p['n_images']} test images"]
    sp = r["speed"]
    for b in ("batch_1", "batch_64"):
        v = sp[b]
        lines.append(f"speed, {b.replace('_', ' ')} (cpu, {sp['threads']} threads): eager {v['eager']:.0f} img/s, "
                     f"{kind} {v['exported']:.0f} img/s ({v['speedup']:.2f}x)")
    q = r.get("int8")
    if q:
        lines.append(f"int8: test accuracy fp32 {100 * q['fp32_test_acc']:.2f}%, int8 {100 * q['int8_test_acc']:.2f}% "
                     f"(a drop of {q['drop_points']:.2f} points, {q['test_images']} test images); batch 64: "
                     f"{q['batch_64']['fp32']:.0f} -> {q['batch_64']['int8']:.0f} img/s "
                     f"({q['batch_64']['speedup']:.2f}x)")
    files = ", ".join(sorted(p.name for p in dest.iterdir()))
    lines.append(f"wrote {dest}/ ({files}) in {r['seconds']:.1f} s")
    return lines


def quantize_overrides(argv: list[str]) -> list[str]:
    """``quantize=int8`` -> ``quantize.mode=int8``: quantize is both a value and a node
    (``quantize.max_drop=1``) on the command line."""
    return [f"quantize.mode={a.split('=', 1)[1]}" if a.split("=", 1)[0] == "quantize" else a for a in argv]


# An absolute path: this module is imported by cnnlab/export/__main__.py, so Hydra would look
# for a "conf" Python package from a relative one (cnnlab.compose.CONF_DIR's folder, no torch).
@hydra.main(config_path=str(Path(__file__).resolve().parents[2] / "conf"), config_name="export",
            version_base="1.3")
@hydra_task
def main(cfg: DictConfig) -> None:
    """The Hydra app: read the keys, call :func:`export_run`, print the report."""
    from cnnlab.config import Rule
    from cnnlab.evaluation.app import app_keys, check_keys

    raw = app_keys(cfg)
    q, sp = raw["quantize"], raw["speed"]
    check_keys({f"quantize.{k}": v for k, v in q.items()} | {f"speed.{k}": v for k, v in sp.items()},
               {"quantize.max_drop": Rule(float, ">= 0", null=True), "quantize.calibration": Rule(int, ">= 1"),
                "speed.seconds": Rule(float, "> 0"), "quantize.keep_first_last": Rule(bool)})
    dest, record = export_run(raw["run"], str(raw["checkpoint"]), raw["format"], raw["exporter"], raw["opset"],
                              q["mode"], q["max_drop"], int(q["calibration"]), raw["out"], float(sp["seconds"]),
                              keep_first_last=bool(q["keep_first_last"]))
    print("\n".join(report_lines(dest, record)))


def cli() -> int:
    return run_main(app, main, USAGE, quantize_overrides)


if __name__ == "__main__":
    sys.exit(cli())
