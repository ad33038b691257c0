"""``python -m cnnlab.inspect``: the layer-shape inspector (docs/lessons.md, "Layer-shape inspector").

One probe with hooks on every module (:func:`cnnlab.models.profile.trace_layers`), so any
model works with no per-architecture code; the printed table is cached (:func:`cached_table`),
so a repeated question imports no torch. (Named like the standard library's ``inspect``:
safe, as it is only ever imported as ``cnnlab.lessons.inspect``.)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.compose import CONF_DIR, compose, composing
from cnnlab.errors import ConfigError
from cnnlab.units import human

USAGE = """\
usage: python -m cnnlab.inspect [model=NAME] [dataset=NAME] [overrides...] [depth=N] [cache=false]
       python -m cnnlab.inspect run=RUN_OR_CHECKPOINT [checkpoint=best|last] [depth=N]
       python -m cnnlab.inspect --warm

Prints the layer-by-layer table (layer, kind, output shape, params, MACs) of the model
at the dataset's input size, and flags where the feature map shrinks to 1x1.
  model=alexnet dataset=cifar10              the defaults are model=alexnet dataset=digits
  model.small_input=false                    the ImageNet stem, to see what it does to 32x32
  dataset.image_size=224                     any input size
  run=outputs/<date>/<run>                   the model a run trained (or a checkpoint file)
  depth=1                                    one row per top-level module
  cache=false                                recompute the table (it is cached by default)
  --warm                                     cache every conf/model on every dataset
