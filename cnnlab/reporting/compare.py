"""The sweep report: comparison.csv, .md and .png, one row per run, grouped seeds.

Read only from the per-run files (summary.json, metrics.csv, .hydra/), so it never
imports torch, and matplotlib only to draw. A report is most needed when something
went wrong, so nothing here raises on a bad run folder: a run whose summary.json is
missing or garbled is shown as ``incomplete``. A missing value is None (an empty cell).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cnnlab.errors import ConfigError, run_main
from cnnlab.lifecycle.atomic import os_error, write_atomic
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
    Field("lr_found", "lr (found)", "lr_find.lr", float, ".3g"),  # trainer.lr_find's choice
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
    """One run folder: an attribute per ``FIELDS`` name (None when absent from disk), ``seed``,
    ``curve`` ((epoch, val_acc) pairs of metrics.csv), ``per_class`` ({class: test accuracy}),
    ``class_names``, ``still_improving`` (the fit diagnosis's), ``predictions_path``
    (test_report/predictions.csv.gz, read by :meth:`predictions` on demand) and ``env``
    (summary.json's environment record, cnnlab/tracking/env.py)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(**dict.fromkeys(COLUMNS), seed=None, per_class=None, class_names=None,
                         still_improving=None, predictions_path=None, env=None)
        self.run_dir, self.overrides, self.status = run_dir, [], INCOMPLETE
        self.curve: list[tuple[int, float]] = []

    @property
    def ok(self) -> bool:
        return self.status == OK_STATUS

    def predictions(self) -> Any:
        """The test split's per-image predictions (significance.Predictions), or None; read once."""
        if "_pred" not in self.__dict__:
            from cnnlab.reporting.significance import read_predictions

            self._pred = read_predictions(self.predictions_path) if self.predictions_path else None
        return self._pred

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
            with contextlib.suppress(ValueError):
                row["run_dir"] = str(self.run_dir.resolve().relative_to(base.resolve())) or "."
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
        return (*mean_std(vals), len(vals)) if vals else (None, None, 0)


@dataclass
class Report:
    """Every run found, best first, and the seed groups of two or more runs."""

    runs: list[Run]
    groups: list[Group]
    against: Run | None = None  # ``--against``: the reference of the paired tests (else the best run)

    @property
    def failed(self) -> list[Run]:
        """Runs that did not complete: failed, diverged, interrupted, running or incomplete."""
        return [r for r in self.runs if not r.ok]


# --------------------------------------------------------------------------- reading
def mean_std(vals: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (None for one value); plain floats, not statistics' exact fractions."""
    n = len(vals)
    m = sum(vals) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1)) if n > 1 else None)


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


def _dig(data: Any, key: str, kind: type = float) -> Any:
    """``data[a][b]`` for key ``a.b``, as ``kind``, or None when absent or junk."""
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    if kind is str:
        return data if isinstance(data, str) and data else None
    return _num(data, kind)


def _load_yaml(path: Path, notes: list[str]) -> Any:
    """A small YAML file (libyaml when present: 10x faster); None, with a note, when unreadable."""
    import yaml

    if not path.exists():
        return None
    try:
        with open(path) as f:
            return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe
    except Exception:  # noqa: BLE001 - any YAML error: show the run without it
        notes.append(f"{path.name} unreadable")
        return None


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder at or under ``paths`` (one with summary.json or .hydra/), sorted; a
    missing path is a ConfigError. The walk skips a run folder's own tb/, checkpoints/, ..."""
    found: dict[Path, None] = {}  # ordered set: the same folder given twice is one run
    for p in paths:
        root = Path(p)
        if not root.exists():
            raise ConfigError(f"{str(root)!r}: no such file or folder")
        for dirpath, dirnames, filenames in os.walk(root.parent if root.is_file() else root):
            if "summary.json" in filenames or ".hydra" in dirnames:
                found[Path(dirpath)] = None
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    return sorted(found)


