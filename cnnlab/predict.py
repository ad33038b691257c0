"""``python -m cnnlab.predict run=<run> images=<file or folder> [topk=K]``: classify your own images.

``model=<run>/export/model.onnx`` instead of ``run=`` predicts with the exported ONNX model
under onnxruntime, reading the class names and the preprocessing from the export.json beside
it, without importing torch (the start-up of a deployed model; ``model=<file>.pt`` is
``run=<file>.pt``). Each image (any format PIL reads; a folder is searched recursively) is
read as the image-folder loader reads it (``cnnlab.data.decode``: the model's channels and
training size, bilinear), and normalised with the run's mean/std. A file that is not an
image is named in a warning and skipped. Keys: conf/predict.yaml.
"""

from __future__ import annotations

import contextlib
import csv
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from cnnlab.errors import hydra_task, run_main
from cnnlab.evaluation.app import app, next_free

USAGE = """\
usage: python -m cnnlab.predict run=<run folder or checkpoint file> images=<file or folder> [key=value ...]
       python -m cnnlab.predict model=<run>/export/model.onnx images=<file or folder> [key=value ...]

Prints the top-k classes of each image and writes them to <run>/predict/predictions.csv
(columns: file, class_1, prob_1, ..., class_k, prob_k); with model=, to predict/ beside it.

  run=PATH          a run folder (outputs/<date>/<run>) or a checkpoint file
  model=FILE        or an exported model.onnx (python -m cnnlab.export; its export.json beside
                    it): onnxruntime, no torch. A .pt file is the same as run=FILE.
  images=PATH       an image file, or a folder (searched recursively) (required)
  topk=null         classes per image, 1 .. the model's class count (null: 3, or fewer if the model has fewer)
  checkpoint=best   best | last
  out=null          another .csv path (must not exist)
  batch_size=256
  device=auto       auto | cpu | cuda | mps
  tta=none          none | flip (+ mirror; off for digit sets) | crops (padded 5-crop; tta_padding=N)
Keys and defaults: conf/predict.yaml."""


def find_images(images: str | None) -> list[Path]:
    """The files ``images=`` names: itself, or every file under the folder, sorted."""
    from cnnlab.errors import ConfigError, DataError

    if not images:
        raise ConfigError("images= is required: an image file or a folder of images")
    p = Path(images).expanduser()
    if not p.exists():
        raise DataError(f"images={images!r}: no such file or folder")
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not files:
        raise DataError(f"images={images!r} is an empty folder: put image files (PNG, JPEG, ...) in it")
    return files


def read_pixels(files: list[Path], in_chans: int, image_size: int) -> tuple[list[Path], Any]:
    """Read each file as the image-folder loader does; skip (with a warning naming it) each
    file PIL cannot read. Returns the files kept and their images as numpy uint8 (N, C, S, S).
    No torch: the ONNX branch reads with it."""
    import numpy as np

    from cnnlab.data.decode import UNREADABLE, decode_image

    kept, images = [], []
    for f in files:
        try:
            images.append(decode_image(f, in_chans, image_size))
        except UNREADABLE as e:
            print(f"warning: skipping {f}: not an image PIL can read ({type(e).__name__})", file=sys.stderr)
            continue
        kept.append(f)
    x = np.stack(images) if images else np.zeros((0, in_chans, image_size, image_size), np.uint8)
    return kept, x


def read_images(files: list[Path], in_chans: int, image_size: int) -> tuple[list[Path], Any]:
    """:func:`read_pixels` with the images as a uint8 torch tensor (N, C, S, S)."""
    import torch

    kept, x = read_pixels(files, in_chans, image_size)
    return kept, torch.from_numpy(x)


def _check_topk(topk: int | None, names: list[str]) -> int:
    """``topk`` against the model's classes; None -> min(3, classes) (the default fits a 2-class model)."""
    from cnnlab.errors import ConfigError

    topk = min(3, len(names)) if topk is None else topk
    if topk > len(names):
        raise ConfigError(f"topk={topk} is not allowed: the model has {len(names)} classes; use 1 to {len(names)}")
    return topk


