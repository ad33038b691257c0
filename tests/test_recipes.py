"""The training recipes: each option changes what it should, fails in one line when out of range,
and a resumed run with them on is bit for bit the uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, compose

import cnnlab.train as train_mod
from cnnlab.config import validate
from cnnlab.device import resolve_device
from cnnlab.errors import ConfigError

CPU = resolve_device("cpu", "none", False, False)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _constant(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


# --------------------------------------------------------------------------- range checks
@pytest.mark.parametrize("override, says", [
    ("loss.label_smoothing=1.5", "[0, 1)"),
    ("mix.mixup_alpha=-1", ">= 0"),
    ("mix.cutmix_alpha=-0.5", ">= 0"),
    ("mix.prob=1.5", "[0, 1]"),
    ("mix.switch_prob=-0.1", "[0, 1]"),
    ("ema.decay=1.0", "(0, 1)"),
    ("trainer.accumulate=0", ">= 1"),
    ("scheduler.warmup_epochs=-1", "[0, 5] (trainer.epochs=5)"),
    ("scheduler.warmup_epochs=6", "[0, 5] (trainer.epochs=5)"),
    ("dataset.augment.policy=randaug", "randaugment, trivialaugment"),
    ("dataset.augment.random_erasing=2", "[0, 1]"),
    ("optimizer.no_weight_decay_norm_bias=3", "true or false"),
])
def test_a_recipe_out_of_range_is_one_line(override, says):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{override.split('=')[0]}=") and says in msg


def test_mixing_needs_an_even_batch():
    with pytest.raises(ConfigError, match=r"trainer.batch_size=15 .*even batch size"):
        validate(compose(["mix.mixup_alpha=0.2", "trainer.batch_size=15"]))
    validate(compose(["trainer.batch_size=15"]))  # no mixing: any batch
    from cnnlab.recipes.mix import make_mixer

    with pytest.raises(ConfigError, match=r"even batch per process .*, got 7: "):  # a DDP rank's share
        make_mixer(0.2, 0.0, 1.0, 0.5, 0.0, 10, batch_size=7)


# --------------------------------------------------------------------------- label smoothing
def test_label_smoothing_raises_the_minimum_loss():
    """A model that is right with a huge margin: ~0 loss plain; smoothing's floor is the entropy of
    the smoothed target, (1 - e + e/K) on the label and e/K on each other class."""
    k, eps = 4, 0.2
    y = torch.arange(8) % k
    x = torch.nn.functional.one_hot(y, k).float()
    model = torch.nn.Linear(k, k, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(k) * 50.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = {ls: train_mod.train_one_epoch(model, [(x, y)], opt, _constant(opt), CPU, label_smoothing=ls).means()[0]
            for ls in (0.0, eps)}
    q = torch.full((k,), eps / k)
    q[0] += 1 - eps
    floor = -(q * q.log()).sum().item()
    assert loss[0.0] < 1e-6
    assert loss[eps] >= floor - 1e-5 and loss[eps] > 0.5


# --------------------------------------------------------------------------- mixup / cutmix
@pytest.mark.parametrize("alphas", [(1.0, 0.0), (0.0, 1.0)], ids=["mixup", "cutmix"])
def test_mixup_makes_the_targets_soft(alphas):
    import numpy as np

    from cnnlab.recipes.mix import make_mixer

    assert make_mixer(0.0, 0.0, 1.0, 0.5, 0.1, 10, 8) is None  # off: nothing built, nothing drawn
    np.random.seed(0)
    mix = make_mixer(*alphas, 1.0, 0.5, 0.0, 10, batch_size=8)
    x = torch.randn(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    xm, target = mix(x.clone(), y)
    assert target.shape == (8, 10) and torch.allclose(target.sum(1), torch.ones(8))
    assert (target.max(1).values < 1).all()  # soft: two labels each
    lam = target[0, 0].item()  # image 0 is mixed with image 7 (its mirror in the batch)
    assert target[0, 7].item() == pytest.approx(1 - lam) and 0 < lam < 1
    assert not torch.equal(xm, x)
    # The dominant label is the one with the larger share: y or its mirror's.
    assert torch.equal(target.argmax(1), y if lam > 0.5 else y.flip(0))
    # label smoothing goes into timm's targets explicitly (its own default is 0.1)
    np.random.seed(0)
    _, smooth = make_mixer(*alphas, 1.0, 0.5, 0.2, 10, batch_size=8)(x.clone(), y)
    assert smooth.min().item() == pytest.approx(0.02) and target.min().item() == 0.0


def test_under_mixing_the_accuracy_counts_the_dominant_label():
    y = torch.tensor([0, 1, 2, 3])
    x = torch.nn.functional.one_hot(y, 4).float()
    model = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4) * 10.0)  # predicts y exactly
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    swap = y.flip(0)

    def mixer(xb, yb):  # 30% own image, 70% the mirror's: the mirror's label dominates
        t = 0.3 * torch.nn.functional.one_hot(yb, 4) + 0.7 * torch.nn.functional.one_hot(yb.flip(0), 4)
        return xb, t.float()

    sums = train_mod.train_one_epoch(model, [(x, y)], opt, _constant(opt), CPU, mixer=mixer)
    assert sums.means()[1] == 0.0  # right about y, wrong about the dominant label swap
    sums = train_mod.train_one_epoch(model, [(x[swap], y)], opt, _constant(opt), CPU, mixer=mixer)
    assert sums.means()[1] == 1.0


# --------------------------------------------------------------------------- EMA
def test_ema_weights_differ_from_the_live_ones_and_lag_them():
    from cnnlab.recipes.ema import WeightEma

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    init = [p.detach().clone() for p in model.parameters()]
    ema = WeightEma(model, decay=0.5, warmup=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    train_mod.train_one_epoch(model, [(x, y)], opt, _constant(opt), CPU, ema=ema)
    live = [p.detach().clone() for p in model.parameters()]
    for e, i, w in zip(ema.module.parameters(), init, live, strict=True):
        assert torch.allclose(e, 0.5 * i + 0.5 * w)  # one update: decay * ema + (1 - decay) * live
    for _ in range(5):
        train_mod.train_one_epoch(model, [(x, y)], opt, _constant(opt), CPU, ema=ema)
    assert ema.updates == 6

    def dist(ps, qs):
        return sum((p - q).norm() ** 2 for p, q in zip(ps, qs, strict=True)).sqrt().item()

    live = list(model.parameters())
    assert dist(ema.module.parameters(), live) > 1e-3  # differs
    assert dist(ema.module.parameters(), init) < dist(live, init)  # lags: nearer where training started


# --------------------------------------------------------------------------- accumulation
def test_accumulating_two_batches_of_16_gives_the_gradients_of_one_batch_of_32():
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,))

    def grads(loader, accumulate):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 6 * 6, 5))  # no BatchNorm: batch-size free
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = _constant(opt)
        sums = train_mod.train_one_epoch(model, loader, opt, sched, CPU, accumulate=accumulate)
        return [p.grad.clone() for p in model.parameters()], list(model.parameters()), sched, sums

    g32, w32, s32, _ = grads([(x, y)], 1)
    g16, w16, s16, sums = grads([(x[:16], y[:16]), (x[16:], y[16:])], 2)
    for a, b in zip(g32, g16, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(w32, w16, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # one optimizer step, the same step
    assert s32.last_epoch == s16.last_epoch == 1  # the schedule steps once per optimizer step
    assert sums.seen == 32 and sums.steps == 2
    # A trailing partial group is not trained on: 3 batches at accumulate=2 run 2.
    _, _, s3, sums3 = grads([(x[:16], y[:16]), (x[16:], y[16:]), (x[:16], y[:16])], 2)
    assert sums3.steps == 2 and s3.last_epoch == 1


def test_accumulate_uses_ddp_no_sync_on_the_inner_steps():
    calls = []

    class FakeDDP(torch.nn.Linear):
        def no_sync(self):
            from contextlib import contextmanager

            @contextmanager
            def ctx():
                calls.append("no_sync")
                yield

            return ctx()

    model = FakeDDP(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(2, 4), torch.tensor([0, 1]))] * 4
    train_mod.train_one_epoch(model, batches, opt, _constant(opt), CPU, accumulate=2)
    assert calls == ["no_sync", "no_sync"]  # micro-batches 1 and 3; 2 and 4 all-reduce


# --------------------------------------------------------------------------- weight decay groups
def test_no_weight_decay_on_norm_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10),
                                torch.nn.LayerNorm(10))
    plain = train_mod._make_optimizer(compose([]).optimizer, model, CPU)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 5e-4
    opt = train_mod._make_optimizer(compose(["optimizer.no_weight_decay_norm_bias=true"]).optimizer, model, CPU)
    by_wd = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert set(by_wd) == {0.0, 5e-4}
    assert all(p.ndim <= 1 for p in by_wd[0.0]) and all(p.ndim > 1 for p in by_wd[5e-4])
    assert len(by_wd[0.0]) == 6  # conv and linear biases, BatchNorm's and LayerNorm's weight and bias
    assert len(by_wd[0.0]) + len(by_wd[5e-4]) == len(list(model.parameters()))


# --------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_the_policy_is_drawn_per_image_in_the_tensor_loader(policy):
    from cnnlab.data.loader import Augment, TensorLoader

    torch.manual_seed(0)
    img = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    x = img.expand(32, -1, -1, -1).contiguous()  # 32 copies of one image
    y = torch.zeros(32, dtype=torch.long)
    plain = TensorLoader(x, y, 32, [0.5], [0.5], train=True)
    aug = TensorLoader(x, y, 32, [0.5], [0.5], train=True, augment=Augment(policy=policy))
    xb0, _ = next(iter(plain))
    xb, _ = next(iter(aug))
    distinct = {tuple(v.flatten().tolist()) for v in xb}
    assert len(distinct) > 4  # not one op for the whole batch
    assert not torch.equal(xb, xb0)


def test_random_erasing_on_the_normalised_batch():
    from cnnlab.data.loader import Augment, TensorLoader

    x = torch.full((8, 3, 16, 16), 128, dtype=torch.uint8)
    y = torch.zeros(8, dtype=torch.long)
    torch.manual_seed(0)
    xb, _ = next(iter(TensorLoader(x, y, 8, [0.5], [0.5], train=True, augment=Augment(random_erasing=1.0))))
    clean = (128 / 255 - 0.5) / 0.5
    changed = (xb - clean).abs() > 1e-6  # (8, 3, 16, 16)
    assert changed.flatten(1).any(1).all()  # every image has an erased rectangle
    assert (changed.flatten(1).float().mean(1) < 0.5).all()  # a rectangle, not the image


# --------------------------------------------------------------------------- whole runs
RECIPES = ["loss.label_smoothing=0.1", "mix.mixup_alpha=0.2", "mix.cutmix_alpha=1.0", "ema.enabled=true",
           "ema.decay=0.9", "scheduler.warmup_epochs=0.5", "dataset.augment.policy=trivialaugment",
           "dataset.augment.random_erasing=0.25", "trainer.accumulate=2",
           "optimizer.no_weight_decay_norm_bias=true"]


def test_every_recipe_on_the_dataloader_path(tmp_path, caplog):
    caplog.set_level("INFO", logger="cnnlab")
    cfg = compose([*TINY, "dataset.image_size=16", "dataset.loader=dataloader", "dataset.num_workers=0",
                   *RECIPES], output_dir=tmp_path / "run")
    summary = train_mod.train(cfg)
    assert summary["status"] == "completed" and summary["ema"] is True
    assert "ema: validation and test use the EMA weights" in caplog.text
    assert math.isfinite(summary["test_acc"])


def test_ema_and_every_recipe_resume_bit_for_bit(tmp_path, monkeypatch):
    """Two epochs with everything on, stopped by SIGTERM after epoch 1 and resumed: the weights,
    the EMA's weights and its update count equal the uninterrupted run's exactly."""
    from test_reliability import _rows, _stop_in_epoch

    from cnnlab.lifecycle.checkpoint import load_checkpoint
    from cnnlab.lifecycle.signals import Interrupted

    def cfg(run, *more):
        return compose([*TINY, "dataset.image_size=16", "trainer.deterministic=true", "trainer.epochs=2",
                        *RECIPES, *more], output_dir=run)

    ref, run = tmp_path / "ref", tmp_path / "run"
    assert train_mod.train(cfg(ref))["status"] == "completed"
    _stop_in_epoch(monkeypatch, epoch=1, after=True)
    with pytest.raises(Interrupted):
        train_mod.train(cfg(run))
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    summary = train_mod.train(cfg(run, f"resume={run}"))
    assert summary["status"] == "completed" and summary["resumed_at_epochs"] == [1] and summary["ema"] is True

    a, b = load_checkpoint(ref / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 4  # 4 batches / accumulate 2, x 2 epochs
    for part in ("model", "ema"):
        sa = a[part] if part == "model" else a[part]["weights"]
        sb = b[part] if part == "model" else b[part]["weights"]
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (part, k)
    assert any(not torch.equal(a["model"][k], a["ema"]["weights"][k]) for k in a["model"])
    assert _rows(run) == _rows(ref)


def test_with_the_recipes_off_a_checkpoint_keeps_its_keys(tmp_path):
    from cnnlab.lifecycle.checkpoint import load_checkpoint

    summary = train_mod.train(compose([*TINY, "dataset.image_size=16"], output_dir=tmp_path / "run"))
    assert "ema" not in summary
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert set(ck) == {"model", "optimizer", "scheduler", "scaler", "epoch", "best_val_acc", "best_epoch",
                       "train_seconds", "images_seen", "early_stop", "rng", "model_name", "config",
                       "class_names"}  # class_names: [evaluate]'s addition, not a recipe's
    assert ck["class_names"] == [str(d) for d in range(10)] == summary["class_names"]


def test_the_cifar10_resnet18_preset_combines_the_recipes():
    cfg = compose(["experiment=cifar10_resnet18"])
    validate(cfg)
    assert (cfg.model.name, cfg.dataset.name, cfg.trainer.epochs, cfg.trainer.batch_size) == ("resnet18", "cifar10", 200, 128)
    assert cfg.loss.label_smoothing == 0.1 and cfg.mix.mixup_alpha == 0.2 and cfg.mix.cutmix_alpha == 1.0
    assert cfg.ema.enabled and cfg.scheduler.warmup_epochs == 5 and cfg.optimizer.no_weight_decay_norm_bias
    assert cfg.dataset.augment.policy == "trivialaugment" and cfg.dataset.augment.flip


ACCUMULATE_WORKER = """
import json, sys
import torch
import cnnlab.train as T
from cnnlab.device import resolve_device
from cnnlab.dist import setup

