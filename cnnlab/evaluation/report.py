"""One pass over a split, and the files an evaluation leaves.

``collect_logits`` runs the model over a loader once, keeping the logits and labels
on the device, and reads them to the host once at the end (no sync per batch).
``write_evaluation`` writes the files of :mod:`cnnlab.evaluate`'s output folder and
their TensorBoard images; ``test_report`` is the part of it a training run calls
on its final test split.

Files (``out_dir``):

    metrics.json                accuracy, top5_accuracy (> 5 classes), macro_/weighted_
                                precision/recall/f1, loss, ece (15 bins), n_images, + extra
    per_class.csv               class, support, precision, recall, f1, accuracy
    confusion.csv               counts, rows = true class, columns = predicted
    confusion_normalized.csv    the same, each row divided by its support
    confusion.png               both matrices, class names on the axes
    reliability.png             the calibration diagram
    misclassified.png           the most confident mistakes (when images are given)
"""

from __future__ import annotations

import csv
import json
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.evaluation.metrics import ECE_BINS, Evaluation, evaluate_arrays
from cnnlab.lifecycle.atomic import finite_or_none

PER_CLASS_COLUMNS = ["class", "support", "precision", "recall", "f1", "accuracy"]


def collect_logits(model: Any, loader: Any, policy: Any, ddp: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K) float32, labels (N,) int64) of every sample in ``loader``, on the host.

    One forward pass per batch under the policy's autocast; the batches' logits are
    concatenated on the device and copied to the host once. Under DDP (``ddp``, a
    :class:`cnnlab.dist.Dist`) each rank's shard is gathered, so every rank returns the
    whole split (in rank-shard order, not the dataset's: metrics do not depend on the
    order); every rank must then call it.
    """
    import torch

    from cnnlab.models.outputs import split_output

    model.eval()
    dev = policy.device
    autocast = (torch.autocast(dev.type, dtype=policy.amp_dtype) if policy.amp_dtype else nullcontext())
    outs, ys = [], []
    with torch.no_grad(), autocast:
        for x, y in loader:
            logits, _ = split_output(model(x))
            outs.append(logits.float())
            ys.append(y)
    if outs:
        logits_h, labels_h = torch.cat(outs).cpu().numpy(), torch.cat(ys).cpu().numpy()  # the one host read
    else:
        logits_h, labels_h = np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    if ddp is not None and ddp.enabled:
        parts = [p for p in ddp.gather((logits_h, labels_h)) if len(p[1])]
        if parts:
            logits_h = np.concatenate([p[0] for p in parts])
            labels_h = np.concatenate([p[1] for p in parts])
    return logits_h, labels_h.astype(np.int64)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps({k: finite_or_none(v) for k, v in data.items()}, indent=2) + "\n")


def write_per_class(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PER_CLASS_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in PER_CLASS_COLUMNS})


def write_confusion(path: Path, cm: np.ndarray, class_names: list[str], fmt: str = "{:d}") -> None:
    """A matrix as CSV: the first column is the true class, the header row the predicted one."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\predicted", *class_names])
        for name, row in zip(class_names, cm, strict=True):
            w.writerow([name, *(fmt.format(v) for v in row.tolist())])


def most_confident_mistakes(ev: Evaluation, n: int = 16) -> np.ndarray:
    """Indices of up to ``n`` misclassified samples, the most confident first."""
    wrong = np.flatnonzero(ev.preds != ev.labels)
    conf = ev.probs[wrong, ev.preds[wrong]]
    return wrong[np.argsort(-conf, kind="stable")][:n]


def per_class_markdown(rows: list[dict[str, Any]]) -> str:
    """The per-class table as Markdown (TensorBoard's text tab renders it)."""
    def pct(v: Any) -> str:
        return "" if v is None else f"{100 * v:.1f}%"

    lines = ["| class | support | precision | recall | F1 | accuracy |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['support']} | {pct(r['precision'])} | {pct(r['recall'])} | "
              f"{pct(r['f1'])} | {pct(r['accuracy'])} |" for r in rows]
    return "\n".join(lines)


