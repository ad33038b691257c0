"""Shared by the benchmark scripts: the machine's name, and printing/writing a Markdown report."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def emit(lines: list[str], write: str | None) -> None:
    """Print the report; also write it to ``write`` when given."""
    report = "\n".join(lines)
    print(report)
    if write:
        Path(write).write_text(report)
