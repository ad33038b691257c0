"""Which differences in a sweep report are real: intervals and paired tests on per-image predictions.

For runs tested on the same split (the same images, the same labels, from each run's
test_report/predictions.csv.gz):

- a 95% Wilson interval per accuracy (``scipy.stats.binomtest(...).proportion_ci``);
- McNemar's exact test of each run against the reference (the best run, or ``--against``):
  only the discordant images count, b (the reference right, the run wrong) and c (the
  reverse); under "no difference" b ~ Binomial(b + c, 1/2), so the two-sided exact p is
  ``scipy.stats.binomtest(b, b + c, 0.5)``;
- Holm's step-down correction across those comparisons (written here, five lines: scipy's
  ``false_discovery_control`` does Benjamini-Hochberg/-Yekutieli, a false-discovery-rate
  control, not Holm's family-wise bound, and statsmodels is not a dependency);
- a run whose Holm-adjusted p is >= 0.05 is *tied* with the reference;
- seed groups: mean, sample std and a Student-t interval (``scipy.stats.t``).

Plain numbers in, plain numbers out; scipy is imported inside the functions.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALPHA = 0.05  # the family-wise error rate of the "worse than the reference" calls


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials."""
    from scipy.stats import binomtest

    if n == 0:
        return (math.nan, math.nan)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down): the i-th smallest p times (m - i), made monotone, <= 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None, float | None]:
    """(mean, sample std, low, high) of ``values``: the Student-t interval of the mean (None below 2 values)."""
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


# --------------------------------------------------------------------------- per-image predictions
@dataclass
class Predictions:
    """One run's test predictions, sorted by image index."""

    index: np.ndarray       # (N,) int64: the image's position in the split
    label: np.ndarray       # (N,) int64
    prediction: np.ndarray  # (N,) int64

    @property
    def correct(self) -> np.ndarray:
        return self.prediction == self.label

    def same_split(self, other: Predictions) -> bool:
        return np.array_equal(self.index, other.index) and np.array_equal(self.label, other.label)


def read_predictions(path: Path) -> Predictions | None:
    """predictions.csv.gz (cnnlab/evaluation/report.py); None when missing or unreadable."""
    try:
        with gzip.open(path, "rt", newline="") as f:
            rows = [(int(r["index"]), int(r["label"]), int(r["prediction"])) for r in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    a = np.array(rows, dtype=np.int64).reshape(-1, 3)
    a = a[np.argsort(a[:, 0], kind="stable")]
    return Predictions(a[:, 0], a[:, 1], a[:, 2])


# --------------------------------------------------------------------------- a split's comparison
@dataclass
class Paired:
    """One run on a shared split, against the reference run."""

    name: str
    correct: int
    n: int
    ci: tuple[float, float]
    b: int = 0           # images the reference got right and this run wrong
    c: int = 0           # images this run got right and the reference wrong
    p: float | None = None       # McNemar's exact p (None: the reference itself)
    p_holm: float | None = None  # Holm-adjusted across the comparisons
    verdict: str = "reference"   # reference | tied | worse | better

    @property
    def acc(self) -> float:
        return self.correct / self.n if self.n else math.nan


def compare_split(named: Sequence[tuple[str, Predictions]], reference: int = 0) -> list[Paired]:
    """Every run against ``named[reference]`` (runs on one split): Wilson intervals, McNemar's
    exact test, Holm across the comparisons. ``verdict``: tied (adjusted p >= ALPHA), else worse or
    better than the reference by the sign of c - b."""
    ref = named[reference][1].correct
    out = []
    for name, pr in named:
        k, n = int(pr.correct.sum()), len(pr.label)
        out.append(Paired(name, k, n, wilson(k, n)))
    others = [i for i in range(len(named)) if i != reference]
    for i in others:
        mine = named[i][1].correct
        out[i].b, out[i].c = int((ref & ~mine).sum()), int((~ref & mine).sum())
        out[i].p = mcnemar_exact(out[i].b, out[i].c)
    for i, adj in zip(others, holm([out[i].p for i in others]), strict=True):
        out[i].p_holm = adj
        out[i].verdict = "tied" if adj >= ALPHA else ("worse" if out[i].b > out[i].c else "better")
    return out


def disagreement_by_class(a: Predictions, b: Predictions) -> dict[int, tuple[int, int, int]]:
    """Per class label: (images where exactly one of the two runs is right, a's only, b's only)."""
    ca, cb = a.correct, b.correct
    out = {}
    for k in np.unique(a.label).tolist():
        m = a.label == k
        a_only, b_only = int((ca & ~cb & m).sum()), int((~ca & cb & m).sum())
        out[int(k)] = (a_only + b_only, a_only, b_only)
    return out


def fmt_p(p: float | None) -> str:
    """p = 0.41, p = 0.003, p < 0.001."""
    if p is None:
        return ""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.01 else f"p = {p:.2f}"


def headline(paired: Sequence[Paired], improving: int | None = None, total: int | None = None) -> str:
    """One sentence: who is tied with the reference, who is worse (or better), with Holm's p;
    and how many runs were still improving (then the ranking may change)."""
    ref = next(p for p in paired if p.verdict == "reference")
    tied = [p for p in paired if p.verdict == "tied"]
    parts = []
    if tied:
        ps = ", ".join(fmt_p(p.p_holm) for p in tied)
        parts.append(f"{_names([ref.name, *(p.name for p in tied)])} are tied ({ps})")
    elif not any(p.verdict == "better" for p in paired):
        parts.append(f"{ref.name} is ahead of every other run")
    for verdict in ("worse", "better"):
        group = [p for p in paired if p.verdict == verdict]
        if group:
            verb = "is" if len(group) == 1 else "are"
            parts.append(f"{_names([p.name for p in group])} {verb} {verdict} than {ref.name} "
                         f"({', '.join(fmt_p(p.p_holm) for p in group)})")
    sentence = "; ".join(parts)
    if improving and total:
        sentence += (f"; {improving} of {total} runs were still improving, so the ranking may change "
                     "with more epochs")
    return sentence + "."


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
