"""``python -m cnnlab.predict run=<run> images=<file or folder> [topk=K]``: classify your own images.

Each image (any format PIL reads; a folder is searched recursively) is read as the
image-folder loader reads it (the model's channels and training size, bilinear), and
normalised with the run's mean/std. A file that is not an image is named in a warning
and skipped. Keys: conf/predict.yaml.
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

Prints the top-k classes of each image and writes them to <run>/predict/predictions.csv
(columns: file, class_1, prob_1, ..., class_k, prob_k).

  run=PATH          a run folder (outputs/<date>/<run>) or a checkpoint file (required)
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


def read_images(files: list[Path], in_chans: int, image_size: int) -> tuple[list[Path], Any]:
    """Read each file as the image-folder loader does; skip (with a warning naming it) each
    file PIL cannot read. Returns the files kept and their images as uint8 (N, C, S, S)."""
    import torch

    from cnnlab.data.imagefolder import UNREADABLE, read_image

    kept, images = [], []
    for f in files:
        try:
            images.append(read_image(f, in_chans, image_size))
        except UNREADABLE as e:
            print(f"warning: skipping {f}: not an image PIL can read ({type(e).__name__})", file=sys.stderr)
            continue
        kept.append(f)
    x = torch.stack(images) if images else torch.empty(0, in_chans, image_size, image_size, dtype=torch.uint8)
    return kept, x


def predict(run: str | None, images: str | None, topk: int | None = None, checkpoint: str = "best",
            out: str | None = None, batch_size: int = 256, device: str = "auto", tta: str = "none",
            tta_padding: int | None = None) -> tuple[Path, list[dict[str, Any]], list[str]]:
    """Top-k predictions for ``images``; return (the csv written, its rows, the column names)."""
    from cnnlab.errors import ConfigError, DataError
    from cnnlab.evaluation import source as src_mod

    if topk is not None and (not isinstance(topk, int) or isinstance(topk, bool) or topk < 1):
        raise ConfigError(f"topk={topk!r} is not allowed: use an integer >= 1 (and at most the model's classes)")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is not allowed: use an integer >= 1")
    src = src_mod.resolve(run, checkpoint)
    files = find_images(images)
    if out and Path(out).exists():
        raise ConfigError(f"out={out!r} already exists: predictions are never overwritten; choose a new path")

    import torch

    from cnnlab.data.loader import TensorLoader
    from cnnlab.device import resolve_device
    from cnnlab.evaluation.metrics import softmax
    from cnnlab.evaluation.report import collect_logits
    from cnnlab.evaluation.tta import train_padding, with_tta

    ck = src_mod.load(src)
    ds = src_mod.dataset_config(ck)
    names = src_mod.saved_class_names(ck) or src_mod.load_data(ds).classes
    topk = min(3, len(names)) if topk is None else topk  # the default fits a 2-class model
    if topk > len(names):
        raise ConfigError(f"topk={topk} is not allowed: the model has {len(names)} classes; use 1 to {len(names)}")
    kept, x = read_images(files, int(ds["in_chans"]), int(ds["image_size"]))
    if not kept:
        raise DataError(f"images={images!r}: none of its {len(files)} files is an image PIL can read")
    policy = resolve_device(device, None, None, False)
    # tta=flip|crops: averaged probabilities (cnnlab/evaluation/tta.py)
    model = with_tta(src_mod.build_model(ck, len(names), policy.device, policy.channels_last), tta, ds["name"],
                     int(ds["image_size"]), train_padding(ds, tta_padding))
    loader = TensorLoader(x, torch.zeros(len(x), dtype=torch.long), batch_size, ds["mean"], ds["std"],
                          device=policy.device, train=False, channels_last=policy.channels_last)
    logits, _ = collect_logits(model, loader, policy)
    probs = softmax(logits)
    order = probs.argsort(axis=1)[:, ::-1][:, :topk]

    columns = ["file"] + [c for i in range(1, topk + 1) for c in (f"class_{i}", f"prob_{i}")]
    rows = []
    for f, top, p in zip(kept, order, probs, strict=True):
        row: dict[str, Any] = {"file": str(f)}
        for i, c in enumerate(top, 1):
            row[f"class_{i}"], row[f"prob_{i}"] = names[c], round(float(p[c]), 6)
        rows.append(row)
    path = Path(out) if out else Path(next_free(src.home / "predict" / "predictions.csv", is_dir=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", newline="") as fh:  # "x": fails rather than overwrite
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path, rows, columns


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
                                  int(raw["batch_size"]), raw["device"], str(raw["tta"]), raw["tta_padding"])
    images = Path(raw["images"]).expanduser()
    print(format_table(rows, (len(columns) - 1) // 2, images if images.is_dir() else images.parent))
    print(f"wrote {path} ({len(rows)} images)")


def cli() -> int:
    return run_main(app, main, USAGE)


if __name__ == "__main__":
    sys.exit(cli())
