"""The lr schedules, built the way the runner builds them (instantiate the partial)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab.schedulers import with_warmup


def _lrs(name: str, steps: int = 20, per_epoch: int = 5, **extra):
    """Each step's lr, the schedule built as train() builds it (the warm-up wrapped around it)."""
    cfg = compose([f"scheduler={name}", *[f"scheduler.{k}={v}" for k, v in extra.items()]])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sc = cfg.scheduler
    make = instantiate(OmegaConf.masked_copy(sc, [k for k in sc if k != "warmup_epochs"]))
    sched = with_warmup(make, opt, steps, per_epoch, sc.warmup_epochs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_decays_from_lr_to_min():
    lrs = _lrs("cosine")
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))
    assert all(a >= b for a, b in zip(lrs[:-1], lrs[1:], strict=True))


def test_cosine_warmup_rises_linearly():
    lrs = _lrs("cosine", warmup_epochs=1)
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])


def test_step_multiplies_by_gamma_each_step_epochs():
    lrs = _lrs("step", step_epochs=2, gamma=0.5)
    assert lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.05) and lrs[19] == pytest.approx(0.05)


def test_onecycle_peaks_then_falls():
    lrs = _lrs("onecycle")
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 2 <= peak <= 7 and lrs[peak] == pytest.approx(0.1, rel=1e-3) and lrs[-1] < 0.01


def test_none_is_constant():
    assert _lrs("none") == [0.1] * 20


@pytest.mark.parametrize("name", ["cosine", "step", "onecycle", "none"])
def test_warmup_is_one_mechanism_for_every_schedule(name):
    """W = warmup_epochs x steps an epoch; step k < W runs at (k + 1) / W of the schedule's first lr,
    then the schedule starts from its own step 0 over the remaining steps."""
    plain = _lrs(name, steps=16)  # the schedule alone over the 16 - 4 steps after the warm-up
    warm = _lrs(name, steps=20, warmup_epochs=0.8)  # W = round(0.8 * 5) = 4
    first = plain[0]  # 0.1, or onecycle's own start (max_lr / 25)
    assert warm[0] == pytest.approx(first / 4)  # the documented fraction: 1/W
    assert warm[:4] == pytest.approx([first * k / 4 for k in (1, 2, 3, 4)])
    assert warm[4:] == pytest.approx(plain, rel=1e-6)
    assert _lrs(name, warmup_epochs=0) == _lrs(name)  # 0: the schedule itself, untouched
