"""The protocol between a model and the training loop.

A model's forward returns either logits, (B, num_classes), or a tuple
``(logits, extra)`` where ``extra`` is a sequence of ``(weight, aux_logits)``
pairs. The loop's loss is then ``CE(logits) + sum(weight * CE(aux_logits))``
and only ``logits`` count for accuracy. GoogLeNet's auxiliary classifiers use
this; the loop never asks which model it is training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def split_output(out: Any) -> tuple[Any, Sequence[tuple[float, Any]]]:
    """Return (logits, [(weight, aux_logits), ...]) for any model output."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (list, tuple)):
        return out[0], out[1]
    return out, ()
