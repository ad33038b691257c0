"""cnnlab's fast path, measured: loader throughput, loop overhead, and the synthetic ceiling.

    .venv/bin/python scripts/bench.py                 # what `make bench` runs (CPU: a few minutes)
    .venv/bin/python scripts/bench.py --quick         # CI-size smoke; writes to a temp folder
    .venv/bin/python scripts/bench.py --device cuda --models resnet18 mobilenet_v3 \\
        --batch-size 512 --amp bf16 --channels-last --compile both     # ~5 min on one H100
    scripts/gpu_check.sh              # on a GPU: the fp32/bf16, NCHW/channels_last, eager/compiled
                                      # ladder for 4 models, with peak memory (docs/gpu.md)
    make bench BENCH_ARGS="--threads 1"               # on a shared, loaded CPU machine

Three measurements, each on the same machine in the same process:

(a) loader: images/s delivered as normalised float batches on the device, over one epoch
    of N random uint8 32x32x3 images (50,000 by default), with random crop (pad 4, zero
    fill) + horizontal flip + normalise:
      - torchvision: the images written in CIFAR-10's python pickle format to a temp
        folder, read by torchvision.datasets.CIFAR10(root, download=False) (only its md5
        table is swapped for our files' sums), transforms RandomCrop(32, padding=4),
        RandomHorizontalFlip, ToTensor, Normalize, DataLoader with --workers workers;
      - cnnlab tensor: TensorLoader (uint8 on the device, batched crop + flip + normalise);
      - cnnlab dataloader: cnnlab's classic path (dataset.loader=dataloader), same workers.
      - cnnlab tensor + randaugment / + random erasing: the tensor loader with the
        recipes' augmentations (cnnlab/recipes/policy.py), one epoch each.
(b) loop overhead: cnnlab's ``train_one_epoch`` against a minimal hand-written loop
    (zero_grad, forward, cross-entropy, backward, step), with the same model object,
    optimizer, batch, device, precision and memory format, both fed the same batch that
    is already on the device (no data or augmentation cost for either). cnnlab's loop
    also steps its LR schedule and accumulates loss/accuracy on the device, and pays one
    host read per epoch. Ratio = cnnlab images/s / bare images/s (target >= 0.97).
(c) ceiling: the bare loop on that fixed on-device batch is the synthetic-data ceiling
    (as timm's benchmark.py measures training); cnnlab's full epoch is
    ``train_one_epoch`` over a TensorLoader of random uint8 images with crop + flip,
    read once at the end, as train() does. Ratio = epoch / ceiling (GPU target >= 0.9).

On CUDA each model's row also holds its peak memory (torch.cuda.max_memory_allocated over
its warm-up and rounds, in MiB). The JSON is written after each model, so a run stopped
part-way keeps the models it finished.

(b) and (c) run in rounds, the variants in a rotating order within each round, and
report medians, so a drift in machine load hits every variant alike. Each result
records the 1-minute load average before and after: on a shared machine, rerun when
it is quiet. Results go to docs/benchmarks.json (one entry per device/precision/
format/batch setting, so CPU and GPU runs sit side by side) and docs/benchmarks.md
(rebuilt from the JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import pickle
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _report import cpu_name
from torchvision.datasets import CIFAR10

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# --------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = cpu_name()
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    return info


def load() -> float:
    """The 1-minute load average (runnable processes); compare with the core count."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------- (a) loader
class LocalCIFAR10(CIFAR10):
    """torchvision's CIFAR10; ``write_cifar10_pickles`` sets its md5 table to our files'."""


