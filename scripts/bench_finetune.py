"""Fine-tuning and imbalance, measured: the tables of docs/finetune.md.

    .venv/bin/python scripts/bench_finetune.py imbalance   # long-tailed digits: plain vs weights vs sampler
    .venv/bin/python scripts/bench_finetune.py tta         # the default run's test split with and without TTA
    .venv/bin/python scripts/bench_finetune.py freeze      # training-step time, frozen backbone vs all
    .venv/bin/python scripts/bench_finetune.py transfer    # experiment=transfer_digits: scratch/frozen/gradual/decay

Each part runs real training runs (``cnnlab.train.train`` on composed configs, CPU) into a
temp folder and prints a Markdown table; ``--out FILE`` also writes the rows as JSON. On a
shared machine run it under ``nice`` and read the timings as "measured under load".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SEEDS = (0, 1, 2)
QUIET = ["device=cpu", "trainer.progress=log", "trainer.log_feature_maps=false"]


def run(overrides: list[str], out: Path) -> dict:
    """One training run in-process; its summary.json fields."""
    from cnnlab.compose import compose
    from cnnlab.train import train

    cfg = compose([*QUIET, *overrides, f"paths.output_dir={out}"])
    return train(cfg)


IMBALANCE = {"plain": [], "class_weights=balanced": ["loss.class_weights=balanced"],
             "sampler=balanced": ["dataset.sampler=balanced"],
             # a control: plain training with about the optimizer steps the oversampling sampler takes
             # (289 images: 4 steps an epoch; the sampler's 1,180 draws: 18)
             "plain, 20 epochs": ["trainer.epochs=20"]}


def imbalance(tmp: Path, configs: list[str] | None = None, seeds: list[int] | None = None) -> list[dict]:
    """dataset.imbalance=100 digits, AlexNet, default epochs: test accuracy and macro-F1 per config and seed."""
    rows = []
    for name in configs or IMBALANCE:
        for seed in seeds or SEEDS:
            folder = tmp / f"imb_{name.replace('=', '_').replace(', ', '_').replace(' ', '_')}_{seed}"  # no "="
            s = run(["dataset.imbalance=100", f"seed={seed}", *IMBALANCE[name]], folder)
            worst = min(s["test_per_class"], key=lambda r: r["f1"] or 0.0)
            rows.append({"config": name, "seed": seed, "test_acc": s["test_acc"], "test_macro_f1": s["test_macro_f1"],
                         "worst_class": worst["class"], "worst_f1": worst["f1"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summarise(rows: list[dict], key: str, metrics: tuple[str, ...]) -> str:
    """Mean and spread over seeds, one Markdown row per config."""
    lines = [f"| {key} | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name in dict.fromkeys(r[key] for r in rows):
        vals = [r for r in rows if r[key] == name]
        cells = []
        for m in metrics:
            xs = [100 * r[m] for r in vals]
            cells.append(f"{statistics.mean(xs):.1f} ± {statistics.pstdev(xs):.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tta(tmp: Path, run_dir: Path | None = None) -> list[dict]:
    """The default run (digits, AlexNet, 5 epochs; or ``run_dir``, one already trained), then its
    best.pt evaluated on its test split with tta=none/flip/crops (flip measured despite the digit-set refusal)."""
    from cnnlab.evaluation.tta import evaluate_with_tta

    if run_dir is None:
        run_dir = tmp / "default"
        run([], run_dir)
    rows = []
    for mode, padding in (("none", None), ("flip", None), ("crops", None), ("crops", 4)):
        r = evaluate_with_tta(str(run_dir), mode, padding, allow_flip=True)  # None: the run's crop padding
        rows.append({"tta": mode, "tta_padding": padding, **r})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def freeze(tmp: Path, steps: int = 30) -> list[dict]:
    """Median seconds per training step (AlexNet and ResNet-18 on digits, batch 64, CPU), all
    parameters trained vs model.freeze=backbone, measured back to back in rounds."""
    import torch

    from cnnlab.compose import compose
    from cnnlab.models.factory import instantiate_model
    from cnnlab.recipes.freeze import Freezer, frozen_names
    from cnnlab.recipes.optim import param_groups

    rows = []
    for model_name in ("alexnet", "resnet18"):
        cfg = compose([*QUIET, f"model={model_name}"])
        x = torch.randn(64, 1, 32, 32)
        y = torch.randint(0, 10, (64,))
        times: dict[str, list[float]] = {"none": [], "backbone": []}
        setups = {}
        for spec in times:
            torch.manual_seed(0)
            model = instantiate_model(cfg.model, num_classes=10, in_chans=1, img_size=32)
            fr = Freezer()
            fr.freeze(model, frozen_names(model, spec))
            opt = torch.optim.SGD(param_groups(model, 5e-4, False, fr, 0.05), lr=0.05, momentum=0.9)
            setups[spec] = (model.train(), opt)
        for _ in range(3):  # rounds, alternating, so load drift hits both alike
            for spec, (model, opt) in setups.items():
                for i in range(steps // 3 + 2):
                    t0 = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
                    if i >= 2:  # the first two of a round warm up
                        times[spec].append(time.perf_counter() - t0)
        full, frozen = statistics.median(times["none"]), statistics.median(times["backbone"])
        rows.append({"model": model_name, "step_ms_all": 1e3 * full, "step_ms_frozen_backbone": 1e3 * frozen,
                     "cut": 1 - frozen / full})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def transfer(tmp: Path, epochs: int | None = None) -> list[dict]:  # MNIST: dataset.download fetches it
    """experiment=transfer_digits: pretrain once per seed on the source set, then fine-tune on digits
    from scratch / frozen backbone / gradual unfreezing / layer decay, at equal epochs."""
    modes = {"scratch": ["model.checkpoint=null"], "frozen backbone": ["model.freeze=backbone"],
             "gradual unfreezing": ["model.freeze=backbone", "model.unfreeze_epoch=3"],
             "layer decay 0.7": ["optimizer.layer_decay=0.7"], "fine-tune all": []}
    rows = []
    for seed in SEEDS:
        run(["dataset=mnist", "trainer.epochs=3", f"seed={seed}"], tmp / f"pre_{seed}")  # step 1 (needs MNIST)
        ck = tmp / f"pre_{seed}" / "checkpoints" / "best.pt"
        for name, extra in modes.items():
            ep = [f"trainer.epochs={epochs}"] if epochs else []
            s = run(["experiment=transfer_digits", f"model.checkpoint={ck}", f"seed={seed}", *ep, *extra],
                    tmp / f"ft_{name.replace(' ', '_').replace('.', '_')}_{seed}")
            rows.append({"mode": name, "seed": seed, "test_acc": s["test_acc"], "test_macro_f1": s["test_macro_f1"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("imbalance", "tta", "freeze", "transfer"))
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--run", type=Path, help="tta: an already trained default run's folder")
    ap.add_argument("--configs", nargs="+", choices=list(IMBALANCE), help="imbalance: only these configs")
    ap.add_argument("--seeds", nargs="+", type=int, help="imbalance: only these seeds (default 0 1 2)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        extra = {"imbalance": {"configs": args.configs, "seeds": args.seeds},
                 "tta": {"run_dir": args.run}}.get(args.part, {})
        rows = globals()[args.part](Path(d), **extra)
        print(f"# {args.part}: {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if args.part == "imbalance":
        print(summarise(rows, "config", ("test_acc", "test_macro_f1", "worst_f1")))
    elif args.part == "transfer":
        print(summarise(rows, "mode", ("test_acc", "test_macro_f1")))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