d = setup("cpu")
torch.manual_seed(0)
x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
torch.manual_seed(1)
model = torch.nn.Linear(6, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
xs, ys = x[d.rank::2], y[d.rank::2]  # this rank's 16 of the global 32, as two micro-batches of 8
T.train_one_epoch(d.wrap(model), [(xs[:8], ys[:8]), (xs[8:], ys[8:])], opt, sched,
                  resolve_device("cpu", "none", False, False), accumulate=2)
open(sys.argv[1] + f"/rank{d.rank}.json", "w").write(json.dumps([p.tolist() for p in model.parameters()]))
d.close()
"""


@pytest.mark.slow  # torchrun start-up: ~15 s
def test_accumulate_under_ddp_steps_with_the_global_batchs_gradient(tmp_path):
    """2 ranks x 2 micro-batches of 8 (no_sync on the first) == one step on the batch of 32."""
    import json

    from test_ddp import torchrun

    script = tmp_path / "worker.py"
    script.write_text(ACCUMULATE_WORKER)
    res = torchrun([str(script), str(tmp_path)], tmp_path, module=None, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_mod.train_one_epoch(model, [(x, y)], opt, _constant(opt), CPU)
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        for p, q in zip(model.parameters(), got, strict=True):
            torch.testing.assert_close(torch.tensor(q), p.detach(), rtol=1e-5, atol=1e-6)


def test_the_dataloader_path_runs_the_policy_per_image_before_the_float_conversion():
    from torchvision.transforms import v2

    from cnnlab.data.dataloader import image_transform
    from cnnlab.data.loader import Augment

    steps = image_transform([0.5], [0.5], (3, 16, 16), Augment(flip=True, policy="randaugment")).transforms
    kinds = [type(t) for t in steps]
    assert kinds.index(v2.RandAugment) == kinds.index(v2.RandomHorizontalFlip) + 1
    assert kinds.index(v2.RandAugment) < kinds.index(v2.ToDtype)  # on the uint8 image
    assert v2.RandAugment not in [type(t) for t in image_transform([0.5], [0.5], (3, 16, 16), Augment()).transforms]


def test_bn_recalibrate_gives_the_statistics_of_the_current_weights():
    """After recalibrate_bn the running mean/var are the batch statistics of the frozen weights."""
    from cnnlab.recipes.bn import recalibrate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    batches = [(torch.randn(8, 3, 8, 8) * 3 + 1, torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    bn = model[1]
    weights = [p.detach().clone() for p in model.parameters()]
    recalibrate_bn(model, batches, 2)  # the first 2 batches only
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches[:2]]  # 2 x (8, 4, 6, 6)
    # A cumulative average over the batches of each batch's mean and (unbiased) variance.
    torch.testing.assert_close(bn.running_mean, torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0))
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert bn.momentum == 0.1 and model.training  # restored


def test_bn_recalibrate_off_by_default_and_on_in_a_run(tmp_path):
    assert compose([]).trainer.bn_recalibrate == 0
    summary = train_mod.train(compose([*TINY, "dataset.image_size=16", "trainer.bn_recalibrate=2"],
                                      output_dir=tmp_path / "run"))
    assert summary["status"] == "completed"