def read_metrics(path: Path) -> tuple[list[tuple[int, float]], bool]:
    """(epoch, val_acc) pairs from metrics.csv, and whether every row parsed (a half-written
    last row, the run writing it or killed while writing it, is skipped)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], False
    pairs = [(_num(r.get("epoch"), int), _num(r.get("val_acc"))) for r in csv.DictReader(io.StringIO(text))]
    curve = [(e, a) for e, a in pairs if e is not None and a is not None]
    return curve, len(curve) == len(pairs)


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read one run folder into a Run; never raises for a bad or partial folder."""
    d = Path(run_dir)
    run = Run(d)
    notes: list[str] = []
    try:
        loaded = read_summary(d)
    except (OSError, ValueError) as e:
        loaded = {}
        notes.append(f"summary.json unreadable ({type(e).__name__})")
    if loaded is None:
        notes.append("no summary.json (the job never started training, or is starting)")
    summary = loaded or {}
    for f in FIELDS:
        if f.key:
            setattr(run, f.name, _dig(summary, f.key, f.kind))
    run.status = run.status or INCOMPLETE
    # Summaries written before "no best epoch yet" was null say -1 and epoch 0.
    if run.best_val_acc is not None and run.best_val_acc < 0:
        run.best_val_acc = None
    run.best_epoch = run.best_epoch or None

    ov = _load_yaml(d / ".hydra" / "overrides.yaml", notes)
    run.overrides = [str(o) for o in ov] if isinstance(ov, list) else []
    seed_ov = [o.split("=", 1)[1] for o in run.overrides if o.split("=", 1)[0] in _SEED_KEYS]
    run.seed = _num(seed_ov[-1], int) if seed_ov else None
    # Only .hydra/config.yaml knows the seed, and the model/dataset when there's no summary.
    if run.model is None or run.dataset is None or run.seed is None:
        cfg = _load_yaml(d / ".hydra" / "config.yaml", notes)
        run.model = run.model or _dig(cfg, "model.name", str)
        run.dataset = run.dataset or _dig(cfg, "dataset.name", str)
        run.seed = _dig(cfg, "seed", int) if run.seed is None else run.seed

    if (d / "metrics.csv").exists():
        run.curve, clean = read_metrics(d / "metrics.csv")
        if not clean:
            notes.append("metrics.csv has unreadable rows")
    else:
        clean = not (run.ok and (run.epochs or 0) > 0)
        if not clean:
            notes.append("metrics.csv missing")
    if run.ok and not clean:
        run.status = INCOMPLETE  # a finished run whose history is damaged
    if run.epochs is None and run.curve:
        run.epochs = len(run.curve)
    if run.best_val_acc is None and run.curve:
        run.best_epoch, run.best_val_acc = max(run.curve, key=lambda ea: ea[1])
    run.per_class = read_per_class(d, summary, run.dataset)
    names = summary.get("class_names")
    run.class_names = [str(c) for c in names] if isinstance(names, list) else None
    fit = summary.get("fit")
    run.still_improving = fit.get("val_still_improving") if isinstance(fit, dict) else None
    run.env = summary.get("env") if isinstance(summary.get("env"), dict) else None
    report_dirs = [d / summary["test_report"]] if isinstance(summary.get("test_report"), str) else []
    run.predictions_path = next((p / "predictions.csv.gz" for p in [*report_dirs, d / "test_report"]
                                 if (p / "predictions.csv.gz").exists()), None)
    if notes:
        run.error = "; ".join(([run.error] if run.error else []) + notes)
    return run


def read_per_class(d: Path, summary: dict[str, Any], dataset: str | None) -> dict[str, float] | None:
    """A run's per-class test accuracy: summary.json's ``test_per_class`` rows, else a per_class.csv:
    the one in summary.json's ``test_report`` folder (what training writes), else the first
    ``cnnlab.evaluate`` of the run's own test split (eval/test_<dataset>/)."""
    sources = [summary.get("test_per_class")]
    if isinstance(summary.get("test_report"), str):
        sources.append(d / summary["test_report"] / "per_class.csv")
    if dataset:
        sources.append(d / "eval" / f"test_{dataset}" / "per_class.csv")
    for rows in sources:
        if isinstance(rows, Path):
            with contextlib.suppress(OSError), open(rows, newline="") as f:
                rows = list(csv.DictReader(f))
        accs = {str(r["class"]): _num(r.get("accuracy")) for r in (rows if isinstance(rows, list) else [])
                if isinstance(r, dict) and r.get("class") is not None}
        if any(a is not None for a in accs.values()):
            return {c: a for c, a in accs.items() if a is not None}
    return None


