"""Which conf/model entries export: ONNX and TorchScript, each with the parity check.

    .venv/bin/python scripts/export_coverage.py [--models alexnet,resnet18] [--formats onnx,torchscript]
                                                [--exporter auto] [--out docs/export.md]

Every conf/model entry (the generic ``timm`` and ``torchvision`` ones with a small arch, and
GoogLeNet once more with its aux heads, which eval mode drops) is built as a run on the
digits builds it (1 channel, 32x32, small_input, 10 classes; random-init weights: parity
does not need trained ones), exported with ``cnnlab.export.app.export_checked`` (what
``python -m cnnlab.export`` runs), and run on 64 digits test images against eager PyTorch:
fp32 logits within 1e-4, the same top-1 class. A model that cannot be exported is a row with
the one-line reason (the operator the exporter names). ``--out`` rewrites the table between
the markers of docs/export.md. ``make export-coverage`` runs it (tests/test_export.py runs
two models; the whole list is marked slow).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> the overrides of `python -m cnnlab.run` that build it
ENTRIES = {p.stem: [f"model={p.stem}"] for p in sorted((REPO / "conf" / "model").glob("*.yaml"))
           if p.stem not in ("timm", "torchvision")}
ENTRIES["googlenet (aux_logits=true)"] = ["model=googlenet", "model.aux_logits=true"]
ENTRIES["timm (model.arch=resnet10t)"] = ["model=timm", "model.arch=resnet10t"]
ENTRIES["torchvision (model.arch=squeezenet1_1)"] = ["model=torchvision", "model.arch=squeezenet1_1"]
BEGIN, END = "<!-- export-coverage: begin (scripts/export_coverage.py) -->", "<!-- export-coverage: end -->"


@dataclass
class Result:
    model: str
    fmt: str
    ok: bool
    exporter: str  # which exporter ran (dynamo, legacy: ONNX; torch.jit.trace)
    max_abs_diff: float | None
    top1: float | None
    reason: str  # why not, in one line; or the dynamo failure the legacy exporter covered
    seconds: float
    speed: dict | None = None  # with --speed: cnnlab.export.speed.compare_speed's figures


def build(overrides: list[str]):
    """The model a run with ``overrides`` builds on digits, random-init, in eval mode."""
    import torch

    from cnnlab.compose import compose
    from cnnlab.models.factory import instantiate_model

    cfg = compose(overrides)
    torch.manual_seed(0)
    ds = cfg.dataset
    model = instantiate_model(cfg.model, num_classes=int(ds.num_classes), in_chans=int(ds.in_chans),
                              img_size=int(ds.image_size), pretrained=False, checkpoint=None).eval()
    # Zero-initialised weights (a head, ResNet's last BN gamma per block, MogaNet's layer
    # scales) would switch whole branches off, and parity would not test them: small noise.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1 and p.is_floating_point() and not p.any():
                p.normal_(0, 0.02)
    return model


def digits_inputs(n: int = 64):
    """``n`` digits test images, normalised as a run normalises them: float32 (n, 1, 32, 32)."""
    from cnnlab.data import load_dataset
    from cnnlab.export.preprocess import to_input

    data = load_dataset("digits", None, False, 32, 1, 0.15, 0.15, 0, 512)
    return to_input(data.test.x[:n].numpy(), [0.5], [0.5])


def check(name: str, overrides: list[str], fmt: str, exporter: str = "auto", x=None,
          speed_seconds: float = 0.0) -> Result:
    """Export one entry to one format and check its parity (and, with ``speed_seconds``, time it
    against eager PyTorch at batch 1 and 64, as the app does); never raises."""
    from cnnlab.errors import CnnlabError, first_line
    from cnnlab.export.app import export_checked
    from cnnlab.export.formats import FORMATS

    x = digits_inputs() if x is None else x
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            import torch

            meta, p, eager, exported = export_checked(build(overrides), x, fmt, Path(tmp) / FORMATS[fmt], None,
                                                      exporter, torch.get_num_threads())
        except CnnlabError as e:
            return Result(name, fmt, False, "", None, None, first_line(e), time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        if speed_seconds:
            from cnnlab.export.speed import compare_speed

            figures = compare_speed(eager, exported, x, seconds=speed_seconds)
    return Result(name, fmt, True, meta["exporter"] + (f" (opset {meta['opset']})" if meta["opset"] else ""),
                  p.max_abs_diff, p.top1_agreement, f"dynamo failed: {meta['fallback']}" if meta["fallback"] else "",
                  seconds, figures if speed_seconds else None)


def table(results: list[Result]) -> list[str]:
    lines = ["| model | format | parity | exporter | max abs diff | top-1 agreement | note | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        top1 = "" if r.top1 is None else f"{100 * r.top1:.0f}%"
        note = r.reason.replace("|", "\\|")
        lines.append(f"| {r.model} | {r.fmt} | {'ok' if r.ok else 'refused'} | {r.exporter} | {diff} | {top1} | "
                     f"{note} | {r.seconds:.1f} |")
    return lines


def write(doc: Path, lines: list[str], header: str) -> None:
    """Replace the text between the markers of ``doc`` (the rest of it is written by hand)."""
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + BEGIN + "\n" + header + "\n\n" + "\n".join(lines) + "\n" + END + tail)


def main(argv: list[str] | None = None) -> int:
    import platform

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(ENTRIES), help="comma-separated names of ENTRIES")
    ap.add_argument("--formats", default="onnx,torchscript")
    ap.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "legacy"))
    ap.add_argument("--out", default=None, help="a Markdown file with the markers (docs/export.md)")
    ap.add_argument("--speed", type=float, default=0.0, metavar="SECONDS",
                    help="also time exported vs eager at batch 1 and 64, SECONDS per figure (no table written)")
    a = ap.parse_args(argv)
    names = [m for m in a.models.split(",") if m]
    unknown = [m for m in names if m not in ENTRIES]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r}: choose from {', '.join(ENTRIES)}")
    x = digits_inputs()
    results = []
    for m in names:
        for fmt in a.formats.split(","):
            r = check(m, ENTRIES[m], fmt, a.exporter, x, a.speed)
            print(table([r])[-1], flush=True)
            if r.speed:
                print(f"  speed (images/s, {torch.get_num_threads()} threads): " + "; ".join(
                    f"{b}: eager {v['eager']}, {fmt} {v['exported']} ({v['speedup']:.2f}x)" for b, v in r.speed.items()),
                    flush=True)
            results.append(r)
    header = (f"Measured by `make export-coverage` on {platform.machine()} ({torch.get_num_threads()} torch threads), "
              f"torch {torch.__version__}, exporter={a.exporter}, {time.strftime('%Y-%m-%d')}; 64 digits test images, "
              "1x32x32, random-init weights.")
    if a.out and not a.speed:
        write(Path(a.out), table(results), header)
    ok = sum(r.ok for r in results)
    print(f"{ok}/{len(results)} exports passed parity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
