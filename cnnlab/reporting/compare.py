"""The sweep report: one row per run, grouped seeds, and two plots.

``python -m cnnlab.compare PATH...`` finds every run folder under the given paths
(a folder holding ``summary.json`` or ``.hydra/``), reads only the per-run files
(summary.json, metrics.csv, .hydra/overrides.yaml, .hydra/config.yaml when the
summary lacks a field) and writes ``comparison.csv``, ``comparison.md`` and
``comparison.png``. The multirun callback (cnnlab/reporting/callbacks.py) calls the same
code on the sweep folder when a sweep ends.

A report is most needed when something went wrong, so nothing here raises on a
bad run folder: a failed, diverged, interrupted or still-running run keeps the
status its summary says, and a run whose summary.json is missing or garbled (it
died before writing one, or is being written) is shown as ``incomplete``.

``FIELDS`` lists the run's fields once: where summary.json keeps each, its CSV
column, its table header and how it is shown. A missing value is None everywhere
(an empty cell), never a placeholder number.

This module never imports torch (it only reads files), and matplotlib only when
a plot is drawn, so a report over 200 runs takes well under a second plus the plot.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cnnlab.errors import ConfigError, run_main
from cnnlab.lifecycle.record import read_summary


@dataclass(frozen=True)
class Field:
    """One field of a run: a ``Run`` attribute and a comparison.csv column, of that name."""

    name: str
    header: str | None  # the runs table's column; None: in the CSV only
    key: str | None = None  # where summary.json keeps it ("fit.verdict": inside "fit"); None: not there
    kind: type = float  # int, float or str: anything else read is None
    how: str = ""  # how fmt() shows it in a table


# The fields in comparison.csv's column order. Accuracies are fractions in [0, 1].
FIELDS = (
    Field("model", "model", "model", str),
    Field("dataset", "dataset", "dataset", str),
    Field("overrides", "overrides"),  # .hydra/overrides.yaml, space-separated
    Field("params", "params", "params", int, "si"),
    Field("macs", "MACs", "macs", int, "si"),
    Field("best_val_acc", "best val acc", "best_val_acc", float, "%"),
    Field("test_acc", "test acc", "test_acc", float, "%"),
    Field("best_epoch", "best epoch", "best_epoch", int),
    Field("epochs", "epochs", "epochs_completed", int),
    Field("train_seconds", "train s", "train_seconds", float, ".1f"),
    Field("images_per_second", "images/s", "images_per_second", float, ".0f"),
    Field("status", "status", "status", str),
    Field("fit", "fit", "fit.verdict", str),
    Field("error", None, "error", str),
    Field("run_dir", None),  # relative to the report's folder when inside it
)
COLUMNS = [f.name for f in FIELDS]
FIELD = {f.name: f for f in FIELDS}
# The seed-group table's numbers: the mean over the group (± the sample std for accuracies).
GROUP_STATS = ("params", "best_val_acc", "test_acc", "train_seconds")
# (field, axis label, whether a larger value is the better one)
PARETO_AXES = (("params", "parameters", False), ("macs", "MACs per image", False),
               ("images_per_second", "training images/s", True))
MAX_PER_CLASS_RUNS = 12

OK_STATUS = "completed"  # any other status: the job did not finish well (the multirun exits 1)
INCOMPLETE = "incomplete"
REPORT_FILES = ("comparison.csv", "comparison.md", "comparison.png")
# Folders inside a run folder that never hold another run: skipping them keeps the
# walk over outputs/ fast (tb/ and checkpoints/ can hold many files).
_SKIP_DIRS = {".hydra", "tb", "checkpoints", ".submitit", "__pycache__", ".git", "eval", "predict",
              "test_report"}
_SEED_KEYS = ("seed", "+seed", "++seed")


class Run(SimpleNamespace):
    """One run folder: an attribute per ``FIELDS`` name (None when absent from disk), and
    ``seed``, ``curve`` ((epoch, val_acc) pairs of metrics.csv) and ``per_class``
    ({class: test accuracy})."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(**dict.fromkeys(COLUMNS), seed=None, per_class=None)
        self.run_dir, self.overrides, self.status = run_dir, [], INCOMPLETE
        self.curve: list[tuple[int, float]] = []

    @property
    def ok(self) -> bool:
        return self.status == OK_STATUS

    @property
    def group_key(self) -> tuple[str, str, str]:
        """Runs that differ only in their seed share this key."""
        rest = [o for o in self.overrides if o.split("=", 1)[0] not in _SEED_KEYS]
        return (self.model or "?", self.dataset or "?", " ".join(rest))

    def row(self, base: Path | None = None) -> dict[str, Any]:
        """This run as one comparison.csv row (run_dir relative to ``base`` when inside it)."""
        row = {name: getattr(self, name) for name in COLUMNS}
        row["overrides"] = " ".join(self.overrides)
        if base is not None:
            try:
                row["run_dir"] = str(self.run_dir.resolve().relative_to(base.resolve())) or "."
            except ValueError:
                pass
        return row