def _write(kept: list[Path], probs: Any, names: list[str], topk: int, path: Path,
           ) -> tuple[Path, list[dict[str, Any]], list[str]]:
    """predictions.csv: file, then the top-k (class, probability) of each image."""
    order = probs.argsort(axis=1)[:, ::-1][:, :topk]
    columns = ["file"] + [c for i in range(1, topk + 1) for c in (f"class_{i}", f"prob_{i}")]
    rows = []
    for f, top, p in zip(kept, order, probs, strict=True):
        row: dict[str, Any] = {"file": str(f)}
        for i, c in enumerate(top, 1):
            row[f"class_{i}"], row[f"prob_{i}"] = names[c], round(float(p[c]), 6)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", newline="") as fh:  # "x": fails rather than overwrite
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path, rows, columns


def _check_args(topk: Any, batch_size: int, out: str | None) -> None:
    from cnnlab.errors import ConfigError

    if topk is not None and (not isinstance(topk, int) or isinstance(topk, bool) or topk < 1):
        raise ConfigError(f"topk={topk!r} is not allowed: use an integer >= 1 (and at most the model's classes)")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is not allowed: use an integer >= 1")
    if out and Path(out).exists():
        raise ConfigError(f"out={out!r} already exists: predictions are never overwritten; choose a new path")


def predict_onnx(model: str, images: str | None, topk: int | None = None, out: str | None = None,
                 batch_size: int = 256) -> tuple[Path, list[dict[str, Any]], list[str]]:
    """Top-k predictions of an exported ONNX model (onnxruntime + numpy + PIL; no torch)."""
    import json

    import numpy as np

    from cnnlab.errors import CheckpointError, DataError
    from cnnlab.export.formats import ort_session, require
    from cnnlab.export.preprocess import softmax, to_input

    require("onnxruntime")
    _check_args(topk, batch_size, out)
    p = Path(model).expanduser()
    if not p.is_file():
        raise DataError(f"model={model!r}: no such file")
    meta_file = p.parent / "export.json"
    if not meta_file.is_file():
        raise CheckpointError(f"model={model!r} has no export.json beside it, so it is not a cnnlab export (its class "
                              "names and preprocessing are unknown): export a run with python -m cnnlab.export run=<run>")
    meta = json.loads(meta_file.read_text())
    names, pre = [str(n) for n in meta["class_names"]], meta["preprocess"]
    topk = _check_topk(topk, names)
    files = find_images(images)
    kept, x = read_pixels(files, int(pre["in_chans"]), int(pre["image_size"]))
    if not kept:
        raise DataError(f"images={images!r}: none of its {len(files)} files is an image PIL can read")
    sess = ort_session(p)
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: to_input(x[i:i + batch_size], pre["mean"], pre["std"])})[0]
                             for i in range(0, len(x), batch_size)])
    path = Path(out) if out else Path(next_free(p.parent / "predict" / "predictions.csv", is_dir=False))
    return _write(kept, softmax(logits), names, topk, path)


