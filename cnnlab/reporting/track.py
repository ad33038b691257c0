"""What a run leaves behind: metrics.csv, summary.json and TensorBoard events.

Only this module writes those files, so their layout is defined in one place.
summary.json is rewritten atomically at the start (status ``running``), after
every epoch, and at the end, so a reader never sees half a file, and a run that
dies without a word still says ``running`` rather than ``completed``.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from cnnlab.lifecycle.atomic import finite_or_none, write_json_atomic

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"]


def summary_writer(log_dir: str, **kw: Any) -> Any:
    """torch's SummaryWriter, its writer thread quiet: TensorBoard keeps a failed write (a full or
    read-only disk) for the next write, flush or close, where it is said in one line; the thread's
    own traceback (``threading.excepthook``) is left out."""
    import threading

    from torch.utils.tensorboard import SummaryWriter

    previous = threading.excepthook
    if not getattr(previous, "cnnlab", False):
        def hook(args: Any) -> None:
            if type(args.thread).__name__ != "_AsyncWriterThread":  # tensorboard's event writer
                previous(args)

        hook.cnnlab = True  # type: ignore[attr-defined]
        threading.excepthook = hook
    return SummaryWriter(log_dir=log_dir, **kw)


class RunTracker:
    """Writes one run folder. ``enabled=False`` (DDP ranks > 0) makes every call a no-op."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None) -> None:
        """``purge_step``: on resume, the first epoch to redo; TensorBoard then hides the
        events a killed run wrote at that step and later, so curves do not double back."""
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.summary: dict[str, Any] = {}
        self.tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.csv"
        self.summary_path = self.dir / "summary.json"
        if tensorboard:
            self.tb = summary_writer(str(self.dir / "tb"), purge_step=purge_step)

    def read_metrics(self) -> list[dict[str, str]]:
        if not self.enabled or not self.metrics_path.exists():
            return []
        with open(self.metrics_path, newline="") as f:
            return list(csv.DictReader(f))

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep only rows up to ``last_epoch`` (on resume: no duplicate epochs)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        rows = [r for r in self.read_metrics() if int(r["epoch"]) <= last_epoch]
        with open(self.metrics_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def log_epoch(self, row: dict[str, float]) -> None:
        """Append one epoch's row to metrics.csv and its scalars to TensorBoard."""
        if not self.enabled:
            return
        new = not self.metrics_path.exists()
        with open(self.metrics_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: finite_or_none(row[k]) for k in METRIC_COLUMNS})
        if self.tb is not None:
            step = int(row["epoch"])
            for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
                self.tb.add_scalar(k.replace("_", "/", 1), row[k], step)
            self.tb.add_scalar("lr", row["lr"], step)
            self.tb.add_scalar("time/epoch_seconds", row["epoch_seconds"], step)
            self.tb.flush()

    def update_summary(self, **fields: Any) -> None:
        self.summary.update({k: finite_or_none(v) for k, v in fields.items()})
        if self.enabled:
            write_json_atomic(self.summary_path, self.summary)

    def add_images(self, tag: str, images: Any, step: int) -> None:
        """A (N, C, H, W) float batch in [0, 1] as one TensorBoard image grid."""
        if self.tb is not None:
            self.tb.add_images(tag, images, step)

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        """Record the run's hyperparameters and final metrics for TensorBoard's HParams tab, once,
        at the end. ``hparams``: str/bool/int/float/None (others as text); ``metrics``: by
        default the summary's best_val_acc, test_acc and params, None/NaN left out.

        Unlike ``SummaryWriter.add_hparams`` (a second writer in a timestamped subfolder: a
        second "run" per job), this writes into the run's own tb/ events, scalars ``hparam/<name>``.
        """
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        if metrics is None:
            metrics = {k: self.summary.get(k) for k in ("best_val_acc", "test_acc", "params")}

        hp = {k: (v if v is None or isinstance(v, (str, bool, int, float)) else str(v))
              for k, v in hparams.items()}
        mets = {f"hparam/{k}": float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for s in hparams_summary(hp, mets):  # experiment, session start, session end
            self.tb._get_file_writer().add_summary(s)
        for k, v in mets.items():
            self.tb.add_scalar(k, v, 0)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None
