"""The config schema (types), registered in Hydra's ConfigStore, and the rules types can't express.

One place for each fact about a key (docs/config.md says why): its DEFAULT is in the YAML
of conf/; its RULE is in `RULES`, plain data (a range, choices, null or not) from which the
message's "allowed" text and docs/errors.md's table (``python -m cnnlab.config``) are derived,
and `RELATIONS` relates two keys (`validate` applies both); its TYPE is the schema dataclasses,
made from `RULES` with every value ``MISSING``, so Hydra rejects an unknown key or a wrong type
at composition (``Key 'epoch' not in 'TrainerConfig'``). The optimizer and scheduler nodes stay
open dicts (and the tracker's): their keys are the keywords of whatever ``_target_`` they name; any keyword without
a rule here is checked by the target when it is built.

Standard library and omegaconf only: this runs on every ``--help``, and a rule violation fails
before torch is imported.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from cnnlab.errors import ConfigError
from cnnlab.recipes.policy import POLICIES  # standard library only at import

# --------------------------------------------------------------------------- the rules
SEED_MAX = 2**32 - 1  # numpy's seed range: np.random.seed rejects anything outside [0, 2**32 - 1]
IMAGE_SIZE_MAX = 4096  # one 3x4096x4096 uint8 image is 48 MiB: beyond this no batch fits anywhere
DATASET_NAMES = ("digits", "imagefolder", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn")
PATHS = {"file": "a weights file", "exists": "a run folder or checkpoint file", "folder": "a folder"}
Get = Callable[[str], Any]  # a key -> its composed value


@dataclass(frozen=True)
class Rule:
    """What one key allows; the message's text after ``is not allowed:`` is derived from it.

    ``type``: int, float (a finite number), bool, str (non-empty), list (of numbers),
    "import" (a dotted import path), or a path kind of `PATHS`: "file" (an existing
    file), "exists" (a file or folder), "folder" (a folder, or where one can be made).
    ``range``: bounds for a number (or each number of a list) in interval notation,
    ``"[0, 1)"``, ``">= 1"``, ``"> 0"``; a bound may name another key (``"[0, trainer.epochs]"``).
    ``choices``: the values allowed (then ``type`` is unused). ``null``: null too.
    ``length``: a list's length; ``item``: the type of its items if only one will do
    (torch's Adam takes betas of floats, not ints). ``note``: shown after the text, in parentheses.
    """

    type: Any = None
    range: str = ""
    choices: tuple[Any, ...] = ()
    null: bool = False
    length: int | None = None
    item: Any = None
    note: str = ""

    def bounds(self, get: Get | None = None) -> list[tuple[Callable[[Any, Any], bool], Any]]:
        """[(operator, bound)]: a number x is in range if op(x, bound) for each; a bound naming a
        key is that key's value (skipped without ``get``)."""
        if not self.range:
            return []
        interval = re.fullmatch(r"([\[(])(.+), (.+)([\])])", self.range)
        if interval:
            lb, lo, hi, rb = interval.groups()
            pairs = [(operator.ge if lb == "[" else operator.gt, lo), (operator.le if rb == "]" else operator.lt, hi)]
        else:
            op, bound = self.range.split(" ")
            pairs = [({">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}[op], bound)]
        out = []
        for op, b in pairs:
            if re.fullmatch(r"-?[\d.]+", b):
                out.append((op, float(b) if "." in b else int(b)))
            elif get is not None:
                out.append((op, get(b)))
        return out

    def allows(self, value: Any, get: Get | None = None) -> bool:
        """True if ``value`` (as the composed config holds it) is allowed."""
        if value is None:
            return self.null
        if self.choices and (self.type is not list or _as_list(value) is None):
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.type is list:
            items = _as_list(value)
            return (items is not None and len(items) >= 1 and self.length in (None, len(items))
                    and all(_is_number(x) and self._in_range(x, get) and type(x) in (self.item or type(x),)
                            for x in items))
        if self.type in (int, float):
            return (type(value) is int or self.type is float and _is_number(value)) and self._in_range(value, get)
        if self.type is bool:
            return isinstance(value, bool)
        if not isinstance(value, str) or not value.strip():
            return False
        if self.type == "import":
            return re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", value) is not None
        return self.type is str or _path_problem(self.type, value) is None

    def _in_range(self, x: float, get: Get | None) -> bool:
        return math.isfinite(x) and all(op(x, b) for op, b in self.bounds(get))

    def text(self, get: Get | None = None) -> str:
        """What is allowed, as the user reads it; with ``get``, a bound naming a key shows its value."""
        null = "null or " if self.null else ""
        if self.choices:
            either = "choose one of " + ", ".join(_show(c) for c in (None, *self.choices)[not self.null:])
            if self.type is not list:
                return either
            return f"{either}, or {replace(self, choices=()).text(get)}"  # loss.class_weights
        if self.type is bool:
            return "use null, true or false" if self.null else "use true or false"
        rng = self.range
        named = re.findall(r"[a-z_]+\.[a-z_.]+", rng)
        if get is not None and named:  # "[0, dataset.image_size)" -> "[0, 15] (dataset.image_size=16)"
            for k in named:
                rng = rng.replace(k, str(get(k)))
            if self.type is int and rng.endswith(")") and rng.startswith("["):
                lo, hi = rng[1:-1].split(", ")
                rng = f"[{lo}, {int(hi) - 1}]"
        if rng.startswith(("[", "(")):
            rng = "in " + rng
        noun = {int: "an integer", float: "a fraction" if re.fullmatch(r"[\[(]0, 1[\])]", self.range) else "a number",
                str: "a non-empty name", "import": "an import path"}.get(self.type, PATHS.get(self.type))
        if self.type is list:
            what = "floats" if self.item is float else "numbers"
            noun = f"a list of {self.length} {what}" if self.length else f"a non-empty list of {what}"
        note = [f"{k}={get(k)}" for k in named] if get is not None and named else [self.note] if self.note else []
        return f"use {null}{noun} {rng}".rstrip() + "".join(f" ({n})" for n in note)

    @property
    def allowed(self) -> str:
        return self.text()


def _show(c: Any) -> str:
    return "null" if c is None else str(c).lower() if isinstance(c, bool) else str(c)


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


# Every key of the composed config, in its order, with what it allows: the schema is made
# from it. A conf key missing here fails tests/test_fuzz_config.py. Optimizer and
# scheduler keys are checked when present (they depend on the _target_).
RULES: dict[str, Rule] = {
    # -- model
    "model._target_": Rule("import", note="e.g. cnnlab.models.build_model"),
    "model.name": Rule(str, note="a label for run folders and reports"),
    "model.source": Rule(choices=("cnnlab", "timm", "torchvision")),
    "model.arch": Rule(str, note="the architecture, checked when the model is built"),
    "model.num_classes": Rule(int, ">= 2", null=True),
    "model.in_chans": Rule(choices=(1, 3)),
    "model.img_size": Rule(int, f"[8, {IMAGE_SIZE_MAX}]"),
    "model.small_input": Rule(bool),
    "model.pretrained": Rule(bool),
    "model.checkpoint": Rule("file", null=True),
    "model.drop_rate": Rule(float, "[0, 1)"),
    "model.drop_path_rate": Rule(float, "[0, 1)"),
    "model.batch_norm": Rule(bool),
    "model.aux_logits": Rule(bool),
    "model.aux_weight": Rule(float, ">= 0"),
    "model.sync_bn": Rule(bool),
    # fine-tuning (cnnlab/recipes/freeze.py): stages=N's N is checked against the model when it is built
    "model.freeze": Rule(str, note="none, backbone (all but the classifier) or stages=N"),
    "model.reset_head": Rule(bool, note="with model.checkpoint: the classifier starts fresh"),
    "model.unfreeze_epoch": Rule(int, "[2, trainer.epochs]", null=True, note="the first epoch trained unfrozen"),
    # -- dataset
    "dataset.name": Rule(choices=DATASET_NAMES),
    "dataset.root": Rule("folder", null=True),
    "dataset.download": Rule(bool),
    "dataset.num_classes": Rule(int, ">= 2", null=True),
    "dataset.in_chans": Rule(choices=(1, 3)),
    "dataset.image_size": Rule(int, f"[8, {IMAGE_SIZE_MAX}]"),
    "dataset.small_input": Rule(bool),
    "dataset.val_split": Rule(float, "(0, 1)", note="the validation images pick the best epoch and stop early"),
    "dataset.test_split": Rule(float, "[0, 1)"),
    "dataset.split_seed": Rule(int, f"[0, {SEED_MAX}]"),
    "dataset.limit": Rule(int, ">= 1", null=True),
    "dataset.loader": Rule(choices=("tensor", "dataloader")),
    "dataset.num_workers": Rule(int, "[0, 1024]"),
    "dataset.memory_budget_mb": Rule(int, ">= 0"),
    "dataset.sampler": Rule(choices=("none", "balanced")),
    "dataset.imbalance": Rule(float, ">= 1", null=True, note="max/min class count of a long-tailed train split"),
    "dataset.mean": Rule(list),
    "dataset.std": Rule(list, "> 0"),
    "dataset.augment.crop_padding": Rule(int, "[0, dataset.image_size)"),
    "dataset.augment.pad_mode": Rule(choices=("zero", "reflect")),
    "dataset.augment.flip": Rule(bool),
    "dataset.augment.cutout": Rule(int, "[0, dataset.image_size]"),
    "dataset.augment.policy": Rule(choices=POLICIES),
    "dataset.augment.random_erasing": Rule(float, "[0, 1]"),
    # -- optimizer: torch.optim.SGD / Adam / AdamW keys (any other target's: checked when built)
    "optimizer._target_": Rule("import", note="e.g. torch.optim.SGD"),
    "optimizer._partial_": Rule(choices=(True,)),
    "optimizer.lr": Rule(float, "> 0"),
    "optimizer.momentum": Rule(float, "[0, 1)"),
    "optimizer.dampening": Rule(float, "[0, 1]"),
    "optimizer.nesterov": Rule(bool),
    "optimizer.weight_decay": Rule(float, ">= 0"),
    "optimizer.betas": Rule(list, "[0, 1)", length=2, item=float, note="e.g. [0.9, 0.999]"),
    "optimizer.eps": Rule(float, "> 0"),
    "optimizer.amsgrad": Rule(bool),
    "optimizer.maximize": Rule(bool),
    "optimizer.foreach": Rule(bool, null=True),
    "optimizer.fused": Rule(bool, null=True),
    "optimizer.no_weight_decay_norm_bias": Rule(bool),  # cnnlab's, taken out before the target is built
    "optimizer.head_lr_mult": Rule(float, "> 0"),  # cnnlab's: the classifier's lr = lr x this
    "optimizer.layer_decay": Rule(float, "(0, 1]", null=True),  # cnnlab's: timm's layer-wise lr decay
    # -- scheduler: cnnlab.schedulers.* keys
    "scheduler._target_": Rule("import", note="e.g. cnnlab.schedulers.cosine"),
    "scheduler._partial_": Rule(choices=(True,)),
    "scheduler.warmup_epochs": Rule(float, "[0, trainer.epochs]"),
    "scheduler.min_lr_ratio": Rule(float, "[0, 1]"),
    "scheduler.max_lr_factor": Rule(float, "> 0"),
    "scheduler.pct_start": Rule(float, "(0, 1)"),
    "scheduler.step_epochs": Rule(int, ">= 1"),
    "scheduler.gamma": Rule(float, "(0, 1]"),
    # -- device
    "device.name": Rule(choices=("auto", "cpu", "cuda", "mps")),
    "device.amp": Rule(choices=("none", "bf16", "fp16"), null=True),
    "device.channels_last": Rule(bool, null=True),
    "device.compile": Rule(bool),
    # -- trainer
    "trainer.epochs": Rule(int, ">= 1"),
    "trainer.batch_size": Rule(int, ">= 1"),
    "trainer.eval_batch_size": Rule(int, ">= 1"),
    "trainer.grad_clip": Rule(float, "> 0", null=True),
    "trainer.early_stop_patience": Rule(int, ">= 1", null=True),
    "trainer.early_stop_metric": Rule(choices=("val_loss", "val_acc")),
    "trainer.deterministic": Rule(bool),
    "trainer.auto_resume": Rule(bool),
    "trainer.log_feature_maps": Rule(bool),
    "trainer.save_checkpoints": Rule(bool),
    "trainer.progress": Rule(choices=("auto", "bar", "log")),
    "trainer.accumulate": Rule(int, ">= 1"),
    "trainer.bn_recalibrate": Rule(int, ">= 0"),
    "trainer.lr_find": Rule(bool),
    # -- paths
    "paths.root_dir": Rule("folder"),
    "paths.data_dir": Rule("folder"),
    # ${hydra:runtime.output_dir}: null while Hydra only prints the config (--cfg job --resolve)
    "paths.output_dir": Rule("folder", null=True),
    # -- fit diagnosis thresholds (cnnlab/reporting/fit.py). 0 turns "underfitting" off; a gap of
    # 0 would call a 100%/100% run over-fitting, a ratio of 1 any run whose last loss is not its lowest
    # diverged, and "a best within the last 0 epochs" never happens: those are refused.
    "fit.underfit_train_acc": Rule(float, "[0, 1]"),
    "fit.overfit_gap": Rule(float, "(0, 1]"),
    "fit.still_improving_epochs": Rule(int, ">= 1"),
    "fit.diverge_loss_ratio": Rule(float, "> 1"),
    # -- training recipes (cnnlab/recipes/, docs/recipes.md)
    "loss.label_smoothing": Rule(float, "[0, 1)"),
    "loss.class_weights": Rule(list, ">= 0", choices=("none", "balanced"),
                               note="a list: one weight per class, in label order"),
    "mix.mixup_alpha": Rule(float, ">= 0"),
    "mix.cutmix_alpha": Rule(float, ">= 0"),
    "mix.prob": Rule(float, "[0, 1]"),
    "mix.switch_prob": Rule(float, "[0, 1]"),
    "ema.enabled": Rule(bool),
    "ema.decay": Rule(float, "(0, 1)"),
    "ema.warmup": Rule(bool),
    # -- experiment tracker (cnnlab/tracking/): keys of the chosen option only (tracker.tags: a mapping)
    "tracker._target_": Rule("import", note="e.g. cnnlab.tracking.mlflow_tracker.MlflowTracker"),
    "tracker.tracking_uri": Rule(str, note="an MLflow URI, e.g. sqlite:///outputs/mlflow.db"),
    "tracker.experiment": Rule(str),
    "tracker.log_checkpoint": Rule(bool),
    "tracker.project": Rule(str),
    "tracker.entity": Rule(str, null=True),
    "tracker.mode": Rule(choices=("online", "offline", "disabled"), null=True),
    "tracker.group": Rule(str, null=True),
    "tracker.wait": Rule(bool),
    "seed": Rule(int, f"[0, {SEED_MAX}]"),
    "resume": Rule("exists", null=True),
}



def _key_type(rule: Rule) -> Any:
    """The type Hydra checks at composition: a choice's type, a list of floats, or str (a name, a path)."""
    if rule.choices and rule.type is list:
        return Any  # a name or a list (loss.class_weights): Rule.allows checks which
    t = type(rule.choices[0]) if rule.choices else list[float] if rule.type is list else rule.type
    t = t if t in (int, float, bool, list[float]) else str
    return Optional[t] if rule.null else t


def _schema(name: str, prefix: str = "") -> type:
    """The dataclass of the keys under ``prefix``, each ``MISSING``; a node's own is made and
    named too (``dataset.augment`` -> ``AugmentConfig``). optimizer and scheduler stay open dicts."""
    fields: dict[str, tuple[str, Any, Any]] = {}
    for key, rule in RULES.items():
        head, _, rest = key.removeprefix(prefix).partition(".")
        if not key.startswith(prefix) or head in fields:
            continue
        if prefix + head in ("optimizer", "scheduler", "tracker"):
            fields[head] = (head, dict[str, Any], field(default_factory=dict))
        elif rest:
            node = globals()[f"{head.capitalize()}Config"] = _schema(f"{head.capitalize()}Config", f"{prefix}{head}.")
            fields[head] = (head, node, field(default_factory=node))
        else:
            fields[head] = (head, _key_type(rule), field(default=MISSING))
    cls = make_dataclass(name, fields.values())
    cls.__module__ = __name__  # (make_dataclass's module= is Python 3.12+)
    return cls


# Config, and ModelConfig, DatasetConfig, AugmentConfig, DeviceConfig, TrainerConfig, PathsConfig,
# FitConfig, LossConfig, MixConfig, EmaConfig (train.py builds a TrainerConfig with OmegaConf.to_object).
Config = _schema("Config")


def register_schema() -> None:
    """Store the schema as ``cnnlab_schema``, the first entry of config.yaml's defaults."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="cnnlab_schema", node=Config)


def _mixing(get: Get) -> bool:
    return (get("mix.mixup_alpha") > 0 or get("mix.cutmix_alpha") > 0) and get("mix.prob") > 0


# The rules that relate keys: (the key named, what is allowed, whether it holds).
# Checked after RULES, so each value is already of its type and in its range.
RELATIONS: tuple[tuple[str, str, Callable[[Get], bool]], ...] = (
    ("dataset.val_split", "val_split + test_split must be below 1",
     lambda get: get("dataset.val_split") + get("dataset.test_split") < 1),
    ("dataset.mean", "mean and std need one value, or one per input channel",
     lambda get: len(get("dataset.mean")) == len(get("dataset.std")) and len(get("dataset.std")) in (1, get("dataset.in_chans"))),
    ("trainer.batch_size", "use an even batch size while mix.mixup_alpha or mix.cutmix_alpha is > 0 "
     "(timm's Mixup mixes each image with its mirror in the batch)",
     lambda get: get("trainer.batch_size") % 2 == 0 or not _mixing(get)),
    ("optimizer.momentum", "optimizer.nesterov=true needs a momentum > 0 (or set optimizer.nesterov=false)",
     lambda get: not get("optimizer.nesterov") or (get("optimizer.momentum") or 0) > 0),
    ("model.freeze", "use none, backbone or stages=N (N >= 1, the first N feature stages)",
     lambda get: re.fullmatch(r"none|backbone|stages=[1-9]\d*", get("model.freeze")) is not None),
    ("model.unfreeze_epoch", "unfreezing needs model.freeze=backbone or stages=N",
     lambda get: get("model.unfreeze_epoch") is None or get("model.freeze") != "none"),
    ("loss.class_weights", "give one weight per class (dataset.num_classes), in label order, or use balanced",
     lambda get: _as_list(get("loss.class_weights")) is None or get("dataset.num_classes") is None
     or len(_as_list(get("loss.class_weights"))) == get("dataset.num_classes")),
    ("device.amp", "fp16 is for GPUs: with device=cpu use device.amp=bf16 or none",
     lambda get: not (get("device.name") == "cpu" and get("device.amp") == "fp16")),
)
IMAGEFOLDER_ROOT = "one subfolder per class, or train/ and val/ folders that each hold one"


def validate(cfg: Any, needs_data: bool = True) -> None:
    """Apply `RULES`, then `RELATIONS`, to the composed config; raise ConfigError on the first miss.

    ``needs_data=False`` (the layer-shape inspector) accepts an image folder with no root.
    """
    from omegaconf import OmegaConf

    def get(key: str) -> Any:
        return OmegaConf.select(cfg, key)

    raw_cfg = OmegaConf.to_container(cfg, resolve=False)  # the values before interpolation
    # A rule whose range names another key is checked after that key's own rule.
    for key, rule in sorted(RULES.items(), key=lambda kv: bool(re.search(r"[a-z]\.", kv[1].range))):
        raw = raw_cfg
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        raw = str(raw)
        alias = re.fullmatch(r"\$\{([\w.]+)\}", raw)  # exactly another key: ${dataset.in_chans}
        same = alias and alias.group(1) in RULES and replace(RULES[alias.group(1)], null=rule.null, note=rule.note)
        if same == rule:  # the same check, null aside
            continue  # model.img_size: ${dataset.image_size} is checked (and named) as dataset.image_size
        if raw.startswith("${hydra:"):
            continue  # Hydra's own (the run folder): unset when a tool composes without a run
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue  # an optimizer/scheduler keyword this target does not take
        if not rule.allows(value, get):
            problem = _path_problem(rule.type, value) if rule.type in PATHS and isinstance(value, str) else None
            if problem and value.strip():
                raise ConfigError(f"{key}={value!r}{problem}")
            raise ConfigError(f"{key}={value!r} is not allowed: {rule.text(get)}")
    root = get("dataset.root")
    if needs_data and get("dataset.name") == "imagefolder" and not (root and Path(root).is_dir()):
        # imagefolder.yaml's root is null, not ???: the user must give it, and this says how.
        raise ConfigError(f"dataset.root={root!r} is not a folder: give a folder with {IMAGEFOLDER_ROOT}" if root
                          else f"dataset=imagefolder needs dataset.root=<folder>: {IMAGEFOLDER_ROOT}")
    for key, allowed, holds in RELATIONS:
        if not holds(get):
            raise ConfigError(f"{key}={get(key)!r} is not allowed: {allowed}")


_ABSENT = object()


def rules_markdown() -> str:
    """The rule table as docs/errors.md shows it (tests/test_fuzz_config.py keeps the two equal)."""
    rows = ["| key | allowed |", "|---|---|"]
    rows += [f"| `{key}` | {rule.allowed} |" for key, rule in RULES.items()]
    rows += [f"| `{key}` (with the others) | {allowed} |" for key, allowed, _ in RELATIONS]
    rows.append(f"| `dataset.root` (with `dataset=imagefolder`) | an existing folder: {IMAGEFOLDER_ROOT} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(rules_markdown(), end="")  # python -m cnnlab.config > the table in docs/errors.md
