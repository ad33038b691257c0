"""Every option of every config group composes; the schema and the range checks bite."""

from __future__ import annotations

import pytest
from conftest import CONF, compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from cnnlab.config import validate
from cnnlab.errors import ConfigError

GROUPS = ["model", "dataset", "optimizer", "scheduler", "device"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
# Options that need a value the user must give.
REQUIRED = {("dataset", "imagefolder"): ["dataset.root={tmp}"],  # validate wants an existing folder
            ("model", "timm"): ["model.arch=resnet18"],
            ("model", "torchvision"): ["model.arch=resnet18"]}


def test_contract_options_exist():
    """The option names of design.md's contract are all there."""
    have = {g: {o for gg, o in OPTIONS if gg == g} for g in GROUPS}
    assert {"alexnet", "resnet18"} <= have["model"]
    assert have["dataset"] >= {"digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "imagefolder"}
    assert have["optimizer"] == {"sgd", "adam", "adamw"}
    assert have["scheduler"] == {"cosine", "step", "onecycle", "none"}
    assert have["device"] == {"auto", "cpu", "cuda", "mps"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option, tmp_path):
    required = [o.format(tmp=tmp_path) for o in REQUIRED.get((group, option), [])]
    cfg = compose([f"{group}={option}", *required], output_dir=tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate(cfg)
    assert resolved["model"]["in_chans"] == resolved["dataset"]["in_chans"]
    assert resolved["model"]["small_input"] == resolved["dataset"]["small_input"]


def test_defaults_are_the_contract_defaults(tmp_path):
    cfg = compose([], output_dir=tmp_path)
    assert (cfg.model.name, cfg.dataset.name, cfg.device.name) == ("alexnet", "digits", "auto")
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer._partial_
    assert cfg.scheduler._partial_


def test_unknown_key_fails_at_composition(tmp_path):
    with pytest.raises(ConfigCompositionException, match="epoch"):
        compose(["trainer.epoch=3"], output_dir=tmp_path)
    with pytest.raises(ConfigCompositionException):
        compose(["model.no_such_key=1"], output_dir=tmp_path)


def test_wrong_type_fails_at_composition(tmp_path):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(["trainer.epochs=many"], output_dir=tmp_path)


@pytest.mark.parametrize(
    ("override", "key"),
    [("trainer.epochs=0", "trainer.epochs"), ("trainer.batch_size=-4", "trainer.batch_size"),
     ("optimizer.lr=0", "optimizer.lr"), ("dataset.val_split=1.0", "dataset.val_split"),
     ("device.amp=fp8", "device.amp"), ("dataset.loader=fast", "dataset.loader")],
)
def test_out_of_range_values_name_the_key(override, key, tmp_path):
    cfg = compose([override], output_dir=tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert key in msg and "\n" not in msg and override.split("=")[1] in msg


@pytest.mark.parametrize("override", ["fit.overfit_gap=0", "dataset.augment.crop_padding=32"])
def test_a_rule_violation_fails_before_torch_is_imported(override, tmp_path):
    """The CLI refuses a rule violation in one line, exit 2, with torch never imported and no run trained.

    A fake ``torch`` package first on the path leaves a marker if anything imports it.
    """
    from conftest import REPO, TINY, run_cli

    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    marker = tmp_path / "torch_was_imported"
    (shim / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('torch')\n")
    res = run_cli([*TINY, override], cwd=tmp_path, env={"PYTHONPATH": f"{shim.parent}:{REPO}"})
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    key, value = override.split("=")
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}={value}") and "is not allowed" in lines[0], lines
    assert not marker.exists(), "torch was imported before the rule was checked"
    assert not list(tmp_path.rglob("metrics.csv")) and not list(tmp_path.rglob("*.pt"))
