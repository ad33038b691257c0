"""Classification metrics of a split from its logits (N, K) and labels (N,), numpy on the host.

scikit-learn computes all but the expected calibration error (its calibration tools are
binary-only): ECE over ``n_bins`` equal-width confidence bins,
sum_b |B_b|/N * |acc(B_b) - conf(B_b)| (Guo et al., 2017). Accuracies are fractions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (N, K): the class probabilities."""
    from scipy.special import softmax as sp_softmax  # scipy comes with scikit-learn

    return sp_softmax(np.asarray(logits, dtype=np.float64), axis=1)


@dataclass
class Calibration:
    """Per-bin confidence statistics; bins with no sample have count 0 and NaN means."""

    edges: np.ndarray  # (n_bins + 1,) bin edges in [0, 1]
    count: np.ndarray  # (n_bins,) samples per bin
    accuracy: np.ndarray  # (n_bins,) fraction correct per bin
    confidence: np.ndarray  # (n_bins,) mean top-1 probability per bin
    ece: float


def calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> Calibration:
    """Top-1 confidence binned into ``n_bins`` equal-width bins, and the ECE."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin b holds confidences in (edges[b], edges[b+1]]; a confidence of exactly 0 cannot occur.
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
    n = max(len(labels), 1)
    ece = float(np.nansum(count / n * np.abs(acc - mean_conf)))
    return Calibration(edges, count, acc, mean_conf, ece)


@dataclass
class Evaluation:
    """The metrics of one split: summary numbers, per-class rows and the confusion matrix."""

    metrics: dict[str, Any]  # accuracy, top5_accuracy, macro_/weighted_ precision/recall/f1, loss, ece, n_images
    per_class: list[dict[str, Any]]  # one row per class: class, support, precision, recall, f1, accuracy
    confusion: np.ndarray  # (K, K) int64 counts, row = true class, column = predicted
    calibration: Calibration
    probs: np.ndarray = field(repr=False)  # (N, K) float64
    preds: np.ndarray = field(repr=False)  # (N,) int64
    labels: np.ndarray = field(repr=False)  # (N,) int64, the true classes


def evaluate_arrays(logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                    n_bins: int = ECE_BINS) -> Evaluation:
    """Every metric of a split from its logits (N, K) and labels (N,)."""
    import sklearn.metrics as skm

    k = len(class_names)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        logits = np.zeros((0, k))
    if logits.ndim != 2 or logits.shape[1] != k:
        raise ValueError(f"logits of shape {logits.shape} for {k} classes")
    every = np.arange(k)
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    n = len(labels)
    metrics: dict[str, Any] = {"n_images": int(n), "num_classes": k}
    if n == 0:
        metrics.update(accuracy=None, loss=None, ece=None)
        empty = np.zeros((k, k), dtype=np.int64)
        return Evaluation(metrics, [_row(c, 0, 0.0, 0.0, 0.0, None) for c in class_names], empty,
                          calibration(probs.reshape(0, k), labels, n_bins), probs, preds, labels)
    metrics["accuracy"] = float(skm.accuracy_score(labels, preds))
    if k > 5:
        metrics["top5_accuracy"] = float(skm.top_k_accuracy_score(labels, probs, k=5, labels=every))
    metrics["loss"] = float(skm.log_loss(labels, probs, labels=every))  # mean cross-entropy (nats)
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, labels=every, average=avg, zero_division=0)
        metrics.update({f"{avg}_precision": float(p), f"{avg}_recall": float(r), f"{avg}_f1": float(f)})
    p, r, f, support = skm.precision_recall_fscore_support(labels, preds, labels=every, zero_division=0)
    cm = skm.confusion_matrix(labels, preds, labels=every)
    # Per-class accuracy: the share of that class's images predicted as it (the
    # confusion matrix's diagonal over its row; equal to recall, kept for readers
    # who look for "accuracy"). None for a class with no image in the split.
    per_class = [_row(name, int(support[i]), p[i], r[i], f[i],
                      (cm[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(class_names)]
    cal = calibration(probs, labels, n_bins)
    metrics["ece"] = cal.ece
    metrics["ece_bins"] = n_bins
    return Evaluation(metrics, per_class, cm.astype(np.int64), cal, probs, preds, labels)


def _row(name: str, support: int, p: float, r: float, f: float, acc: float | None) -> dict[str, Any]:
    return {"class": name, "support": support, "precision": float(p), "recall": float(r), "f1": float(f),
            "accuracy": None if acc is None else float(acc)}
