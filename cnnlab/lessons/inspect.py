"""``python -m cnnlab.inspect [overrides]``: the layer-shape inspector.

The course's "size of the output after pooling", for any model: a layer-by-layer table
(layer, kind, output shape, params, MACs, and totals) for the model at the dataset's
input size. The overrides are the ones a run takes, e.g.::

    python -m cnnlab.inspect model=alexnet dataset=cifar10
    python -m cnnlab.inspect model=resnet18 dataset=cifar10 model.small_input=false
    python -m cnnlab.inspect model=timm model.arch=convnext_atto depth=2

``depth=N`` (not a config key: the inspector's own) sums the rows into the modules N
levels deep (``layer1.0.conv1`` -> ``layer1`` at depth 1), for long tables.

It flags the layer where the feature map first shrinks to 1x1 or below: an ImageNet
stem (a 7x7/2 conv and a 3x3/2 max-pool, total stride 32) turns 224x224 into 7x7 at the
end, but 32x32 into 1x1 halfway through. When the map is gone before the last layer,
the forward pass fails; the table then stops at the layer that could not run.

How: forward hooks on every module during one forward pass of a single image
(:func:`cnnlab.models.profile.trace_layers`, which also gives a run's MAC count).
torchinfo and fvcore, the usual libraries for this, are not installed here, and hooks
see exactly what the forward pass does: any timm or torchvision model, and our own,
with no per-architecture code. The pass is real, on the CPU, with one thread: for one
32x32 image that is faster than PyTorch's shape-only ``meta`` device (whose kernels are
Python: 3x slower for a MogaNet-XTiny, no faster for a MogaNet-Large), and threads only
add sync costs at this size. The model is built on the meta device, though, and then
given empty CPU memory: its weights are never initialised, which is most of a large
model's build time, and shapes do not depend on their values.

The table is cached (:mod:`cnnlab.cache`): computing it takes a fraction of a second,
but importing torch, torchvision and timm to do so takes about 7 s on a 2-core CPU. The
entry's name hashes everything the table depends on (the resolved model config, the
input shape, the class count, the torch/torchvision/timm versions and the bytes of
cnnlab/models/ and this file), so a cached table is the one a fresh pass would give;
the tests check that. A cached answer imports no torch and takes about 1 s.
``cache=false`` recomputes (and refreshes the entry); ``--warm`` fills the cache for
every conf/model entry on every dataset, with and without ``small_input``.

The config is composed with Hydra's compose API from conf/ at the repository root,
with the run's schema, and the model is built with ``hydra.utils.instantiate(cfg.model)``
as ``train`` builds it. Heavy imports (torch, timm) happen after the arguments are
checked, so a typo answers at once.

(The module is named like the standard library's ``inspect``; that is safe because it is
only ever imported as ``cnnlab.lessons.inspect``, never as a top-level module.)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.compose import CONF_DIR, compose, composing
from cnnlab.units import human

USAGE = """\
usage: python -m cnnlab.inspect [model=NAME] [dataset=NAME] [overrides...] [depth=N] [cache=false]
       python -m cnnlab.inspect --warm

Prints the layer-by-layer table (layer, kind, output shape, params, MACs) of the model
at the dataset's input size, and flags where the feature map shrinks to 1x1.
  model=alexnet dataset=cifar10              the defaults are model=alexnet dataset=digits
  model.small_input=false                    the ImageNet stem, to see what it does to 32x32
  dataset.image_size=224                     any input size
  depth=1                                    one row per top-level module
  cache=false                                recompute the table (it is cached by default)
  --warm                                     cache every conf/model on every dataset
