"""scikit-learn's handwritten digits: 1,797 real 8x8 images, shipped with sklearn."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cnnlab.data.splits import ImageSplits, resize_uint8, seeded_split

if TYPE_CHECKING:
    import numpy as np


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in 0..16, labels (1797,) int64), as sklearn's ``load_digits``.

    The data is the CSV that scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``:
    64 pixel values then the label, one image per row). It is read here with numpy
    because ``from sklearn.datasets import load_digits`` costs about 2.3 s of imports on
    a 2-core machine (``sklearn.base`` pulls in scipy) for a 100 kB file: 4% of the
    default run. Where the file is not found (another sklearn layout), the public API
    is used. tests/test_data.py checks that both give the same arrays.
    """
    import numpy as np

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")  # (1797, 65); loadtxt reads .gz itself
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return d.images, d.target


def load_digits(image_size: int = 32, val_split: float = 0.15, test_split: float = 0.15,
                split_seed: int = 0, **_: object) -> ImageSplits:
    """The UCI digits (values 0..16), scaled to uint8, upsampled and split with a fixed seed."""
    images, target = digits_arrays()
    # 0..16 grey levels -> 0..255; (N, 8, 8) -> (N, 1, 8, 8).
    x = torch.from_numpy(images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(target).long()
    x = resize_uint8(x, image_size)
    train, val, test = seeded_split(x, y, [val_split, test_split], split_seed)
    return ImageSplits(train, val, test, [str(i) for i in range(10)])