def _sort_key(r: Run) -> tuple:
    # Best test accuracy first; runs without one after, by val accuracy; then the
    # runs that did not complete (their test accuracy, if any, is not comparable).
    return (not r.ok, r.test_acc is None, -(r.test_acc or 0.0), -(r.best_val_acc or 0.0), str(r.run_dir))


def build_report(paths: Iterable[str | os.PathLike], against: str | os.PathLike | None = None) -> Report:
    """Find and read every run under ``paths`` (and ``against``, the baseline run folder, when
    given); sort them; group repeated seeds."""
    paths = list(paths)
    base = None
    if against is not None:
        found = find_run_dirs([against])
        if not found:
            raise ConfigError(f"--against {str(against)!r}: no run folder (with summary.json or .hydra/) there")
        base = found[0].resolve()
        paths.append(found[0])
    runs = sorted((read_run(d) for d in find_run_dirs(paths)), key=_sort_key)
    by_key: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.group_key, []).append(r)
    groups = [Group(*k, rs) for k, rs in by_key.items() if len(rs) > 1]
    # Best mean test accuracy first; groups without one last.
    groups.sort(key=lambda g: (g.stat("test_acc")[0] is None, -(g.stat("test_acc")[0] or 0.0)))
    ref = next((r for r in runs if r.run_dir.resolve() == base), None) if base is not None else None
    return Report(runs=runs, groups=groups, against=ref)


# --------------------------------------------------------------------------- writing
def fmt(v: Any, how: str = "") -> str:
    """The one number formatter (a table cell, a label, an axis tick; "" for None). ``how``: "%"
    (0.9 -> 90.00%), "si" (5400000 -> 5.40M, 350 -> 350), "tick" (5.4M, 0.5), a format spec, or ""."""
    if v is None:
        return ""
    if how == "%":
        return f"{100 * v:.2f}%"
    if how in ("si", "tick"):
        div, unit = next(((d, u) for d, u in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if abs(v) >= d), (1, ""))
        spec = ".3g" if how == "tick" else ".2f" if unit else ".0f"
        return f"{v / div:{spec}}{unit}"
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


def environment_text(report: Report) -> str:
    """The environment (summary.json's ``env``) stated once: one line when every run that records
    it shares it; else the most common value of each field and, per run that differs, the fields
    that differ. Empty when no run records one (folders from before cnnlab recorded it)."""
    def fields(env: dict[str, Any]) -> dict[str, Any]:
        pkg, dev, git = (env.get(k) if isinstance(env.get(k), dict) else {} for k in ("packages", "device", "git"))
        device = (f"{dev['gpu']} (CUDA {dev.get('cuda')}, cuDNN {dev.get('cudnn')})" if dev.get("gpu")
                  else f"{dev.get('cpu')} ({dev.get('cpu_cores')} cores)" if dev else None)
        commit = f"{str(git['commit'])[:10]}{' (dirty)' if git.get('dirty') else ''}" if git.get("commit") else None
        return {"python": env.get("python"), **{k: pkg.get(k) for k in ("torch", "torchvision", "timm", "hydra",
                "cnnlab")}, "device": device, "git commit": commit}

    recorded = [(r, fields(r.env)) for r in report.runs if r.env]
    if not recorded:
        return ""
    usual = {k: Counter(f[k] for _, f in recorded).most_common(1)[0][0] for k in recorded[0][1]}
    stated = ", ".join(f"{k} {fmt(v)}" for k, v in usual.items() if v is not None)
    differ = [(r, f, [k for k in usual if f[k] != usual[k]]) for r, f in recorded]
    lines = [f"- `{r.run_dir.name}` differs: " + "; ".join(f"{k} {fmt(f[k]) or 'unknown'}" for k in ks)
             for r, f, ks in differ if ks]
    who = (f"all {len(recorded)} runs" if not lines else
           f"{len(recorded) - len(lines)} of {len(recorded)} runs (the others differ, below)")
    missing = len(report.runs) - len(recorded)
    tail = f" {missing} run(s) record no environment." if missing else ""
    return "\n".join([f"Environment of {who}: {stated}.{tail}", *([""] + lines if lines else [])])