Config groups: model, dataset (and any key of the run's config, e.g. model.arch=...)."""

GONE = "<- 1x1: the map is gone"


@dataclass
class Report:
    model: str
    input_shape: tuple[int, int, int]
    small_input: bool
    trace: Any  # cnnlab.models.profile.Trace
    total_params: int


def own_args(argv: list[str], defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A tool's own ``key=value`` arguments (the keys of ``defaults``), and the others."""
    own, others = dict(defaults), []
    for a in argv:
        key, sep, value = a.partition("=")
        if sep and key in own:
            own[key] = value
        else:
            others.append(a)
    return own, others


def split_args(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The inspector's own ``depth=``, ``cache=``, ``run=``, ``checkpoint=``, and the Hydra overrides."""
    own, overrides = own_args(argv, {"depth": None, "cache": "true", "run": None, "checkpoint": None})
    if own["cache"].lower() not in ("true", "false"):
        raise ConfigError(f"cache={own['cache']}: cache must be true or false")
    own["cache"] = own["cache"].lower() == "true"
    if own["depth"] is not None:
        if not (own["depth"].isdigit() and int(own["depth"]) >= 1):
            raise ConfigError(f"depth={own['depth']}: depth must be an integer >= 1")
        own["depth"] = int(own["depth"])
    return overrides, own


# --------------------------------------------------------------------------- the model
def input_of(cfg: Any) -> tuple[int, tuple[int, int, int]]:
    """(class count, (C, H, W)) the model is inspected at: the dataset's (10 classes when unknown)."""
    dc = cfg.dataset
    num_classes = dc.num_classes if dc.num_classes is not None else 10
    return int(num_classes), (int(dc.in_chans), int(dc.image_size), int(dc.image_size))


def build_model(cfg: Any, device: str = "cpu") -> tuple[Any, tuple[int, int, int]]:
    """``cfg.model`` for the dataset's input, as ``train`` builds it, with no weights loaded."""
    import torch
    from hydra.utils import instantiate

    import cnnlab.models  # noqa: F401  (registers MogaNet in timm before instantiate)

    num_classes, shape = input_of(cfg)
    with torch.device(device):
        model = instantiate(cfg.model, num_classes=num_classes, in_chans=shape[0],
                            img_size=shape[1], pretrained=False, checkpoint=None)
    return model, shape


def trace(model: Any, input_shape: tuple[int, int, int]) -> Any:
    """The model's Trace; a forward that fails because the map got smaller than a window ends
    the table at that layer, any other error is raised."""
    from cnnlab.models.profile import one_thread, trace_layers

    with one_thread(input_shape[1] * input_shape[2] <= 64 * 64):  # one small image
        t = trace_layers(model, input_shape)
    too_small = ("too small", "Kernel size can't be greater than actual input size")
    if t.error is not None and not any(s in str(t.error) for s in too_small):
        raise t.error
    return t


def inspect_model(cfg: Any) -> Report:
    """Build the configured model and trace it.

    It is first built on the meta device and given empty CPU memory: weights never
    initialised (MogaNet-Large: 1.4 s, against 5.7 s). Where that fails (construction
    reads a tensor's value, or a buffer's values matter in the forward, such as an index
    table), the model is built for real and traced again.
    """
    from cnnlab.models.profile import count_params

    try:
        model, shape = build_model(cfg, device="meta")
        model = model.to_empty(device="cpu")
        t = trace(model, shape)
    except Exception:  # noqa: BLE001 - values mattered: trace a real model
        model, shape = build_model(cfg)
        t = trace(model, shape)
    return Report(cfg.model.name, shape, bool(cfg.model.small_input), t, count_params(model))


def inspect_run(run: str, checkpoint: str = "best") -> Report:
    """The model of a run folder or checkpoint, rebuilt as evaluate and predict rebuild it."""
    from cnnlab.evaluation import source
    from cnnlab.models.profile import count_params

    ck = source.load(source.resolve(run, checkpoint))
    ds, node = source.dataset_config(ck), ck["config"]["model"]
    names = source.saved_class_names(ck) or source.load_data(ds).classes
    model = source.build_model(ck, len(names))
    shape = (int(ds["in_chans"]), int(ds["image_size"]), int(ds["image_size"]))
    return Report(str(node["name"]), shape, bool(node.get("small_input")), trace(model, shape),
                  count_params(model))


# --------------------------------------------------------------------------- the table
def _is_global_pool(kind: str) -> bool:
    # A global pool is meant to end the trunk at 1x1: that is not the map being lost.
    return "Adaptive" in kind or "GlobalPool" in kind


def find_gone(layers: list[Any]) -> int | None:
    """Index of the first layer that shrinks a map larger than 1x1 to 1x1 or below.

    Global pools are meant to (and end the search: what follows is the head), and a
    layer whose input is already 1x1 (a squeeze-excitation branch) shrinks nothing.
    """
    for i, r in enumerate(layers):
        if _is_global_pool(r.kind):
            return None
        if len(r.out_shape) == 3 and r.in_hw is not None and r.in_hw[0] * r.in_hw[1] > 1 \
                and r.out_shape[1] <= 1 and r.out_shape[2] <= 1:
            return i
    return None


def rows(report: Report, depth: int | None = None) -> list[Any]:
    """The table's rows: one per leaf call, or at ``depth`` one per module that deep.

    A group's params sum its rows'; its output shape and MACs are the module's own
    (an Inception block's output concatenates its branches); its kind is the layer's
    when it holds one, else ``<n> layers``.
    """
    from cnnlab.models.profile import LayerStat

    if not depth:
        return report.trace.layers
    out: list[Any] = []
    count = 0
    for r in report.trace.layers:
        key = ".".join(r.name.split(".")[:depth])
        if out and out[-1].name == key:
            g, count = out[-1], count + 1
            g.out_shape, g.params, g.macs, g.kind = r.out_shape, g.params + r.params, g.macs + r.macs, f"{count} layers"
        else:
            out.append(LayerStat(key, r.kind, r.out_shape, r.params, r.macs, r.in_hw))
            count = 1
    for g in out:
        g.out_shape, g.macs = report.trace.modules.get(g.name, (g.out_shape, g.macs))
    return out


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s)) if s else "-"


def format_report(report: Report, depth: int | None = None) -> str:
    """The table, the totals, and the notes, as printed by the CLI."""
    t = report.trace
    c, h, w = report.input_shape
    gone = find_gone(t.layers)
    lost = t.layers[gone].name if gone is not None else None
    head = ["#", "layer", "kind", "output", "params", "MACs", ""]
    table = [[str(i), r.name, r.kind, _shape(r.out_shape), human(r.params), human(r.macs),
              GONE if lost is not None and (r is t.layers[gone] or depth and (lost + ".").startswith(r.name + "."))
              else ""]
             for i, r in enumerate(rows(report, depth), 1)]
    if t.failed is not None:
        f = t.failed
        where = f"input {f.in_hw[0]}x{f.in_hw[1]}" if f.in_hw else "its input"
        table.append([str(len(table) + 1), f.name, f.kind, "fails", human(f.params), "-",
                      f"<- {where} is smaller than its window"])
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(x.rjust(wd) if i in (0, 4, 5) else x.ljust(wd)
                         for i, (x, wd) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [f"{report.model} at {c}x{h}x{w} (model.small_input={str(report.small_input).lower()}), "
           "one image, eval mode", "", line(head), line(["-" * wd for wd in widths]), *map(line, table), "",
           f"total: {report.total_params:,} params ({human(report.total_params)}), {t.macs:,} MACs "
           f"({human(t.macs)}) per image" + (" up to the failing layer" if t.failed is not None else "")]
    in_rows = sum(r.params for r in t.layers)
    if in_rows != report.total_params and t.failed is None:
        out.append(f"  {report.total_params - in_rows:,} params are in no row: held by container modules "
                   "(e.g. layer scales) or by layers that do not run in eval mode (e.g. auxiliary heads)")
    out.append("  MACs: torch's FlopCounterMode FLOPs / 2: convolutions and matrix products (attention "
               "too); BatchNorm, activations and pooling count nothing")
    return "\n".join(out + _closing_notes(report, gone))


def _closing_notes(report: Report, gone: int | None) -> list[str]:
    """The final map, or why the map was lost and what to do about it."""
    t, (_, h, w) = report.trace, report.input_shape
    if gone is None and t.failed is None:
        maps = [r.out_shape for r in t.layers if len(r.out_shape) == 3 and not _is_global_pool(r.kind)]
        return ["", f"final feature map before the classifier: {_shape(maps[-1])} (from a {h}x{w} input)"] \
            if maps else []
    if t.failed is not None:
        error = str(t.error).strip().splitlines()[0]
        where = f"the forward pass fails at {t.failed.name} ({error})"
    else:
        r = t.layers[gone]
        where = (f"{r.name} ({r.kind}) shrinks the map from {r.in_hw[0]}x{r.in_hw[1]} to "
                 f"{r.out_shape[1]}x{r.out_shape[2]}: later convs see one pixel, so a 3x3 kernel "
                 "uses only its centre weight and a pool has nothing left to pool")
    if report.small_input:
        return ["", f"note: at {h}x{w}, {where}.", "  Even with small_input this network downsamples too "
                "often for the image; use a larger dataset.image_size or a shallower model."]
    return ["", f"note: at {h}x{w}, {where}.",
            "  ImageNet networks are made for 224x224 and downsample by 32 in all (ResNet: a 7x7/2",
            "  conv and a 3x3/2 max-pool in the stem, then three stride-2 stages): 224/32 = 7x7 at",
            "  the end, but 32/32 = 1x1. Use model.small_input=true: it makes the stem stride 1",
            "  (ResNet: a 3x3/1 conv, no max-pool), as the 32x32 datasets do by default."]


# --------------------------------------------------------------------------- the cache
# The table is cached as JSON under a hash of everything it depends on, so a changed input
# gets a new name and a stale entry is never read; computing it takes a fraction of a second,
# importing torch, torchvision and timm to do so about 7 s on 2 cores.
# Keys of cfg.model that do not change the table: weights, the DDP flag.
_NOT_SHAPE = ("pretrained", "checkpoint", "sync_bn")


def cache_root() -> Path:
    """``$CNNLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnlab``, else ``~/.cache/cnnlab`` (the XDG
    convention torch.hub and Hugging Face follow); not created here, always safe to delete."""
    if os.environ.get("CNNLAB_CACHE_DIR"):
        return Path(os.environ["CNNLAB_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "cnnlab"


def versions(*dists: str) -> dict[str, str | None]:
    """Installed versions of ``dists`` from their metadata (None: not installed), importing none."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def source_digest(*paths: Path) -> list[tuple[str, str]]:
    """The names and bytes' hashes of the given files (the code a table depends on)."""
    return [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(paths)]


def cache_path(cfg: Any, depth: int | None = None) -> Path:
    """Where the table of this config is cached: a hash of everything it depends on."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    for k in _NOT_SHAPE:
        model.pop(k, None)
    num_classes, shape = input_of(cfg)
    code = [*sorted((Path(__file__).parents[1] / "models").glob("*.py")), Path(__file__)]
    key = {"model": model, "num_classes": num_classes, "input": shape, "depth": depth,
           "versions": versions("torch", "torchvision", "timm"), "code": source_digest(*code)}
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    label = re.sub(r"[^\w.-]", "_", str(cfg.model.name))  # e.g. a hub name's "/" and ":"
    return cache_root() / "inspect" / f"{label}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"


def cached_table(cfg: Any, depth: int | None = None, use_cache: bool = True) -> tuple[str, Path | None]:
    """The printed table of ``cfg``, and the cache file when it was read from one.

    A computed table is stored (unless the cache can't be written), and so is a model's
    refusal of the input (AlexNet's stride-4 stem on 32x32), raised as a ModelError with
    the model's own first line, cached or not. An unreadable entry counts as missing.
    """
    from cnnlab.errors import CnnlabError, ModelError
    from cnnlab.lifecycle.atomic import write_json_atomic

    path = cache_path(cfg, depth)
    try:
        stored = json.loads(path.read_text()) if use_cache else None
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and isinstance(stored.get("refused"), str):
        raise ModelError(stored["refused"])
    if isinstance(stored, dict) and isinstance(stored.get("table"), str):
        return stored["table"], path
    from hydra.errors import InstantiationException

    try:
        table = format_report(inspect_model(cfg), depth)
    except InstantiationException as e:
        # instantiate wraps the model's own refusal: keep its first line.
        if not isinstance(e.__cause__, (CnnlabError, ValueError)):
            raise
        text = str(e.__cause__).strip().splitlines()[0] or type(e.__cause__).__name__
        with contextlib.suppress(OSError):  # a cache that can't be written is skipped
            write_json_atomic(path, {"refused": text})
        raise ModelError(text) from None
    with contextlib.suppress(OSError):
        write_json_atomic(path, {"model": str(cfg.model.name), "table": table})
    return table, None


def warm(conf_dir: Path = CONF_DIR, out: Any = sys.stdout) -> int:
    """Cache the table of every conf/model entry on every dataset, small_input true and false.

    The generic ``timm``/``torchvision`` entries (they need an arch) and ``imagefolder``
    (it needs a folder) are left out. One process: torch and timm are imported once.
    Returns how many tables were computed (the others were cached already).
    """
    from cnnlab.errors import CnnlabError

    models = sorted(p.stem for p in (conf_dir / "model").glob("*.yaml") if p.stem not in ("timm", "torchvision"))
    datasets = sorted(p.stem for p in (conf_dir / "dataset").glob("*.yaml") if p.stem != "imagefolder")
    computed = 0
    with composing(conf_dir) as compose_one:
        for m, d, small in itertools.product(models, datasets, ("true", "false")):
            cfg = compose_one([f"model={m}", f"dataset={d}", f"model.small_input={small}"])
            if cache_path(cfg).is_file():
                continue
            try:
                cached_table(cfg, use_cache=False)
            except CnnlabError as e:  # e.g. AlexNet's stride-4 stem on 32x32
                print(f"  {m} {d} small_input={small}: {e}", file=out)
                continue
            computed += 1
            print(f"cached {m} on {d} (small_input={small})", file=out, flush=True)
    return computed


# --------------------------------------------------------------------------- main
def _table(argv: list[str]) -> tuple[str, Path | None]:
    """The table the arguments ask for, and the cache file it was read from (or None)."""
    overrides, own = split_args(argv)
    if own["run"] is None and own["checkpoint"] is None:
        from cnnlab.config import validate

        cfg = compose(overrides)
        validate(cfg, needs_data=False)  # the table needs no images: a folder's root may be missing
        return cached_table(cfg, own["depth"], own["cache"])
    if overrides:
        raise ConfigError(f"run= takes the model and the input from the checkpoint: drop {' '.join(overrides)}")
    return format_report(inspect_run(own["run"], own["checkpoint"] or "best"), own["depth"]), None


def main(argv: list[str] | None = None) -> int:
    """Print the table the arguments ask for; return the exit code (2: one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(USAGE)
        return 0
    if "--warm" in argv:
        if argv != ["--warm"]:
            raise ConfigError("--warm takes no other arguments (it caches every conf/model on every dataset)")
        print(f"{warm()} tables computed; the cache is {cache_root() / 'inspect'}")
        return 0
    table, hit = _table(argv)
    print(table)
    if hit is not None:
        print(f"\n(read from the cache: {hit}; cache=false recomputes it)")
    return 0