def write_cifar10_pickles(root: Path, x: np.ndarray, y: np.ndarray) -> type:
    """Write x (N, 32, 32, 3) uint8 as CIFAR-10's python batches; return the class that reads them.

    The class is torchvision's CIFAR10 with its md5 table set to our files' sums: its
    own integrity check, pickle reading and PIL-based __getitem__ are unchanged.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # CIFAR stores CHW planes per row
    parts = np.array_split(np.arange(len(x)), 5)

    def dump(name: str, obj: dict[str, Any]) -> list[str]:
        path = folder / name
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        return [name, hashlib.md5(path.read_bytes()).hexdigest()]

    train_list = [dump(f"data_batch_{i + 1}", {"data": rows[p], "labels": y[p].tolist()})
                  for i, p in enumerate(parts)]
    test_list = [dump("test_batch", {"data": rows[:100], "labels": y[:100].tolist()})]
    meta_name, meta_md5 = dump("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})

    LocalCIFAR10.train_list = train_list
    LocalCIFAR10.test_list = test_list
    LocalCIFAR10.meta = {"filename": meta_name, "key": "label_names", "md5": meta_md5}
    return LocalCIFAR10


def time_epochs(loader: Any, device: torch.device, epochs: int, warmup_batches: int = 2) -> float:
    """Median images/s over ``epochs`` full passes, after ``warmup_batches`` (workers started)."""
    for i, (xb, _) in enumerate(loader):
        xb = xb.to(device, non_blocking=True)
        if i + 1 >= warmup_batches:
            break
    rates = []
    for _ in range(epochs):
        sync(device)
        t0, n = time.perf_counter(), 0
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True)
            n += yb.shape[0]
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_loader(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    from cnnlab.data.dataloader import build_dataloader
    from cnnlab.data.loader import Augment, TensorLoader
    from cnnlab.data.splits import Split

    n, bs = args.loader_images, args.loader_batch_size
    rng = np.random.default_rng(0)
    x_hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.int64)
    out: dict[str, Any] = {"images": n, "batch_size": bs, "workers": args.workers,
                           "augment": "crop 32 pad 4 (zero fill), horizontal flip, normalise",
                           "load_before": load()}
    x_t = torch.from_numpy(x_hwc).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    y_t = torch.from_numpy(y)

    # cnnlab's tensor path (first: it is fast, and its number is the one that matters most).
    tl = TensorLoader(x_t, y_t, bs, CIFAR_MEAN, CIFAR_STD, device=device, train=True,
                      augment=Augment(crop_padding=4, pad_mode="zero", flip=True),
                      channels_last=args.channels_last)
    out["cnnlab_tensor"] = time_epochs(tl, device, epochs=3)
    del tl
    # The recipes' augmentations on the same loader (cnnlab/recipes/policy.py): RandAugment
    # per image on uint8 (a Python loop over the batch), random erasing on the float batch.
    for key, extra in (("cnnlab_tensor_randaugment", {"policy": "randaugment"}),
                       ("cnnlab_tensor_random_erasing", {"random_erasing": 0.25})):
        tl = TensorLoader(x_t, y_t, bs, CIFAR_MEAN, CIFAR_STD, device=device, train=True,
                          augment=Augment(crop_padding=4, pad_mode="zero", flip=True, **extra),
                          channels_last=args.channels_last)
        out[key] = time_epochs(tl, device, epochs=1)
        del tl

    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        cifar_cls = write_cifar10_pickles(Path(tmp), x_hwc, y)
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(CIFAR_MEAN, CIFAR_STD)])
        ds = cifar_cls(tmp, train=True, download=False, transform=tf)
        assert len(ds) == n
        tv = DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True, num_workers=args.workers,
                        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
        out["torchvision_dataloader"] = time_epochs(tv, device, epochs=1)
        del tv

    if not args.quick:
        cl = build_dataloader(Split(x_t, y_t), bs, CIFAR_MEAN, CIFAR_STD, device, train=True,
                              augment=Augment(crop_padding=4, pad_mode="zero", flip=True),
                              channels_last=args.channels_last, num_workers=args.workers)
        out["cnnlab_dataloader"] = time_epochs(cl, device, epochs=1)
        del cl
    out["ratio_tensor_vs_torchvision"] = out["cnnlab_tensor"] / out["torchvision_dataloader"]
    out["load_after"] = load()
    return out


# --------------------------------------------------------------------------- (b), (c)
def build(name: str) -> torch.nn.Module:
    """conf/model/<name>.yaml's model, for 10 classes of 3x32x32 images with small_input."""
    from omegaconf import OmegaConf

    from cnnlab.models import build_model

    path = REPO / "conf" / "model" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
        raise SystemExit(f"--models {name}: no conf/model/{name}.yaml; choose from {', '.join(known)}")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    cfg.pop("_target_", None)
    cfg.update(num_classes=10, in_chans=3, img_size=32, small_input=True, pretrained=False)
    return build_model(**cfg)


