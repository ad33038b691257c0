"""The config schema, registered in Hydra's ConfigStore, and the checks types can't express.

The schema makes Hydra reject an unknown key or a wrong type at composition time,
with its own one-line message (``Key 'epoch' not in 'TrainerConfig'``). `validate`
adds the range checks (epochs > 0, lr > 0, ...) that a type cannot say.

The optimizer and scheduler nodes stay open dicts: their keys are the keyword
arguments of whatever ``_target_`` they name (SGD has ``momentum``, Adam has
``betas``), so only their shared keys are checked here.

This module imports only the standard library, dataclasses and Hydra: it runs
on every ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from cnnlab.errors import ConfigError


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
    log_every: int = 0
    grad_clip: Optional[float] = None
    early_stop_patience: Optional[int] = None
    early_stop_metric: str = "val_loss"
    deterministic: bool = False
    auto_resume: bool = False
    log_feature_maps: bool = False
    save_checkpoints: bool = True
    progress: str = "auto"  # auto | bar | log
    accumulate: int = 1  # micro-batches per optimizer step: effective batch = batch_size x accumulate


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


_CHOICES = {
    "device.name": ("auto", "cpu", "cuda", "mps"),
    "device.amp": (None, "none", "bf16", "fp16"),
    "dataset.loader": ("tensor", "dataloader"),
    "dataset.augment.pad_mode": ("zero", "reflect"),
    "model.source": ("cnnlab", "timm", "torchvision"),
    "trainer.early_stop_metric": ("val_loss", "val_acc"),
    "trainer.progress": ("auto", "bar", "log"),
}


def validate(cfg: Any, needs_data: bool = True) -> None:
    """Range and choice checks the schema's types cannot express; raises ConfigError.

    ``needs_data=False`` (the layer-shape inspector) accepts an image folder with no root.
    """
    from omegaconf import OmegaConf

    def get(key: str) -> Any:
        return OmegaConf.select(cfg, key)

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={get(key)!r} is not allowed: {allowed}")

    need(get("trainer.epochs") > 0, "trainer.epochs", "use an integer >= 1")
    need(get("trainer.batch_size") > 0, "trainer.batch_size", "use an integer >= 1")
    need(get("trainer.eval_batch_size") > 0, "trainer.eval_batch_size", "use an integer >= 1")
    lr = get("optimizer.lr")
    need(isinstance(lr, (int, float)) and lr > 0, "optimizer.lr", "use a number > 0")
    need(0 <= get("dataset.val_split") < 1, "dataset.val_split", "use a fraction in [0, 1)")
    need(0 <= get("dataset.test_split") < 1, "dataset.test_split", "use a fraction in [0, 1)")
    need(
        get("dataset.val_split") + get("dataset.test_split") < 1,
        "dataset.val_split",
        "val_split + test_split must be below 1",
    )
    need(get("dataset.image_size") >= 8, "dataset.image_size", "use an integer >= 8")
    if needs_data and get("dataset.name") == "imagefolder" and not get("dataset.root"):
        # The yaml's `???` cannot override the schema's None, so the check is here.
        raise ConfigError("dataset=imagefolder needs dataset.root=<folder>: one subfolder per class, "
                          "or train/ and val/ folders that each hold one")
    limit = get("dataset.limit")
    need(limit is None or limit > 0, "dataset.limit", "use null or an integer >= 1")
    clip = get("trainer.grad_clip")
    need(clip is None or clip > 0, "trainer.grad_clip", "use null or a number > 0")
    patience = get("trainer.early_stop_patience")
    need(patience is None or patience >= 1, "trainer.early_stop_patience", "use null or >= 1")
    for key, choices in _CHOICES.items():
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        need(get(key) in choices, key, f"choose one of {shown}")
    need(
        len(get("dataset.mean")) == len(get("dataset.std")) and len(get("dataset.mean")) in (1, get("dataset.in_chans")),
        "dataset.mean",
        "mean and std need one value, or one per input channel",
    )
    _validate_recipes(cfg)


AUGMENT_POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")


def _validate_recipes(cfg: Any) -> None:
    """The training recipes' ranges (loss, mix, ema, warm-up, augment policy, accumulation)."""
    from omegaconf import OmegaConf

    def check(key: str, ok: Any, allowed: str) -> None:
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):  # None: a key this config does not have
            raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")

    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    check("loss.label_smoothing", lambda v: 0 <= v < 1, "use a fraction in [0, 1)")
    check("mix.mixup_alpha", lambda v: v >= 0, "use a number >= 0 (0 = off)")
    check("mix.cutmix_alpha", lambda v: v >= 0, "use a number >= 0 (0 = off)")
    check("mix.prob", lambda v: 0 <= v <= 1, "use a probability in [0, 1]")
    check("mix.switch_prob", lambda v: 0 <= v <= 1, "use a probability in [0, 1]")
    check("ema.decay", lambda v: 0 < v < 1, "use a number in (0, 1), e.g. 0.9998")
    check("dataset.augment.policy", lambda v: v in AUGMENT_POLICIES, f"choose one of {', '.join(AUGMENT_POLICIES)}")
    check("dataset.augment.random_erasing", lambda v: 0 <= v <= 1, "use a probability in [0, 1] (0 = off)")
    check("trainer.accumulate", lambda v: v >= 1, "use an integer >= 1 (1 = no accumulation)")
    epochs = OmegaConf.select(cfg, "trainer.epochs")
    check("scheduler.warmup_epochs", lambda v: num(v) and 0 <= v <= epochs,
          f"use a number of epochs in [0, trainer.epochs={epochs}]")
    check("optimizer.no_weight_decay_norm_bias", lambda v: isinstance(v, bool), "use true or false")
    mixing = (OmegaConf.select(cfg, "mix.mixup_alpha") or 0) > 0 or (OmegaConf.select(cfg, "mix.cutmix_alpha") or 0) > 0
    check("trainer.batch_size", lambda v: not mixing or v % 2 == 0,
          "mix.* mixes each image with its mirror in the batch (timm's Mixup): use an even batch size")
