"""The course demos: ``python -m cnnlab.demo conv|pool|feature_maps [key=value ...]`` (``--help``).

``conv`` and ``pool`` compose ``conf/demo/<name>.yaml`` with the overrides (Hydra's compose
API: nothing is written); ``feature_maps`` rebuilds a trained model and its dataset from the
checkpoint, with the resolver evaluate and predict use (:mod:`cnnlab.evaluation.source`).
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cnnlab.compose import CONF_DIR
from cnnlab.errors import ConfigError
from cnnlab.lessons import conv_explain as cx
from cnnlab.lessons.conv_explain import LessonInputError, format_matrix

DEMO_CONF_DIR = CONF_DIR / "demo"

# Hand and torch results must agree to float64 round-off (inputs are small).
TOLERANCE = 1e-9


def _cases(raw: Any, defaults: Mapping[str, Any], check: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
    """The ``cases`` list: dicts with known keys, missing keys from ``defaults``, each passing
    ``check`` (all checked before anything is printed, so a bad value is one clean error)."""
    if not isinstance(raw, list) or not raw:
        raise LessonInputError(f"cases must be a non-empty list of mappings, got {raw!r}")
    cases = []
    for n, case in enumerate(raw):
        if not isinstance(case, dict):
            raise LessonInputError(f"cases[{n}] must be a mapping like {dict(defaults)}, got {case!r}")
        unknown = sorted(set(case) - set(defaults))
        if unknown:
            raise LessonInputError(f"cases[{n}] has unknown key {unknown[0]!r}; known keys: {', '.join(defaults)}")
        case = {**defaults, **case}
        try:
            check(case)
        except LessonInputError as err:
            raise LessonInputError(f"cases[{n}]: {err}") from None
        cases.append(case)
    return cases


def _show(title: str, m: list[list[float]]) -> None:
    print(f"{title} ({len(m)}x{len(m[0])}):")
    print(format_matrix(m))


def _agreement(name: str, hand: list[list[float]], ref: list[list[float]]) -> bool:
    """Print whether the hand-computed matrix matches PyTorch's; return True if it does."""
    diff = cx.max_abs_diff(hand, ref)
    if diff <= TOLERANCE:
        print(f"  {name} agrees with the loops: yes (max |difference| = {diff:g})")
        return True
    print(f"  {name} agrees with the loops: NO (max |difference| = {diff:g}); torch gives:")
    print(format_matrix(ref, indent="    "))
    return False


# --------------------------------------------------------------------------- conv
def run_conv(cfg: dict[str, Any]) -> int:
    """Print input, kernel and, per case, the size formula and the output (hand vs torch)."""
    x, k = cx.as_matrix(cfg["input"], "input"), cx.as_matrix(cfg["kernel"], "kernel")
    cases = _cases(cfg["cases"], {"stride": 1, "padding": 0, "dilation": 1},
                   lambda c: cx.check_conv_args(x, k, c["stride"], c["padding"], c["dilation"]))

    (h, w), (kh, kw) = (len(x), len(x[0])), (len(k), len(k[0]))
    print("2-D convolution by hand: slide the kernel over the input; each output value is")
    print("the sum of elementwise products of the kernel and the window under it.")
    print("(PyTorch's conv2d does not flip the kernel: strictly, it is cross-correlation.)\n")
    _show("input", x)
    _show("kernel", k)

    all_agree = True
    for n, c in enumerate(cases, start=1):
        s, p, d = c["stride"], c["padding"], c["dilation"]
        print(f"\n--- case {n}: stride={s}, padding={p}, dilation={d} ---")
        print("output size: floor((H + 2p - d(k-1) - 1)/s) + 1")
        print("  " + cx.formula_text(h, kh, s, p, d, axis="H"))
        print("  " + cx.formula_text(w, kw, s, p, d, axis="W"))
        out = cx.conv2d_by_hand(x, k, s, p, d)
        _show("output by hand", out)
        print("  e.g. " + cx.window_products_text(x, k, 0, 0, s, p, d))
        all_agree &= _agreement("torch.nn.functional.conv2d", out, cx.torch_conv2d(x, k, s, p, d))
    return 0 if all_agree else 1


