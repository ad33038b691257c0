"""Tests for the conv/pool explorers: hand loops vs PyTorch, output sizes, and the CLI."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.lessons.conv_explain import (
    LessonInputError,
    as_matrix,
    conv2d_by_hand,
    format_matrix,
    formula_text,
    out_size,
    pool2d_by_hand,
)

ROOT = Path(__file__).resolve().parents[1]

COURSE_INPUT = [
    [1, 2, 0, 3, 1],
    [0, 1, 2, 3, 1],
    [1, 2, 1, 0, 0],
    [5, 2, 3, 1, 1],
    [2, 1, 0, 1, 1],
]
COURSE_KERNEL = [[1, 2, 1], [0, 1, 0], [2, 1, 0]]


def _t(m):
    """A matrix as a float64 (1, 1, H, W) tensor."""
    import torch

    return torch.tensor(m, dtype=torch.float64)[None, None]


def _close(a, b, tol=1e-9):
    return len(a) == len(b) and all(
        len(ra) == len(rb) and all(abs(u - v) <= tol for u, v in zip(ra, rb, strict=True))
        for ra, rb in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------------- conv values


def test_course_conv_known_values():
    assert conv2d_by_hand(COURSE_INPUT, COURSE_KERNEL, stride=1) == [
        [10, 12, 12],
        [18, 16, 16],
        [13, 9, 3],
    ]
    assert conv2d_by_hand(COURSE_INPUT, COURSE_KERNEL, stride=2) == [[10, 12], [13, 3]]
    padded = conv2d_by_hand(COURSE_INPUT, COURSE_KERNEL, stride=1, padding=1)
    assert len(padded) == 5 and all(len(r) == 5 for r in padded)
    assert padded[0] == [1, 3, 4, 10, 8]


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 0, 1), (1, 1, 1), (1, 1, 2)])
def test_course_conv_matches_torch(stride, padding, dilation):
    import torch.nn.functional as F

    ref = F.conv2d(
        _t(COURSE_INPUT), _t(COURSE_KERNEL), stride=stride, padding=padding, dilation=dilation
    )[0, 0].tolist()
    assert _close(conv2d_by_hand(COURSE_INPUT, COURSE_KERNEL, stride, padding, dilation), ref)


def test_random_conv_matches_torch_over_grid():
    import torch.nn.functional as F

    rng = random.Random(0)
    checked = 0
    for (h, w), (kh, kw), s, p, d in itertools.product(
        [(4, 4), (5, 7), (7, 6)], [(1, 1), (2, 3), (3, 3)], [1, 2, 3], [0, 1, 2], [1, 2]
    ):
        if d * (kh - 1) + 1 > h + 2 * p or d * (kw - 1) + 1 > w + 2 * p:
            continue
        x = [[rng.uniform(-3, 3) for _ in range(w)] for _ in range(h)]
        k = [[rng.randint(-2, 2) for _ in range(kw)] for _ in range(kh)]
        ref = F.conv2d(_t(x), _t(k), stride=s, padding=p, dilation=d)[0, 0].tolist()
        assert _close(conv2d_by_hand(x, k, s, p, d), ref), (h, w, kh, kw, s, p, d)
        checked += 1
    assert checked > 100


# --------------------------------------------------------------------------- output sizes


def test_formula_text_course_example():
    assert formula_text(5, 3, 1, 0, 1) == "H_out = floor((5 + 2*0 - 1*(3-1) - 1)/1) + 1 = 3"
    assert formula_text(5, 3, 2, 0, 1, axis="W").endswith("/2) + 1 = 2")
    # ceil_mode with a last window that would start in the right padding: PyTorch drops it.
    text = formula_text(5, 2, 2, 1, 1, ceil_mode=True)
    assert text.splitlines()[0] == "H_out = ceil((5 + 2*1 - 1*(2-1) - 1)/2) + 1 = 4"
    assert "dropped: H_out = 3" in text


def test_out_size_matches_torch_conv():
    import torch
    import torch.nn.functional as F

    for h, k, s, p, d in itertools.product(
        range(1, 9), range(1, 5), [1, 2, 3], [0, 1, 2], [1, 2, 3]
    ):
        x, wgt = torch.zeros(1, 1, h, h), torch.zeros(1, 1, k, k)
        expected = out_size(h, k, s, p, d)
        if expected < 1:  # kernel does not fit the padded input
            with pytest.raises(RuntimeError):
                F.conv2d(x, wgt, stride=s, padding=p, dilation=d)
            continue
        got = F.conv2d(x, wgt, stride=s, padding=p, dilation=d).shape[-1]
        assert got == expected, (h, k, s, p, d)


def test_out_size_matches_torch_max_pool_with_ceil_mode():
    import torch
    import torch.nn.functional as F

    dropped = 0
    for h, k, s, d, ceil in itertools.product(
        range(1, 11), range(1, 5), range(1, 5), [1, 2], [False, True]
    ):
        for p in range(k // 2 + 1):  # PyTorch: padding at most half the kernel
            x = torch.zeros(1, 1, h, h)
            expected = out_size(h, k, s, p, d, ceil)
            if expected < 1:
                with pytest.raises(RuntimeError):
                    F.max_pool2d(x, k, s, p, d, ceil_mode=ceil)
                continue
            got = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil).shape[-1]
            assert got == expected, (h, k, s, p, d, ceil)
            numerator = h + 2 * p - d * (k - 1) - 1
            dropped += ceil and (numerator + s - 1) // s + 1 != expected
    assert dropped > 0  # the grid really exercises the "last window in the padding" rule


# --------------------------------------------------------------------------- pooling values


def test_course_pool_known_values():
    assert pool2d_by_hand(COURSE_INPUT, 3, ceil_mode=False) == [[2]]
    assert pool2d_by_hand(COURSE_INPUT, 3, ceil_mode=True) == [[2, 3], [5, 1]]
    assert _close(pool2d_by_hand(COURSE_INPUT, 3, mode="avg"), [[10 / 9]])


def test_pool_matches_torch_over_grid():
    import torch.nn.functional as F

    rng = random.Random(1)
    x = [[rng.uniform(-5, 5) for _ in range(6)] for _ in range(5)]
    for k, s, ceil, mode in itertools.product([1, 2, 3], [1, 2, 3], [False, True], ["max", "avg"]):
        for p in range(k // 2 + 1):
            pool = F.max_pool2d if mode == "max" else F.avg_pool2d
            ref = pool(_t(x), k, s, p, ceil_mode=ceil)[0, 0].tolist()
            assert _close(pool2d_by_hand(x, k, s, p, ceil, mode), ref), (k, s, p, ceil, mode)


# --------------------------------------------------------------------------- validation


def test_bad_inputs_raise_lesson_errors():
    with pytest.raises(LessonInputError, match="not rectangular"):
        as_matrix([[1, 2], [3]], "input")
    with pytest.raises(LessonInputError, match="stride .* got 0"):
        conv2d_by_hand(COURSE_INPUT, COURSE_KERNEL, stride=0)
    with pytest.raises(LessonInputError, match="bigger than the padded input"):
        conv2d_by_hand([[1, 2], [3, 4]], COURSE_KERNEL)
    with pytest.raises(LessonInputError, match="at most half"):
        pool2d_by_hand(COURSE_INPUT, 3, padding=2)


def test_format_matrix_aligns_columns():
    assert format_matrix([[1, 10], [100, 2.5]], indent="") == "[[  1  10]\n [100 2.5]]"


# --------------------------------------------------------------------------- CLI


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cnnlab.demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Start the slow (torch-importing) CLI runs at once, so they overlap on the cores."""
    tmp = tmp_path_factory.mktemp("demo_cwd")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    specs = {
        "conv": ((), ROOT),
        "pool": ((), ROOT),
        # run from an empty folder to check that no Hydra output folders appear
        "override": (("input=[[1,2],[3,4]]", "kernel=[[1]]", "cases=[{stride:1}]"), tmp),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "cnnlab.demo", name if name != "override" else "conv", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, cwd) in specs.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)
    results["tmp"] = tmp
    return results


