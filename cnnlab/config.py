"""The config schema, registered in Hydra's ConfigStore, and the checks types can't express.

The schema makes Hydra reject an unknown key or a wrong type at composition time,
with its own one-line message (``Key 'epoch' not in 'TrainerConfig'``). `RULES`, the
table below the schema, says what every key allows (bounds, choices, paths that must
exist); `validate` applies it, then the few rules that relate two keys (`CROSS_RULES`).
docs/errors.md's table of rules is generated from it (:func:`rules_markdown`).

The optimizer and scheduler nodes stay open dicts: their keys are the keyword
arguments of whatever ``_target_`` they name (SGD has ``momentum``, Adam has
``betas``). The keys of the optimizers and schedules cnnlab ships have rules here;
any other keyword is checked by the target itself when it is built
(:mod:`cnnlab.build_errors` turns what torch raises into one line naming the key).

This module imports only the standard library, dataclasses and Hydra: it runs
on every ``--help``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cnnlab.errors import ConfigError
from cnnlab.recipes.policy import POLICIES  # standard library only at import


@dataclass
class ModelConfig:
    _target_: str = "cnnlab.models.build_model"
    name: str = "alexnet"
    source: str = "cnnlab"  # cnnlab | timm | torchvision
    # Mandatory ("???"): every conf/model entry sets it. A default here would win over the
    # generic timm/torchvision entries' `arch: ???` (a merged ??? never replaces a value).
    arch: str = "???"
    # The dataset decides these by default (interpolations resolved at composition):
    num_classes: Optional[int] = "${dataset.num_classes}"  # type: ignore[assignment]
    in_chans: int = "${dataset.in_chans}"  # type: ignore[assignment]
    img_size: int = "${dataset.image_size}"  # type: ignore[assignment]
    small_input: bool = "${dataset.small_input}"  # type: ignore[assignment]
    pretrained: bool = False
    checkpoint: Optional[str] = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    batch_norm: bool = True
    aux_logits: bool = False
    aux_weight: float = 0.3
    sync_bn: bool = False


@dataclass
class AugmentConfig:
    crop_padding: int = 0
    pad_mode: str = "zero"  # zero | reflect
    flip: bool = False
    cutout: int = 0
    policy: str = "none"  # none | randaugment | trivialaugment | autoaugment (torchvision v2, per image)
    random_erasing: float = 0.0  # probability per image (timm RandomErasing), 0 = off


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    num_classes: Optional[int] = None
    in_chans: int = 3
    image_size: int = 32
    small_input: bool = True
    val_split: float = 0.1
    test_split: float = 0.0
    split_seed: int = 0
    limit: Optional[int] = None
    loader: str = "tensor"  # tensor | dataloader
    num_workers: int = 2
    memory_budget_mb: int = 2048
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class DeviceConfig:
    name: str = "auto"  # auto | cpu | cuda | mps
    amp: Optional[str] = None  # None = the device's default; none | bf16 | fp16
    channels_last: Optional[bool] = None  # None = the device's default
    compile: bool = False


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 512
    grad_clip: Optional[float] = None
    early_stop_patience: Optional[int] = None
    early_stop_metric: str = "val_loss"
    deterministic: bool = False
    auto_resume: bool = False
    log_feature_maps: bool = False
    save_checkpoints: bool = True
    progress: str = "auto"  # auto | bar | log
    accumulate: int = 1  # micro-batches per optimizer step: effective batch = batch_size x accumulate
    bn_recalibrate: int = 0  # >0: re-estimate BatchNorm statistics over this many train batches before val


@dataclass
class LossConfig:
    label_smoothing: float = 0.0  # in [0, 1): F.cross_entropy(label_smoothing=)


@dataclass
class MixConfig:
    """Mixup/CutMix on the device batch (timm.data.Mixup); off while both alphas are 0."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both alphas > 0: probability of cutmix instead of mixup


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (timm.utils.ModelEmaV3), used for val and test."""

    enabled: bool = False
    decay: float = 0.9998  # per optimizer step
    warmup: bool = False  # timm's decay warm-up: 1 - (1 + step) ** -2/3, capped at decay


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "data"
    # The run's folder: ${hydra:runtime.output_dir} in conf/paths. Optional because Hydra
    # has no run folder yet when it only prints the config (`--cfg job --resolve`).
    output_dir: Optional[str] = "outputs"


@dataclass
class FitConfig:
    """Thresholds of the under/overfitting diagnosis; the rules are in cnnlab/reporting/fit.py."""

    underfit_train_acc: float = 0.9  # final train acc below this: under-fitting (or still improving)
    overfit_gap: float = 0.08  # final train acc - final val acc at or above this: over-fitting
    still_improving_epochs: int = 2  # a val best within the last N epochs: still improving
    diverge_loss_ratio: float = 3.0  # final train loss above this x its lowest: diverged


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    seed: int = 0
    resume: Optional[str] = None


def register_schema() -> None:
    """Store the schema as ``cnnlab_schema``, the first entry of config.yaml's defaults."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="cnnlab_schema", node=Config)


