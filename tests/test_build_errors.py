"""An optimizer or schedule the schema does not know: what the library raises becomes one line naming the section.

The rule table (cnnlab/config.py) covers the keys of SGD, Adam, AdamW and cnnlab's
schedules; any other ``_target_`` is checked by torch when it is built, and
cnnlab.errors.construction_errors re-raises that as a ConfigError,
``<section> (<target>): <the library's own first line>``: torch's words, not re-worded.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from cnnlab.errors import ConfigError, construction_errors, first_line


def build_optimizer(**node):
    """Build the partial optimizer ``node`` on one parameter, inside construction_errors."""
    cfg = OmegaConf.create({"_partial_": True, **node})
    with construction_errors("optimizer", cfg):
        return instantiate(cfg)([torch.nn.Parameter(torch.zeros(2))])


@pytest.mark.parametrize(
    ("node", "needles"),
    [
        # sgd.yaml's nesterov is still there when only the target changes
        ({"_target_": "torch.optim.RMSprop", "lr": 0.05, "momentum": 0.9, "nesterov": True}, ["nesterov"]),
        ({"_target_": "torch.optim.RMSprop", "lr": 0.05, "alpha": -1}, ["alpha", "-1"]),
        ({"_target_": "torch.optim.RMSprop", "lr": 0.05, "eps": -1}, ["-1"]),
        ({"_target_": "torch.optim.Adam", "lr": -1}, ["-1"]),
        ({"_target_": "torch.optim.NoSuch", "lr": 1}, ["torch.optim.NoSuch"]),  # the import's own error
    ],
)
def test_what_torch_raises_is_one_line_naming_the_section(node, needles):
    with pytest.raises(ConfigError) as e:
        build_optimizer(**node)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"optimizer ({node['_target_']}): "), line
    for needle in needles:
        assert needle in line, (needle, line)


def test_the_line_is_the_librarys_own_first_line():
    """Not re-worded: what follows the section is exactly the first line of what torch raised."""
    try:
        torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(2))], lr=0.05, alpha=-1)
    except ValueError as raw:
        said = first_line(raw)
    with pytest.raises(ConfigError) as e:
        build_optimizer(_target_="torch.optim.RMSprop", lr=0.05, alpha=-1)
    assert str(e.value) == f"optimizer (torch.optim.RMSprop): {said}"


def test_a_good_unknown_target_builds():
    opt = build_optimizer(_target_="torch.optim.RMSprop", lr=0.01, alpha=0.9, momentum=0.5)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["alpha"] == 0.9


def test_a_schedule_error_names_the_scheduler_key():
    cfg = OmegaConf.create({"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True,
                            "max_lr": 0.1, "pct_start": 2})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ConfigError, match=r"^scheduler \(torch\.optim\.lr_scheduler\.OneCycleLR\): .*pct_start"):
        with construction_errors("scheduler", cfg):
            instantiate(cfg)(opt, total_steps=10)


WRONG = st.one_of(st.integers(-10**6, -1), st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: x < 0
                                                                                                 or x != x),
                  st.text(max_size=6), st.lists(st.integers(), max_size=3), st.none())


@settings(max_examples=120, deadline=None, database=None)
@given(target=st.sampled_from(["torch.optim.RMSprop", "torch.optim.Adagrad", "torch.optim.Adamax",
                               "torch.optim.NAdam", "torch.optim.RAdam", "torch.optim.ASGD"]),
       key=st.sampled_from(["lr", "alpha", "eps", "weight_decay", "momentum", "lr_decay", "lambd", "t0",
                            "momentum_decay", "rho", "no_such_keyword"]),
       value=WRONG)
def test_fuzz_unknown_targets_fail_in_one_line_or_build(target, key, value):
    """Random wrong values for other optimizers' keywords: a target that builds, or one line naming the section."""
    try:
        build_optimizer(**{"_target_": target, "lr": 0.01, key: value})
    except ConfigError as e:
        line = str(e)
        assert "\n" not in line and line.startswith(f"optimizer ({target}): ") and len(line) > len(target) + 14, line