def runs_table(report: Report) -> str:
    """The per-run Markdown table: the FIELDS with a header; the overrides column leaves out
    those every run shares (the sweep's fixed settings, stated once above the table)."""
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
        cells = [(mean, std, f.how) for f in stats for mean, std, _ in [g.stat(f.name)]]
        rows.append([g.model, g.dataset, rest, f"{sum(r.ok for r in g.runs)}/{len(g.runs)} completed", seeds,
                     *(f"{100 * m:.2f} ± {fmt(sd, '%')}" if how == "%" and sd is not None else fmt(m, how)
                       for m, sd, how in cells), _t_cell([r.test_acc for r in g.runs if r.test_acc is not None])])
    return _md_table(["model", "dataset", "overrides (without seed)", "runs", "seeds",
                      *(f.header for f in stats), "test acc 95% t-interval"], rows)


def _t_cell(accs: list[float]) -> str:
    """The Student-t 95% interval of a seed group's mean test accuracy ("" below 2 runs)."""
    from cnnlab.reporting.significance import t_interval

    if len(accs) < 2:
        return ""
    _, _, lo, hi = t_interval(accs)
    return f"[{fmt(lo, '%')}, {fmt(hi, '%')}]"


def per_class_table(report: Report) -> str:
    """Rows = classes, columns = runs (the best first), cells = test accuracy of that class."""
    runs = [r for r in report.runs if r.ok and r.per_class][:MAX_PER_CLASS_RUNS]
    if not runs:
        return ""
    labels = _labels(runs)
    rows = []
    for c in dict.fromkeys(c for r in runs for c in r.per_class):  # every class, in first-seen order
        accs = [r.per_class.get(c) for r in runs]
        best = max((a for a in accs if a is not None), default=None)
        winners = [labels[id(r)] for r, a in zip(runs, accs, strict=True) if a is not None and a == best]
        cells = [f"**{fmt(a, '%')}**" if a == best and len(runs) > 1 else fmt(a, "%") for a in accs]
        rows.append([c, *cells, ", ".join(winners)])
    header = ["class", *[f"#{report.runs.index(r) + 1} {labels[id(r)]}" for r in runs], "best"]
    pair = _pair_disagreement(report)
    if pair is None:
        return _md_table(header, rows)
    (a, b), by_class = pair
    header.append(f"right in only #{report.runs.index(a) + 1} / only #{report.runs.index(b) + 1}")
    for row in rows:
        d = by_class.get(row[0])
        row.append(f"{d[1]} / {d[2]}" if d else "")
    top = sorted(((d[0], c) for c, d in by_class.items() if d[0]), key=lambda dc: (-dc[0], str(dc[1])))[:3]
    note = (f"#{report.runs.index(a) + 1} and #{report.runs.index(b) + 1} disagree most on class "
            + ", ".join(f"{c} ({n} images)" for n, c in top) + "." if top else
            f"#{report.runs.index(a) + 1} and #{report.runs.index(b) + 1} are right on the same images.")
    return _md_table(header, rows) + "\n\n" + note


def _pair_disagreement(report: Report) -> tuple[tuple[Run, Run], dict[str, tuple[int, int, int]]] | None:
    """The reference (``--against``, else the best run) and the best other run on its split, and
    per class name: (images only one of them got right, only the first, only the second)."""
    from cnnlab.reporting.significance import disagreement_by_class

    ref = report.against or next((r for r in report.runs if r.ok), None)
    if ref is None or ref.predictions() is None:
        return None
    other = next((r for r in report.runs if r is not ref and r.ok and r.predictions() is not None
                  and r.predictions().same_split(ref.predictions())), None)
    if other is None:
        return None
    names = ref.class_names or []
    by_label = disagreement_by_class(ref.predictions(), other.predictions())
    return (ref, other), {(names[k] if k < len(names) else str(k)): d for k, d in by_label.items()}


def _families(report: Report) -> list[list[Run]]:
    """Completed runs with per-image predictions, grouped by test split (same images and labels),
    best test accuracy first; only groups of two or more can be compared."""
    families: list[list[Run]] = []
    for r in report.runs:
        if not (r.ok and r.predictions() is not None):
            continue
        fam = next((f for f in families if f[0].predictions().same_split(r.predictions())), None)
        if fam is None:
            families.append([r])
        else:
            fam.append(r)
    return [f for f in families if len(f) > 1]