Config groups: model, dataset (and any key of the run's config, e.g. model.arch=...)."""

GONE = "<- 1x1: the map is gone"


@dataclass
class Row:
    name: str
    kind: str
    out_shape: tuple[int, ...]  # without the batch dimension: (C, H, W) or (features,)
    params: int
    macs: int
    in_hw: tuple[int, int] | None = None  # the input's spatial size, when 4-D
    note: str = ""


@dataclass
class Report:
    model: str
    input_shape: tuple[int, int, int]
    small_input: bool
    rows: list[Row]
    total_params: int
    failed_at: Row | None = None  # the layer whose forward raised (the map was too small)
    error: str = ""
    gone_at: int | None = None  # index in rows of the first layer that shrank the map to <= 1x1
    # Every module's output shape (containers too), for ``depth=N`` grouping: a block's
    # output is not its last leaf's (an Inception block concatenates its branches).
    module_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


# --------------------------------------------------------------------------- arguments
def split_args(argv: list[str]) -> tuple[list[str], int | None, bool]:
    """Separate the inspector's own ``depth=N`` and ``cache=BOOL`` from the Hydra overrides."""
    overrides, depth, use_cache = [], None, True
    for a in argv:
        if a.startswith("cache="):
            value = a.split("=", 1)[1].lower()
            if value not in ("true", "false"):
                raise SystemExit(f"error: cache must be true or false, got {a!r}")
            use_cache = value == "true"
        elif a.startswith("depth="):
            try:
                depth = int(a.split("=", 1)[1])
            except ValueError:
                raise SystemExit(f"error: depth must be an integer >= 1, got {a!r}") from None
            if depth < 1:
                raise SystemExit(f"error: depth must be an integer >= 1, got {a!r}")
        else:
            overrides.append(a)
    return overrides, depth, use_cache


def check_choices(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """A config-group override naming no file (``model=resnet19``) -> one line with the choices."""
    for o in overrides:
        key, sep, value = o.partition("=")
        group = conf_dir / key.lstrip("+~")
        if not sep or "." in key or not group.is_dir():
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        if value not in options and value != "null":
            close = difflib.get_close_matches(value, options, n=3, cutoff=0.5)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise SystemExit(f"error: {key}={value!r} is not an option{hint}; choose one of: "
                             f"{', '.join(options)}")


def compose_config(overrides: list[str], conf_dir: Path = CONF_DIR) -> Any:
    """The config ``python -m cnnlab.run <overrides>`` would get (the run's schema included)."""
    # paths.output_dir interpolates ${hydra:runtime.output_dir}: it is never read here.
    return compose(overrides, conf_dir=conf_dir)


# --------------------------------------------------------------------------- the model
def build_model(cfg: Any, device: str = "cpu") -> tuple[Any, tuple[int, int, int]]:
    """Build ``cfg.model`` for the dataset's input, like ``train`` does; return (model, (C,H,W)).

    No weights are loaded (``pretrained``/``checkpoint`` are ignored: they do not change
    shapes). Without a known class count (an image folder not read yet) 10 is used.
    """
    import torch
    from hydra.utils import instantiate

    import cnnlab.models  # noqa: F401  (registers MogaNet in timm before instantiate)

    num_classes, shape = input_of(cfg)
    with torch.device(device):
        model = instantiate(cfg.model, num_classes=num_classes, in_chans=shape[0],
                            img_size=shape[1], pretrained=False, checkpoint=None)
    return model, shape


def input_of(cfg: Any) -> tuple[int, tuple[int, int, int]]:
    """(class count, (C, H, W)) the model is inspected at: the dataset's."""
    dc = cfg.dataset
    num_classes = dc.num_classes if dc.num_classes is not None else 10
    return int(num_classes), (int(dc.in_chans), int(dc.image_size), int(dc.image_size))


def _is_global_pool(kind: str) -> bool:
    # A global pool is meant to end the trunk at 1x1: that is not the map being lost.
    return "Adaptive" in kind or "GlobalPool" in kind


def _too_small(err: BaseException) -> bool:
    text = str(err)
    return "too small" in text or "Kernel size can't be greater than actual input size" in text


def trace(model: Any, input_shape: tuple[int, int, int]
          ) -> tuple[list[Row], Row | None, str, dict[str, tuple[int, ...]]]:
    """The table's rows from one forward pass: (rows, failing layer or None, its error,
    every container module's output shape).

    A forward pass that fails because the map got smaller than a window ends the table
    at that layer; any other error is raised.
    """
    from cnnlab.models.profile import trace_layers

    t = trace_layers(model, input_shape)
    if t.error is not None and not _too_small(t.error):
        raise t.error
    # A Row is a LayerStat (same fields) plus the table's note.
    rows = [Row(**vars(s)) for s in t.layers]
    failed = Row(**vars(t.failed)) if t.failed is not None else None
    error = str(t.error).strip().splitlines()[0] if t.error is not None else ""
    return rows, failed, error, t.shapes


def find_gone(rows: list[Row]) -> int | None:
    """Index of the first layer that shrinks a map larger than 1x1 to 1x1 or below.

    Global pools are meant to (and end the search: what follows is the head), and a
    layer whose input is already 1x1 (a squeeze-excitation branch) shrinks nothing.
    """
    for i, r in enumerate(rows):
        if _is_global_pool(r.kind):
            return None
        if len(r.out_shape) == 3 and r.in_hw is not None and r.in_hw[0] * r.in_hw[1] > 1 \
                and r.out_shape[1] <= 1 and r.out_shape[2] <= 1:
            return i
    return None


def _uninitialised(cfg: Any) -> tuple[Any, tuple[int, int, int]] | None:
    """The model with CPU weights that were never initialised, or None where that fails.

    Shapes do not depend on the weights' values, and initialising them is most of a
    large model's build time (MogaNet-Large: 5.7 s, against 1.4 s built on the meta
    device and then given empty CPU memory). A model whose construction reads a
    tensor's value fails on the meta device: None, and the caller builds it normally.
    """
    try:
        model, shape = build_model(cfg, device="meta")
    except Exception:  # noqa: BLE001 - any failure here only means "build it the usual way"
        return None
    return model.to_empty(device="cpu"), shape


def inspect_model(cfg: Any) -> Report:
    """Build the configured model and trace it at the dataset's input size.

    The weights are left uninitialised when the model allows it (:func:`_uninitialised`).
    Should the forward pass then fail (a buffer whose values matter, such as an index
    table), the model is built with its real initialisation and traced again.
    """
    import torch

    from cnnlab.models.profile import count_params

    small = bool(cfg.model.small_input)
    _, (_, h, w) = input_of(cfg)
    threads = torch.get_num_threads()
    if h * w <= 64 * 64:
        torch.set_num_threads(1)  # one small image: more threads only add sync costs
    try:
        fast = _uninitialised(cfg)
        try:
            model, shape = fast or build_model(cfg)
            rows, failed, error, shapes = trace(model, shape)
        except Exception:
            if fast is None:
                raise
            model, shape = build_model(cfg)  # values mattered: trace a real model
            rows, failed, error, shapes = trace(model, shape)
    finally:
        torch.set_num_threads(threads)
    report = Report(cfg.model.name, shape, small, rows, count_params(model), failed, error,
                    module_shapes=shapes)
    report.gone_at = find_gone(rows)
    if report.gone_at is not None:
        rows[report.gone_at].note = GONE
    return report


# --------------------------------------------------------------------------- the cache
# Keys of cfg.model that do not change the table: weights, labels, the DDP flag.
_NOT_SHAPE = ("pretrained", "checkpoint", "sync_bn")


def cache_path(cfg: Any) -> Path:
    """Where the table of this config is cached: a hash of everything it depends on."""
    from omegaconf import OmegaConf

    from cnnlab import cache

    model = OmegaConf.to_container(cfg.model, resolve=True)
    for k in _NOT_SHAPE:
        model.pop(k, None)
    num_classes, shape = input_of(cfg)
    code = [*sorted((Path(__file__).parents[1] / "models").glob("*.py")), Path(__file__)]
    key = {"model": model, "num_classes": num_classes, "input": shape,
           "versions": cache.versions("torch", "torchvision", "timm"),
           "code": cache.source_digest(*code)}
    label = re.sub(r"[^\w.-]", "_", str(cfg.model.name))  # e.g. a hub name's "/" and ":"
    return cache.cache_root() / "inspect" / f"{label}-{cache.digest(key)}.json"


def report_to_json(report: Report) -> dict[str, Any]:
    return dataclasses.asdict(report)


def report_from_json(d: dict[str, Any]) -> Report:
    """The inverse of :func:`report_to_json` (JSON has lists where the report has tuples)."""
    def row(r: dict[str, Any] | None) -> Row | None:
        if r is None:
            return None
        return Row(r["name"], r["kind"], tuple(r["out_shape"]), r["params"], r["macs"],
                   tuple(r["in_hw"]) if r["in_hw"] is not None else None, r["note"])

    return Report(d["model"], tuple(d["input_shape"]), d["small_input"], [row(r) for r in d["rows"]],
                  d["total_params"], row(d["failed_at"]), d["error"], d["gone_at"],
                  {k: tuple(v) for k, v in d["module_shapes"].items()})


def cached_report(cfg: Any, use_cache: bool = True) -> tuple[Report, Path | None]:
    """The report of ``cfg``, from the cache when it holds one; (report, cache file if read).

    A computed report is stored, unless the cache can't be written (then it is just
    not cached). So is a model that refuses the input (AlexNet's stride-4 stem on
    32x32): that raises :class:`ModelError` with the model's own message, cached or not.
    An unreadable entry counts as missing.
    """
    from hydra.errors import InstantiationException

    from cnnlab import cache
    from cnnlab.errors import CnnlabError, ModelError

    path = cache_path(cfg)
    if use_cache:
        stored = cache.read(path)
        if isinstance(stored, dict) and isinstance(stored.get("refused"), str):
            raise ModelError(stored["refused"])
        if stored is not None:
            try:
                return report_from_json(stored), path
            except (KeyError, TypeError, ValueError):
                pass  # written by another version of this file: recompute below
    try:
        report = inspect_model(cfg)
    except InstantiationException as e:
        # instantiate wraps the model's own refusal, e.g. AlexNet's "img_size=32 is too
        # small for AlexNet (map shrinks below 1x1)": keep its first line.
        if not isinstance(e.__cause__, (CnnlabError, ValueError)):
            raise
        text = str(e.__cause__).strip().splitlines()[0] or type(e.__cause__).__name__
        cache.write(path, {"refused": text})
        raise ModelError(text) from None
    cache.write(path, report_to_json(report))
    return report, None


def warm(conf_dir: Path = CONF_DIR, out: Any = sys.stdout) -> int:
    """Cache the table of every conf/model entry on every dataset, small_input true and false.

    The generic ``timm``/``torchvision`` entries (they need an arch) and ``imagefolder``
    (it needs a folder) are left out. One process: torch and timm are imported once.
    Returns how many tables were computed (the others were cached already).
    """
    from cnnlab.errors import CnnlabError

    models = sorted(p.stem for p in (conf_dir / "model").glob("*.yaml")
                    if p.stem not in ("timm", "torchvision"))
    datasets = sorted(p.stem for p in (conf_dir / "dataset").glob("*.yaml") if p.stem != "imagefolder")
    computed = 0
    with composing(conf_dir) as compose_one:
        for m in models:
            for d in datasets:
                for small in ("true", "false"):
                    cfg = compose_one([f"model={m}", f"dataset={d}", f"model.small_input={small}"])
                    if cache_path(cfg).is_file():
                        continue
                    try:
                        cached_report(cfg, use_cache=False)
                    except CnnlabError as e:  # e.g. AlexNet's stride-4 stem on 32x32
                        print(f"  {m} {d} small_input={small}: {e}", file=out)
                        continue
                    computed += 1
                    print(f"cached {m} on {d} (small_input={small})", file=out, flush=True)
    return computed


# --------------------------------------------------------------------------- output


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s)) if s else "-"


