"""Shared fixtures: compose the real config, shrunk to run in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"  # == cnnlab.compose.CONF_DIR

# A training run that takes a few seconds on 2 CPU cores: 64 images per split.
TINY = [
    "trainer.epochs=1",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=64",
    "dataset.limit=64",
    "device=cpu",
    "trainer.progress=log",
]


def compose(overrides: list[str] | None = None, output_dir: str | os.PathLike | None = None):
    """The config `python -m cnnlab.run <overrides>` would get, without running Hydra's app."""
    from cnnlab.compose import compose as compose_conf

    overrides = list(overrides or [])
    if output_dir is not None:
        overrides.append(f"paths.output_dir={output_dir}")
    return compose_conf(overrides)


def run_cli(args: list[str], cwd: str | os.PathLike, timeout: float = 240, module: str = "cnnlab.run",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` as a user would, in ``cwd``."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def assert_one_line_error(res: subprocess.CompletedProcess, needles: tuple[str, ...] | list[str] = ()) -> str:
    """A refused command as a user sees it: exit 2, no traceback, one ``error: ...`` line on
    stderr that holds every needle. Returns the line."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def one_thread():
    """One torch thread for the test, as the subprocesses run (OMP_NUM_THREADS=1): the same
    kernels, so the same bits, and on 2 shared cores often faster. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own empty cnnlab cache (the inspector's tables), never ~/.cache."""
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_cfg(tmp_path):
    """A factory: tiny_cfg(*overrides) -> composed cfg writing into tmp_path/run."""

    def make(*overrides: str, run_dir: str | os.PathLike | None = None):
        return compose([*TINY, *overrides], output_dir=run_dir or tmp_path / "run")

    return make
