"""The environment a run ran in: summary.json's ``env`` field (also sent to the tracker).

Versions come from the installed packages' metadata (no import), the device from torch
(already imported by then), the commit from ``git`` (None where git or the repository is
missing). Standard library only at import.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "timm", "hydra-core", "cnnlab")
REPO = Path(__file__).resolve().parents[2]  # the checkout cnnlab runs from


def now() -> str:
    """The local time with its offset, to the second (ISO 8601)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (export.json, the benchmark scripts and ``env`` share it)."""
    try:  # Linux: the first "model name" line; elsewhere platform's guess
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str) -> dict[str, Any]:
    """CUDA/cuDNN versions and the GPU's name for a ``cuda`` device, else the CPU model and its cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_cores": cores}
    if device.startswith("cuda") and "torch" in sys.modules:
        import torch

        index = torch.device(device).index or 0
        info.update(gpu=torch.cuda.get_device_name(index), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def git_state(repo: Path = REPO) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout cnnlab runs from; None without git or a repository."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def environment(device: str, started: str | None = None) -> dict[str, Any]:
    """summary.json's ``env``: versions, device, git state, command line, host, start time
    (``ended`` is set when the run ends)."""
    return {
        "python": platform.python_version(),
        "packages": {name.removesuffix("-core"): _version(name) for name in PACKAGES},
        "device": device_info(device),
        "git": git_state(),
        "command": shlex.join([Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]),
        "host": socket.gethostname(),
        "started": started or now(),
        "ended": None,
    }


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as {"a.b.c": leaf}; lists stay leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
