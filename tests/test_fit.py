"""The fit diagnosis: each verdict on synthetic metric curves, the hint, the thresholds."""

from __future__ import annotations

import json
import math

import pytest
from conftest import compose
from omegaconf import OmegaConf

from cnnlab.config import validate
from cnnlab.errors import ConfigError
from cnnlab.reporting import fit as fit_mod
from cnnlab.reporting.fit import VERDICTS, fit_text

FIT = OmegaConf.to_container(compose().fit)  # the thresholds conf/config.yaml sets


def diagnose(rows, **kw):
    """The diagnosis with conf/config.yaml's thresholds, as a run gets it, and ``kw`` over them."""
    return fit_mod.diagnose(rows, **{**FIT, **kw})


def curves(train_acc, val_acc, train_loss=None, val_loss=None):
    """Metrics rows from per-epoch lists; losses default to 1 - acc (falls as acc rises)."""
    n = len(train_acc)
    train_loss = train_loss or [1 - a for a in train_acc]
    val_loss = val_loss or [1 - a for a in val_acc]
    return [{"epoch": i + 1, "train_loss": train_loss[i], "train_acc": train_acc[i],
             "val_loss": val_loss[i], "val_acc": val_acc[i]} for i in range(n)]


def ramp(a, b, n):
    return [a + (b - a) * i / (n - 1) for i in range(n)]


def test_overfitting_matches_the_issue_example():
    # Train climbs to 99.6%; val peaks at 81.2% early and stays; val loss bottoms at epoch 7.
    train = ramp(0.5, 0.996, 30)
    val = [min(0.3 + 0.1 * i, 0.812) for i in range(30)]
    val_loss = [0.6 + 0.05 * abs(i - 6) for i in range(30)]
    d = diagnose(curves(train, val, val_loss=val_loss))
    assert d["verdict"] == "overfitting"
    assert d["hint"] == ("overfitting: train 99.6% vs val 81.2% (gap 18.4 pts), val loss lowest at "
                         "epoch 7 of 30: try augmentation, more weight decay, or early stopping")
    assert d["gap"] == pytest.approx(0.184) and d["gap_pts"] == pytest.approx(18.4)
    assert d["lowest_val_loss_epoch"] == 7 and d["best_val_epoch"] == 7
    assert d["val_still_improving"] is False
    assert d["final_train_acc"] == pytest.approx(0.996) and d["best_train_acc"] == pytest.approx(0.996)


def test_underfitting_when_train_is_poor_and_val_has_stopped():
    train = [0.30, 0.40, 0.45, 0.46, 0.46, 0.46]
    val = [0.30, 0.40, 0.45, 0.45, 0.44, 0.45]
    val_loss = [1.5, 1.3, 1.2, 1.21, 1.22, 1.21]
    d = diagnose(curves(train, val, val_loss=val_loss))
    assert d["verdict"] == "underfitting"
    assert d["val_still_improving"] is False
    assert d["hint"].startswith("underfitting: train 46.0% vs val 45.0% (gap 1.0 pts)")
    assert "bigger model" in d["hint"]


def test_still_improving_when_train_is_poor_but_val_keeps_rising():
    d = diagnose(curves(ramp(0.3, 0.7, 5), ramp(0.3, 0.68, 5)))
    assert d["verdict"] == "still improving"
    assert d["val_still_improving"] is True
    assert "trainer.epochs" in d["hint"]


def test_good_fit():
    train = [0.5, 0.8, 0.9, 0.95, 0.96, 0.96, 0.96]
    val = [0.5, 0.8, 0.9, 0.94, 0.93, 0.935, 0.93]
    d = diagnose(curves(train, val))
    assert d["verdict"] == "good fit"
    assert d["val_still_improving"] is False
    assert d["hint"] == ("good fit: train 96.0% vs val 93.0% (gap 3.0 pts), val loss lowest at epoch 4 "
                         "of 7: nothing obvious to fix")


def test_good_fit_still_improving_says_more_epochs_may_help():
    d = diagnose(curves([0.5, 0.9, 0.95, 0.97], [0.5, 0.88, 0.93, 0.94]))
    assert d["verdict"] == "good fit" and d["val_still_improving"] is True
    assert d["hint"].endswith("val was still improving: more epochs may help")