def group_rows(rows: list[Row], depth: int,
               module_shapes: dict[str, tuple[int, ...]] | None = None) -> list[Row]:
    """Sum consecutive rows with the same first ``depth`` name parts into one row.

    The group's output shape is the module's own (from ``module_shapes``), else its
    last row's; its kind is the layer's kind when the group is one layer, else
    ``<n> layers``. A flag inside a group is kept.
    """
    shapes = module_shapes or {}
    out: list[Row] = []
    count = 0
    for r in rows:
        key = ".".join(r.name.split(".")[:depth])
        if out and out[-1].name == key:
            g = out[-1]
            g.out_shape = shapes.get(key, r.out_shape)
            g.params, g.macs = g.params + r.params, g.macs + r.macs
            g.note = g.note or r.note
            count += 1
            g.kind = f"{count} layers"
        else:
            out.append(Row(key, r.kind, r.out_shape, r.params, r.macs, r.in_hw, r.note))
            count = 1
    return out


def format_report(report: Report, depth: int | None = None) -> str:
    """The table, the totals, and the notes, as printed by the CLI."""
    c, h, w = report.input_shape
    rows = group_rows(report.rows, depth, report.module_shapes) if depth else report.rows
    head = ["#", "layer", "kind", "output", "params", "MACs", ""]
    table = [[str(i), r.name, r.kind, _shape(r.out_shape), human(r.params), human(r.macs), r.note]
             for i, r in enumerate(rows, 1)]
    if report.failed_at is not None:
        f = report.failed_at
        where = f"input {f.in_hw[0]}x{f.in_hw[1]}" if f.in_hw else "its input"
        table.append([str(len(rows) + 1), f.name, f.kind, "fails", human(f.params), "-",
                      f"<- {where} is smaller than its window"])
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head))]
    right = {0, 4, 5}

    def line(cells: list[str]) -> str:
        return "  ".join(x.rjust(wd) if i in right else x.ljust(wd)
                         for i, (x, wd) in enumerate(zip(cells, widths, strict=True))).rstrip()

    small = "true" if report.small_input else "false"
    out = [f"{report.model} at {c}x{h}x{w} (model.small_input={small}), one image, eval mode", "",
           line(head), line(["-" * wd for wd in widths]), *map(line, table)]

    total_macs = sum(r.macs for r in report.rows)
    in_rows = sum(r.params for r in report.rows)
    out += ["", f"total: {report.total_params:,} params ({human(report.total_params)}), "
                f"{total_macs:,} MACs ({human(total_macs)}) per image"
                + (" up to the failing layer" if report.failed_at is not None else "")]
    if in_rows != report.total_params and report.failed_at is None:
        out.append(f"  {report.total_params - in_rows:,} params are in no row: held by container "
                   "modules (e.g. layer scales) or by layers that do not run in eval mode "
                   "(e.g. auxiliary heads)")
    out.append("  MACs: multiply-accumulates of Conv2d and Linear layers (BatchNorm, activations "
               "and pooling are left out)")
    out += _closing_notes(report)
    return "\n".join(out)