# --------------------------------------------------------------------------- pool
def _explain_integer_pitfall(x: list[list[float]], kernel: int, ceil_mode: bool) -> None:
    """Re-run the course's mistake (pooling a torch.long tensor), explain it, give the fix."""
    report = cx.integer_pool_check(x, kernel, ceil_mode)
    print("\n--- the integer-tensor pitfall ---")
    first_row = "[" + ", ".join(str(int(v)) for v in x[0]) + "]"
    print(f"The course built its input with torch.tensor([{first_row}, ...]): Python ints,")
    print(f"so the tensor's dtype is {report['dtype']} ('Long'). Then it max-pooled it:")
    if any(v != int(v) for row in x for v in row):
        print("  (this input has fractions; they are truncated to ints for this experiment)")
    print(f"  F.max_pool2d(x, kernel_size={kernel}, ceil_mode={ceil_mode})")
    if report["max_error"] is not None:
        print(f"  -> RuntimeError: {report['max_error']}")
    else:
        # Integer max pooling was added in later PyTorch releases; say so instead of
        # pretending the error still happens, and show an op that still refuses Long.
        print(f"  -> no error on torch {report['torch_version']}: newer releases implement")
        print("     max_pool2d for integer tensors; older ones (like the course's) raised")
        print("     RuntimeError: \"max_pool2d\" not implemented for 'Long'")
        if report["adaptive_error"] is not None:
            print("  F.adaptive_max_pool2d(x, 1) on this version still does:")
            print(f"  -> RuntimeError: {report['adaptive_error']}")
    print("Why: PyTorch compiles each kernel for a list of dtypes, and pooling was written")
    print("for floating-point tensors (an average needs fractions); networks work in float32.")
    if report["avg_error"] is not None:
        print(f"  F.avg_pool2d on the same tensor -> RuntimeError: {report['avg_error']}")
    elif cx.max_abs_diff(report["avg_long"], report["avg_float"]) > TOLERANCE:
        print("And where integer pooling runs, F.avg_pool2d on Long truncates the means:")
        print(format_matrix(report["avg_long"], indent="    "))
        print("  instead of (float32):")
        print(format_matrix(report["avg_float"], indent="    "))
    print("Fix: create the tensor as float: torch.tensor(data, dtype=torch.float32)")
    print("     (or convert an existing one with x.float()).")


def run_pool(cfg: dict[str, Any]) -> int:
    """Print input and, per case and mode, the floor/ceil size formula and the pooled output."""
    x, modes = cx.as_matrix(cfg["input"], "input"), cfg["modes"]
    if not isinstance(modes, list) or not modes or any(m not in ("max", "avg") for m in modes):
        raise LessonInputError(f"modes must be a non-empty list of 'max'/'avg', got {modes!r}")

    def check(c: dict[str, Any]) -> None:
        cx.check_int(c["kernel"], "kernel", 1)
        if c["stride"] is None:  # PyTorch's default: stride = kernel size
            c["stride"] = c["kernel"]
        cx.check_pool_args(x, c["kernel"], c["stride"], c["padding"], c["ceil_mode"])

    cases = _cases(cfg["cases"], {"kernel": 3, "stride": None, "padding": 0, "ceil_mode": False}, check)

    h, w = len(x), len(x[0])
    print("2-D pooling by hand: slide a window over the input; max pooling keeps the largest")
    print("value in each window, average pooling its mean. The stride defaults to the kernel")
    print("size (as in nn.MaxPool2d), so windows do not overlap.\n")
    _show("input", x)

    all_agree = True
    for n, c in enumerate(cases, start=1):
        k, s, p, ceil = c["kernel"], c["stride"], c["padding"], c["ceil_mode"]
        print(f"\n--- case {n}: kernel={k}, stride={s}, padding={p}, ceil_mode={ceil} ---")
        if ceil:
            print("output size: ceil((H + 2p - d(k-1) - 1)/s) + 1 with d = 1 (a partial window")
            print("is kept), but PyTorch also requires the last window to start inside the input")
            print("or the left padding")
        else:
            print("output size: floor((H + 2p - d(k-1) - 1)/s) + 1 with d = 1")
            print("(a partial window at the edge is dropped)")
        print(textwrap.indent(cx.formula_text(h, k, s, p, 1, ceil, axis="H"), "  "))
        print(textwrap.indent(cx.formula_text(w, k, s, p, 1, ceil, axis="W"), "  "))
        for mode in modes:
            out = cx.pool2d_by_hand(x, k, s, p, ceil, mode)
            _show(f"{'max' if mode == 'max' else 'average'} pooling by hand", out)
            ref_name = "F.max_pool2d" if mode == "max" else "F.avg_pool2d"
            all_agree &= _agreement(ref_name, out, cx.torch_pool2d(x, k, s, p, ceil, mode))

    if cfg["integer_pitfall"]:
        first = cases[0]
        _explain_integer_pitfall(x, first["kernel"], first["ceil_mode"])
    return 0 if all_agree else 1


