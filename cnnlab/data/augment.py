"""Batched augmentation on (B, C, H, W) tensors, on whatever device they live.

torchvision's per-image PIL pipeline is the usual bottleneck for 32x32 data; doing
the same random crop and flip on a whole batch at once is far cheaper (see
docs/benchmarks.md). The random draws come from one ``torch.Generator`` in a fixed
order (crop offsets dy then dx, then flips, then cutout centres), so a seed fixes
every batch, and a test can replay the draws against a per-image reference.

How the crop is done: on a padded copy (N, C, H+2p, W+2p), an image's HxW window is
H*C runs of W contiguous pixels. Viewing the padded storage as overlapping length-W
rows (``as_strided``, one row per start offset, no copy), the whole batch crop is one
``index_select`` of B*C*H rows: memcpy-sized copies, not a per-pixel gather. The
flip is one ``flip`` of the batch and one ``index_select`` picking, per image, the
plain or the flipped copy. No step needs a host sync (no boolean-mask indexing), so
the same code runs on a GPU. The loader pads its training set once (``pad_images``)
and calls ``crop_flip_padded`` for each batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_images(x: torch.Tensor, padding: int, pad_mode: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H+2p, W+2p), zero or reflect padded, contiguous, same dtype.

    Reflect mirrors without repeating the edge (torch's and torchvision's "reflect").
    Done with index_select on the row and column numbers, which works for uint8 on
    every device.
    """
    if padding <= 0:
        return x.contiguous()
    h, w = x.shape[-2:]
    if pad_mode == "zero":
        return F.pad(x, (padding,) * 4).contiguous()
    if padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than {padding}px")

    def reflect(n: int) -> torch.Tensor:  # source position of each padded position
        i = torch.arange(-padding, n + padding, device=x.device).abs()
        return torch.where(i > n - 1, 2 * (n - 1) - i, i)

    return x.index_select(2, reflect(h)).index_select(3, reflect(w))


def draw_crop_flip(b: int, padding: int, flip: bool, gen: torch.Generator
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The random draws of a crop-and-flip, in the fixed order: dy, dx (B,) int64, then flips (B,) bool.

    dy, dx ~ U{0..2p}: the window's top-left corner in the padded image, so offset p
    is the un-shifted image (as torchvision's RandomCrop(H, padding=p)); flip ~ 1/2.
    None where that augmentation is off (and nothing is drawn for it).
    """
    dy = dx = flips = None
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=gen.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=gen.device)
    if flip:
        flips = torch.rand(b, generator=gen, device=gen.device) < 0.5
    return dy, dx, flips


def flip_some(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images of x (B, C, H, W) where flips (B,) is True."""
    b = x.shape[0]
    both = torch.empty((2 * b, *x.shape[1:]), dtype=x.dtype, device=x.device)
    both[:b] = x
    both[b:] = x.flip(-1)
    # Image i comes from row i (as is) or row b + i (flipped): a row copy per image.
    pick = torch.arange(b, device=x.device) + b * flips.to(x.device, torch.long)
    return both.index_select(0, pick)


def crop_flip_padded(xp: torch.Tensor, padding: int, flip: bool, gen: torch.Generator,
                     index: torch.Tensor | None = None) -> torch.Tensor:
    """Random HxW windows (and flips) of already padded images: the loader's fast path.

    xp: (N, C, H+2p, W+2p) contiguous, from :func:`pad_images`. index: (B,) which
    images form the batch (None: all N). Returns (B, C, H, W), contiguous.
    """
    n, c, hp, wp = xp.shape
    h, w = hp - 2 * padding, wp - 2 * padding
    b = n if index is None else index.shape[0]
    dy, dx, flips = draw_crop_flip(b, padding, flip, gen)
    dev = xp.device
    img = torch.arange(b, device=dev) if index is None else index.to(dev)
    if dy is None:
        out = xp.index_select(0, img)
    else:
        xp = xp.contiguous()
        # rows[k] = xp.flatten()[k : k + w]: every start offset is a row (overlapping, no copy).
        rows = xp.view(-1).as_strided((xp.numel() - w + 1, w), (1, 1))
        # Start of output row i of channel ch of batch image j:
        # ((img_j * C + ch) * Hp + dy_j + i) * Wp + dx_j  -> (B, C, H), flattened.
        plane = img[:, None] * c + torch.arange(c, device=dev)  # (B, C)
        line = plane[:, :, None] * hp + dy.to(dev)[:, None, None] + torch.arange(h, device=dev)
        starts = line * wp + dx.to(dev)[:, None, None]
        out = rows.index_select(0, starts.reshape(-1)).view(b, c, h, w)
    if flips is not None:
        out = flip_some(out, flips)
    return out


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a size x size square (clipped at the border) at a random centre per image.

    x: (B, C, H, W), normalised, so the square becomes the dataset mean colour.
    Centres cy, cx ~ U{0..H-1}, U{0..W-1}; the square covers [c - size//2, c - size//2 + size).
    """
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen, device=gen.device).to(x.device)
    cx = torch.randint(0, w, (b,), generator=gen, device=gen.device).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    half = size // 2
    in_y = ((ys >= (cy - half)[:, None]) & (ys < (cy - half + size)[:, None]))[:, :, None]  # (B, H, 1)
    in_x = ((xs >= (cx - half)[:, None]) & (xs < (cx - half + size)[:, None]))[:, None, :]  # (B, 1, W)
    return x.masked_fill((in_y & in_x)[:, None], 0.0)