def predict(run: str | None, images: str | None, topk: int | None = None, checkpoint: str = "best",
            out: str | None = None, batch_size: int = 256, device: str = "auto", model: str | None = None,
            tta: str = "none", tta_padding: int | None = None) -> tuple[Path, list[dict[str, Any]], list[str]]:
    """Top-k predictions for ``images``; return (the csv written, its rows, the column names).
    ``model=``: an exported .onnx (:func:`predict_onnx`), or a .pt checkpoint (as ``run=``)."""
    from cnnlab.errors import ConfigError, DataError
    from cnnlab.evaluation import source as src_mod

    if model is not None:
        if run is not None:
            raise ConfigError(f"run={run!r} and model={model!r}: give one of them")
        if Path(model).suffix == ".onnx":
            if tta != "none":
                raise ConfigError(f"tta={tta} is not allowed with an exported model ({model}): "
                                  "use run=<run folder> for test-time augmentation, or tta=none")
            return predict_onnx(model, images, topk, out, batch_size)
        if Path(model).suffix != ".pt":
            raise ConfigError(f"model={model!r} is not allowed: give an exported .onnx file (python -m cnnlab.export) "
                              "or a .pt checkpoint")
        run = model
    _check_args(topk, batch_size, out)
    src = src_mod.resolve(run, checkpoint)
    files = find_images(images)

    import torch

    from cnnlab.data.loader import TensorLoader
    from cnnlab.device import resolve_device
    from cnnlab.evaluation.metrics import softmax
    from cnnlab.evaluation.report import collect_logits
    from cnnlab.evaluation.tta import train_padding, with_tta

    ck = src_mod.load(src)
    ds = src_mod.dataset_config(ck)
    names = src_mod.saved_class_names(ck) or src_mod.load_data(ds).classes
    topk = _check_topk(topk, names)
    kept, x = read_images(files, int(ds["in_chans"]), int(ds["image_size"]))
    if not kept:
        raise DataError(f"images={images!r}: none of its {len(files)} files is an image PIL can read")
    policy = resolve_device(device, None, None, False)
    # tta=flip|crops: averaged probabilities (cnnlab/evaluation/tta.py)
    net = with_tta(src_mod.build_model(ck, len(names), policy.device, policy.channels_last), tta, ds["name"],
                   int(ds["image_size"]), train_padding(ds, tta_padding))
    loader = TensorLoader(x, torch.zeros(len(x), dtype=torch.long), batch_size, ds["mean"], ds["std"],
                          device=policy.device, train=False, channels_last=policy.channels_last)
    logits, _ = collect_logits(net, loader, policy)
    path = Path(out) if out else Path(next_free(src.home / "predict" / "predictions.csv", is_dir=False))
    return _write(kept, softmax(logits), names, topk, path)


def format_table(rows: list[dict[str, Any]], topk: int, root: Path | None = None) -> str:
    """The printed table: file, then ``name prob%`` for each of the top k."""
    def rel(f: str) -> str:
        with contextlib.suppress(ValueError):
            if root is not None:
                return str(Path(f).relative_to(root)) or Path(f).name
        return f

    header = ["file", *[f"top {i}" for i in range(1, topk + 1)]]
    body = [[rel(r["file"]), *[f"{r[f'class_{i}']} {100 * r[f'prob_{i}']:.1f}%" for i in range(1, topk + 1)]]
            for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, *body]]
    return "\n".join(lines)


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
@hydra_task
def main(cfg: DictConfig) -> None:
    from cnnlab.config import Rule
    from cnnlab.evaluation.app import app_keys

    raw = app_keys(cfg, batch_size=Rule(int, ">= 1"), tta_padding=Rule(int, ">= 1", null=True))
    topk = raw["topk"]
    if isinstance(topk, str) and topk.lstrip("-").isdigit():
        topk = int(topk)
    path, rows, columns = predict(raw["run"], raw["images"], topk, raw["checkpoint"], raw["out"],
                                  int(raw["batch_size"]), raw["device"], raw["model_file"], str(raw["tta"]),
                                  raw["tta_padding"])
    images = Path(raw["images"]).expanduser()
    print(format_table(rows, (len(columns) - 1) // 2, images if images.is_dir() else images.parent))
    print(f"wrote {path} ({len(rows)} images)")


def model_overrides(argv: list[str]) -> list[str]:
    """``model=FILE`` -> ``model_file=FILE``: conf/model/ is a config group, so Hydra would read
    ``model=`` as choosing one of its options."""
    return [f"model_file={a.split('=', 1)[1]}" if a.split("=", 1)[0] == "model" else a for a in argv]


def cli() -> int:
    return run_main(app, main, USAGE, model_overrides)


if __name__ == "__main__":
    sys.exit(cli())