def write_evaluation(ev: Evaluation, class_names: list[str], out_dir: Path, *,
                     extra: dict[str, Any] | None = None, title: str = "", writer: Any = None,
                     tag: str = "eval", step: int = 0, mistakes: tuple[np.ndarray, np.ndarray] | None = None,
                     ) -> list[Path]:
    """Write the evaluation's files into ``out_dir`` (created) and, given a SummaryWriter, TensorBoard.

    ``mistakes``: (images (n, C, H, W) uint8, their sample indices) for misclassified.png;
    ``tag``: the TensorBoard prefix, e.g. ``eval/test_digits``; ``step``: the checkpoint's epoch.
    """
    from cnnlab.evaluation import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def path(name: str) -> Path:
        written.append(out_dir / name)
        return out_dir / name

    write_json(path("metrics.json"), {**ev.metrics, **(extra or {})})
    write_per_class(path("per_class.csv"), ev.per_class)
    write_confusion(path("confusion.csv"), ev.confusion, class_names)
    rows = ev.confusion.sum(axis=1, keepdims=True)
    write_confusion(path("confusion_normalized.csv"), ev.confusion / np.maximum(rows, 1), class_names,
                    fmt="{:.4f}")
    figures = {
        "confusion": plots.confusion_figure(ev.confusion, class_names, title),
        "reliability": plots.reliability_figure(ev.calibration, title),
    }
    if mistakes is not None:
        images, idx = mistakes
        figures["misclassified"] = plots.misclassified_figure(
            images, [class_names[int(t)] for t in ev.labels[idx]],
            [class_names[int(p)] for p in ev.preds[idx]], [float(ev.probs[i, ev.preds[i]]) for i in idx],
            (title + ": " if title else "") + "most confident mistakes")
    for name, fig in figures.items():
        rgb = plots.render(fig)
        plots.save_rgb(rgb, path(f"{name}.png"))
        if writer is not None:
            writer.add_image(f"{tag}/{name}", rgb, step, dataformats="HWC")
    if writer is not None:
        for key in ("accuracy", "macro_f1", "weighted_f1", "ece", "loss", "top5_accuracy"):
            if isinstance(ev.metrics.get(key), float):
                writer.add_scalar(f"{tag}/{key}", ev.metrics[key], step)
        writer.add_text(f"{tag}/per_class", per_class_markdown(ev.per_class), step)
        writer.flush()
    return written


def test_report(model: Any, loader: Any, device_policy: Any, class_names: list[str], out_dir: str | Path,
                tracker: Any = None, step: int = 0, ddp: Any = None) -> dict[str, Any]:
    """Score a training run's final test split in one pass: loss, accuracy, per class.

    Call it on every rank (under DDP, ``ddp``, the shards are gathered; only rank 0
    writes). Writes :func:`write_evaluation`'s files (no misclassified.png) into
    ``out_dir`` and, given the run's tracker, the figures to its TensorBoard under
    ``test/``. Returns the fields to add to summary.json: ``test_acc`` (a fraction),
    ``test_loss`` (mean cross-entropy of the float32 logits), ``test_macro_f1``,
    ``test_weighted_f1``, ``test_ece``, ``test_top5_acc`` (more than 5 classes),
    ``test_per_class`` (the per_class.csv rows) and ``test_report`` (``out_dir`` as given).
    """
    import torch
    import torch.nn.functional as F

    logits, labels = collect_logits(model, loader, device_policy, ddp)
    n = len(labels)
    loss_sum = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="sum") if n else None
    ev = evaluate_arrays(logits, labels, list(class_names))
    fields = {"test_acc": int((logits.argmax(1) == labels).sum()) / n if n else math.nan,
              "test_loss": (loss_sum / n).item() if n else math.nan,
              "test_macro_f1": ev.metrics.get("macro_f1"), "test_weighted_f1": ev.metrics.get("weighted_f1"),
              "test_ece": ev.metrics.get("ece"), "test_per_class": ev.per_class, "test_report": str(out_dir)}
    if "top5_accuracy" in ev.metrics:
        fields["test_top5_acc"] = ev.metrics["top5_accuracy"]
    if ddp is None or ddp.is_main:
        writer = getattr(tracker, "tb", None) if tracker is not None and getattr(tracker, "enabled", True) else None
        write_evaluation(ev, list(class_names), Path(out_dir), extra={"epoch": step, "ece_bins": ECE_BINS},
                         title="test split", writer=writer, tag="test", step=step)
    return fields
