"""An exponential moving average of the weights, through timm's ``ModelEmaV3``.

After every optimizer step ``ema = decay * ema + (1 - decay) * live`` for each float
parameter and buffer (integer buffers, e.g. BatchNorm's step count, are copied).
With ``warmup`` the decay is timm's ``1 - (1 + t) ** -2/3`` at update t, capped at
``decay``, so the early average is not dominated by the random initial weights.
Validation and the final test use the EMA weights; the checkpoint holds them and the
update count (:meth:`WeightEma.state_dict`), so a resume continues the same average.
"""

from __future__ import annotations

from typing import Any


class WeightEma:
    """timm's ModelEmaV3 around a copy of ``model`` (already on its device), plus the update count."""

    def __init__(self, model: Any, decay: float, warmup: bool) -> None:
        from timm.utils import ModelEmaV3

        from cnnlab.lifecycle.checkpoint import unwrap

        # deepcopy inside: the same device, dtype and memory format as the live weights.
        self.ema = ModelEmaV3(unwrap(model), decay=decay, use_warmup=warmup)
        self.ema.module.eval()  # only ever evaluated, never trained
        self.warmup = warmup
        self.updates = 0

    @property
    def module(self) -> Any:
        """The averaged model, for evaluation."""
        return self.ema.module

    def update(self, model: Any) -> None:
        """One update from the live ``model`` (bare or wrapped): on the device, no host sync."""
        from cnnlab.lifecycle.checkpoint import unwrap

        self.updates += 1
        # The step drives timm's warm-up only; without one the decay is the constant.
        self.ema.update(unwrap(model), step=self.updates if self.warmup else None)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.ema.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