# --------------------------------------------------------------------------- feature maps
FEATURE_MAPS_USAGE = """\
usage: python -m cnnlab.demo feature_maps run=RUN_OR_CHECKPOINT [checkpoint=best|last] [out=DIR]
                                          [images=N] [split=val|train|test]

Writes what a trained model sees into TensorBoard: the input images, their max-pooled
versions, the first conv layer's and each downsampling stage's output channels (one
grayscale tile per channel), and the first layer's kernels. The model and the dataset
are the ones the checkpoint was trained with.

  run=RUN_OR_CHECKPOINT  a run folder (outputs/<date>/<run>) or a checkpoint file
  checkpoint=best|last   which checkpoint of the run folder (default best); the older
                         checkpoint=<file or run folder> still means run=<it>
  out=DIR                the TensorBoard folder (default: <run>/tb_feature_maps, or
                         tb_feature_maps next to a checkpoint outside a run folder)
  images=N               how many images of the split to show (default 8; maps: the first)
  split=val              which split the images come from (train, val or test)
e.g. python -m cnnlab.demo feature_maps run=outputs/<date>/<run>"""

def _feature_maps_args(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The demo's own ``key=value`` arguments, checked, and the others."""
    from cnnlab.lessons.inspect import own_args

    own, others = own_args(args, {"run": None, "checkpoint": None, "out": None, "images": "8", "split": "val"})
    if own["checkpoint"] not in (None, "best", "last"):  # the older spelling: checkpoint=<path>
        own["run"], own["checkpoint"] = own["run"] or own["checkpoint"], None
    own["images"] = cx.check_int(int(own["images"]) if str(own["images"]).isdigit() else own["images"], "images", 1)
    if own["split"] not in ("train", "val", "test"):
        raise LessonInputError(f"split must be train, val or test, got {own['split']!r}")
    return own, others


def run_feature_maps(args: list[str]) -> int:
    """Rebuild the checkpoint's model and dataset, and log its feature maps to TensorBoard."""
    if {"-h", "--help"} & set(args):
        print(FEATURE_MAPS_USAGE)
        return 0
    own, others = _feature_maps_args(args)
    from cnnlab.evaluation import source

    src = source.resolve(own["run"], own["checkpoint"] or "best")
    ck = source.load(src)
    ds, node = source.dataset_config(ck), ck["config"]["model"]
    trained = {"model": str(node.get("name")), "dataset": str(ds.get("name"))}
    for a in others:  # model=<its name> dataset=<its name>, as older invocations gave them, are fine
        key, _, value = a.partition("=")
        if trained.get(key) != value:
            raise LessonInputError(
                f"{a}: the checkpoint names the model and the dataset (trained as model={trained['model']} "
                f"dataset={trained['dataset']}); feature_maps takes run=, checkpoint=, out=, images=, split=")

    n = own["images"]
    data = source.load_data({**ds, "limit": n})  # n images per split: all the demo shows
    split = getattr(data, own["split"])
    if len(split) == 0:
        raise LessonInputError(f"the {own['split']} split of {ds['name']} is empty; pick another split=")
    images = split.x[:n].float() / 255.0  # (n, C, H, W) uint8 -> [0, 1]
    model = source.build_model(ck, len(source.saved_class_names(ck) or data.classes))
    step = ck.get("epoch") if isinstance(ck.get("epoch"), int) else 0
    out = Path(own["out"]) if own["out"] else src.home / "tb_feature_maps"

    from torch.utils.tensorboard import SummaryWriter

    from cnnlab.lessons.featuremaps import log_feature_maps

    with SummaryWriter(log_dir=str(out)) as writer:
        tags = log_feature_maps(model, images, writer, step, mean=list(ds["mean"]), std=list(ds["std"]))
    print(f"feature maps of {src.checkpoint} ({trained['model']} on {trained['dataset']} {own['split']}, "
          f"epoch {step}):")
    for tag in tags:
        print(f"  {tag}")
    print(f"written to {out}\nview them with: tensorboard --logdir {out}")
    return 0


# --------------------------------------------------------------------------- dispatch
# To add a demo: ``run_<name>(cfg) -> int`` (raise LessonInputError for bad values), which
# takes conf/demo/<name>.yaml (printed as its ``--help``) composed with the overrides.
DEMOS: dict[str, Callable[[Any], int]] = {"conv": run_conv, "pool": run_pool, "feature_maps": run_feature_maps}


def _usage() -> str:
    names = " | ".join(DEMOS)
    return (f"usage: python -m cnnlab.demo <{names}> [key=value ...]\n"
            f"       python -m cnnlab.demo <{names}> --help   (its keys and examples)")


def main(argv: list[str] | None = None) -> int:
    """Run the demo ``argv[0]`` names with the rest of ``argv``; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in DEMOS:
        raise ConfigError(f"unknown demo {name!r}; choose from: {', '.join(DEMOS)}")
    if name == "feature_maps":
        return run_feature_maps(rest)
    if {"-h", "--help"} & set(rest):
        print((DEMO_CONF_DIR / f"{name}.yaml").read_text(), end="")
        return 0
    from omegaconf import OmegaConf

    from cnnlab.compose import compose

    # Plain lists, dicts and numbers: what the hand-written loops and their checks take.
    return DEMOS[name](OmegaConf.to_container(compose(rest, config_name=name, conf_dir=DEMO_CONF_DIR), resolve=True))
