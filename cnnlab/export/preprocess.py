"""uint8 pixels -> the model's input, with numpy only (ONNX predict imports this without torch).

The same arithmetic as the training loader (cnnlab/data/loader.py): ``x * scale + shift`` in
float32 with scale = 1 / (255 std) and shift = -mean / std, per channel, so the exported
model sees the numbers the eager one saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def to_input(x: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """uint8 (N, C, H, W) -> float32 (N, C, H, W), normalised per channel."""
    import numpy as np

    c = x.shape[1]
    m, s = np.resize(np.asarray(mean, np.float32), c), np.resize(np.asarray(std, np.float32), c)
    scale = (np.float32(1.0) / (np.float32(255.0) * s)).reshape(1, c, 1, 1)
    shift = (-m / s).reshape(1, c, 1, 1)
    return np.ascontiguousarray(x.astype(np.float32) * scale + shift)