def _closing_notes(report: Report) -> list[str]:
    """Why the map was lost, and what to do about it."""
    c, h, w = report.input_shape
    if report.gone_at is None and report.failed_at is None:
        spatial = [r.out_shape for r in report.rows if len(r.out_shape) == 3
                   and not _is_global_pool(r.kind)]
        if spatial:
            last = spatial[-1]
            return ["", f"final feature map before the classifier: {_shape(last)} "
                        f"(from a {h}x{w} input)"]
        return []
    if report.failed_at is not None:
        where = f"the forward pass fails at {report.failed_at.name} ({report.error})"
    else:
        r = report.rows[report.gone_at]
        where = (f"{r.name} ({r.kind}) shrinks the map from {r.in_hw[0]}x{r.in_hw[1]} to "
                 f"{r.out_shape[1]}x{r.out_shape[2]}: later convs see one pixel, so a 3x3 kernel "
                 "uses only its centre weight and a pool has nothing left to pool")
    notes = ["", f"note: at {h}x{w}, {where}."]
    if not report.small_input:
        notes += [
            "  ImageNet networks are made for 224x224 and downsample by 32 in all (ResNet: a 7x7/2",
            "  conv and a 3x3/2 max-pool in the stem, then three stride-2 stages): 224/32 = 7x7 at",
            "  the end, but 32/32 = 1x1. Use model.small_input=true: it makes the stem stride 1",
            "  (ResNet: a 3x3/1 conv, no max-pool), as the 32x32 datasets do by default.",
        ]
    else:
        notes.append("  Even with small_input this network downsamples too often for the image; "
                     "use a larger dataset.image_size or a shallower model.")
    return notes


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Parse the overrides, compose the config, print the table; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    if "--warm" in argv and argv != ["--warm"]:
        print("error: --warm takes no other arguments (it caches every conf/model on every dataset)",
              file=sys.stderr)
        return 2
    if argv == ["--warm"]:
        from cnnlab.cache import cache_root

        n = warm()
        print(f"{n} tables computed; the cache is {cache_root() / 'inspect'}")
        return 0
    try:
        overrides, depth, use_cache = split_args(argv)
        check_choices(overrides)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab.errors import CnnlabError

    try:
        cfg = compose_config(overrides)
        from cnnlab.config import validate

        validate(cfg, needs_data=False)  # the table needs no images: a folder's root may be missing
        report, hit = cached_report(cfg, use_cache)
    except (HydraException, OmegaConfBaseException, CnnlabError) as e:
        # instantiate wraps the model's own errors: show the cause's message.
        cause = e.__cause__ if isinstance(e.__cause__, (CnnlabError, ValueError)) else e
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        print(f"error: {text}", file=sys.stderr)
        if "too small" in text and "cfg" in locals() and not cfg.model.small_input:
            print("  (an ImageNet stem on a small image: try model.small_input=true)", file=sys.stderr)
        return 2
    print(format_report(report, depth))
    if hit is not None:
        print(f"\n(read from the cache: {hit}; cache=false recomputes it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