def significance(report: Report) -> list[tuple[str, str]]:
    """Per shared test split: (the one-sentence verdict, the table of intervals and paired tests)."""
    from cnnlab.reporting import significance as sig

    labels = _labels(report.runs)
    out = []
    for fam in _families(report):
        names = [labels[id(r)] for r in fam]
        names = [n + (f" seed={r.seed}" if names.count(n) > 1 else "") for n, r in zip(names, fam, strict=True)]
        ref = fam.index(report.against) if report.against in fam else 0
        paired = sig.compare_split([(n, r.predictions()) for n, r in zip(names, fam, strict=True)], ref)
        improving = sum(r.still_improving is True for r in fam)
        rows = [[f"#{report.runs.index(r) + 1}", p.name, fmt(p.acc, "%"),
                 f"[{fmt(p.ci[0], '%')}, {fmt(p.ci[1], '%')}]", "" if p.p is None else f"{p.b} / {p.c}",
                 "" if p.p is None else f"{p.p:.3g}", "" if p.p_holm is None else f"{p.p_holm:.3g}",
                 "**tied for first**" if p.verdict == "tied" and ref == 0 else p.verdict]
                for r, p in zip(fam, paired, strict=True)]
        table = _md_table(["#", "run", "test acc", "95% Wilson interval", "b / c", "McNemar p", "Holm p",
                           "vs " + paired[ref].name], rows)
        out.append((sig.headline(paired, improving, len(fam)), table))
    return out


def pareto_front(points: Sequence[tuple[float, float]], larger_x_better: bool = False) -> list[int]:
    """Indices of the (x, accuracy) points no other point beats on both, by increasing cost: every
    point at least as cheap (x no larger, or no smaller when a larger x is better) is less accurate."""
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


def console_text(report: Report) -> str:
    """What the CLI and the multirun callback print, and comparison.md's first tables:
    the overrides every run shares, the runs table, the seed groups."""
    common = common_overrides(report.runs)
    parts = [sentence for sentence, _ in significance(report)] + [""] if _families(report) else []
    parts += [f"Overrides shared by every run: `{' '.join(common)}`.", ""] if common else []
    env = environment_text(report)
    parts += [env, ""] if env else []
    parts.append(runs_table(report))
    if report.groups:
        parts += ["", "## Repeated seeds (mean ± std)", "", groups_table(report)]
    return "\n".join(parts)


def render_markdown(report: Report, title: str = "Comparison") -> str:
    """comparison.md: counts by status, :func:`console_text`, per class, Pareto fronts, the errors."""
    counts = Counter(r.status for r in report.runs)
    parts = [f"# {title}", "",
             f"{len(report.runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
             "Sorted by test accuracy (the best checkpoint on the test split); runs that did "
             "not complete come last.", "", console_text(report), ""]
    failed = "\n".join(f"- `{r.run_dir}`: **{r.status}**" + (f": {_cell(r.error)}" if r.error else "")
                       for r in report.failed)
    tests = "\n\n".join(f"{sentence}\n\n{table}" for sentence, table in significance(report))
    sections = (
        ("Significance", "Runs tested on the same images, each against the reference (the best, or "
         "`--against`): a 95% Wilson interval per accuracy; McNemar's exact test on the images "
         "exactly one of the pair got right (b: only the reference, c: only the run), Holm-corrected "
         "across the comparisons; Holm p >= 0.05: tied. From each run's "
         "test_report/predictions.csv.gz (cnnlab/reporting/significance.py).", tests),
        ("Test accuracy per class", "Each class's share of test images predicted right, per run (the best "
         f"test accuracies first, at most {MAX_PER_CLASS_RUNS} runs); **bold**: the best run for that "
         "class.", per_class_table(report)),
        ("Pareto fronts", "Completed runs that no other run beats on both test accuracy and the cost "
         "(fewer params, fewer MACs, more images/s); comparison.png marks them.", pareto_text(report)),
        ("Runs that did not complete", "", failed))
    for heading, intro, body in sections:
        if body:
            parts += [f"## {heading}", "", *([intro, ""] if intro else []), body, ""]
    return "\n".join(parts)


