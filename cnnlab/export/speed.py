"""Images per second of a function over one batch, by wall clock.

Hand-written rather than torch.utils.benchmark: the same loop must time onnxruntime,
TorchScript and eager PyTorch alike, and it is five lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def images_per_second(fn: Callable[[Any], Any], x: Any, seconds: float = 1.0, warmup: int = 2,
                      min_calls: int = 3) -> float:
    """Call ``fn(x)`` ``warmup`` times, then until ``seconds`` have passed (at least ``min_calls``
    times); return len(x) * calls / elapsed. Each call's result is discarded."""
    for _ in range(warmup):
        fn(x)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn(x)
        calls += 1
        elapsed = time.perf_counter() - t0
        if calls >= min_calls and elapsed >= seconds:
            return len(x) * calls / elapsed


def compare_speed(eager: Callable[[Any], Any], exported: Callable[[Any], Any], images: Any,
                  batches: tuple[int, ...] = (1, 64), seconds: float = 1.0) -> dict[str, Any]:
    """{"batch_<b>": {eager, exported (images/s), speedup}} for each batch size, measured
    back to back (the same machine load for both). ``images``: numpy (N, C, H, W), N >= max(batches)
    (a smaller N is repeated)."""
    import numpy as np

    out = {}
    for b in batches:
        x = np.ascontiguousarray(np.resize(images, (b, *images.shape[1:])), dtype=np.float32)
        e = images_per_second(eager, x, seconds)
        o = images_per_second(exported, x, seconds)
        out[f"batch_{b}"] = {"eager": round(e, 1), "exported": round(o, 1), "speedup": round(o / e, 3)}
    return out
