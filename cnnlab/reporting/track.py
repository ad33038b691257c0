"""What a run leaves behind: metrics.csv, summary.json and TensorBoard events.

Only this module writes those files, so their layout is defined in one place.
summary.json is rewritten atomically at the start (status ``running``), after
every epoch, and at the end, so a reader never sees half a file, and a run that
dies without a word still says ``running`` rather than ``completed``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnnlab.lifecycle.atomic import finite_or_none, write_atomic, write_json_atomic

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
    try:
        return SummaryWriter(log_dir=log_dir, **kw)
    except OSError as e:  # its first event, written at once, met a full disk: name the folder
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror, log_dir) from e


@contextmanager
def tb_errors(writer: Any) -> Iterator[None]:
    """A SummaryWriter's failed write named: its writer thread meets a full or read-only disk and
    raises it at the next write, flush or close, as an OSError that may name no file."""
    try:
        yield
    except OSError as e:
        if e.filename:
            raise
        event_writer = getattr(getattr(writer, "file_writer", None), "event_writer", None)
        name = getattr(event_writer, "_file_name", None) or getattr(writer, "log_dir", "tb")
        raise OSError(e.errno, e.strerror, str(name)) from e


def _write_csv(path: Path, rows: list[dict[str, Any]], keep: bytes = b"") -> None:
    """metrics.csv as ``keep`` (the rows already there, as they are) + ``rows`` (a header first when
    ``keep`` is empty), replaced atomically: a full disk leaves the previous file, never half a row."""
    def write(f: Any) -> None:
        f.write(keep)
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if not keep:
            w.writeheader()
        w.writerows(rows)
        f.write(text.getvalue().encode())

    write_atomic(path, write)


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
        _write_csv(self.metrics_path, [r for r in self.read_metrics() if int(r["epoch"]) <= last_epoch])

    def log_epoch(self, row: dict[str, float]) -> None:
        """Append one epoch's row to metrics.csv and its scalars to TensorBoard."""
        if not self.enabled:
            return
        # The file rewritten with the new row, not appended to: a full disk cannot leave half a row.
        kept = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
        _write_csv(self.metrics_path, [{k: finite_or_none(row[k]) for k in METRIC_COLUMNS}], kept)
        if self.tb is not None:
            step = int(row["epoch"])
            with tb_errors(self.tb):
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
            with tb_errors(self.tb):
                self.tb.add_images(tag, images, step)

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.tb is not None:
            with tb_errors(self.tb):
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
        with tb_errors(self.tb):
            for s in hparams_summary(hp, mets):  # experiment, session start, session end
                self.tb._get_file_writer().add_summary(s)
            for k, v in mets.items():
                self.tb.add_scalar(k, v, 0)
            self.tb.flush()

    def close(self) -> None:
        """Flush and close TensorBoard. A failed write was raised by the flush before it (each
        epoch's, the end's): here it is only logged, so the run's own error and its lock's
        release are not replaced by it."""
        if self.tb is not None:
            tb, self.tb = self.tb, None
            try:
                with tb_errors(tb):
                    try:
                        tb.flush()
                    finally:
                        tb.close()  # its writer thread ends, whatever the flush met
            except OSError as e:
                import logging

                logging.getLogger("cnnlab").warning("TensorBoard's events were not all written: %s (%s)",
                                                    e.filename, e.strerror)
