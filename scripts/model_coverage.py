"""Which timm and torchvision models train in cnnlab: one of every timm family, every torchvision one.

    .venv/bin/python scripts/model_coverage.py [--families resnet,vgg] [--torchvision none]
                                               [--out docs/model_coverage.md]

A timm family is a module of ``timm.list_modules()``; its model here is the smallest
by parameter count (counted on the meta device: no memory, no arithmetic). Every
torchvision classification model is tried. Each model is built with
``cnnlab.models.build_model`` as a run builds it, twice: at 32x32 with small_input
(the default datasets), and at its native size without (224, or the size in its
timm pretrained_cfg). Each build takes one SGD forward and backward step at batch 2 on
the CPU. A failure is either a one-line ``ModelError`` (what users see: the reason and
the fix) or anything else (a traceback would reach the user: a bug to fix).

It is a benchmark, not a test: ``make coverage`` runs it (about 40 min on 2 shared
cores with OMP_NUM_THREADS=1, a third of it counting parameters; ``--picks FILE``
keeps the picks for the next run); tests/test_scripts.py runs it on five small families.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _report import cpu_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Trial:
    """One build + train step at one size: ok, or the one-line reason."""

    ok: bool
    clean: bool  # failed with a one-line ModelError (True when ok)
    text: str  # the small-input rule that ran, or the reason it failed
    seconds: float


@dataclass
class Row:
    source: str
    family: str
    model: str
    params_m: float
    trials: dict[int, Trial | None] = field(default_factory=dict)  # None: not tried (see skip)
    skip: str = ""


class _Timeout(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise _Timeout


def _params_on_meta(source: str, name: str) -> int | None:
    """Parameter count of ``name`` built on the meta device, or None when it can't be built."""
    import timm
    import torch
    from torchvision import models as tvm

    try:
        with torch.device("meta"):
            m = timm.create_model(name) if source == "timm" else tvm.get_model(name, weights=None)
        return sum(p.numel() for p in m.parameters())
    except Exception:  # noqa: BLE001 - a model that can't be built isn't the family's pick
        return None


def pick_timm(families: list[str] | None, picks: dict[str, str]) -> list[Row]:
    """One row per timm module: its smallest model by parameter count.

    ``picks`` (module -> model, from --picks) skips the count for the modules it names:
    counting builds every model of the module, 0.3-1 s each on the meta device.
    """
    import timm

    rows = []
    for mod in families or timm.list_modules():
        if mod in picks:
            name = picks[mod]
            rows.append(Row("timm", mod, name, (_params_on_meta("timm", name) or 0) / 1e6))
            continue
        # timm's test_* models are tiny fixtures of a family, not models anyone trains.
        counts = {n: _params_on_meta("timm", n) for n in timm.list_models(module=mod) if not n.startswith("test_")}
        counts = {n: c for n, c in counts.items() if c is not None}
        if not counts:
            rows.append(Row("timm", mod, "-", 0.0, skip="no model of this module builds on the meta device"))
            continue
        name = min(counts, key=lambda n: (counts[n], n))
        rows.append(Row("timm", mod, name, counts[name] / 1e6))
    return rows


def pick_torchvision(names: list[str] | None) -> list[Row]:
    from torchvision import models as tvm

    rows = []
    for name in names or tvm.list_models(module=tvm):
        count = _params_on_meta("torchvision", name)
        family = tvm.get_model_builder(name).__module__.rsplit(".", 1)[-1]  # e.g. resnet, vision_transformer
        rows.append(Row("torchvision", family, name, (count or 0) / 1e6))
    return rows


def native_size(row: Row) -> int:
    """The size the model was trained at: its timm pretrained_cfg's, else 224."""
    if row.source == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(row.model)
        if cfg is not None and cfg.input_size:
            return int(cfg.input_size[-1])
    return 224