# --------------------------------------------------------------------------- the rules
SEED_MAX = 2**32 - 1  # numpy's seed range: np.random.seed rejects anything outside [0, 2**32 - 1]
IMAGE_SIZE_MAX = 4096  # one 3x4096x4096 uint8 image is 48 MiB: beyond this no batch fits anywhere
DATASET_NAMES = ("digits", "imagefolder", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn")
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


@dataclass(frozen=True)
class Rule:
    """What one key allows. ``allowed`` is what the user reads after ``is not allowed:``.

    kind: ``int`` / ``number`` (bounds ``lo``, ``hi``, open or closed), ``choice``
    (``choices``), ``flag`` (true/false), ``text`` (non-empty), ``target`` (an import
    path), ``numbers`` (a list of numbers within the bounds, of one of ``lengths``, any
    length >= 1 when empty), ``path`` (``path``: ``file`` must be an existing file,
    ``exists`` a file or folder, ``folder`` a folder or a path where one can be made).
    ``null``: null is allowed too.
    """

    kind: str
    allowed: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    null: bool = False
    choices: tuple[Any, ...] = ()
    lengths: tuple[int, ...] = ()
    path: str = ""

    def allows(self, value: Any) -> bool:
        """True if ``value`` (as the composed config holds it) is allowed."""
        if value is None:
            return self.null
        if self.kind == "int":
            return type(value) is int and self._in_bounds(value)
        if self.kind == "number":
            return _is_number(value) and self._in_bounds(value)
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.kind == "flag":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str) and value.strip() != ""
        if self.kind == "target":
            return isinstance(value, str) and _IMPORT_PATH.fullmatch(value) is not None
        if self.kind == "numbers":
            items = _as_list(value)
            return (items is not None and len(items) >= 1 and (not self.lengths or len(items) in self.lengths)
                    and all(_is_number(x) and self._in_bounds(x) for x in items))
        if self.kind == "path":
            return isinstance(value, str) and value.strip() != "" and _path_problem(self.path, value) is None
        raise ValueError(f"unknown rule kind {self.kind!r}")

    def _in_bounds(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _as_list(value: Any) -> list[Any] | None:
    from omegaconf import ListConfig, OmegaConf

    if isinstance(value, ListConfig):
        return list(OmegaConf.to_container(value, resolve=True))
    return list(value) if isinstance(value, (list, tuple)) else None


def _path_problem(kind: str, value: str) -> str | None:
    """What is wrong with path ``value`` for a ``file`` / ``exists`` / ``folder`` rule, or None.

    The text follows ``key='value'`` in the message (hence ": ..." or " is ...").
    """
    p = Path(value)  # as the loaders read it: no ~ expansion (the shell does not expand it in key=~/x)
    if kind == "file":
        return None if p.is_file() else ": is a folder, not a weights file" if p.is_dir() else ": no such file"
    if kind == "exists":
        return None if p.exists() else ": no such run folder or checkpoint file"
    # folder: an existing folder, or a path whose nearest existing parent is a folder (made later)
    if p.exists():
        return None if p.is_dir() else " is a file, not a folder: give a folder (made if it does not exist)"
    parent = next((q for q in p.absolute().parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        return f" is under {str(parent)!r}, which is a file: give a folder (made if it does not exist)"
    return None


def _bounds_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    def show(x: float) -> str:  # 4294967295, not 4.29497e+09; 0.5 as 0.5
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {show(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {show(hi)}"
    return ""


def integer(lo: int | None = None, hi: int | None = None, null: bool = False, why: str = "") -> Rule:
    """An int in [lo, hi]; ``why`` is appended to the allowed text."""
    text = f"use {'null or ' if null else ''}an integer {_bounds_text(lo, hi, False, False)}".rstrip()
    return Rule("int", text + why, lo=lo, hi=hi, null=null)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           null: bool = False, noun: str = "a number") -> Rule:
    """A finite int or float within the bounds (not a bool, not NaN or inf)."""
    text = f"use {'null or ' if null else ''}{noun} {_bounds_text(lo, hi, lo_open, hi_open)}".rstrip()
    return Rule("number", text, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, null=null)


def fraction(lo_open: bool = False, hi_open: bool = True) -> Rule:
    return number(0, 1, lo_open=lo_open, hi_open=hi_open, noun="a fraction")


def choice(*options: Any) -> Rule:
    shown = ", ".join("null" if c is None else str(c).lower() if isinstance(c, bool) else str(c) for c in options)
    return Rule("choice", f"choose one of {shown}", choices=options, null=None in options)


def flag(null: bool = False) -> Rule:
    return Rule("flag", "use null, true or false" if null else "use true or false", null=null)


def text(what: str = "a non-empty name") -> Rule:
    return Rule("text", f"use {what}")


def target(example: str) -> Rule:
    return Rule("target", f"use an import path such as {example}")


def numbers(allowed: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False, lengths: tuple[int, ...] = ()) -> Rule:
    return Rule("numbers", allowed, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, lengths=lengths)


def path(kind: str, allowed: str, null: bool = False) -> Rule:
    return Rule("path", allowed, null=null, path=kind)


# Every key of the composed config, with what it allows. A key missing here fails
# tests/test_fuzz_config.py, so a new schema key gets its rule with it. Optimizer and
# scheduler keys are checked when present (they depend on the _target_).
RULES: dict[str, Rule] = {
    "seed": integer(0, SEED_MAX),
    "resume": path("exists", "use null, a run folder or a checkpoint file", null=True),
    # -- model
    "model._target_": target("cnnlab.models.build_model"),
    "model.name": text("a non-empty name (a label for run folders and reports)"),
    "model.source": choice("cnnlab", "timm", "torchvision"),
    "model.arch": text("a non-empty architecture name (checked when the model is built)"),
    "model.num_classes": integer(2, null=True),
    "model.in_chans": choice(1, 3),
    "model.img_size": integer(8, IMAGE_SIZE_MAX),
    "model.small_input": flag(),
    "model.pretrained": flag(),
    "model.checkpoint": path("file", "use null or a weights file", null=True),
    "model.drop_rate": fraction(),
    "model.drop_path_rate": fraction(),
    "model.batch_norm": flag(),
    "model.aux_logits": flag(),
    "model.aux_weight": number(0),
    "model.sync_bn": flag(),
    # -- dataset
    "dataset.name": choice(*DATASET_NAMES),
    "dataset.root": path("folder", "use null or a folder", null=True),
    "dataset.download": flag(),
    "dataset.num_classes": integer(2, null=True),
    "dataset.in_chans": choice(1, 3),
    "dataset.image_size": integer(8, IMAGE_SIZE_MAX),
    "dataset.small_input": flag(),
    "dataset.val_split": fraction(),
    "dataset.test_split": fraction(),
    "dataset.split_seed": integer(0, SEED_MAX),
    "dataset.limit": integer(1, null=True),
    "dataset.loader": choice("tensor", "dataloader"),
    "dataset.num_workers": integer(0, 1024),
    "dataset.memory_budget_mb": integer(0),
    "dataset.mean": numbers("use a non-empty list of numbers"),
    "dataset.std": numbers("use a non-empty list of numbers > 0", lo=0, lo_open=True),
    "dataset.augment.crop_padding": integer(0),
    "dataset.augment.pad_mode": choice("zero", "reflect"),
    "dataset.augment.flip": flag(),
    "dataset.augment.cutout": integer(0),
    "dataset.augment.policy": choice(*POLICIES),
    "dataset.augment.random_erasing": fraction(hi_open=False),
    # -- optimizer: torch.optim.SGD / Adam / AdamW keys (any other target's: build_errors)
    "optimizer._target_": target("torch.optim.SGD"),
    "optimizer._partial_": choice(True),
    "optimizer.lr": number(0, lo_open=True),
    "optimizer.momentum": fraction(),
    "optimizer.dampening": fraction(hi_open=False),
    "optimizer.nesterov": flag(),
    "optimizer.weight_decay": number(0),
    "optimizer.betas": numbers("use two fractions in [0, 1), e.g. [0.9, 0.999]", lo=0, hi=1, hi_open=True,
                               lengths=(2,)),
    "optimizer.eps": number(0, lo_open=True),
    "optimizer.amsgrad": flag(),
    "optimizer.maximize": flag(),
    "optimizer.foreach": flag(null=True),
    "optimizer.fused": flag(null=True),
    "optimizer.no_weight_decay_norm_bias": flag(),  # cnnlab's, taken out before the target is built
    # -- scheduler: cnnlab.schedulers.* keys
    "scheduler._target_": target("cnnlab.schedulers.cosine"),
    "scheduler._partial_": choice(True),
    "scheduler.warmup_epochs": number(0),
    "scheduler.min_lr_ratio": fraction(hi_open=False),
    "scheduler.max_lr_factor": number(0, lo_open=True),
    "scheduler.pct_start": fraction(lo_open=True),
    "scheduler.step_epochs": integer(1),
    "scheduler.gamma": number(0, 1, lo_open=True),
    # -- device
    "device.name": choice("auto", "cpu", "cuda", "mps"),
    "device.amp": choice(None, "none", "bf16", "fp16"),
    "device.channels_last": flag(null=True),
    "device.compile": flag(),
    # -- trainer
    "trainer.epochs": integer(1),
    "trainer.batch_size": integer(1),
    "trainer.eval_batch_size": integer(1),
    "trainer.grad_clip": number(0, lo_open=True, null=True),
    "trainer.early_stop_patience": integer(1, null=True),
    "trainer.early_stop_metric": choice("val_loss", "val_acc"),
    "trainer.deterministic": flag(),
    "trainer.auto_resume": flag(),
    "trainer.log_feature_maps": flag(),
    "trainer.save_checkpoints": flag(),
    "trainer.progress": choice("auto", "bar", "log"),
    "trainer.accumulate": integer(1),
    "trainer.bn_recalibrate": integer(0),
    # -- training recipes (cnnlab/recipes/, docs/recipes.md)
    "loss.label_smoothing": fraction(),
    "mix.mixup_alpha": number(0),
    "mix.cutmix_alpha": number(0),
    "mix.prob": fraction(hi_open=False),
    "mix.switch_prob": fraction(hi_open=False),
    "ema.enabled": flag(),
    "ema.decay": number(0, 1, lo_open=True, hi_open=True),
    "ema.warmup": flag(),
    # -- paths
    "paths.root_dir": path("folder", "use a folder"),
    "paths.data_dir": path("folder", "use a folder"),
    "paths.output_dir": path("folder", "use null or a folder", null=True),
    # -- fit diagnosis thresholds (cnnlab/reporting/fit.py)
    "fit.underfit_train_acc": fraction(hi_open=False),
    "fit.overfit_gap": fraction(hi_open=False),
    "fit.still_improving_epochs": integer(0),
    "fit.diverge_loss_ratio": number(1),
}


@dataclass(frozen=True)
class CrossRule:
    """A rule on one key that reads others: ``ok(get)`` is False when ``key``'s value is not allowed.

    ``allowed(get)`` is the text after ``is not allowed:`` (it may quote the other
    keys' values); ``doc`` is the same for docs/errors.md, without the values.
    """

    key: str
    ok: Callable[[Callable[[str], Any]], bool]
    allowed: Callable[[Callable[[str], Any]], str]
    doc: str


CROSS_RULES: tuple[CrossRule, ...] = (
    CrossRule("dataset.val_split", lambda g: g("dataset.val_split") + g("dataset.test_split") < 1,
              lambda g: "val_split + test_split must be below 1", "val_split + test_split must be below 1"),
    CrossRule("dataset.mean", lambda g: len(g("dataset.mean")) == len(g("dataset.std"))
              and len(g("dataset.mean")) in (1, g("dataset.in_chans")),
              lambda g: "mean and std need one value, or one per input channel",
              "mean and std need one value, or one per input channel"),
    CrossRule("dataset.augment.crop_padding", lambda g: g("dataset.augment.crop_padding") < g("dataset.image_size"),
              lambda g: f"use an integer in [0, {g('dataset.image_size') - 1}] (below dataset.image_size)",
              "use an integer below dataset.image_size"),
    CrossRule("dataset.augment.cutout", lambda g: g("dataset.augment.cutout") <= g("dataset.image_size"),
              lambda g: f"use an integer in [0, {g('dataset.image_size')}] (at most dataset.image_size)",
              "use an integer up to dataset.image_size"),
    CrossRule("scheduler.warmup_epochs", lambda g: (g("scheduler.warmup_epochs") or 0) <= g("trainer.epochs"),
              lambda g: f"use a number of epochs in [0, trainer.epochs={g('trainer.epochs')}]",
              "use a number of epochs up to trainer.epochs"),
    CrossRule("trainer.batch_size", lambda g: g("trainer.batch_size") % 2 == 0 or not _mixing(g),
              lambda g: "mix.* mixes each image with its mirror in the batch (timm's Mixup): use an even batch size",
              "an even batch size while mix.mixup_alpha or mix.cutmix_alpha is > 0"),
    CrossRule("optimizer.momentum", lambda g: not g("optimizer.nesterov") or (g("optimizer.momentum") or 0) > 0,
              lambda g: "optimizer.nesterov=true needs a momentum > 0 (or set optimizer.nesterov=false)",
              "optimizer.nesterov=true needs a momentum > 0 (or set optimizer.nesterov=false)"),
)


def _mixing(get: Callable[[str], Any]) -> bool:
    return (get("mix.mixup_alpha") or 0) > 0 or (get("mix.cutmix_alpha") or 0) > 0


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def validate(cfg: Any, needs_data: bool = True) -> None:
    """Apply `RULES`, then `CROSS_RULES`, to the composed config; raise ConfigError on the first miss.

    ``needs_data=False`` (the layer-shape inspector) accepts an image folder with no root.
    """
    from omegaconf import OmegaConf

    def get(key: str) -> Any:
        return OmegaConf.select(cfg, key)

    for key, rule in RULES.items():
        raw = str(_raw(cfg, key))
        alias = _ALIAS.fullmatch(raw)
        if alias and _same_check(rule, RULES.get(alias.group(1))):
            continue  # model.img_size: ${dataset.image_size} is checked (and named) as dataset.image_size
        if raw.startswith("${hydra:"):
            continue  # Hydra's own (the run folder): unset when a tool composes without a run
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue  # an optimizer/scheduler keyword this target does not take
        if not rule.allows(value):
            problem = _path_problem(rule.path, value) if rule.kind == "path" and isinstance(value, str) else None
            if problem and value.strip():
                raise ConfigError(f"{key}={value!r}{problem}")
            raise _fail(key, value, rule.allowed)
    if needs_data and get("dataset.name") == "imagefolder":
        root = get("dataset.root")
        if not root:
            # The yaml's `???` cannot override the schema's None, so the check is here.
            raise ConfigError("dataset=imagefolder needs dataset.root=<folder>: one subfolder per class, "
                              "or train/ and val/ folders that each hold one")
        if not Path(root).is_dir():
            raise ConfigError(f"dataset.root={root!r} is not a folder: give a folder with one subfolder per class")
    for cross in CROSS_RULES:
        if not cross.ok(get):
            raise _fail(cross.key, get(cross.key), cross.allowed(get))


_ABSENT = object()
_ALIAS = re.compile(r"\$\{([\w.]+)\}")  # a value that is exactly another key: ${dataset.in_chans}


def _same_check(a: Rule, b: Rule | None) -> bool:
    """Do two rules allow the same values (null aside)? Then an alias of one is checked as the other."""
    return b is not None and (a.kind, a.lo, a.hi, a.lo_open, a.hi_open, a.choices, a.lengths, a.path) == (
        b.kind, b.lo, b.hi, b.lo_open, b.hi_open, b.choices, b.lengths, b.path)


def _raw(cfg: Any, key: str) -> Any:
    """The key's value before interpolation (``${dataset.image_size}``), or None."""
    from omegaconf import OmegaConf

    node = cfg
    for part in key.split("."):
        # (not `part in node`: that resolves the value, and this runs for every key)
        node = node._get_node(part, validate_access=False) if OmegaConf.is_dict(node) else None
    return node._value() if node is not None else None


def rules_markdown() -> str:
    """The rule table as docs/errors.md shows it (tests/test_fuzz_config.py keeps the two equal)."""
    rows = ["| key | allowed |", "|---|---|"]
    rows += [f"| `{key}` | {rule.allowed} |" for key, rule in RULES.items()]
    rows += [f"| `{c.key}` (with the others) | {c.doc} |" for c in CROSS_RULES]
    rows.append("| `dataset.root` (with `dataset=imagefolder`) | an existing folder: one subfolder per class, "
                "or train/ and val/ folders that each hold one |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(rules_markdown(), end="")  # python -m cnnlab.config > the table in docs/errors.md
