"""One progress bar per epoch on a terminal; nothing extra (log lines only) elsewhere."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def use_bar(mode: str) -> bool:
    """``auto`` shows a bar only when stderr is a terminal (not under CI or a multirun)."""
    return mode == "bar" or (mode == "auto" and sys.stderr.isatty())


@contextmanager
def epoch_progress(epoch: int, epochs: int, steps: int, mode: str) -> Iterator[Any]:
    if not use_bar(mode):
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, unit="step",
               dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
