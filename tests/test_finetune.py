"""Fine-tuning and imbalanced data (issue 25): freezing and unfreezing, per-group learning
rates, class weights, the balanced sampler, the long-tailed split, test-time augmentation,
and each of their refusals."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.config import validate
from cnnlab.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _alexnet():
    from cnnlab.models.factory import build_model

    torch.manual_seed(0)
    return build_model("alexnet", "timm", "cnnlab_alexnet", 10, 1, 32, True)


def _resnet():
    from cnnlab.models.factory import build_model

    torch.manual_seed(0)
    return build_model("resnet18", "timm", "resnet18", 10, 1, 32, True)


def _frozen(model, spec, lr=0.1, **kw):
    from cnnlab.recipes.freeze import Freezer, frozen_names
    from cnnlab.recipes.optim import param_groups

    fr = Freezer()
    fr.freeze(model, frozen_names(model, spec))
    opt = torch.optim.SGD(param_groups(model, 0.0, False, fr, lr, **kw), lr=lr, momentum=0.9)
    return fr, opt


def _step(model, opt, n=2):
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(n):
        model.train()  # as the loop does every epoch: frozen BatchNorms must stay in eval mode
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# --------------------------------------------------------------------------- freezing
def test_frozen_backbone_keeps_its_weights_and_bn_statistics_and_the_head_trains():
    model = _alexnet()
    fr, opt = _frozen(model, "backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, opt)
    after = model.state_dict()
    head = {k for k in after if k.startswith("classifier.6.")}
    assert head == {"classifier.6.weight", "classifier.6.bias"}
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == head  # every backbone weight and every BN buffer (running stats, count) unchanged
    assert sum(len(g["params"]) for g in opt.param_groups) == 2  # frozen params are not in the optimizer
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0 and len(fr.hooks) == n_bn


def test_freeze_stages_counts_timm_feature_stages_and_refuses_too_many():
    from cnnlab.recipes.freeze import frozen_names

    model = _resnet()
    names = frozen_names(model, "stages=2")  # feature_info: act1 (the stem), layer1, ...
    assert "conv1.weight" in names and any(n.startswith("layer1.") for n in names)
    assert not any(n.startswith(("layer2.", "layer3.", "fc.")) for n in names)
    with pytest.raises(ConfigError, match=r"model.freeze=stages=6 is more than this model's 5 feature stages"):
        frozen_names(model, "stages=6")


def test_unfreeze_adds_the_params_at_the_schedules_current_lr_and_then_follows_it():
    from cnnlab.schedulers import cosine, with_warmup

    model = _alexnet()
    fr, opt = _frozen(model, "backbone", lr=0.1)
    sched = with_warmup(lambda o, **kw: cosine(o, **kw), opt, total_steps=20, steps_per_epoch=5, warmup_epochs=1)
    for _ in range(7):
        _step(model, opt, 1)
        sched.step()
    live = opt.param_groups[0]["lr"]
    assert 0 < live < 0.1
    n_groups = len(opt.param_groups)
    assert fr.unfreeze(opt) == 19
    assert len(opt.param_groups) == n_groups  # the waiting group was there from the start
    assert all(g["lr"] == pytest.approx(live) for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == 21
    assert all(p.requires_grad for p in model.parameters()) and not fr.hooks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, opt, 1)
    sched.step()
    assert all(g["lr"] == pytest.approx(opt.param_groups[0]["lr"]) for g in opt.param_groups)
    assert not torch.equal(before["features.0.weight"], model.state_dict()["features.0.weight"])


def test_layer_decay_and_head_lr_mult_give_each_group_its_lr_through_the_schedule():
    from cnnlab.recipes.freeze import lr_groups
    from cnnlab.schedulers import onecycle, step, with_warmup

    model = _resnet()
    groups = lr_groups(model, 0.1, 5e-4, False, head_lr_mult=10.0, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    lr_of = {n: by_param[id(p)]["lr"] for n, p in model.named_parameters()}
    assert lr_of["fc.weight"] == pytest.approx(1.0)  # the top layer (scale 1) x head_lr_mult 10
    assert lr_of["conv1.weight"] < lr_of["layer1.0.conv1.weight"] < lr_of["layer4.1.conv2.weight"] <= 0.1
    assert by_param[id(model.bn1.weight)]["weight_decay"] == 0.0  # timm's grouping: no decay on 1-D params
    for make in (lambda o, **kw: step(o, **kw, step_epochs=1, gamma=0.5), lambda o, **kw: onecycle(o, **kw)):
        opt = torch.optim.SGD(lr_groups(model, 0.1, 5e-4, True, head_lr_mult=10.0, layer_decay=0.5), lr=0.1)
        ratios = [g["lr"] / opt.param_groups[0]["lr"] for g in opt.param_groups]
        sched = with_warmup(make, opt, total_steps=12, steps_per_epoch=3, warmup_epochs=1)
        for _ in range(5):
            opt.step()
            sched.step()
        assert [g["lr"] / opt.param_groups[0]["lr"] for g in opt.param_groups] == pytest.approx(ratios)


def test_layer_decay_is_refused_for_a_model_without_timm_grouping():
    from cnnlab.recipes.freeze import lr_groups

    with pytest.raises(ConfigError, match="optimizer.layer_decay=0.7: Linear has no timm group_matcher"):
        lr_groups(torch.nn.Linear(3, 2), 0.1, 0.0, False, layer_decay=0.7)


def test_optimizer_state_of_either_phase_loads_into_an_optimizer_rebuilt_in_that_phase():
    model = _alexnet()
    fr, opt = _frozen(model, "backbone")
    _step(model, opt, 1)
    frozen_state = opt.state_dict()
    fr.unfreeze(opt)
    _step(model, opt, 1)
    unfrozen_state = opt.state_dict()
    # A resume rebuilds the model and optimizer frozen; train.py's _resume unfreezes first when
    # the checkpoint's epoch is at or past model.unfreeze_epoch.
    fr2, opt2 = _frozen(model, "backbone")
    opt2.load_state_dict(frozen_state)
    assert len(opt2.state) == 2
    with pytest.raises(ValueError):  # the other phase's state does not fit: the phase matters
        opt2.load_state_dict(unfrozen_state)
    fr2.unfreeze(opt2)
    opt2.load_state_dict(unfrozen_state)
    assert len(opt2.state) == 21


@pytest.mark.slow
def test_resume_in_the_frozen_then_the_unfrozen_phase(tiny_cfg, tmp_path):
    from cnnlab.train import train

    run = tmp_path / "run"
    base = ("model.freeze=backbone", "trainer.log_feature_maps=false")
    first = train(tiny_cfg(*base))  # epoch 1, frozen all along
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert [len(g["params"]) for g in ck["optimizer"]["param_groups"]] == [2, 0]  # head, waiting group
    assert first["status"] == "completed"
    # Resumed in the frozen phase, unfrozen at epoch 2; then resumed again in the unfrozen phase.
    second = train(tiny_cfg(*base, f"resume={run}", "trainer.epochs=2", "model.unfreeze_epoch=2"))
    assert second["epochs_completed"] == 2 and second["status"] == "completed"
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert [len(g["params"]) for g in ck["optimizer"]["param_groups"]] == [2, 19]
    third = train(tiny_cfg(*base, f"resume={run}", "trainer.epochs=3", "model.unfreeze_epoch=2"))
    assert third["epochs_completed"] == 3 and third["status"] == "completed"


# --------------------------------------------------------------------------- imbalance
def test_long_tail_counts_and_split():
    from cnnlab.data.splits import Split
    from cnnlab.recipes.imbalance import long_tail, long_tail_counts

    # CIFAR-10-LT at ratio 100, as published (Cao et al. 2019, LDAM-DRW's IMBALANCECIFAR10)
    assert long_tail_counts([5000] * 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tail_counts([120, 130], 1.0) == [120, 120]
    y = torch.arange(10).repeat(50)  # 50 per class, interleaved
    split = Split(torch.arange(500, dtype=torch.uint8).view(500, 1, 1, 1).expand(500, 1, 2, 2), y)
    lt = long_tail(split, 10, 10.0)
    assert torch.bincount(lt.y, minlength=10).tolist() == long_tail_counts([50] * 10, 10.0)
    assert torch.equal(long_tail(split, 10, 10.0).x, lt.x)  # a fixed seed: the same subset every time


def test_class_weights_balanced_list_and_refusals():
    from cnnlab.recipes.imbalance import class_weights

    assert class_weights("none", [10, 10]) is None
    assert class_weights("balanced", [30, 10]) == pytest.approx([40 / 60, 40 / 20])
    assert class_weights([1, 2], [5, 5]) == [1.0, 2.0]
    with pytest.raises(ConfigError, match="has 3 values but the dataset has 2 classes"):
        class_weights([1, 2, 3], [5, 5])
    with pytest.raises(ConfigError, match="at least one > 0"):
        class_weights([0, 0], [5, 5])


def test_balanced_sampler_draws_every_class_about_equally_on_both_loaders():
    from cnnlab.data.dataloader import build_dataloader
    from cnnlab.data.loader import TensorLoader
    from cnnlab.data.splits import Split
    from cnnlab.recipes.imbalance import sample_weights

    y = torch.cat([torch.zeros(900, dtype=torch.long), torch.ones(90, dtype=torch.long),
                   torch.full((10,), 2, dtype=torch.long)])
    x = torch.zeros(1000, 1, 4, 4, dtype=torch.uint8)
    w, draws = sample_weights(y, 3)
    assert draws == 3 * 900  # oversampling: every class drawn as often as the largest is
    drawn = {}
    for rank in (0, 1):  # sharded: each rank its share of the same draw
        loader = TensorLoader(x, y, 50, [0.5], [0.5], train=True, seed=0, rank=rank, world_size=2,
                              sample_weights=w, num_draws=draws)
        drawn[rank] = torch.cat([b[1] for b in loader])
        classic = build_dataloader(Split(x, y), 50, [0.5], [0.5], "cpu", train=True, seed=0, num_workers=0,
                                   rank=rank, world_size=2, sample_weights=w, num_draws=draws)
        assert len(classic) == len(loader) == 27 and len(torch.cat([b[1] for b in classic])) == 1350
    counts = torch.bincount(torch.cat(list(drawn.values())), minlength=3)
    assert counts.sum() == 2700 and counts.min() > 800  # ~900 each; without the sampler class 2 gets 10


# --------------------------------------------------------------------------- TTA
def test_tta_flip_on_a_symmetric_input_equals_the_plain_model_and_averages_otherwise():
    from cnnlab.evaluation.tta import views, with_tta

    model = _alexnet().eval()
    x = torch.randn(4, 1, 32, 32)
    sym = x + x.flip(-1)  # a mirror-symmetric image
    tta = with_tta(model, "flip", "cifar10", 32)
    with torch.no_grad():
        assert torch.allclose(tta(sym).exp(), model(sym).softmax(1), atol=1e-6)
        both = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
        assert torch.allclose(tta(x).exp(), both, atol=1e-6)
    crops = views(x, "crops", 4)
    assert len(crops) == 5 and all(c.shape == x.shape for c in crops) and torch.equal(crops[0], x)
    assert with_tta(model, "none", "digits", 32) is model
    from cnnlab.evaluation.tta import train_padding  # tta_padding=null: the run's own crop shift

    assert (train_padding({"augment": {"crop_padding": 2}}, None), train_padding({"augment": {"crop_padding": 0}}, None),
            train_padding({"augment": {"crop_padding": 2}}, 3)) == (2, 4, 3)


@pytest.mark.parametrize(("mode", "dataset", "padding", "needle"), [
    ("flip", "digits", 4, "tta=flip is off for digits"),
    ("crops", "digits", 40, "tta_padding=40: the crops would be shifted by more than the image (32 px"),
    ("mirror", "cifar10", 4, "tta='mirror' is not allowed"),
])
def test_tta_refusals(mode, dataset, padding, needle):
    from cnnlab.evaluation.tta import check_tta

    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        check_tta(mode, dataset, 32, padding)


# --------------------------------------------------------------------------- the config
BAD_KEYS = [  # (key, value, what the one line says): each is refused by validate, before torch
    ("model.freeze", "stages", "model.freeze='stages' is not allowed: use none, backbone or stages=N"),
    ("model.unfreeze_epoch", 9, "model.unfreeze_epoch=9 is not allowed: use null or an integer in [2, 5]"),
    ("loss.class_weights", [1, 2], "give one weight per class"),
    ("loss.class_weights", [1] * 9 + [-1], "or use a non-empty list of numbers >= 0"),
    ("dataset.imbalance", 0.5, "dataset.imbalance=0.5 is not allowed: use null or a number >= 1"),
    ("dataset.sampler", "uniform", "choose one of none, balanced"),
    ("optimizer.layer_decay", 1.5, "optimizer.layer_decay=1.5 is not allowed"),
]


def test_the_new_keys_are_off_by_default_each_bad_value_is_refused_and_a_good_set_validates():
    from omegaconf import OmegaConf

    from cnnlab.compose import compose

    cfg = compose([])  # one composition (Hydra's is the slow part), edited per case
    assert (cfg.model.freeze, cfg.model.unfreeze_epoch, cfg.loss.class_weights) == ("none", None, "none")
    assert (cfg.dataset.sampler, cfg.dataset.imbalance) == ("none", None)
    assert (cfg.optimizer.head_lr_mult, cfg.optimizer.layer_decay) == (1.0, None)

    def edited(**values):
        c = cfg.copy()
        for k, v in values.items():
            OmegaConf.update(c, k, v, merge=False)
        return c

    for key, value, needle in BAD_KEYS:
        with pytest.raises(ConfigError) as e:
            validate(edited(**{"model.freeze": "backbone", key: value}))
        assert needle in str(e.value), key
    with pytest.raises(ConfigError, match="unfreezing needs model.freeze"):
        validate(edited(**{"model.unfreeze_epoch": 3}))
    validate(edited(**{"model.freeze": "stages=2", "model.unfreeze_epoch": 3, "loss.class_weights": "balanced",
                       "dataset.sampler": "balanced", "dataset.imbalance": 100.0, "optimizer.layer_decay": 0.7}))


def test_imbalanced_run_reports_macro_f1_and_the_worst_class(tiny_cfg, tmp_path):
    from cnnlab.train import train

    s = train(tiny_cfg("dataset.imbalance=20", "dataset.image_size=16", "loss.class_weights=balanced", "dataset.sampler=balanced",
                       "trainer.log_feature_maps=false", "trainer.save_checkpoints=false"))
    counts = s["train_class_counts"]
    assert counts[0] > 10 * counts[-1]
    assert s["test_worst_class"]["f1"] <= s["test_macro_f1"]
    fit = json.loads((tmp_path / "run" / "summary.json").read_text())["fit"]
    assert fit["imbalanced"]["worst_class"] == s["test_worst_class"]


# --------------------------------------------------------------------------- the transfer experiment
def _mnist_stand_in(root, n_train=256, n_test=64):
    """MNIST's idx files (as torchvision leaves them extracted), generated: MNIST is not on this
    machine. Each class a bright bar at its own row, so there is something to learn."""
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 + 2 * k : 4 + 2 * k, 4:24] = 255
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) +
                                                             labels.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_transfer_digits_pretrains_on_mnist_then_fine_tunes_a_frozen_backbone_with_a_new_head(tiny_cfg, tmp_path):
    from cnnlab.train import train

    _mnist_stand_in(tmp_path / "data")
    pre = tmp_path / "pre"
    train(tiny_cfg("dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
                   "trainer.log_feature_maps=false", run_dir=pre))
    best = pre / "checkpoints" / "best.pt"
    ft = tmp_path / "ft"
    s = train(tiny_cfg("experiment=transfer_digits", f"model.checkpoint={best}", "model.freeze=backbone",
                       "trainer.epochs=1", "trainer.log_feature_maps=false", run_dir=ft))
    assert s["status"] == "completed"
    source = torch.load(best, weights_only=False)["model"]
    tuned = torch.load(ft / "checkpoints" / "last.pt", weights_only=False)["model"]
    backbone = [k for k in source if not k.startswith("classifier.6.")]
    assert all(torch.equal(source[k], tuned[k]) for k in backbone)  # loaded, then frozen (BN stats too)
    assert not torch.equal(source["classifier.6.weight"], tuned["classifier.6.weight"])  # a new head, trained