def test_cli_conv_prints_known_values(cli_runs):
    rc, out, err = cli_runs["conv"]
    assert rc == 0, err
    assert "H_out = floor((5 + 2*0 - 1*(3-1) - 1)/1) + 1 = 3" in out
    assert "[[10 12 12]\n   [18 16 16]\n   [13  9  3]]" in out
    assert "[[10 12]\n   [13  3]]" in out
    assert "[[ 1  3  4 10  8]" in out
    assert out.count("agrees with the loops: yes") == 3


def test_cli_pool_prints_known_values(cli_runs):
    rc, out, err = cli_runs["pool"]
    assert rc == 0, err
    assert "[[2]]" in out and "[[2 3]\n   [5 1]]" in out
    assert "H_out = ceil((5 + 2*0 - 1*(3-1) - 1)/3) + 1 = 2" in out
    assert out.count("agrees with the loops: yes") == 4
    assert "not implemented for 'Long'" in out and "dtype=torch.float32" in out


def test_cli_override_changes_output_and_writes_no_folders(cli_runs):
    rc, out, err = cli_runs["override"]
    assert rc == 0, err
    assert "input (2x2):" in out and "[[1 2]\n   [3 4]]" in out
    assert "--- case 2" not in out
    assert list(cli_runs["tmp"].iterdir()) == []  # no outputs/, .hydra/ or log file


def test_cli_unknown_demo_exits_2():
    res = _run("nope")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: unknown demo 'nope'; choose from: conv, pool, feature_maps"
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (("conv", "input=[[1,2],[3]]"), "not rectangular"),
        (("conv", "cases.0.stride=0"), "stride must be a positive integer, got 0"),
        (("pool", "input=[[1,2],[3,4]]"), "bigger than the padded input"),
        (("conv", "strides=2"), "strides is not a config key"),  # not a key of conf/demo/conv.yaml
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, needle):
    res = _run(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr


def test_cli_help_shows_the_demo_config():
    res = _run("pool", "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("# python -m cnnlab.demo pool") and "integer_pitfall: true" in res.stdout