def bench_model(name: str, compiled: bool, args: argparse.Namespace, device: torch.device,
                policy: Any) -> dict[str, Any]:
    from cnnlab.data.loader import Augment, TensorLoader
    from cnnlab.schedulers import cosine
    from cnnlab.train import train_one_epoch

    bs, steps = args.batch_size, args.steps
    if device.type == "cuda":  # peak memory of this model alone: the previous one's blocks freed
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build(name).to(device, memory_format=fmt)
    step_model = torch.compile(model) if compiled else model
    # One optimizer (SGD, nesterov, wd: conf/optimizer/sgd.yaml) shared by every variant:
    # the loops differ, nothing else.
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, **fused)
    sched = cosine(opt, total_steps=10**9, steps_per_epoch=steps)
    scaler = torch.amp.GradScaler(device.type) if policy.use_grad_scaler else None
    amp = policy.amp_dtype

    # The fixed on-device batch (normalised float, like a loader's output).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 3, 32, 32, generator=g).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (bs,), generator=g).to(device)
    batches = [(x, y)] * steps

    # The full epoch: random uint8 images on the device, crop (pad 4, reflect) + flip.
    n_epoch = args.epoch_images or steps * bs
    xe = torch.randint(0, 256, (n_epoch, 3, 32, 32), dtype=torch.uint8, generator=g)
    ye = torch.randint(0, 10, (n_epoch,), generator=g)
    epoch_loader = TensorLoader(xe, ye, bs, CIFAR_MEAN, CIFAR_STD, device=device, train=True,
                                augment=Augment(crop_padding=4, pad_mode="reflect", flip=True),
                                channels_last=args.channels_last)

    def bare() -> int:
        """The minimal loop: what a PyTorch tutorial writes."""
        step_model.train()
        for xb, yb in batches:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(step_model(xb), yb)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        return len(batches) * bs

    def cnnlab_loop() -> int:
        sums = train_one_epoch(step_model, batches, opt, sched, policy, scaler=scaler)
        sums.means()  # the epoch's one host read
        return sums.seen

    def cnnlab_epoch() -> int:
        sums = train_one_epoch(step_model, epoch_loader, opt, sched, policy, scaler=scaler)
        sums.means()
        return sums.seen

    variants = {"bare": bare, "cnnlab_loop": cnnlab_loop, "cnnlab_epoch": cnnlab_epoch}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    load_before = load()
    t0 = time.perf_counter()
    for fn in variants.values():  # warm-up: compile, cudnn autotune, allocator, first-touch
        fn()
    sync(device)
    warmup_s = time.perf_counter() - t0
    rates: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            sync(device)
            t = clock()
            n = variants[k]()
            sync(device)
            rates[k].append(n / (clock() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    per_round = [c / b for c, b in zip(rates["cnnlab_loop"], rates["bare"], strict=True)]
    return {
        "model": name, "compile": compiled, "batch_size": bs, "steps": steps,
        "epoch_images": len(epoch_loader) * bs, "rounds": args.rounds,
        "warmup_seconds": round(warmup_s, 1),
        "bare_ips": med["bare"], "cnnlab_loop_ips": med["cnnlab_loop"],
        "cnnlab_epoch_ips": med["cnnlab_epoch"],
        "loop_ratio": med["cnnlab_loop"] / med["bare"],
        "loop_ratio_per_round": per_round,
        "loop_ratio_median_of_rounds": statistics.median(per_round),
        "epoch_vs_ceiling": med["cnnlab_epoch"] / med["bare"],
        "rates": rates,
        "peak_memory_mb": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                           if device.type == "cuda" else None),
        "load_before": load_before, "load_after": load(),
    }


# --------------------------------------------------------------------------- report
def _f(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench.py` (`make bench`) from `docs/benchmarks.json`; do not edit by",
        "hand. What is compared is described in the script's docstring; in short:",
        "",
        "- **loader**: images/s delivered as normalised float batches on the device, one epoch,",
        "  random crop (pad 4) + flip + normalise. torchvision = `torchvision.datasets.CIFAR10`",
        "  (pickles of random images written locally) + `RandomCrop, RandomHorizontalFlip,",
        "  ToTensor, Normalize` + `DataLoader(num_workers=W)`.",
        "  The recipes' rows add, to the same tensor loader, `dataset.augment.policy=randaugment`",
        "  (torchvision v2 RandAugment on each uint8 image: a Python loop over the batch) or",
        "  `dataset.augment.random_erasing=0.25` (timm RandomErasing on the normalised batch);",
        "  \"x the plain tensor loader\" is their throughput over the plain row's. RandAugment",
        "  per image costs far more than 2x the tensor loader's throughput (see the rows).",
        "- **loop**: cnnlab's `train_one_epoch` vs a minimal hand-written loop, same model,",
        "  optimizer, precision and memory format, both on the same batch already on the device.",
        "- **ceiling**: that bare loop on a fixed on-device batch (as timm's benchmark) vs",
        "  cnnlab's full epoch (`train_one_epoch` over a `TensorLoader` with crop + flip).",
        "",
        "Load is the 1-minute load average before/after; with more runnable processes than",
        "cores, absolute numbers are low and ratios noisy: rerun on a quiet machine.",
    ]
    for key, run in results.get("runs", {}).items():
        m, s = run["machine"], run["settings"]
        lines += [
            "", f"## {key}", "",
            f"- machine: {m['cpu']}, {m['cores']} cores, "
            f"{m.get('memory_gb')} GB; device {m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else ""),
            f"- torch {m['torch']}, torchvision {m.get('torchvision')}, python {m['python']}",
            f"- command: `{run['command']}`",
            f"- date: {run['date']}",
            f"- settings: batch {s['batch_size']}, amp {s['amp']}, channels_last {s['channels_last']}, "
            f"{s['steps']} steps x {s['rounds']} rounds, {s.get('threads')} torch threads, "
            f"(b)/(c) timed by {s.get('clock', 'wall')} clock" + (" (quick)" if s.get("quick") else ""),
        ]
        if run.get("loader"):
            a = run["loader"]
            lines += [
                "", f"### (a) loader: {a['images']:,} images, batch {a['batch_size']}, "
                f"{a['workers']} workers (load {a['load_before']} → {a['load_after']})", "",
                "| pipeline | images/s | vs torchvision |", "|---|---:|---:|",
                f"| torchvision CIFAR10 + DataLoader | {_f(a['torchvision_dataloader'])} | 1.0× |",
                f"| cnnlab TensorLoader (`dataset.loader=tensor`) | {_f(a['cnnlab_tensor'])} | "
                f"**{a['cnnlab_tensor'] / a['torchvision_dataloader']:.1f}×** |",
            ]
            for key, what in (("cnnlab_tensor_randaugment", "TensorLoader + `dataset.augment.policy=randaugment`"),
                              ("cnnlab_tensor_random_erasing",
                               "TensorLoader + `dataset.augment.random_erasing=0.25`")):
                if a.get(key):
                    lines.append(f"| cnnlab {what} ({a[key] / a['cnnlab_tensor']:.2f}× the plain tensor "
                                 f"loader) | {_f(a[key])} | {a[key] / a['torchvision_dataloader']:.1f}× |")
            if a.get("cnnlab_dataloader"):
                lines.append(f"| cnnlab classic path (`dataset.loader=dataloader`) | "
                             f"{_f(a['cnnlab_dataloader'])} | "
                             f"{a['cnnlab_dataloader'] / a['torchvision_dataloader']:.1f}× |")
        if run.get("models"):
            lines += [
                "", "### (b) loop overhead and (c) synthetic ceiling", "",
                "| model | compile | bare loop = ceiling (img/s) | cnnlab loop (img/s) | "
                "(b) loop ratio | cnnlab full epoch (img/s) | (c) epoch / ceiling | peak MiB | load |",
                "|---|---|---:|---:|---:|---:|---:|---:|---|",
            ]
            for r in run["models"]:
                lines.append(
                    f"| {r['model']} | {'yes' if r['compile'] else 'no'} | {_f(r['bare_ips'], 1)} | "
                    f"{_f(r['cnnlab_loop_ips'], 1)} | **{r['loop_ratio']:.3f}** | "
                    f"{_f(r['cnnlab_epoch_ips'], 1)} | **{r['epoch_vs_ceiling']:.3f}** | "
                    f"{_f(r.get('peak_memory_mb'))} | {r['load_before']} → {r['load_after']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-size smoke run (small N, 1 round)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--models", nargs="+", default=None, help="conf/model names (default: alexnet resnet18)")
    p.add_argument("--batch-size", type=int, default=None, help="train batch (default: cpu 32, gpu 512)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", nargs="?", const="on", default="off", choices=["off", "on", "both"],
                   help="torch.compile the model: on, off, or both (one row each)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed loop (default: cpu 3, gpu 50)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--epoch-images", type=int, default=None,
                   help="images in the full-epoch run (default: cpu steps*batch, gpu 50000)")
    p.add_argument("--loader-images", type=int, default=None, help="images for (a) (default 50000)")
    p.add_argument("--loader-batch-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers in (a)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core); on a loaded "
                        "machine 1 avoids OpenMP threads spinning against other processes")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="(b)/(c) timer: wall seconds, or this process's CPU seconds (steadier on a "
                        "shared machine with --threads 1; not for GPUs, whose work is not CPU time)")
    p.add_argument("--skip", nargs="*", default=[], choices=["loader", "models"])
    p.add_argument("--render", action="store_true",
                   help="only rebuild benchmarks.md from benchmarks.json (e.g. after deleting a run)")
    p.add_argument("--out-dir", default=None,
                   help="where benchmarks.json/.md go (default: docs/, or a temp folder with --quick)")
    args = p.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from cnnlab.device import resolve_device

    if args.render:
        out_dir = Path(args.out_dir or REPO / "docs")
        results = json.loads((out_dir / "benchmarks.json").read_text())
        (out_dir / "benchmarks.md").write_text(render_markdown(results))
        print(f"wrote {out_dir / 'benchmarks.md'}")
        return 0
    policy = resolve_device(args.device, args.amp, args.channels_last, False)
    device = policy.device
    gpu = device.type != "cpu"
    q = args.quick
    args.models = args.models or (["alexnet"] if q else ["alexnet", "resnet18"])
    args.batch_size = args.batch_size or (16 if q else 512 if gpu else 32)
    args.steps = args.steps or (2 if q else 50 if gpu else 3)
    args.rounds = args.rounds or (1 if q else 3)
    args.epoch_images = args.epoch_images or (50_000 if gpu and not q else None)
    args.loader_images = args.loader_images or (2048 if q else 50_000)
    out_dir = Path(args.out_dir) if args.out_dir else (
        Path(tempfile.gettempdir()) / "cnnlab-bench" if q else REPO / "docs")
    out_dir.mkdir(parents=True, exist_ok=True)

    command = "python scripts/bench.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    run: dict[str, Any] = {
        "machine": machine_info(device), "command": command.strip(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {"batch_size": args.batch_size, "amp": policy.amp, "channels_last": args.channels_last,
                     "steps": args.steps, "rounds": args.rounds, "quick": q,
                     "threads": torch.get_num_threads(), "clock": args.clock},
    }
    # One entry per setting; compiled-only runs (--compile on) apart from the eager ones.
    key = (f"{device.type}{'-quick' if q else ''} · amp {policy.amp} · "
           f"{'channels_last' if args.channels_last else 'NCHW'} · batch {args.batch_size}"
           + (" · compiled" if args.compile == "on" else ""))
    print(f"bench on {run['machine']['device']} ({run['machine'].get('gpu') or run['machine']['cpu']}, "
          f"{run['machine']['cores']} cores), load {load()}", flush=True)
    if "loader" not in args.skip:
        run["loader"] = a = bench_loader(args, device)
        print(f"(a) loader: torchvision {a['torchvision_dataloader']:,.0f} img/s, cnnlab tensor "
              f"{a['cnnlab_tensor']:,.0f} img/s = {a['ratio_tensor_vs_torchvision']:.1f}x"
              + (f", cnnlab dataloader {a['cnnlab_dataloader']:,.0f} img/s" if "cnnlab_dataloader" in a else "")
              + f"; tensor + randaugment {a['cnnlab_tensor_randaugment']:,.0f} img/s, + random erasing "
              f"{a['cnnlab_tensor_random_erasing']:,.0f} img/s",
              flush=True)
    if "models" not in args.skip:
        run["models"] = []
        compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
        for name in args.models:
            for c in compiles:
                r = bench_model(name, c, args, device, policy)
                run["models"].append(r)
                save(run, key, out_dir)  # after each model: a run stopped part-way keeps it
                print(f"{name}{' compiled' if c else ''}: bare {r['bare_ips']:,.1f} img/s, cnnlab loop "
                      f"{r['cnnlab_loop_ips']:,.1f} (b) {r['loop_ratio']:.3f}, full epoch "
                      f"{r['cnnlab_epoch_ips']:,.1f} (c) {r['epoch_vs_ceiling']:.3f} "
                      + (f"peak {r['peak_memory_mb']:,.0f} MiB " if r["peak_memory_mb"] is not None else "")
                      + f"[load {r['load_before']} -> {r['load_after']}]", flush=True)

    save(run, key, out_dir)
    print(f"wrote {out_dir / 'benchmarks.json'} and {out_dir / 'benchmarks.md'}")
    return 0


def save(run: dict[str, Any], key: str, out_dir: Path) -> None:
    """Put ``run`` under ``key`` in out_dir/benchmarks.json (other keys kept) and rebuild the .md."""
    json_path, md_path = out_dir / "benchmarks.json", out_dir / "benchmarks.md"
    results = json.loads(json_path.read_text()) if json_path.exists() else {"runs": {}}
    results.setdefault("runs", {})[key] = run
    tmp = json_path.with_name(json_path.name + ".tmp")  # write, then rename: never half a file
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, json_path)
    md_path.write_text(render_markdown(results))


if __name__ == "__main__":
    raise SystemExit(main())
