"""The evaluation's pictures: matplotlib's object API on an Agg canvas (no pyplot state, no
window). Each function returns the Figure; :func:`render` draws it once into an (H, W, 3)
uint8 image for the PNG and TensorBoard. Margins are fixed: tight_layout draws every text
again (a second or more on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.evaluation.metrics import Calibration

# Above this many classes the matrix cells are too small for numbers and tick labels.
_MAX_ANNOTATED = 20
_MAX_TICK_LABELS = 40


def figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _agg_for_pyplot() -> None:
    """scikit-learn's display imports pyplot: make sure it never picks a GUI backend."""
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")


def confusion_figure(cm: np.ndarray, class_names: list[str], title: str = "") -> Any:
    """Counts (left) and row-normalised (right: each true class sums to 1), names on both axes."""
    _agg_for_pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(class_names)
    labels = class_names if k <= _MAX_TICK_LABELS else [""] * k
    name_in = 0.3 + 0.075 * max((len(n) for n in labels), default=1)  # inches for tick labels
    side = min(3.5 + 0.3 * k, 22)  # inches per matrix
    w, h = 2 * (side + name_in + 0.4), side + name_in + 0.9
    fig = figure(w, h)
    fig.subplots_adjust(left=(name_in + 0.35) / w, right=1 - 0.2 / w, bottom=(name_in + 0.45) / h,
                        top=1 - 0.55 / h, wspace=(name_in + 0.5) / (side))
    ax_n, ax_r = fig.subplots(1, 2)
    normed = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # a class with no image: a row of 0
    for ax, m, fmt, name, im_kw in ((ax_n, cm, "d", "counts", None),
                                    (ax_r, normed, ".2f", "row-normalised (recall per true class)",
                                     {"vmin": 0.0, "vmax": 1.0})):
        ConfusionMatrixDisplay(m, display_labels=labels).plot(
            ax=ax, include_values=k <= _MAX_ANNOTATED, colorbar=False, cmap="Blues", values_format=fmt,
            xticks_rotation="vertical", im_kw=im_kw)
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    return fig


def reliability_figure(cal: Calibration, title: str = "") -> Any:
    """The calibration diagram: accuracy per confidence bin against the diagonal, and the counts."""
    fig = figure(6, 6.5)
    ax, ax_c = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    centers = (cal.edges[:-1] + cal.edges[1:]) / 2
    width = cal.edges[1] - cal.edges[0]
    has = cal.count > 0
    ax.bar(centers[has], cal.accuracy[has], width=width * 0.95, color="C0", edgecolor="k", label="accuracy")
    ax.plot(centers[has], cal.confidence[has], "o", color="C3", ms=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
           title=(title + "\n" if title else "") + f"ECE {100 * cal.ece:.2f}% ({len(cal.count)} bins)")
    ax.legend(loc="upper left", fontsize=8)
    ax_c.bar(centers, cal.count, width=width * 0.95, color="gray")
    ax_c.set(xlabel="confidence (top-1 probability)", ylabel="images")
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.09, top=0.9, hspace=0.08)
    return fig


def misclassified_figure(images: np.ndarray, true_names: list[str], pred_names: list[str],
                         confidences: list[float], title: str = "") -> Any:
    """A grid of images (n, C, H, W) uint8, each titled ``true -> predicted (confidence)``."""
    n = len(images)
    cols = max(1, min(8, n))
    rows = max(1, -(-n // cols))
    fig = figure(1.9 * cols, 2.1 * rows + 0.5)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.6 / (2.1 * rows + 0.5), hspace=0.45)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, t, p, c in zip(axes, images, true_names, pred_names, confidences, strict=False):
        grey = img.shape[0] == 1
        ax.imshow(img[0] if grey else np.transpose(img, (1, 2, 0)), cmap="gray" if grey else None,
                  vmin=0, vmax=255)
        ax.set_title(f"true {t}\npred {p} ({100 * c:.0f}%)", fontsize=8)
    if n == 0:
        axes[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    if title:
        fig.suptitle(title)
    return fig


def render(fig: Any, dpi: int = 100) -> np.ndarray:
    """The figure drawn once, as (H, W, 3) uint8: the PNG and TensorBoard's image both use it."""
    fig.set_dpi(dpi)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_rgb(rgb: np.ndarray, path: Path) -> None:
    """Write an (H, W, 3) uint8 image as PNG through a temp file: a reader never sees half of it."""
    from PIL import Image

    from cnnlab.lifecycle.atomic import write_atomic

    write_atomic(path, lambda f: Image.fromarray(rgb).save(f, format="PNG", compress_level=3))
