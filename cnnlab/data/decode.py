"""One image file -> uint8 pixels, with PIL and numpy only (no torch).

The one decoder of image files: the image-folder loader (``imagefolder.read_image``),
``cnnlab.predict`` from a checkpoint and ``cnnlab.predict`` from an exported ONNX model
(which must not import torch) all see the same pixels.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# What decode_image raises for a file it cannot decode: not an image, truncated, unknown format,
# over Image.MAX_IMAGE_PIXELS.
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_image(path: str | os.PathLike, in_chans: int, image_size: int) -> np.ndarray:
    """One image file as uint8 (C, S, S): decoded by PIL, converted to grey "L" (in_chans=1)
    or "RGB", bilinear-resized to image_size x image_size. Raises one of ``UNREADABLE``;
    an image over ``PIL.Image.MAX_IMAGE_PIXELS`` is refused (PIL's own check, its warning
    from 1x to 2x the limit made an error too).

    16-bit modes (I;16*, I) are scaled from 0..65535 and F from 0..1 to 0..255; a palette
    image with transparency goes through RGBA; alpha is dropped, as PIL's convert does.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        size = str(e).split(" exceeds")[0]  # PIL's "Image size (N pixels)"
        raise Image.DecompressionBombError(
            f"{size} is over the decompression-bomb limit PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}") from None
    with im:
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            scale = 255.0 if im.mode == "F" else 255.0 / 65535
            im = Image.fromarray(np.rint(np.clip(np.asarray(im, dtype=np.float64) * scale, 0, 255)).astype(np.uint8))
        elif im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        im = im.convert("L" if in_chans == 1 else "RGB").resize((image_size, image_size), Image.BILINEAR)
        arr = np.array(im, dtype=np.uint8)  # (S, S) or (S, S, 3), a writable copy
    return np.ascontiguousarray(arr.reshape(image_size, image_size, -1).transpose(2, 0, 1))
