"""scikit-learn's handwritten digits: 1,797 real 8x8 images, shipped with sklearn."""

from __future__ import annotations

import torch

from cnnlab.data.splits import ImageSplits, resize_uint8, seeded_split


def load_digits(image_size: int = 32, val_split: float = 0.15, test_split: float = 0.15,
                split_seed: int = 0, **_: object) -> ImageSplits:
    """The UCI digits (values 0..16), scaled to uint8, upsampled and split with a fixed seed."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    # 0..16 grey levels -> 0..255; (N, 64) -> (N, 1, 8, 8).
    x = torch.from_numpy(d.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    x = resize_uint8(x, image_size)
    train, val, test = seeded_split(x, y, [val_split, test_split], split_seed)
    return ImageSplits(train, val, test, [str(i) for i in range(10)])
