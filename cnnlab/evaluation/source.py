"""What was trained: a run folder or checkpoint -> the checkpoint, the model, the data.

A training checkpoint holds the resolved config (a plain dict), so the model is rebuilt
from its own ``model`` node and the dataset with the same split seed (the same test
images). The path checks import no torch, so a mistyped ``run=`` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CheckpointError, ConfigError, DataError

CHECKPOINT_CHOICES = ("best", "last")
SPLITS = ("test", "val", "train", "all")


@dataclass
class Source:
    """A checkpoint file and the run folder it belongs to (None for a file outside one)."""

    checkpoint: Path
    run_dir: Path | None

    @property
    def home(self) -> Path:
        """Where outputs go: the run folder, or the checkpoint's own folder."""
        return self.run_dir if self.run_dir is not None else self.checkpoint.parent


def resolve(run: str | None, checkpoint: str = "best") -> Source:
    """``run=`` (a run folder or a checkpoint file) and ``checkpoint=best|last`` -> the file."""
    if not run:
        raise ConfigError("run= is required: a run folder (outputs/<date>/<run>) or a checkpoint file")
    if checkpoint not in CHECKPOINT_CHOICES:
        raise ConfigError(f"checkpoint={checkpoint!r} is not allowed: choose one of {', '.join(CHECKPOINT_CHOICES)}")
    p = Path(run).expanduser()
    if not p.exists():
        raise CheckpointError(f"run={run!r}: no such run folder or checkpoint file")
    if p.is_file():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
        return Source(p, run_dir)
    f = p / "checkpoints" / f"{checkpoint}.pt"
    if f.is_file():
        return Source(f, p)
    other = "last" if checkpoint == "best" else "best"
    if (p / "checkpoints" / f"{other}.pt").is_file():
        raise CheckpointError(f"run={run!r} has no checkpoints/{checkpoint}.pt (it has {other}.pt: "
                              f"use checkpoint={other})")
    raise CheckpointError(f"run={run!r} holds no checkpoint (no checkpoints/best.pt or last.pt): give a run "
                          "folder that trained at least one epoch, or a checkpoint file")


def load(source: Source) -> dict[str, Any]:
    """The checkpoint, on the CPU, checked to be a cnnlab training checkpoint."""
    from cnnlab.lifecycle.checkpoint import load_checkpoint

    ck = load_checkpoint(source.checkpoint)
    config = ck.get("config")
    ok = (isinstance(ck.get("model"), dict) and isinstance(config, dict)
          and isinstance(config.get("model"), dict) and isinstance(config.get("dataset"), dict))
    if not ok:
        raise CheckpointError(
            f"{str(source.checkpoint)!r} is not a cnnlab training checkpoint (it has no 'model' weights with "
            "the run's 'config'): evaluate a run folder or its checkpoints/best.pt; to start from other "
            "weights, train with model.checkpoint=<file>")
    return ck


def dataset_config(ck: dict[str, Any]) -> dict[str, Any]:
    return dict(ck["config"]["dataset"])


def saved_class_names(ck: dict[str, Any]) -> list[str] | None:
    """The class names the checkpoint holds (newer checkpoints), or None."""
    names = ck.get("class_names")
    return [str(n) for n in names] if isinstance(names, (list, tuple)) and names else None


def load_data(ds: dict[str, Any]) -> Any:
    """The dataset a dataset config (a plain dict, as the checkpoint holds it) describes."""
    from cnnlab.data import load_dataset

    return load_dataset(ds["name"], ds.get("root"), bool(ds.get("download", False)), int(ds["image_size"]),
                        int(ds["in_chans"]), float(ds.get("val_split", 0.1)), float(ds.get("test_split", 0.0)),
                        int(ds.get("split_seed", 0)), int(ds.get("memory_budget_mb", 2048)), ds.get("limit"),
                        loader=ds.get("loader", "tensor"))


def pick_split(data: Any, split: str) -> Any:
    """One split of an ImageSplits; ``all`` is every image once (train, val and test together)."""
    if split != "all":  # (split= was checked by evaluate_run)
        return getattr(data, split)
    parts = []
    for s in (data.train, data.val, data.test):
        if not any(s is q for q in parts) and len(s):  # an image folder without test/ reuses val
            parts.append(s)
    first = parts[0]
    if hasattr(first, "samples"):  # FileSplit: files read per batch
        from cnnlab.data.imagefolder import FileSplit

        return FileSplit(first.root, [x for p in parts for x in p.samples], first.classes, first.in_chans,
                         first.image_size)
    import torch

    from cnnlab.data.splits import Split

    return Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def check_classes(trained: list[str], other: list[str], trained_on: str, other_name: str) -> None:
    """One line naming both class lists when a dataset's classes are not the model's."""
    if list(trained) == list(other):
        return

    def show(names: list[str]) -> str:
        head = ", ".join(names[:12])
        return f"{len(names)} classes ({head}{', ...' if len(names) > 12 else ''})"

    order = " (the same names in another order)" if sorted(trained) == sorted(other) else ""
    raise DataError(f"dataset {other_name} has {show(other)} but the model was trained on {trained_on} with "
                    f"{show(trained)}{order}: evaluate on a dataset with the model's classes")


def build_model(ck: dict[str, Any], num_classes: int, device: Any = "cpu", channels_last: bool = False) -> Any:
    """The checkpoint's model, rebuilt from its own config node and loaded strictly, in eval mode,
    on ``device`` (in the channels_last memory format where the device policy prefers it)."""
    import torch
    from omegaconf import OmegaConf

    from cnnlab.lifecycle.checkpoint import check_compatible, eval_state_dict
    from cnnlab.models.factory import instantiate_model

    cfg = ck["config"]
    ds = cfg["dataset"]
    node = OmegaConf.create(cfg["model"])
    # No download and no other weights file: the checkpoint's weights replace them.
    model = instantiate_model(node, num_classes=num_classes, in_chans=int(ds["in_chans"]),
                              img_size=int(ds["image_size"]), pretrained=False, checkpoint=None)
    sd = eval_state_dict(ck)  # the EMA's weights when the run trained with ema.enabled, as its test did
    check_compatible(model, sd, "the checkpoint")
    model.load_state_dict(sd, strict=True)
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).eval()