@dataclass
class Group:
    """Runs with the same configuration except the seed, aggregated."""

    model: str
    dataset: str
    overrides: str
    runs: list[Run]

    def stat(self, attr: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std or None, n) of a numeric field over the runs that have it."""
        vals = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        if not vals:
            return None, None, 0
        mean, std = mean_std(vals)
        return mean, std, len(vals)


@dataclass
class Report:
    """Every run found, best first, and the seed groups of two or more runs."""

    runs: list[Run]
    groups: list[Group]

    @property
    def failed(self) -> list[Run]:
        """Runs that did not complete: failed, diverged, interrupted, running or incomplete."""
        return [r for r in self.runs if not r.ok]


# --------------------------------------------------------------------------- reading
def mean_std(vals: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (None for one value); plain floats, not statistics' exact fractions."""
    n = len(vals)
    m = sum(vals) / n
    if n < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))


def _num(v: Any, kind: type = float) -> Any:
    """``v`` as an int/float, or None for null, NaN, text and other junk."""
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return int(x) if kind is int else x


def _read(summary: dict[str, Any], f: Field) -> Any:
    """Field ``f`` from summary.json, as its kind, or None when absent or junk."""
    v: Any = summary
    for part in (f.key or "").split("."):
        v = v.get(part) if isinstance(v, dict) else None
    if f.kind is str:
        return v if isinstance(v, str) and v else None
    return _num(v, f.kind)


def _load_yaml(path: Path) -> Any:
    """Parse a small YAML file with libyaml when present (10x faster), else pure Python."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as f:
        return yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder at or under ``paths`` (one with summary.json or .hydra/), sorted.

    A missing path raises FileNotFoundError; the walk does not descend into a run
    folder's own tb/, checkpoints/ or .hydra/.
    """
    found: dict[Path, None] = {}  # ordered set: the same folder given twice is one run
    for p in paths:
        root = Path(p)
        if not root.exists():
            raise FileNotFoundError(f"{str(root)!r}: no such file or folder")
        if root.is_file():  # e.g. a summary.json named directly
            root = root.parent
        for dirpath, dirnames, filenames in os.walk(root):
            if "summary.json" in filenames or ".hydra" in dirnames:
                found[Path(dirpath)] = None
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    return sorted(found)


