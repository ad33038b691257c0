"""Test-time augmentation for ``cnnlab.evaluate`` and ``cnnlab.predict`` (``tta=none|flip|crops``).

Each image is classified several times, as views of itself, and the softmax probabilities
are averaged: ``flip`` = the image and its mirror (2 forward passes), ``crops`` = the padded
5-crop (the image padded by ``tta_padding`` pixels of zeros, then the centre and the four
corner crops at the original size; 5 passes). ``tta_padding=null`` takes the run's own
``dataset.augment.crop_padding`` (4 where it trained without crops): the corner crops are then
the largest shifts random-crop training showed the model.

:class:`TtaModel` returns the log of the averaged probabilities, so everything downstream
that takes a softmax of "logits" (metrics, ECE, predictions) gets the averaged probabilities
exactly (softmax(log p) = p when p sums to 1), and the cross-entropy is that of the average.
"""

from __future__ import annotations

from typing import Any

from cnnlab.errors import ConfigError

MODES = ("none", "flip", "crops")
# A mirrored digit is another symbol (or none): 2, 3, 4, 5, 7, 9 change meaning.
NO_FLIP = ("digits", "mnist", "svhn")


def check_tta(mode: str, dataset: str, image_size: int, padding: int) -> None:
    """Refuse, in one line, a TTA that does not fit the run's data."""
    if mode not in MODES:
        raise ConfigError(f"tta={mode!r} is not allowed: choose one of {', '.join(MODES)}")
    if mode == "flip" and dataset in NO_FLIP:
        raise ConfigError(f"tta=flip is off for {dataset}: a mirrored digit is not the same digit; "
                          "use tta=crops or tta=none")
    if mode == "crops" and not 1 <= padding < image_size:
        raise ConfigError(f"tta_padding={padding}: the crops would be shifted by more than the image "
                          f"({image_size} px, the run's dataset.image_size): use 1..{image_size - 1}")


def views(x: Any, mode: str, padding: int = 4) -> list[Any]:
    """The TTA views of a batch x (B, C, H, W), each (B, C, H, W)."""
    import torch.nn.functional as F

    if mode == "flip":
        return [x, x.flip(-1)]
    if mode == "crops":
        h, w, p = x.shape[-2], x.shape[-1], padding
        # zero padding of the *normalised* batch, as the training crop pads it (pad_mode=zero)
        xp = F.pad(x, (p, p, p, p))
        offsets = [(p, p), (0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p)]  # centre, then the corners
        return [xp[..., i : i + h, j : j + w] for i, j in offsets]
    return [x]


def _make_module() -> type:
    import torch

    from cnnlab.models.outputs import split_output

    class TtaModel(torch.nn.Module):
        """``model`` under TTA: forward gives log(mean over views of softmax(model(view)))."""

        def __init__(self, model: torch.nn.Module, mode: str, padding: int) -> None:
            super().__init__()
            self.model, self.mode, self.padding = model, mode, padding

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
            probs = None
            vs = views(x, self.mode, self.padding)
            for v in vs:
                logits, _ = split_output(self.model(v))  # a crop is a strided view: convs take it as is
                p = logits.float().softmax(1)
                probs = p if probs is None else probs + p
            return (probs / len(vs)).clamp_min(1e-12).log()  # the floor: log(0) would be -inf

    return TtaModel


def train_padding(dataset_config: dict[str, Any], padding: int | None) -> int:
    """``tta_padding``, or where it is null the run's ``dataset.augment.crop_padding`` (4 if 0)."""
    if padding is not None:
        return padding
    return int((dataset_config.get("augment") or {}).get("crop_padding") or 4)


def with_tta(model: Any, mode: str, dataset: str, image_size: int, padding: int = 4) -> Any:
    """``model`` itself (tta=none), or wrapped to average the softmax of its TTA views (checked
    first: :func:`check_tta`)."""
    check_tta(mode, dataset, image_size, padding)
    if mode == "none":
        return model
    return _make_module()(model, mode, padding).eval()


def evaluate_with_tta(run: str, mode: str, padding: int | None = None, allow_flip: bool = False,
                      repeats: int = 3) -> dict[str, Any]:
    """A run's best checkpoint on its test split under ``mode``: accuracy, macro-F1 and seconds
    (scripts/bench_finetune.py; ``allow_flip`` measures flip even on a digit set)."""
    import time

    import numpy as np

    from cnnlab.device import resolve_device
    from cnnlab.evaluate import _loader
    from cnnlab.evaluation import source as src_mod
    from cnnlab.evaluation.metrics import evaluate_arrays
    from cnnlab.evaluation.report import collect_logits

    src = src_mod.resolve(run, "best")
    ck = src_mod.load(src)
    ds = src_mod.dataset_config(ck)
    data = src_mod.load_data(ds)
    policy = resolve_device("cpu", None, None, False)
    model = src_mod.build_model(ck, data.num_classes, policy.device, False)
    name = "cifar10" if allow_flip else ds["name"]  # allow_flip: skip the digit-set refusal
    model = with_tta(model, mode, name, int(ds["image_size"]), train_padding(ds, padding))
    loader = _loader(data.test, 512, ds["mean"], ds["std"], policy, ds)
    seconds = []
    for _ in range(repeats):  # the fastest of a few passes: on a shared machine the others waited
        t0 = time.perf_counter()
        logits, labels = collect_logits(model, loader, policy)
        seconds.append(time.perf_counter() - t0)
    ev = evaluate_arrays(logits, labels, list(data.classes))
    return {"accuracy": float(np.mean(logits.argmax(1) == labels)), "macro_f1": ev.metrics["macro_f1"],
            "seconds": min(seconds), "images": len(labels)}