@pytest.mark.parametrize("case", ["nan_loss", "blown_up", "status"])
def test_diverged(case):
    train, val = [0.3, 0.5, 0.2], [0.3, 0.5, 0.2]
    if case == "nan_loss":
        rows = curves(train, val, train_loss=[2.0, 1.0, math.nan])
        needle = "loss became NaN/inf at epoch 3"
    elif case == "blown_up":  # no NaN, but the loss rose 5x above its lowest
        rows = curves(train, val, train_loss=[2.3, 1.0, 5.0])
        needle = "train loss rose from 1 (epoch 2) to 5 (epoch 3)"
    else:  # train() stopped on a NaN before logging the epoch: only the status says so
        rows = curves(train[:2], val[:2])
        needle = "stopped on a NaN/inf loss after epoch 2"
    d = diagnose(rows, status="diverged" if case == "status" else "completed")
    assert d["verdict"] == "diverged"
    assert needle in d["hint"] and "optimizer.lr" in d["hint"]
    json.dumps(d, allow_nan=False)  # NaN became null: summary.json stays valid JSON


def test_every_verdict_is_a_documented_one():
    assert set(VERDICTS) == {"underfitting", "overfitting", "good fit", "still improving", "diverged"}


def test_rows_from_metrics_csv_strings_and_missing_val():
    # csv.DictReader gives strings; an empty val split leaves the val columns empty.
    rows = [{"epoch": "1", "train_loss": "0.9", "train_acc": "0.5", "val_loss": "", "val_acc": ""},
            {"epoch": "2", "train_loss": "0.2", "train_acc": "0.95", "val_loss": "", "val_acc": ""}]
    d = diagnose(rows)
    assert d["verdict"] == "good fit" and d["gap"] is None and d["final_val_acc"] is None
    assert "(no val split)" in d["hint"] and "train loss was still falling" in d["hint"]
    assert "val acc" not in fit_text(d)


def test_no_rows():
    assert diagnose([]) is None
    assert diagnose([], status="diverged")["verdict"] == "diverged"
    assert fit_text(None) == "fit: no completed epoch to diagnose"


def test_thresholds_change_the_verdict():
    rows = curves([0.5, 0.9, 0.95], [0.5, 0.85, 0.88])  # gap 7 pts
    assert diagnose(rows)["verdict"] == "good fit"
    assert diagnose(rows, overfit_gap=0.05)["verdict"] == "overfitting"
    assert diagnose(rows, underfit_train_acc=0.99)["verdict"] == "still improving"
    d = diagnose(rows, overfit_gap=0.05)
    assert d["thresholds"]["overfit_gap"] == 0.05


def test_thresholds_have_one_source():
    # No default of its own: the thresholds come from the config (conf/config.yaml), always.
    with pytest.raises(TypeError, match="underfit_train_acc"):
        fit_mod.diagnose(curves([0.5], [0.5]))


@pytest.mark.parametrize("bad", ["fit.overfit_gap=0", "fit.underfit_train_acc=1.5", "fit.still_improving_epochs=0",
                                 "fit.diverge_loss_ratio=1.0"])
def test_bad_thresholds_are_refused_before_training(bad):
    # validate() runs before torch is imported; before, fit.py refused these after the whole run.
    with pytest.raises(ConfigError, match=f"{bad.split('=')[0]}=.* is not allowed"):
        validate(compose([bad]))


@pytest.mark.parametrize("edge", [{"underfit_train_acc": 0.0}, {"underfit_train_acc": 1.0}, {"overfit_gap": 1.0},
                                  {"overfit_gap": 0.001}, {"still_improving_epochs": 1},
                                  {"diverge_loss_ratio": 1.001}])
def test_edge_thresholds_validate_accepts_are_diagnosed(edge):
    key, value = next(iter(edge.items()))
    validate(compose([f"fit.{key}={value}"]))
    rows = curves(ramp(0.4, 0.99, 8), ramp(0.4, 0.85, 8))
    assert diagnose(rows, **edge)["verdict"] in VERDICTS
    assert diagnose([], status="diverged", **edge)["verdict"] == "diverged"
    if edge == {"underfit_train_acc": 0.0}:  # 0 turns under-fitting off: never below 0
        assert diagnose(curves([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]), **edge)["verdict"] != "underfitting"


def test_fit_text_plain_and_markdown():
    d = diagnose(curves([0.5, 0.9, 0.99], [0.5, 0.8, 0.8]))
    text = fit_text(d)
    assert text.splitlines()[0] == d["hint"]
    assert "gap (final train - final val): 19.0 pts (overfitting at >= 8.0)" in text
    assert "val still improving (a best in the last 2 epochs): yes" in text
    md = fit_text(d, markdown=True)
    assert md.startswith(f"**{d['hint']}**\n\n- train acc: final 99.0%, best 99.0%")


def test_fit_config_composes_and_overrides():
    from conftest import compose

    cfg = compose(["fit.overfit_gap=0.1"])
    assert cfg.fit.overfit_gap == 0.1 and cfg.fit.diverge_loss_ratio == 3.0
