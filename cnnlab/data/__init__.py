"""Datasets as uint8 tensors, and the loaders that turn them into batches.

Every dataset builder returns a :class:`~cnnlab.data.splits.ImageSplits`: train,
val and test images as uint8 tensors of shape (N, C, H, W) at the configured
image size, int64 labels, and the class names. Decoding happens once; batches are
augmented and normalised on the training device (see ``loader.py``).
"""

from cnnlab.data.registry import DATASETS, load_dataset
from cnnlab.data.splits import ImageSplits, Split

__all__ = ["DATASETS", "ImageSplits", "Split", "load_dataset"]