def read_metrics(path: Path) -> tuple[list[tuple[int, float]], bool]:
    """(epoch, val_acc) pairs from metrics.csv, and whether every row parsed.

    A half-written last row (the run is writing it, or died writing it) is skipped,
    not fatal.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], False
    curve: list[tuple[int, float]] = []
    clean = True
    for row in csv.DictReader(io.StringIO(text)):
        epoch, acc = _num(row.get("epoch"), int), _num(row.get("val_acc"))
        if epoch is None or acc is None:
            clean = False
            continue
        curve.append((epoch, acc))
    return curve, clean


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read one run folder into a Run; never raises for a bad or partial folder."""
    d = Path(run_dir)
    run = Run(d)
    notes: list[str] = []
    summary: dict[str, Any] = {}
    try:
        loaded = read_summary(d)
    except (OSError, ValueError) as e:
        notes.append(f"summary.json unreadable ({type(e).__name__})")
    else:
        if loaded is None:
            notes.append("no summary.json (the job never started training, or is starting)")
        summary = loaded or {}
    for f in FIELDS:
        if f.key:
            setattr(run, f.name, _read(summary, f))
    run.status = run.status or INCOMPLETE
    # Summaries written before "no best epoch yet" was null say -1 and epoch 0.
    if run.best_val_acc is not None and run.best_val_acc < 0:
        run.best_val_acc = None
    run.best_epoch = run.best_epoch or None

    try:
        ov = _load_yaml(d / ".hydra" / "overrides.yaml") if (d / ".hydra" / "overrides.yaml").exists() else []
        run.overrides = [str(o) for o in ov] if isinstance(ov, list) else []
    except Exception:  # noqa: BLE001 - any YAML error: show the run without overrides
        notes.append("overrides.yaml unreadable")
    # Only .hydra/config.yaml knows the seed, and the model/dataset when there's no summary.
    cfg_path = d / ".hydra" / "config.yaml"
    seed_ov = [o.split("=", 1)[1] for o in run.overrides if o.split("=", 1)[0] in _SEED_KEYS]
    if seed_ov:
        run.seed = _num(seed_ov[-1], int)
    if (run.model is None or run.dataset is None or run.seed is None) and cfg_path.exists():
        try:
            cfg = _load_yaml(cfg_path) or {}
            run.model = run.model or (cfg.get("model") or {}).get("name")
            run.dataset = run.dataset or (cfg.get("dataset") or {}).get("name")
            if run.seed is None:
                run.seed = _num(cfg.get("seed"), int)
        except Exception:  # noqa: BLE001
            notes.append("config.yaml unreadable")

    metrics_path = d / "metrics.csv"
    if metrics_path.exists():
        run.curve, clean = read_metrics(metrics_path)
        if not clean:
            notes.append("metrics.csv has unreadable rows")
            if run.ok:
                run.status = INCOMPLETE  # a finished run whose history is damaged
    elif run.ok and (run.epochs or 0) > 0:
        notes.append("metrics.csv missing")
        run.status = INCOMPLETE
    if run.epochs is None and run.curve:
        run.epochs = len(run.curve)
    if run.best_val_acc is None and run.curve:
        run.best_epoch, run.best_val_acc = max(run.curve, key=lambda ea: ea[1])
    run.per_class = read_per_class(d, summary, run.dataset)
    if notes:
        run.error = "; ".join(([run.error] if run.error else []) + notes)
    return run


def _per_class_rows(rows: Any) -> dict[str, float] | None:
    """{class: accuracy} from per-class rows (dicts with ``class`` and ``accuracy``), or None."""
    if not isinstance(rows, list):
        return None
    out = {}
    for r in rows:
        if isinstance(r, dict) and r.get("class") is not None:
            acc = _num(r.get("accuracy"))
            if acc is not None:
                out[str(r["class"])] = acc
    return out or None


def read_per_class(d: Path, summary: dict[str, Any], dataset: str | None) -> dict[str, float] | None:
    """A run's per-class test accuracy: summary.json's ``test_per_class``, else a per_class.csv.

    The csv is the one in summary.json's ``test_report`` folder (what training writes),
    else the first ``cnnlab.evaluate`` of the run's own test split (eval/test_<dataset>/).
    """
    found = _per_class_rows(summary.get("test_per_class"))
    if found:
        return found
    candidates = []
    if isinstance(summary.get("test_report"), str):
        rep = Path(summary["test_report"])
        candidates.append((rep if rep.is_absolute() else d / rep) / "per_class.csv")
    if dataset:
        candidates.append(d / "eval" / f"test_{dataset}" / "per_class.csv")
    for c in candidates:
        try:
            with open(c, newline="") as f:
                found = _per_class_rows(list(csv.DictReader(f)))
        except OSError:
            continue
        if found:
            return found
    return None



def _sort_key(r: Run) -> tuple:
    # Best test accuracy first; runs without one after, by val accuracy; then the
    # runs that did not complete (their test accuracy, if any, is not comparable).
    return (not r.ok, r.test_acc is None, -(r.test_acc or 0.0), -(r.best_val_acc or 0.0), str(r.run_dir))


