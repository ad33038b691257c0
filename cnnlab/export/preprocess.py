"""uint8 pixels -> the model's input, logits -> probabilities, with numpy only (ONNX predict).

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


def softmax(logits: Any) -> Any:
    """Row-wise softmax in float64 (N, K), as ``cnnlab.evaluation.metrics.softmax`` computes it.
    By hand (three numpy lines) rather than scipy.special's: importing scipy.special takes
    0.3-1 s, most of the start-up budget of predict from an ONNX model."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
