"""The report of scripts/gpu_check.sh: what the GPU machine is, and what each step measured.

    python scripts/gpu_report.py env --out env.json          # the card, driver, torch, CUDA (imports torch)
    python scripts/gpu_report.py render --work W --out R      # R/gpu_check.json + R/gpu_check.md
    python scripts/gpu_report.py docs R/gpu_check.json        # its tables into docs/gpu.md

``render`` reads what the steps left (W/env.json, W/steps.jsonl, R/pytest.xml,
R/digits_summary.json, W/bench/benchmarks.json); any of them may be missing (a step that
failed, timed out or was skipped), and the report says so rather than failing. It imports
no torch, so gpu_check.sh runs it after every step: a killed run keeps its report.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "gpu.md"
START, END = "<!-- gpu-check results: start -->", "<!-- gpu-check results: end -->"

# The "must reach" (#26), checked from the results.
EPOCH_VS_CEILING = 0.9   # ResNet-18, batch 512, 32x32, bf16 + channels_last: full epoch / ceiling
FAST_VS_FP32 = 2.0       # ResNet-18: bf16 + channels_last (+ compile) / fp32 eager, full-epoch img/s
DIGITS_TEST_ACC = 0.97   # the default run on the GPU
NO_SYNC_TEST = "test_tensor_loader_stays_on_the_gpu_without_host_syncs"


# --------------------------------------------------------------------------- env
def gpu_env() -> dict[str, Any]:
    """The card, its driver, and the software that runs on it."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    try:
        info["cudnn"] = torch.backends.cudnn.version()
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        name, driver, memory = (s.strip() for s in out.stdout.splitlines()[0].split(","))
        info.update(nvidia_smi_name=name, driver=driver, nvidia_smi_memory=memory)
    except (OSError, IndexError, ValueError, subprocess.SubprocessError) as e:
        info["driver"] = f"unknown ({type(e).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpus=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count, memory_gb=round(p.total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported())
    for mod in ("torchvision", "timm", "hydra", "omegaconf", "pytest"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - a missing one is a finding, not a failure
            info[mod] = f"missing ({type(e).__name__})"
    return info


# --------------------------------------------------------------------------- reading the steps
def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def read_pytest(path: Path) -> dict[str, Any] | None:
    """pytest's JUnit XML: counts, and each test's outcome and first message line."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    cases = []
    for tc in root.iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = tc.find(kind)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (el.get("message") or el.text or "").strip().splitlines()[:1]
                message = message[0][:200] if message else ""
                break
        cases.append({"name": tc.get("name"), "outcome": outcome, "seconds": float(tc.get("time") or 0),
                      "message": message})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "cases": cases}


def bench_rows(bench: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per (model, precision, memory format, compile), from bench.py's cuda runs."""
    rows = []
    for run in (bench or {}).get("runs", {}).values():
        if run["machine"]["device"].split(":")[0] != "cuda":
            continue
        s = run["settings"]
        for m in run.get("models", []):
            rows.append({"model": m["model"], "amp": s["amp"], "channels_last": s["channels_last"],
                         "compile": m["compile"], "batch_size": m["batch_size"],
                         "ceiling_ips": m["bare_ips"], "loop_ips": m["cnnlab_loop_ips"],
                         "epoch_ips": m["cnnlab_epoch_ips"], "epoch_vs_ceiling": m["epoch_vs_ceiling"],
                         "epoch_images": m.get("epoch_images"), "peak_memory_mb": m.get("peak_memory_mb"),
                         "warmup_seconds": m.get("warmup_seconds")})
    for r in rows:  # against the same model's fp32 NCHW eager full epoch
        base = [b for b in rows if b["model"] == r["model"] and b["amp"] == "none"
                and not b["channels_last"] and not b["compile"]]
        r["vs_fp32_eager"] = r["epoch_ips"] / base[0]["epoch_ips"] if base else None
    return rows


# --------------------------------------------------------------------------- the targets
def targets(rows: list[dict[str, Any]], tests: dict[str, Any] | None,
            digits: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each of the issue's 'must reach' lines: measured, and met (None: not measured)."""
    out = []
    r18 = [r for r in rows if r["model"] == "resnet18" and r["amp"] == "bf16" and r["channels_last"]
           and r["batch_size"] == 512]
    eager = [r for r in r18 if not r["compile"]]
    if eager:
        v = eager[0]["epoch_vs_ceiling"]
        out.append({"target": f"ResNet-18 full epoch >= {EPOCH_VS_CEILING}x the synthetic ceiling "
                              "(batch 512, 32x32, bf16 + channels_last)",
                    "measured": f"{v:.3f}x", "met": v >= EPOCH_VS_CEILING})
    else:
        out.append({"target": "ResNet-18 full epoch vs ceiling", "measured": "not measured", "met": None})
    fast = [r for r in r18 if r["vs_fp32_eager"] is not None]
    if fast:
        best = max(fast, key=lambda r: r["vs_fp32_eager"])
        how = "bf16 + channels_last" + (" + compile" if best["compile"] else "")
        out.append({"target": f"ResNet-18 bf16 + channels_last (+ compile) >= {FAST_VS_FP32}x fp32 eager",
                    "measured": f"{best['vs_fp32_eager']:.2f}x ({how})",
                    "met": best["vs_fp32_eager"] >= FAST_VS_FP32})
    else:
        out.append({"target": "ResNet-18 bf16 + channels_last vs fp32 eager", "measured": "not measured",
                    "met": None})
    case = [c for c in (tests or {}).get("cases", []) if c["name"].startswith(NO_SYNC_TEST)]
    outcomes = sorted({c["outcome"] for c in case})
    out.append({"target": "0 host syncs per training step (torch.cuda.set_sync_debug_mode('error'))",
                "measured": ", ".join(outcomes) or "not run",
                "met": None if not case or outcomes == ["skipped"] else outcomes == ["passed"]})
    if digits and digits.get("test_acc") is not None:
        acc = digits["test_acc"]
        out.append({"target": f"default digits run on the GPU: test >= {DIGITS_TEST_ACC}",
                    "measured": f"test {acc:.4f} in {digits.get('command_wall_seconds')} s (command), "
                                f"{digits.get('train_seconds', 0):.1f} s training",
                    "met": acc >= DIGITS_TEST_ACC})
    else:
        out.append({"target": "default digits run on the GPU", "measured": "not run", "met": None})
    return out


# --------------------------------------------------------------------------- markdown
def _n(v: Any, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def render_markdown(res: dict[str, Any]) -> str:
    env, steps, tests, rows = res.get("env") or {}, res["steps"], res.get("tests"), res["bench"]
    yes = {True: "yes", False: "**no**", None: "not measured"}
    lines = ["# gpu-check results", ""]
    if env:
        lines += [f"- card: {env.get('gpu')} ({env.get('memory_gb')} GiB, compute {env.get('capability')}), "
                  f"driver {env.get('driver')}",
                  f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
                  f"timm {env.get('timm')}, Python {env.get('python')}"]
    lines += [f"- date: {res.get('date') or '–'}", "", "## Targets (issue #26)", "",
              "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {yes[t['met']]} |" for t in res["targets"]]
    lines += ["", "## Steps", "", "| step | status | seconds | timeout |", "|---|---|---:|---:|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit']} |" for s in steps]
    if tests:
        c = tests["counts"]
        lines += ["", f"## Tests (`pytest -m gpu tests/test_gpu.py`): {c['passed']} passed, "
                      f"{c['failed']} failed, {c['error']} errors, {c['skipped']} skipped", ""]
        bad = [t for t in tests["cases"] if t["outcome"] != "passed"]
        if bad:
            lines += ["| test | outcome | message |", "|---|---|---|"]
            lines += [f"| {t['name']} | {t['outcome']} | {t['message'].replace('|', '/')} |" for t in bad]
    if rows:
        lines += ["", "## Throughput (`scripts/bench.py --device cuda`: random 3x32x32 images, 10 classes)", "",
                  "Ceiling = the bare loop on one batch already on the GPU; full epoch = cnnlab's "
                  "`train_one_epoch` over its `TensorLoader` (crop + flip on the GPU) for "
                  f"{_n(rows[0]['epoch_images'])} images.", "",
                  "| model | precision | format | compile | batch | ceiling img/s | full epoch img/s | "
                  "epoch / ceiling | x fp32 eager | peak MiB |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['model']} | {'fp32' if r['amp'] == 'none' else r['amp']} | "
                         f"{'channels_last' if r['channels_last'] else 'NCHW'} | "
                         f"{'yes' if r['compile'] else 'no'} | {r['batch_size']} | {_n(r['ceiling_ips'])} | "
                         f"{_n(r['epoch_ips'])} | {r['epoch_vs_ceiling']:.3f} | {_n(r['vs_fp32_eager'], 2)} | "
                         f"{_n(r['peak_memory_mb'])} |")
    return "\n".join(lines) + "\n"


def render(work: Path, out: Path) -> dict[str, Any]:
    """Collect what the steps left into out/gpu_check.json and out/gpu_check.md."""
    env = _json(work / "env.json")
    tests = read_pytest(out / "pytest.xml")
    digits = _json(out / "digits_summary.json")
    rows = bench_rows(_json(work / "bench" / "benchmarks.json"))
    res = {"date": (env or {}).get("date"), "env": env, "steps": read_steps(work / "steps.jsonl"),
           "tests": tests, "digits": digits and {k: digits.get(k) for k in (
               "status", "test_acc", "best_val_acc", "epochs_completed", "train_seconds", "wall_seconds",
               "command_wall_seconds", "images_per_second", "device")},
           "bench": rows, "targets": targets(rows, tests, digits)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "gpu_check.md").write_text(render_markdown(res))
    return res


def fill_docs(results: Path, doc: Path = DOC) -> None:
    """Replace docs/gpu.md's results section (between its two markers) with these results."""
    res = json.loads(results.read_text())
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: {doc} has no '{START}' ... '{END}' section to fill")
    body = render_markdown(res).split("\n", 2)[2]  # without its own title
    head, rest = text.split(START, 1)
    doc.write_text(f"{head}{START}\n{body}{END}{rest.split(END, 1)[1]}")
    print(f"filled {doc} from {results}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="print and write the GPU machine's versions")
    e.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("render", help="gpu_check.json + gpu_check.md from the steps' files")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    d = sub.add_parser("docs", help="fill docs/gpu.md's results section from a gpu_check.json")
    d.add_argument("results", type=Path)
    d.add_argument("--doc", type=Path, default=DOC)
    a = p.parse_args(argv)
    if a.cmd == "env":
        import datetime as dt

        info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **gpu_env()}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(info, indent=1) + "\n")
        for k, v in info.items():
            print(f"{k:>18}: {v}")
        return 0 if info["cuda_available"] else 1
    if a.cmd == "render":
        res = render(a.work, a.out)
        print("\n".join(f"{t['target']}: {t['measured']}" for t in res["targets"]))
        return 0
    fill_docs(a.results, a.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