def write_csv(report: Report, path: Path) -> None:
    def write(f: Any) -> None:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(r.row(path.parent) for r in report.runs)  # None: an empty cell

    write_atomic(path, write, binary=False)  # a full disk leaves the previous file, never half of one


def _short_override(o: str) -> str:
    """``optimizer.lr=0.008096384026619585`` -> ``lr=0.0081``: a legend label, not a record."""
    k, _, v = o.partition("=")
    with contextlib.suppress(ValueError):
        v = v if len(v) <= 6 or float(v).is_integer() else f"{float(v):.2g}"
    return f"{k.rsplit('.', 1)[-1]}={v}"


def _labels(runs: list[Run]) -> dict[int, str]:
    """A short legend label per run: the model plus the overrides that vary across runs."""
    maps = [dict(o.partition("=")[::2] for o in r.overrides) for r in runs]
    # A key varies if two runs differ in it (absent counts as a value of its own).
    varying = {k for k in set().union(*maps) if len({m.get(k) for m in maps}) > 1} - {"model", *_SEED_KEYS}
    return {id(r): " ".join([r.model or r.run_dir.name,
                             *(_short_override(o) for o in r.overrides if o.partition("=")[0] in varying)])
            for r in runs}


def _acc_ylim(ax: Any, values: list[float]) -> None:
    """An accuracy axis around the data, at least 0.1 tall, inside [0, 1]."""
    if values:
        lo, hi = min(values), max(values)
        pad = max(0.05, (0.1 - (hi - lo)) / 2)
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))


def _cost_panel(ax: Any, report: Report, series: dict[tuple, list[Run]], colors: list[str],
                labels: dict[int, str], attr: str, name: str, larger_better: bool) -> None:
    """Test accuracy against a cost (params, MACs, images/s), one point per series, Pareto front drawn."""
    from matplotlib.ticker import FuncFormatter

    pts = []  # (cost, test acc, its std, colour, completed), one per series
    for i, rs in enumerate(series.values()):
        done = [r for r in rs if r.test_acc is not None and (getattr(r, attr) or 0) > 0]
        if done:
            pts.append((mean_std([getattr(r, attr) for r in done])[0], *mean_std([r.test_acc for r in done]),
                        colors[i], rs[0].ok))
            if len(series) <= 30:
                ax.annotate(labels[id(rs[0])], pts[-1][:2], fontsize=7, xytext=(4, 4), textcoords="offset points")
    if pts:
        # One scatter call for all points: per-point artists are what makes matplotlib slow.
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[p[3] for p in pts], zorder=3)
        for x, y, err, col, _ in pts:
            if err:  # seed groups only: few, so one errorbar call each is cheap
                ax.errorbar([x], [y], yerr=[err], fmt="none", ecolor=col, capsize=3)
        # The Pareto front over the completed series: a staircase through its points.
        done = [p for p in pts if p[4]]
        front = [done[j] for j in pareto_front([p[:2] for p in done], larger_better)]
        if front:
            fx, fy = [p[0] for p in front], [p[1] for p in front]
            ax.step(fx, fy, where="post", color="k", lw=1, alpha=0.6, zorder=2, label="Pareto front")
            ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="k", zorder=4)
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.margins(x=0.15)  # room for the labels of the end points
        # "5.4M" ticks: readable, and plain text (log-axis mathtext labels are slow to draw).
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v, "tick")))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _pos: fmt(v, "tick") if ax.get_xlim()[1] / ax.get_xlim()[0] < 10 else ""))
    better = "higher is better" if larger_better else "lower is better"
    ax.set(xlabel=f"{name} ({better})", ylabel="test accuracy", title=f"Test accuracy vs {name}")
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
    from matplotlib.ticker import MaxNLocator

    from cnnlab.evaluation import plots  # the object API on an Agg canvas: no pyplot, no display

    labels = _labels(report.runs)
    # One series per seed group or single run, its completed and unfinished runs apart (the
    # latter dashed): a mean over a finished and a crashed run would describe neither.
    series: dict[tuple, list[Run]] = {}
    for r in report.runs:
        series.setdefault((r.group_key, r.ok), []).append(r)
    colors = [f"C{i % 10}" for i in range(len(series))]  # one per series, the same in every panel

    fig = plots.figure(13, 10)
    (ax_c, ax_p), (ax_m, ax_t) = fig.subplots(2, 2)
    # Fixed margins: tight_layout would measure every text extent (seconds for 200 runs).
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.06, top=0.96, wspace=0.18, hspace=0.25)
    for i, rs in enumerate(series.values()):
        curves = [dict(r.curve) for r in rs if r.curve]
        if not curves:
            continue
        epochs = sorted(set().union(*curves))
        stats = [mean_std([c[e] for c in curves if e in c]) for e in epochs]
        ax_c.plot(epochs, [m for m, _ in stats], marker="o" if len(epochs) < 30 else None, ms=3,
                  label=labels[id(rs[0])] + (f" (n={len(rs)})" if len(rs) > 1 else ""),
                  ls="-" if rs[0].ok else "--", color=colors[i])
        if len(curves) > 1:
            ax_c.fill_between(epochs, [m - (s or 0.0) for m, s in stats], [m + (s or 0.0) for m, s in stats],
                              color=colors[i], alpha=0.2)
    ax_c.set(xlabel="epoch", ylabel="val accuracy", title="Validation accuracy per epoch")
    ax_c.xaxis.set_major_locator(MaxNLocator(integer=True))
    seen = [e for r in report.runs for e, _ in r.curve]
    if seen and max(seen) - min(seen) < 2:  # whole-epoch ticks, not 0.975-style ones
        ax_c.set(xlim=(min(seen) - 0.5, max(seen) + 0.5), xticks=range(min(seen), max(seen) + 1))
    _acc_ylim(ax_c, [a for r in report.runs for _, a in r.curve])
    ax_c.grid(alpha=0.3)
    if 0 < len(ax_c.lines) <= max_legend:
        ax_c.legend(fontsize=7)

    for ax, (attr, name, larger) in zip((ax_p, ax_m, ax_t), PARETO_AXES, strict=True):
        _cost_panel(ax, report, series, colors, labels, attr, name, larger)
    plots.save_rgb(plots.render(fig), path)


