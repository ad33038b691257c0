"""Eager vs exported logits on the same real images: the export is good only if they agree."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MAX_ABS_DIFF = 1e-4  # fp32 logits; the bound


@dataclass
class Parity:
    n_images: int
    max_abs_diff: float  # over every logit of every image
    top1_agreement: float  # fraction of images whose arg-max class is the same
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"max abs diff {self.max_abs_diff:.3g} (bound {MAX_ABS_DIFF:g}), top-1 agreement "
                f"{100 * self.top1_agreement:.1f}% on {self.n_images} images")


def compare(eager: Any, exported: Any, bound: float = MAX_ABS_DIFF) -> Parity:
    """``eager``, ``exported``: logits (N, K). Ok when every |difference| <= bound and every
    top-1 class agrees. A NaN anywhere is a failure (NaN compares False)."""
    import numpy as np

    a, b = np.asarray(eager, np.float64), np.asarray(exported, np.float64)
    if a.shape != b.shape:
        return Parity(len(a), float("inf"), 0.0, False)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    agree = float(np.mean(a.argmax(1) == b.argmax(1))) if len(a) else 1.0
    ok = bool(diff <= bound) and agree == 1.0
    return Parity(len(a), diff, agree, ok)