def build_report(paths: Iterable[str | os.PathLike]) -> Report:
    """Find and read every run under ``paths``; sort them; group repeated seeds."""
    runs = sorted((read_run(d) for d in find_run_dirs(paths)), key=_sort_key)
    by_key: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.group_key, []).append(r)
    groups = [Group(k[0], k[1], k[2], rs) for k, rs in by_key.items() if len(rs) > 1]
    # Best mean test accuracy first; groups without one last.
    groups.sort(key=lambda g: (g.stat("test_acc")[0] is None, -(g.stat("test_acc")[0] or 0.0)))
    return Report(runs=runs, groups=groups)


# --------------------------------------------------------------------------- writing
def fmt(v: Any, how: str = "") -> str:
    """The one number formatter: a table cell, a label or an axis tick; "" for None.

    ``how``: "%" (0.9 -> 90.00%), "si" (5400000 -> 5.40M, 350 -> 350), "tick" (an axis
    tick: 5.4M, 0.5), a format spec (".1f"), or "" (str).
    """
    if v is None:
        return ""
    if how == "%":
        return f"{100 * v:.2f}%"
    if how in ("si", "tick"):
        spec = ".3g" if how == "tick" else ".2f"
        for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:{spec}}{unit}"
        return f"{v:{'.3g' if how == 'tick' else '.0f'}}"
    return format(v, how)


def _cell(s: Any) -> str:
    # A pipe or newline inside a cell would break the Markdown table.
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def common_overrides(runs: Sequence[Run]) -> list[str]:
    """The overrides every run has (with two runs or more), in the first run's order."""
    if len(runs) < 2:
        return []
    shared = set(runs[0].overrides).intersection(*(r.overrides for r in runs[1:]))
    return [o for o in runs[0].overrides if o in shared]


def runs_table(report: Report) -> str:
    """The per-run Markdown table (also what the callback prints): the FIELDS with a header.

    The overrides column leaves out those that every run shares (the sweep's fixed
    settings), which ``render_markdown`` states once above the table.
    """
    common = set(common_overrides(report.runs))
    shown = [f for f in FIELDS if f.header]
    rows = []
    for i, r in enumerate(report.runs, 1):
        row = r.row() | {"overrides": " ".join(o for o in r.overrides if o not in common)}
        rows.append([i, *(fmt(row[f.name], f.how) for f in shown)])
    return _md_table(["#", *(f.header for f in shown)], rows)


def groups_table(report: Report) -> str:
    """Mean ± sample std over the seeds of each repeated configuration."""
    common = set(common_overrides(report.runs))
    stats = [FIELD[name] for name in GROUP_STATS]
    rows = []
    for g in report.groups:
        seeds = ",".join(str(s) for s in sorted(r.seed for r in g.runs if r.seed is not None))
        rest = " ".join(o for o in g.overrides.split(" ") if o and o not in common)
        cells = []
        for f in stats:
            mean, std, _ = g.stat(f.name)
            with_std = f.how == "%" and std is not None
            cells.append(f"{100 * mean:.2f} ± {fmt(std, '%')}" if with_std else fmt(mean, f.how))
        rows.append([g.model, g.dataset, rest, f"{sum(r.ok for r in g.runs)}/{len(g.runs)} completed",
                     seeds, *cells])
    return _md_table(["model", "dataset", "overrides (without seed)", "runs", "seeds",
                      *(f.header for f in stats)], rows)


def per_class_table(report: Report) -> str:
    """Rows = classes, columns = runs (the best first), cells = test accuracy of that class."""
    runs = [r for r in report.runs if r.ok and r.per_class][:MAX_PER_CLASS_RUNS]
    if not runs:
        return ""
    labels = _labels(runs)
    classes: list[str] = []
    for r in runs:
        classes += [c for c in r.per_class if c not in classes]
    rows = []
    for c in classes:
        accs = [r.per_class.get(c) for r in runs]
        best = max((a for a in accs if a is not None), default=None)
        winners = [labels[id(r)] for r, a in zip(runs, accs, strict=True) if a is not None and a == best]
        cells = [f"**{fmt(a, '%')}**" if a == best and len(runs) > 1 else fmt(a, "%") for a in accs]
        rows.append([c, *cells, ", ".join(winners)])
    header = ["class", *[f"#{report.runs.index(r) + 1} {labels[id(r)]}" for r in runs], "best"]
    return _md_table(header, rows)


