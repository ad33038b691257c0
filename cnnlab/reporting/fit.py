"""Under/overfitting diagnosis from a run's metrics rows: a verdict, its numbers, a hint.

The course's definitions made into rules, the first that matches wins: diverged, still
improving, underfitting, overfitting, good fit (docs/lessons.md states each; the
thresholds are the ``fit.*`` keys). The train accuracy is measured during the training
pass, with augmentation and dropout on, so it understates the model and the gap is
conservative. Pure Python (no torch): it runs on a metrics.csv anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cnnlab.lifecycle.atomic import finite_or_none

VERDICTS = ("underfitting", "overfitting", "good fit", "still improving", "diverged")

# The hint's advice per verdict: what a learner would try next.
ADVICE = {
    "diverged": "lower optimizer.lr, set trainer.grad_clip, or use a warmup (scheduler=onecycle)",
    "still improving": "train longer (raise trainer.epochs)",
    "underfitting": "train longer, raise optimizer.lr, use a bigger model, or less regularisation "
                    "(dropout, weight decay, augmentation)",
    "overfitting": "try augmentation, more weight decay, or early stopping",
    "good fit": "nothing obvious to fix",
}


def _num(v: Any) -> float:
    """A metrics value (float, or str from metrics.csv; '' or None = missing) as a float."""
    if v is None or v == "":
        return math.nan
    return float(v)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _argbest(values: list[float], higher: bool) -> int | None:
    """Index of the first best finite value (ties keep the earliest), None if none is finite."""
    best = None
    for i, v in enumerate(values):
        if math.isfinite(v) and (best is None or (v > values[best] if higher else v < values[best])):
            best = i
    return best


def diagnose(
    rows: Sequence[Mapping[str, Any]],
    *,
    underfit_train_acc: float,
    overfit_gap: float,
    still_improving_epochs: int,
    diverge_loss_ratio: float,
    status: str | None = None,
) -> dict[str, Any] | None:
    """Diagnose a run from its per-epoch metrics rows; None if there is no row to judge.

    ``rows``: dicts with epoch, train_loss, train_acc, val_loss, val_acc (numbers, or the
    strings of metrics.csv). ``status``: the run's summary status, if known. Returns the
    verdict (one of ``VERDICTS``), the numbers behind it, the thresholds, and ``hint``,
    a one-line summary for the log.
    """
    if not rows:
        if status != "diverged":
            return None
        return {"verdict": "diverged", "epochs": 0, "hint": f"diverged before the first epoch ended: {ADVICE['diverged']}"}

    epochs = [int(_num(r["epoch"])) for r in rows]
    tr_loss = [_num(r.get("train_loss")) for r in rows]
    tr_acc = [_num(r.get("train_acc")) for r in rows]
    va_loss = [_num(r.get("val_loss")) for r in rows]
    va_acc = [_num(r.get("val_acc")) for r in rows]
    n = len(rows)
    has_val = any(math.isfinite(v) for v in va_acc)

    i_best_tr = _argbest(tr_acc, higher=True)
    i_best_va = _argbest(va_acc, higher=True)
    i_low_vl = _argbest(va_loss, higher=False)
    i_low_tl = _argbest(tr_loss, higher=False)
    final_tr, final_va = tr_acc[-1], va_acc[-1]
    gap = final_tr - final_va if has_val and math.isfinite(final_va) else None

    # Still improving: a best of the run was reached within the last N epochs. With only
    # N epochs or fewer, every epoch is "recent": a short run is always still improving.
    recent = max(n - still_improving_epochs, 0)
    improving = any(i is not None and i >= recent for i in (i_best_va, i_low_vl)) if has_val \
        else (i_low_tl is not None and i_low_tl >= recent)

    # Rule 1: diverged. A NaN/inf loss, or a final loss far above the run's lowest.
    bad = [epochs[i] for i in range(n)
           if not math.isfinite(tr_loss[i]) or (has_val and not math.isfinite(va_loss[i]))]
    blew_up = (i_low_tl is not None and math.isfinite(tr_loss[-1])
               and tr_loss[-1] > diverge_loss_ratio * tr_loss[i_low_tl])
    if status == "diverged" or bad or blew_up:
        verdict = "diverged"
    elif not final_tr >= underfit_train_acc:  # also catches a NaN train acc
        verdict = "still improving" if improving else "underfitting"
    elif gap is not None and gap >= overfit_gap:
        verdict = "overfitting"
    else:
        verdict = "good fit"

    d = {
        "verdict": verdict,
        "epochs": n,
        "last_epoch": epochs[-1],
        "final_train_acc": final_tr,
        "final_val_acc": final_va if has_val else None,
        "best_train_acc": tr_acc[i_best_tr] if i_best_tr is not None else None,
        "best_val_acc": va_acc[i_best_va] if i_best_va is not None else None,
        "best_val_epoch": epochs[i_best_va] if i_best_va is not None else None,
        "gap": gap,  # final train acc - final val acc, a fraction
        "gap_pts": 100 * gap if gap is not None else None,  # the same in percentage points
        "lowest_val_loss": va_loss[i_low_vl] if i_low_vl is not None else None,
        "lowest_val_loss_epoch": epochs[i_low_vl] if i_low_vl is not None else None,
        "val_still_improving": improving,
        "thresholds": {"underfit_train_acc": underfit_train_acc, "overfit_gap": overfit_gap,
                       "still_improving_epochs": still_improving_epochs,
                       "diverge_loss_ratio": diverge_loss_ratio},
    }
    d = {k: finite_or_none(v) for k, v in d.items()}  # JSON has no NaN: a missing number is null
    d["hint"] = _hint(d, bad, blew_up, tr_loss, i_low_tl, epochs)
    return d


def _hint(d: dict[str, Any], bad: list[int], blew_up: bool, tr_loss: list[float],
          i_low_tl: int | None, epochs: list[int]) -> str:
    """One line: the verdict, the numbers that decided it, and what to try."""
    v = d["verdict"]
    if v == "diverged":
        if bad:
            why = f"loss became NaN/inf at epoch {bad[0]}"
        elif blew_up and i_low_tl is not None:
            why = (f"train loss rose from {tr_loss[i_low_tl]:.3g} (epoch {epochs[i_low_tl]}) "
                   f"to {tr_loss[-1]:.3g} (epoch {epochs[-1]})")
        else:
            why = f"the run stopped on a NaN/inf loss after epoch {epochs[-1]}"
        return f"diverged: {why}: {ADVICE[v]}"

    of = f"of {d['last_epoch']}"
    if d["gap"] is None:  # no val split: judge train only
        acc = f"train {_pct(d['final_train_acc'])} (no val split)"
        where = ""
    else:
        acc = (f"train {_pct(d['final_train_acc'])} vs val {_pct(d['final_val_acc'])} "
               f"(gap {d['gap_pts']:.1f} pts)")
        where = (f", val loss lowest at epoch {d['lowest_val_loss_epoch']} {of}"
                 if d["lowest_val_loss_epoch"] is not None else "")
    advice = ADVICE[v]
    if v == "good fit" and d["val_still_improving"]:
        what = "val was still improving" if d["gap"] is not None else "train loss was still falling"
        advice = f"{what}: more epochs may help"
    elif v == "overfitting" and d["val_still_improving"]:
        advice = "try augmentation or more weight decay (val was still improving at the end)"
    elif v == "underfitting":
        advice = f"val stopped improving: {advice}"
    return f"{v}: {acc}{where}: {advice}"


def fit_text(d: Mapping[str, Any] | None, markdown: bool = False) -> str:
    """The diagnosis as a few lines: the hint, then the numbers. ``markdown`` for TensorBoard."""
    if d is None:
        return "fit: no completed epoch to diagnose"
    lines = [d["hint"]]
    if "final_train_acc" in d:
        lines.append(f"train acc: final {_pct(d['final_train_acc'])}, best {_pct(d['best_train_acc'])}")
        if d["final_val_acc"] is not None:
            lines.append(f"val acc: final {_pct(d['final_val_acc'])}, best {_pct(d['best_val_acc'])} "
                         f"(epoch {d['best_val_epoch']})")
            lines.append(f"gap (final train - final val): {d['gap_pts']:.1f} pts "
                         f"(overfitting at >= {100 * d['thresholds']['overfit_gap']:.1f})")
            if d["lowest_val_loss"] is not None:
                lines.append(f"val loss: lowest {d['lowest_val_loss']:.4f} at epoch "
                             f"{d['lowest_val_loss_epoch']} of {d['last_epoch']}")
        n = d["thresholds"]["still_improving_epochs"]
        lines.append(f"val still improving (a best in the last {n} epochs): "
                     f"{'yes' if d['val_still_improving'] else 'no'}")
    if d.get("imbalanced"):  # an imbalanced train split (cnnlab/recipes/imbalance.py): accuracy is not enough
        im = d["imbalanced"]
        lines.append(f"imbalanced train split: test macro-F1 {_pct(im['test_macro_f1'])}, worst class "
                     f"{im['worst_class']['class']} (F1 {_pct(im['worst_class']['f1'])})")
    if markdown:
        # TensorBoard renders text as Markdown: bold verdict, one bullet per number.
        head, *rest = lines
        return "\n".join([f"**{head}**", "", *(f"- {line}" for line in rest)])
    return "\n".join(lines)