def write_report(report: Report, out_dir: str | os.PathLike, title: str = "Comparison",
                 plot: bool = True) -> list[Path]:
    """Write comparison.csv, .md and (if ``plot``) .png into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / n for n in REPORT_FILES[:3 if plot else 2]]
    write_csv(report, paths[0])
    write_atomic(paths[1], lambda f: f.write(render_markdown(report, title)), binary=False)
    if plot:
        write_plot(report, paths[2])
    return paths


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cnnlab.compare PATH... [--out DIR]``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m cnnlab.compare", description="Build comparison.csv/.md/.png "
                                 "from run folders (a sweep folder, outputs/, or several single runs).")
    ap.add_argument("paths", nargs="+", metavar="PATH", help="run folders or folders holding them")
    ap.add_argument("--out", help="where to write the report (default: PATH when there is one, "
                                  "else the current folder)")
    ap.add_argument("--against", metavar="RUN", help="a baseline run folder: every run is tested against it "
                    "(default: against the best run); the per-class table shows the classes they disagree on")
    ap.add_argument("--no-plot", action="store_true", help="skip comparison.png")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when any run did not complete (failed, diverged, ...)")
    ap.add_argument("--quiet", action="store_true", help="do not print the table")
    args = ap.parse_args(argv)

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out!r} is a file, not a folder: give a folder (made if it does not exist)")
    report = build_report(args.paths, against=args.against)
    if not report.runs:
        raise ConfigError(f"no run folders (with summary.json or .hydra/) under {', '.join(args.paths)}")
    out = Path(args.out) if args.out else (Path(args.paths[0]) if len(args.paths) == 1 else Path("."))
    out = out.parent if out.is_file() else out
    try:
        files = write_report(report, out, plot=not args.no_plot)
    except Exception as e:  # a full or read-only disk: one line naming the folder and the errno's words
        err = os_error(e)
        if err is None:
            raise
        raise ConfigError(f"cannot write the report in {str(out)!r} ({err.strerror or err}): "
                          "give a writable folder with --out") from None
    if not args.quiet:
        print(console_text(report))
        print("\nwrote " + ", ".join(str(f) for f in files))
    return 1 if (args.strict and report.failed) else 0


def cli() -> None:
    """The console script and ``python -m cnnlab.compare``: :func:`main` inside the one error boundary."""
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