class _RuleLog(logging.Handler):
    """Keeps the small-input rule that cnnlab.models.adapt logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage().split(": ", 2)[-1]


def trial(row: Row, size: int, timeout_s: int, rules: _RuleLog) -> Trial:
    """Build ``row.model`` at ``size`` (small_input at 32) and take one SGD step at batch 2."""
    import torch
    import torch.nn.functional as F

    from cnnlab.errors import ModelError
    from cnnlab.models import build_model
    from cnnlab.models.outputs import split_output

    small = size <= 64
    rules.last = ""
    t0 = time.perf_counter()
    signal.alarm(timeout_s)
    try:
        torch.manual_seed(0)
        model = build_model(row.model, row.source, row.model, num_classes=10, in_chans=3, img_size=size,
                            small_input=small).train()
        if not row.params_m:  # not countable on the meta device (torchvision's RegNet computes widths)
            row.params_m = sum(p.numel() for p in model.parameters()) / 1e6
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
        logits, extra = split_output(model(x))
        loss = F.cross_entropy(logits, y) + sum(w * F.cross_entropy(a, y) for w, a in extra)
        loss.backward()
        opt.step()
        if not torch.isfinite(loss):
            return Trial(False, False, f"loss is {loss.item()}", time.perf_counter() - t0)
        how = (rules.last or "sized by img_size, or no change") if small else ""
        return Trial(True, True, how, time.perf_counter() - t0)
    except ModelError as e:
        return Trial(False, True, str(e), time.perf_counter() - t0)
    except _Timeout:
        return Trial(False, False, f"timed out after {timeout_s} s", time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - what a user would see as a traceback
        text = (str(e).strip().splitlines() or [""])[0][:200]
        return Trial(False, False, f"{type(e).__name__}: {text}", time.perf_counter() - t0)
    finally:
        signal.alarm(0)


def _cell(t: Trial | None) -> str:
    if t is None:
        return "not tried"
    return "yes" if t.ok else ("no" if t.clean else "**error**")


def _note(row: Row) -> str:
    parts = []
    t32 = row.trials.get(32)
    if t32 is not None and t32.ok and t32.text:
        parts.append(t32.text)
    for size, t in row.trials.items():
        if t is not None and not t.ok:
            parts.append(f"{size}: {t.text}")
    if row.skip:
        parts.append(row.skip)
    return "; ".join(parts).replace("|", "/")


def summary(rows: list[Row], source: str) -> tuple[int, int, int, int]:
    """(models, train at 32 or native, the rest failing in one line, train at 32)."""
    mine = [r for r in rows if r.source == source]
    works = [r for r in mine if any(t is not None and t.ok for t in r.trials.values())]
    clean = [r for r in mine if r not in works and r.trials
             and all(t is None or t.clean for t in r.trials.values())]
    at32 = [r for r in mine if (t := r.trials.get(32)) is not None and t.ok]
    return len(mine), len(works), len(clean), len(at32)


def report(rows: list[Row], argv: list[str], seconds: float) -> list[str]:
    import timm
    import torch
    import torchvision

    lines = [
        "# Model coverage: one timm model per family, every torchvision classification model",
        "",
        f"Command: `OMP_NUM_THREADS=1 python scripts/model_coverage.py {' '.join(argv)}` "
        f"({seconds / 60:.0f} min). Machine: {cpu_name()}, {platform.system()}, torch {torch.__version__}, "
        f"timm {timm.__version__}, torchvision {torchvision.__version__}.",
        "",
        "Each model is built with `cnnlab.models.build_model` and takes one SGD step (forward and "
        "backward, batch 2, CPU): at 32x32 with `small_input` (the default datasets), and at its native "
        "size without (224, or its timm pretrained_cfg size). *no* is a one-line `ModelError` "
        "that names the reason and the fix; **error** would be a traceback (none should be left). "
        "The note gives the small-input rule that ran at 32 (docs/models.md) or the reason.",
        "",
    ]
    for source in ("timm", "torchvision"):
        n, works, clean, at32 = summary(rows, source)
        if n:
            unit = "families" if source == "timm" else "models"
            lines.append(f"- {source}: {works}/{n} {unit} ({100 * works / n:.0f}%) train at 32x32 or at "
                         f"their native size ({at32} at 32x32); of the other {n - works}, {clean} fail "
                         "in one line with the reason.")
    lines += ["", "| source | family | model | params (M) | 32x32 | native | note |",
              "|---|---|---|---:|---|---|---|"]
    for r in rows:
        native = next((f"{_cell(t)} ({s})" for s, t in r.trials.items() if s != 32), "not tried")
        lines.append(f"| {r.source} | {r.family} | {r.model} | {r.params_m:.1f} | {_cell(r.trials.get(32))} "
                     f"| {native} | {_note(r)} |")
    return lines


def _write(out: str, lines: list[str]) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="all", help="timm modules, comma-separated; all or none")
    ap.add_argument("--torchvision", default="all", help="torchvision models, comma-separated; all or none")
    ap.add_argument("--out", default=str(REPO / "docs" / "model_coverage.md"), help="Markdown file to write")
    ap.add_argument("--max-params-native", type=float, default=30.0,
                    help="skip the native-size step of a model that trained at 32x32 above this many "
                    "million parameters (CPU time)")
    ap.add_argument("--max-params-fallback", type=float, default=150.0,
                    help="the same limit for a model that did not train at 32x32")
    ap.add_argument("--timeout", type=int, default=180, help="seconds per build + step")
    ap.add_argument("--picks", help="JSON file of {timm module: model}: read if it exists (skips the "
                    "parameter counts), else written with this run's picks")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    import torch

    import cnnlab.models  # noqa: F401  (registers MogaNet in timm)

    torch.set_num_threads(1)
    logging.getLogger("timm").setLevel(logging.ERROR)
    rules = _RuleLog()
    adapt_log = logging.getLogger("cnnlab.models.adapt")
    adapt_log.addHandler(rules)
    adapt_log.setLevel(logging.INFO)
    adapt_log.propagate = False
    signal.signal(signal.SIGALRM, _alarm)

    def names(arg: str) -> list[str] | None:
        return None if arg == "all" else [] if arg == "none" else arg.split(",")

    t0 = time.perf_counter()
    tv = names(args.torchvision)
    picks = json.loads(Path(args.picks).read_text()) if args.picks and Path(args.picks).is_file() else {}
    rows = pick_timm(names(args.families), picks) + ([] if tv == [] else pick_torchvision(tv))
    if args.picks and not picks:
        Path(args.picks).write_text(json.dumps({r.family: r.model for r in rows if r.source == "timm"}, indent=1))
    for i, row in enumerate(rows):
        if row.model == "-":
            continue
        row.trials[32] = trial(row, 32, args.timeout, rules)
        size = native_size(row)
        # CPU time: a big model that trained at 32 is not stepped again at its native size.
        limit = args.max_params_native if row.trials[32].ok else args.max_params_fallback
        if row.params_m > limit:
            row.trials[size] = None
            row.skip = f"{size}: not tried ({row.params_m:.0f}M params; --max-params-native)"
        else:
            row.trials[size] = trial(row, size, args.timeout, rules)
        cells = ", ".join(f"{s}: {_cell(t)}" for s, t in row.trials.items())
        print(f"[{i + 1}/{len(rows)}] {row.source} {row.family} {row.model}: {cells}", flush=True)
        _write(args.out, report(rows[: i + 1], argv, time.perf_counter() - t0))  # a partial run keeps its rows
    lines = report(rows, argv, time.perf_counter() - t0)
    _write(args.out, lines)
    print("\n".join(lines[:12]))
    bad = [r for r in rows if any(t is not None and not t.clean for t in r.trials.values())]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