def pareto_front(points: Sequence[tuple[float, float]], larger_x_better: bool = False) -> list[int]:
    """Indices of the (x, accuracy) points no other point beats on both, by increasing cost.

    A point is on the front when every point at least as cheap (x no larger, or no
    smaller when a larger x is better) has a lower accuracy.
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0] if larger_x_better else points[i][0],
                                                       -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_text(report: Report) -> str:
    """One line per cost axis: the completed runs on its Pareto front, cheapest first."""
    labels = _labels(report.runs)
    lines = []
    for attr, name, larger in PARETO_AXES:
        runs = [r for r in report.runs if r.ok and r.test_acc is not None and getattr(r, attr) is not None]
        front = [runs[i] for i in pareto_front([(getattr(r, attr), r.test_acc) for r in runs], larger)]
        if front:
            lines.append(f"- test accuracy vs {name}: " + " → ".join(
                f"{labels[id(r)]} ({fmt(getattr(r, attr), FIELD[attr].how)}, {fmt(r.test_acc, '%')})"
                for r in front))
    return "\n".join(lines)


def render_markdown(report: Report, title: str = "Comparison") -> str:
    """comparison.md: counts by status, the runs table, the seed groups, the errors."""
    counts: dict[str, int] = {}
    for r in report.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    parts = [f"# {title}", "",
             f"{len(report.runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
             "Sorted by test accuracy (the best checkpoint on the test split); runs that did "
             "not complete come last."]
    common = common_overrides(report.runs)
    if common:
        parts.append(f"Overrides shared by every run: `{' '.join(common)}`.")
    parts += ["", runs_table(report), ""]
    if report.groups:
        parts += ["## Repeated seeds (mean ± std)", "", groups_table(report), ""]
    per_class = per_class_table(report)
    if per_class:
        parts += ["## Test accuracy per class", "",
                  "Each class's share of test images predicted right, per run (the best test "
                  f"accuracies first, at most {MAX_PER_CLASS_RUNS} runs); **bold**: the best run for that class.", "",
                  per_class, ""]
    fronts = pareto_text(report)
    if fronts:
        parts += ["## Pareto fronts", "",
                  "Completed runs that no other run beats on both test accuracy and the cost "
                  "(fewer params, fewer MACs, more images/s); comparison.png marks them.", "", fronts, ""]
    if report.failed:
        parts += ["## Runs that did not complete", ""]
        for r in report.failed:
            parts.append(f"- `{r.run_dir}`: **{r.status}**" + (f": {_cell(r.error)}" if r.error else ""))
        parts.append("")
    return "\n".join(parts)


def console_text(report: Report) -> str:
    """What the CLI and the multirun callback print: the tables, without the error list."""
    common = common_overrides(report.runs)
    parts = [f"Overrides shared by every run: {' '.join(common)}\n"] if common else []
    parts.append(runs_table(report))
    if report.groups:
        parts.append("\nRepeated seeds (mean ± std):\n" + groups_table(report))
    return "\n".join(parts)


def write_csv(report: Report, path: Path) -> None:
    base = path.parent
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in report.runs:
            w.writerow({k: ("" if v is None else v) for k, v in r.row(base).items()})


def _short_override(o: str) -> str:
    """``optimizer.lr=0.008096384026619585`` -> ``lr=0.0081``: a legend label, not a record."""
    k, _, v = o.partition("=")
    try:
        f = float(v)
        v = v if len(v) <= 6 or f.is_integer() else f"{f:.2g}"
    except ValueError:
        pass
    return f"{k.rsplit('.', 1)[-1]}={v}"


def _labels(runs: list[Run]) -> dict[int, str]:
    """A short legend label per run: the model plus the overrides that vary across runs."""
    maps = [dict(o.partition("=")[::2] for o in r.overrides) for r in runs]
    keys = set().union(*maps) if maps else set()
    # A key varies if two runs differ in it (absent counts as a value of its own).
    varying = {k for k in keys if len({m.get(k) for m in maps}) > 1} - {"model", *_SEED_KEYS}
    out = {}
    for r in runs:
        extra = [_short_override(o) for o in r.overrides if o.partition("=")[0] in varying]
        out[id(r)] = " ".join([r.model or r.run_dir.name, *extra])
    return out


def _acc_ylim(ax: Any, values: list[float]) -> None:
    """An accuracy axis around the data, at least 0.1 tall, inside [0, 1]."""
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = max(0.05, (0.1 - (hi - lo)) / 2)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))


def _cost_panel(ax: Any, report: Report, series: dict[tuple, list[Run]], colors: list[str],
                labels: dict[int, str], attr: str, name: str, larger_better: bool) -> None:
    """Test accuracy against a cost (params, MACs, images/s), one point per series, Pareto front drawn."""
    from matplotlib.ticker import FuncFormatter

    # One scatter call for all points: per-point artists are what makes matplotlib
    # slow, and the report should add little to a sweep.
    xs, ys, errs, cols, oks = [], [], [], [], []
    for i, rs in enumerate(series.values()):
        done = [r for r in rs if r.test_acc is not None and (getattr(r, attr) or 0) > 0]
        if not done:
            continue
        x = mean_std([getattr(r, attr) for r in done])[0]
        y, yerr = mean_std([r.test_acc for r in done])
        xs.append(x)
        ys.append(y)
        errs.append(yerr or 0.0)
        cols.append(colors[i])
        oks.append(rs[0].ok)
        if len(series) <= 30:
            ax.annotate(labels[id(rs[0])], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    n_points = len(xs)
    if n_points:
        ax.scatter(xs, ys, c=cols, zorder=3)
        for x, y, e, col in zip(xs, ys, errs, cols, strict=True):
            if e:  # seed groups only: few, so one errorbar call each is cheap
                ax.errorbar([x], [y], yerr=[e], fmt="none", ecolor=col, capsize=3)
        # The Pareto front over the completed series: a staircase through its points.
        done = [i for i in range(n_points) if oks[i]]
        front = [done[j] for j in pareto_front([(xs[i], ys[i]) for i in done], larger_better)]
        if front:
            fx, fy = [xs[i] for i in front], [ys[i] for i in front]
            ax.step(fx, fy, where="post", color="k", lw=1, alpha=0.6, zorder=2, label="Pareto front")
            ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="k", zorder=4)
            ax.legend(fontsize=7, loc="lower right")
    better = "higher is better" if larger_better else "lower is better"
    ax.set(xlabel=f"{name} ({better})", ylabel="test accuracy", title=f"Test accuracy vs {name}")
    if n_points:
        ax.set_xscale("log")
        ax.margins(x=0.15)  # room for the labels of the end points
        # "5.4M" ticks: readable, and plain text (log-axis mathtext labels are slow to draw).
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v, "tick")))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _pos: fmt(v, "tick") if ax.get_xlim()[1] / ax.get_xlim()[0] < 10 else ""))
    _acc_ylim(ax, [r.test_acc for r in report.runs if r.test_acc is not None and getattr(r, attr) is not None])
    ax.grid(alpha=0.3)
    n_missing = sum(r.test_acc is None or getattr(r, attr) is None for r in report.runs)
    if n_missing:
        ax.text(0.01, 0.01, f"{n_missing} run(s) without a test accuracy or {name} not shown",
                transform=ax.transAxes, fontsize=7, color="gray")


def write_plot(report: Report, path: Path, max_legend: int = 15) -> None:
    """comparison.png: val accuracy per epoch; test accuracy against params, MACs and images/s.

    Repeated seeds are drawn once, as their mean with a ±std band / error bar; each
    cost panel marks the Pareto front of the completed runs (a black staircase and
    rings: no other run is both cheaper and more accurate).
    """
    # The object API on an Agg canvas: no pyplot (slow to import, and it would pick a
    # GUI backend on a desktop), no display needed, no global figure state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels = _labels(report.runs)
    # Series: one per seed group (key) or per single run.
    # Completed and unfinished runs of one configuration are drawn apart (the latter
    # dashed): a mean over a finished and a crashed run would describe neither.
    series: dict[tuple, list[Run]] = {}
    for r in report.runs:
        series.setdefault((r.group_key, r.ok), []).append(r)

    fig = Figure(figsize=(13, 10))
    FigureCanvasAgg(fig)
    (ax_c, ax_p), (ax_m, ax_t) = fig.subplots(2, 2)
    # Fixed margins: tight_layout would measure every text extent (seconds for 200 runs).
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.06, top=0.96, wspace=0.18, hspace=0.25)
    n_lines = 0
    # One colour per series, the same in both panels.
    colors = [f"C{i % 10}" for i in range(len(series))]
    for i, rs in enumerate(series.values()):
        curves = [dict(r.curve) for r in rs if r.curve]
        if not curves:
            continue
        label = labels[id(rs[0])] + (f" (n={len(rs)})" if len(rs) > 1 else "")
        epochs = sorted(set().union(*curves))
        means, stds = [], []
        for e in epochs:
            m, s = mean_std([c[e] for c in curves if e in c])
            means.append(m)
            stds.append(s or 0.0)
        (line,) = ax_c.plot(epochs, means, marker="o" if len(epochs) < 30 else None, ms=3, label=label,
                            ls="-" if rs[0].ok else "--", color=colors[i])
        if len(curves) > 1:
            lo = [m - s for m, s in zip(means, stds, strict=True)]
            hi = [m + s for m, s in zip(means, stds, strict=True)]
            ax_c.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2)
        n_lines += 1
    ax_c.set(xlabel="epoch", ylabel="val accuracy", title="Validation accuracy per epoch")
    ax_c.xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs_seen = [e for r in report.runs for e, _ in r.curve]
    if epochs_seen and max(epochs_seen) - min(epochs_seen) < 2:
        ax_c.set_xlim(min(epochs_seen) - 0.5, max(epochs_seen) + 0.5)
        ax_c.set_xticks(range(min(epochs_seen), max(epochs_seen) + 1))  # no 0.975-style ticks
    _acc_ylim(ax_c, [a for r in report.runs for _, a in r.curve])
    ax_c.grid(alpha=0.3)
    if 0 < n_lines <= max_legend:
        ax_c.legend(fontsize=7)

    for ax, (attr, name, larger) in zip((ax_p, ax_m, ax_t), PARETO_AXES, strict=True):
        _cost_panel(ax, report, series, colors, labels, attr, name, larger)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, pil_kwargs={"compress_level": 3})  # zlib's default 6: slower, ~same size
    os.replace(tmp, path)  # a reader never sees half a PNG


def write_report(report: Report, out_dir: str | os.PathLike, title: str = "Comparison",
                 plot: bool = True) -> list[Path]:
    """Write comparison.csv, .md and (if ``plot``) .png into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = (out / n for n in REPORT_FILES)
    write_csv(report, csv_path)
    md_path.write_text(render_markdown(report, title))
    written = [csv_path, md_path]
    if plot:
        write_plot(report, png_path)
        written.append(png_path)
    return written


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cnnlab.compare PATH... [--out DIR]``; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m cnnlab.compare",
        description="Build comparison.csv/.md/.png from run folders (a sweep folder, outputs/, "
                    "or several single runs).",
    )
    ap.add_argument("paths", nargs="+", metavar="PATH", help="run folders or folders holding them")
    ap.add_argument("--out", help="where to write the report (default: PATH when there is one, "
                                  "else the current folder)")
    ap.add_argument("--no-plot", action="store_true", help="skip comparison.png")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when any run did not complete (failed, diverged, ...)")
    ap.add_argument("--quiet", action="store_true", help="do not print the table")
    args = ap.parse_args(argv)

    try:
        report = build_report(args.paths)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    if not report.runs:
        raise ConfigError(f"no run folders (with summary.json or .hydra/) under {', '.join(args.paths)}")
    out = Path(args.out) if args.out else (Path(args.paths[0]) if len(args.paths) == 1 else Path("."))
    if out.is_file():
        out = out.parent
    files = write_report(report, out, plot=not args.no_plot)
    if not args.quiet:
        print(console_text(report))
        print("\nwrote " + ", ".join(str(f) for f in files))
    return 1 if (args.strict and report.failed) else 0


def cli() -> None:
    """The console script and ``python -m cnnlab.compare``: :func:`main` inside the one error boundary."""
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
