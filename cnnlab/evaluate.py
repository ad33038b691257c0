"""``python -m cnnlab.evaluate run=<run folder or checkpoint> [key=value ...]``: evaluate what you trained.

The model is rebuilt from the checkpoint's config and weights; the data is the run's
dataset rebuilt with its split seed (the test split is the images the run tested on), or
another dataset with the model's classes, always resized and normalised as in training.
The files written are listed in :mod:`cnnlab.evaluation.report`. Keys: conf/evaluate.yaml.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import hydra_task, run_main
from cnnlab.evaluation.app import app, dataset_overrides, next_free

USAGE = """\
usage: python -m cnnlab.evaluate run=<run folder or checkpoint file> [key=value ...]

Evaluates a trained model and writes <run>/eval/<split>_<dataset>/: metrics.json,
per_class.csv, confusion.csv, confusion.png, reliability.png, misclassified.png
(also to the run's TensorBoard, tags eval/<split>_<dataset>/...).

  run=PATH             a run folder (outputs/<date>/<run>) or a checkpoint file (required)
  checkpoint=best      best | last
  split=test           test | val | train | all (every image once)
  dataset=NAME ...     another dataset with the model's classes, e.g.
                       dataset=imagefolder dataset.root=$HOME/more_digits; dataset.KEY=VALUE
                       alone changes the run's own dataset (e.g. dataset.limit=100)
  out=null             another output folder (must be new or empty)
  batch_size=null      null: the run's trainer.eval_batch_size
  device=auto          auto | cpu | cuda | mps
  mistakes=16          images in misclassified.png
  tensorboard=true     also write to the run's tb/
  tta=none             none | flip (image + mirror; off for digit sets) | crops (padded 5-crop):
                       softmax probabilities averaged over the views (tta_padding=null: the
                       run's dataset.augment.crop_padding, 4 if it had none)
Keys and defaults: conf/evaluate.yaml."""


def evaluate_run(run: str | None, checkpoint: str = "best", split: str = "test",
                 dataset: dict[str, Any] | None = None, dataset_is_new: bool = False, out: str | None = None,
                 batch_size: int | None = None, device: str = "auto", mistakes: int = 16,
                 tensorboard: bool = True, tta: str = "none", tta_padding: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Evaluate a run's checkpoint on a split; return (the output folder, metrics.json's content).

    ``dataset``: None for the run's own dataset; with ``dataset_is_new`` a whole dataset
    config (``dataset=<name>`` on the command line), else keys applied to the run's own.
    """
    from cnnlab.errors import ConfigError
    from cnnlab.evaluation import source as src_mod
    from cnnlab.evaluation.tta import train_padding, with_tta

    t0 = time.perf_counter()
    src = src_mod.resolve(run, checkpoint)  # path checks: no torch yet
    if split not in src_mod.SPLITS:
        raise ConfigError(f"split={split!r} is not allowed: choose one of {', '.join(src_mod.SPLITS)}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is not allowed: use null or an integer >= 1")
    if out and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise ConfigError(f"out={out!r} already exists and is not an empty folder: an earlier evaluation is "
                          "never overwritten; choose a new folder")


    from cnnlab.device import resolve_device
    from cnnlab.evaluation.metrics import evaluate_arrays
    from cnnlab.evaluation.report import collect_logits, most_confident_mistakes, write_evaluation
    from cnnlab.lifecycle.atomic import os_error
    from cnnlab.reporting.track import summary_writer

    ck = src_mod.load(src)
    trained = src_mod.dataset_config(ck)
    ds = dict(dataset) if dataset_is_new else {**trained, **(dataset or {})}
    # The model sees what it was trained on: its input size, channels and normalisation.
    for key in ("image_size", "in_chans", "mean", "std"):
        ds[key] = trained[key]
    data = src_mod.load_data(ds)
    names = src_mod.saved_class_names(ck)
    if names is None:  # a checkpoint from before class names were saved: its dataset's
        names = data.classes if ds["name"] == trained["name"] and not dataset_is_new else \
            src_mod.load_data(trained).classes
    src_mod.check_classes(names, data.classes, trained["name"], ds["name"])
    part = src_mod.pick_split(data, split)
    if len(part) == 0:
        raise ConfigError(f"the {split} split of {ds['name']} is empty: pick another split=")

    policy = resolve_device(device, None, None, False)
    tta_padding = train_padding(trained, tta_padding)  # null: the run's own crop padding
    model = with_tta(src_mod.build_model(ck, len(names), policy.device, policy.channels_last), tta,
                     trained["name"], int(trained["image_size"]), tta_padding)
    bs = batch_size or int(ck["config"].get("trainer", {}).get("eval_batch_size", 512))
    loader = _loader(part, bs, trained["mean"], trained["std"], policy, ds)
    logits, labels = collect_logits(model, loader, policy)
    ev = evaluate_arrays(logits, labels, names)

    name = f"{split}_{ds['name']}"
    out_dir = Path(out) if out else Path(next_free(src.home / "eval" / name, is_dir=True))
    idx = most_confident_mistakes(ev, mistakes)
    images = _images(part, idx)
    extra = {"checkpoint": str(src.checkpoint), "checkpoint_epoch": int(ck.get("epoch", 0)),
             "model": ck.get("model_name") or ck["config"]["model"].get("name"), "dataset": ds["name"],
             "trained_on": trained["name"], "split": split, "device": policy.name,
             "tta": tta if tta == "none" else f"{tta} ({'2 views' if tta == 'flip' else f'5 crops, padding {tta_padding}'})"}
    writer = None
    tb_dir = src.run_dir / "tb" if src.run_dir is not None else out_dir / "tb"
    try:
        if tensorboard:
            writer = summary_writer(str(tb_dir), filename_suffix=f".{out_dir.name}")
        with contextlib.closing(writer) if writer is not None else contextlib.nullcontext():
            write_evaluation(ev, names, out_dir, extra=extra, title=f"{extra['model']} on {name}", writer=writer,
                             tag=f"eval/{out_dir.name}", step=extra["checkpoint_epoch"], mistakes=(images, idx))
    except Exception as e:  # a full or read-only disk: one line naming where and the errno's words
        err = os_error(e)
        if err is None:
            raise
        where = repr(err.filename) if err.filename else f"{str(out_dir)!r}" + (f" or {str(tb_dir)!r}" if writer else "")
        raise ConfigError(f"cannot write the evaluation to {where} ({err.strerror or err}): give a writable "
                          "folder with out=" + (", or tensorboard=false" if writer else "")) from None
    metrics = json.loads((out_dir / "metrics.json").read_text())
    metrics["seconds"] = time.perf_counter() - t0
    return out_dir, metrics


def _loader(part: Any, batch_size: int, mean: list[float], std: list[float], policy: Any,
            ds: dict[str, Any]) -> Any:
    """An in-order, un-augmented loader over one split (tensor-resident, or per-file for a FileSplit)."""
    if hasattr(part, "samples"):
        from cnnlab.data.dataloader import build_dataloader

        return build_dataloader(part, batch_size, mean, std, policy.device, train=False,
                                channels_last=policy.channels_last, num_workers=int(ds.get("num_workers", 2)))
    from cnnlab.data.loader import TensorLoader

    return TensorLoader(part.x, part.y, batch_size, mean, std, device=policy.device, train=False,
                        channels_last=policy.channels_last)


def _images(part: Any, idx: Any) -> Any:
    """Images ``idx`` of a split as (n, C, H, W) uint8 numpy."""
    import numpy as np
    import torch

    if len(idx) == 0:
        return np.zeros((0, 1, 1, 1), np.uint8)
    if hasattr(part, "samples"):
        return torch.stack([part.read(int(i)) for i in idx]).numpy()
    return part.x[torch.as_tensor(idx, dtype=torch.long)].cpu().numpy()


def _print(out_dir: Path, m: dict[str, Any]) -> None:
    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    top5 = f", top-5 {pct(m['top5_accuracy'])}" if "top5_accuracy" in m else ""
    print(f"{m['model']} (epoch {m['checkpoint_epoch']}) on {m['dataset']} {m['split']}: {m['n_images']} images, "
          f"accuracy {pct(m['accuracy'])}{top5}, macro F1 {pct(m['macro_f1'])}, loss {m['loss']:.4f}, "
          f"ECE {pct(m['ece'])}" + (f", TTA {m['tta']}" if m.get("tta", "none") != "none" else ""))
    per_class = (out_dir / "per_class.csv").read_text().splitlines()
    if len(per_class) <= 21:
        print("\n".join(per_class))
    print(f"wrote {out_dir}/ (metrics.json, per_class.csv, confusion.csv, confusion.png, reliability.png, "
          f"misclassified.png) in {m['seconds']:.1f} s")


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@hydra_task
def main(cfg: DictConfig) -> None:
    """The Hydra app: read the keys, call :func:`evaluate_run`, print the result."""
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.config import Rule
    from cnnlab.evaluation.app import app_keys, check_dataset_overrides

    raw = app_keys(cfg, batch_size=Rule(int, ">= 1", null=True), mistakes=Rule(int, "[0, 256]"),
                   tensorboard=Rule(bool), tta_padding=Rule(int, ">= 1", null=True))
    ds = raw.get("dataset")
    # A new dataset: dataset=<name> on the command line, not only dataset.KEY=VALUE.
    is_new = isinstance(ds, dict) and "name" in ds and (
        HydraConfig.get().runtime.choices.get("dataset") not in (None, "null"))
    if isinstance(ds, dict):
        check_dataset_overrides(ds)  # dataset=<name>, or dataset.KEY=VALUE on the run's own dataset
    if is_new:
        from cnnlab.config import DatasetConfig

        # The dataset's own config, typed by the run's schema (a wrong type fails in one line).
        ds = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(DatasetConfig), ds), resolve=True)
    out_dir, metrics = evaluate_run(raw["run"], raw["checkpoint"], raw["split"], ds, is_new, raw["out"],
                                    raw["batch_size"], raw["device"], int(raw["mistakes"]),
                                    bool(raw["tensorboard"]), str(raw["tta"]), raw["tta_padding"])
    _print(out_dir, metrics)


def cli() -> int:
    return run_main(app, main, USAGE, dataset_overrides)


if __name__ == "__main__":
    sys.exit(cli())
