"""Datasets as uint8 tensors, and the loaders that turn them into batches.

Every dataset builder returns a :class:`~cnnlab.data.splits.ImageSplits`: train,
val and test images as uint8 tensors of shape (N, C, H, W) at the configured
image size, int64 labels, and the class names. Decoding happens once; batches are
augmented and normalised on the training device (see ``loader.py``).
"""

from typing import Any

__all__ = ["DATASETS", "ImageSplits", "Split", "load_dataset"]


def __getattr__(name: str) -> Any:
    """The names above, imported on first use (PEP 562): ``cnnlab.data.decode`` stays torch-free,
    so ONNX predict can read images without importing torch."""
    if name in ("DATASETS", "load_dataset"):
        from cnnlab.data import registry

        return getattr(registry, name)
    if name in ("ImageSplits", "Split"):
        from cnnlab.data import splits

        return getattr(splits, name)
    raise AttributeError(f"module 'cnnlab.data' has no attribute {name!r}")
