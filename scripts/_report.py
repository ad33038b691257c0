"""Shared by the benchmark scripts: the machine's name, and printing/writing a Markdown report."""

from __future__ import annotations

from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (cnnlab.tracking.env.cpu_model: /proc/cpuinfo, else ``platform``)."""
    from cnnlab.tracking.env import cpu_model

    return cpu_model() or "unknown"


def emit(lines: list[str], write: str | None) -> None:
    """Print the report; also write it to ``write`` when given."""
    report = "\n".join(lines)
    print(report)
    if write:
        Path(write).write_text(report)
