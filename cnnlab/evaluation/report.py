"""One pass over a split (``collect_logits``), and the files an evaluation leaves
(``write_evaluation``; ``test_report`` is the part a training run calls on its test split).

Files (``out_dir``):

    metrics.json                accuracy, top5_accuracy (> 5 classes), macro_/weighted_
                                precision/recall/f1, loss, ece (15 bins), n_images, + extra
    per_class.csv               class, support, precision, recall, f1, accuracy
    confusion.csv               counts, rows = true class, columns = predicted
    confusion_normalized.csv    the same, each row divided by its support
    confusion.png               both matrices, class names on the axes
    reliability.png             the calibration diagram
    misclassified.png           the most confident mistakes (when images are given)
    predictions.csv.gz          one row per image: index, label, prediction, p_true, top5
                                (the sweep report's paired tests read it: cnnlab/reporting/significance.py)
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
from cnnlab.lifecycle.atomic import finite_or_none, write_atomic

PER_CLASS_COLUMNS = ["class", "support", "precision", "recall", "f1", "accuracy"]


def collect_logits(model: Any, loader: Any, policy: Any, ddp: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K) float32, labels (N,) int64) of every sample in ``loader``, on the host.

    The logits stay on the device until one copy at the end (no sync per batch). Under DDP
    (``ddp``, a :class:`cnnlab.dist.Dist`; every rank calls it) the shards are gathered: the
    whole split on every rank, in rank-shard order (metrics do not depend on the order).
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


def write_csv(path: Path, header: list[str], rows: Any) -> None:
    """A CSV replaced atomically (a full disk leaves no half file)."""
    def write(f: Any) -> None:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)  # None: an empty cell

    write_atomic(path, write, binary=False)


PREDICTION_COLUMNS = ["index", "label", "prediction", "p_true", "top5"]


def write_predictions(path: Path, probs: np.ndarray, labels: np.ndarray, index: np.ndarray | None = None) -> None:
    """predictions.csv.gz: per image (sorted by ``index``, its position in the split; default
    0..N-1) the label, the argmax, the true class's probability and the top-5 classes (most
    likely first, space-separated). gzip with mtime 0: the same predictions, the same bytes."""
    import gzip

    n = len(labels)
    index = (np.arange(n) if index is None else np.asarray(index)).tolist()
    order = np.argsort(index, kind="stable")
    k = min(5, probs.shape[1]) if probs.ndim == 2 else 0
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k] if n else np.zeros((0, k), np.int64)
    p_true = probs[np.arange(n), labels] if n else np.zeros(0)
    # Python lists and one string, then one compress call: indexing numpy per cell is the slow part.
    top_l, lab, pt = top.tolist(), labels.tolist(), p_true.tolist()
    lines = [",".join(PREDICTION_COLUMNS)] + [
        f"{index[i]},{lab[i]},{top_l[i][0] if k else ''},{pt[i]:.6g},{' '.join(map(str, top_l[i]))}"
        for i in order.tolist()]
    data = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0)
    write_atomic(path, lambda f: f.write(data))


def split_order(n: int, world_size: int) -> np.ndarray:
    """The split positions of ``collect_logits``' rows under DDP: rank r's shard r, r+W, ...,
    the ranks one after another (as cnnlab's eval loaders shard)."""
    return np.concatenate([np.arange(r, n, world_size) for r in range(world_size)]) if n else np.zeros(0, np.int64)


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
                     index: np.ndarray | None = None) -> None:
    """Write the evaluation's files into ``out_dir`` (created) and, given a SummaryWriter, TensorBoard.

    ``mistakes``: (images (n, C, H, W) uint8, their sample indices) for misclassified.png;
    ``tag``: the TensorBoard prefix, e.g. ``eval/test_digits``; ``step``: the checkpoint's epoch;
    ``index``: each row's position in the split (:func:`split_order`; default 0..N-1).
    """
    from cnnlab.evaluation import plots
    from cnnlab.reporting.track import tb_errors

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {k: finite_or_none(v) for k, v in {**ev.metrics, **(extra or {})}.items()}
    write_atomic(out_dir / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2) + "\n"), binary=False)
    write_predictions(out_dir / "predictions.csv.gz", ev.probs, ev.labels, index)
    write_csv(out_dir / "per_class.csv", PER_CLASS_COLUMNS, ([r[k] for k in PER_CLASS_COLUMNS] for r in ev.per_class))
    # The matrices: rows = true class (first column), columns = predicted (the header row).
    normed = ev.confusion / np.maximum(ev.confusion.sum(axis=1, keepdims=True), 1)
    for name, cm, fmt in (("confusion", ev.confusion, "{:d}"), ("confusion_normalized", normed, "{:.4f}")):
        write_csv(out_dir / f"{name}.csv", ["true\\predicted", *class_names],
                  ([c, *(fmt.format(v) for v in row.tolist())] for c, row in zip(class_names, cm, strict=True)))
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
    with tb_errors(writer):
        for name, fig in figures.items():
            rgb = plots.render(fig)
            plots.save_rgb(rgb, out_dir / f"{name}.png")
            if writer is not None:
                writer.add_image(f"{tag}/{name}", rgb, step, dataformats="HWC")
        if writer is not None:
            for key in ("accuracy", "macro_f1", "weighted_f1", "ece", "loss", "top5_accuracy"):
                if isinstance(ev.metrics.get(key), float):
                    writer.add_scalar(f"{tag}/{key}", ev.metrics[key], step)
            writer.add_text(f"{tag}/per_class", per_class_markdown(ev.per_class), step)
            writer.flush()


def test_report(model: Any, loader: Any, device_policy: Any, class_names: list[str], out_dir: str | Path,
                tracker: Any = None, step: int = 0, ddp: Any = None) -> dict[str, Any]:
    """Score a training run's final test split in one pass, on every rank (only rank 0 writes
    :func:`write_evaluation`'s files, no misclassified.png, and the tracker's TensorBoard ``test/``).

    Returns summary.json's ``test_acc``, ``test_loss`` (mean cross-entropy of the float32
    logits), ``test_macro_f1``, ``test_weighted_f1``, ``test_ece``, ``test_top5_acc`` (more than
    5 classes), ``test_per_class`` (the per_class.csv rows) and ``test_report`` (``out_dir``).
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
                         title="test split", writer=writer, tag="test", step=step,
                         index=split_order(n, ddp.world_size) if ddp is not None and ddp.enabled else None)
    return fields
