"""What the network sees: feature maps, max-pooled inputs and first-layer kernels in TensorBoard.

The tags and how stages are found: docs/lessons.md, "Feature maps in TensorBoard". One
tile per channel, each normalised on its own: the course reshaped 6 channels into two RGB
pictures, which mixes unrelated channels into one colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Tiles smaller than this (in pixels) are scaled up, nearest-neighbour, so a 3x3 kernel or a
# 4x4 map is visible in TensorBoard rather than a few dots.
MIN_TILE = 32
MIN_INPUT = 64  # the same for the input images (a 32x32 image is shown at 64x64)


def _norm_tiles(x: Any) -> Any:
    """(N, ...) -> each of the N tiles scaled to [0, 1] on its own; a constant tile -> 0."""
    import torch

    flat = x.reshape(x.shape[0], -1).float()
    lo, hi = flat.aminmax(dim=1, keepdim=True)
    return torch.where(hi - lo > 1e-12, (flat - lo) / (hi - lo).clamp_min(1e-12), 0.0).reshape(x.shape)


def _factor(tiles: Any, min_side: int = MIN_TILE) -> int:
    """The integer factor that scales (..., h, w) tiles to >= min_side pixels."""
    return -(-min_side // max(tiles.shape[-2:]))  # ceil division


def _grid(tiles: Any, nrow: int = 8, factor: int | None = None) -> Any:
    """(N, C, h, w) tiles in [0, 1] -> one (3, H, W) image, nearest-neighbour upscaled by
    ``factor`` (default: to MIN_TILE pixels), white lines between the tiles."""
    import torch.nn.functional as F
    from torchvision.utils import make_grid

    factor = factor or _factor(tiles)
    tiles = F.interpolate(tiles, scale_factor=factor, mode="nearest") if factor > 1 else tiles
    return make_grid(tiles, nrow=nrow, padding=2, pad_value=1.0)


def _taps(model: Any, x: Any, max_channels: int) -> tuple[list[tuple[str, Any]], Any]:
    """One probe of ``x`` (B, C, H, W) with hooks: the maps to show, (layer name, the first
    image's (C, h, w) channels, capped, on the CPU), and the first conv. A layer whose input
    is at the trunk's resolution and whose output is smaller is a downsampling stage."""
    from torch import nn

    from cnnlab.models.profile import first_tensor, in_hw, probe

    taps: list[tuple[str, Any]] = []
    first_conv: list[nn.Conv2d] = []
    trunk = [x.shape[-2] * x.shape[-1]]  # the trunk's spatial size (h*w), input's at first

    def hook(name: str):
        def fn(m: nn.Module, inp: tuple, out: Any) -> None:
            t, src = first_tensor(out), in_hw(inp)
            if t is None or t.dim() != 4:
                return
            size = t.shape[-2] * t.shape[-1]
            is_first_conv = isinstance(m, nn.Conv2d) and not first_conv
            downsamples = (
                src is not None
                and src[0] * src[1] == trunk[0]  # on the trunk, not a side branch
                and size < trunk[0]
                and not isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))  # global pool
            )
            if downsamples:
                trunk[0] = size
            if is_first_conv:
                first_conv.append(m)
            if (is_first_conv or downsamples) and min(t.shape[-2:]) >= 2:
                taps.append((name, t[0, :max_channels].detach().float().cpu().clone()))
        return fn

    probe(model, x, [(m, hook(name)) for name, m in model.named_modules()
                     if name and not any(True for _ in m.children())])
    return taps, (first_conv[0] if first_conv else None)


def kernel_grid(conv: Any, max_kernels: int = 64) -> Any:
    """A conv's weights (out, in, kh, kw) as one image: RGB tiles for 3 input channels,
    else one grayscale tile per (kernel, input channel) pair, a row per kernel."""
    w = conv.weight.detach().float().cpu()[:max_kernels]  # (out, in/groups, kh, kw)
    if w.shape[1] == 3:
        return _grid(_norm_tiles(w))  # each kernel normalised over its 3 colours together
    per_channel = _norm_tiles(w.reshape(-1, 1, *w.shape[-2:]))  # (out*in, 1, kh, kw)
    # One row per kernel when there are a few input channels; 8 tiles a row otherwise.
    return _grid(per_channel[:max_kernels], nrow=w.shape[1] if 1 < w.shape[1] <= 16 else 8)


def log_feature_maps(model: Any, images: Any, writer_or_tracker: Any, step: int, tag_prefix: str = "feature_maps",
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     max_channels: int = 32, max_kernels: int = 64) -> list[str]:
    """Write the input, max-pooled input, feature maps and first-layer kernels; return the tags.

    ``images``: (N, C, H, W) floats in [0, 1] (a few: N=1..8; the maps use the first).
    ``mean``/``std``: the dataset's normalisation, applied before the forward (the
    model was trained on normalised images); None = feed ``images`` as they are.
    ``writer_or_tracker``: a SummaryWriter or a RunTracker; nothing is written (and []
    is returned) when it has no TensorBoard writer. The model (its unwrapped module,
    for DDP / torch.compile) is probed: its mode and the RNG states are restored.
    """
    import torch
    import torch.nn.functional as F

    from cnnlab.lifecycle.checkpoint import unwrap
    from cnnlab.models.profile import one_thread

    w = writer_or_tracker  # a RunTracker's writer is its .tb (None when TensorBoard is off)
    writer = w if hasattr(w, "add_image") else getattr(w, "tb", None)
    if writer is None:
        return []
    net = unwrap(model)
    param = next(net.parameters())
    x01 = images.detach().float().cpu().clamp(0, 1)  # (N, C, H, W) for display
    x = x01.to(param.device)
    if mean is not None and std is not None:
        m = torch.tensor(list(mean), device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(list(std), device=x.device).view(1, -1, 1, 1)
        x = (x - m) / s

    with one_thread(param.device.type == "cpu"):  # these tensors are tiny
        # Only the first image's maps are shown: forward it alone (B=1), not the batch.
        taps, first_conv = _taps(net, x[:1].to(param.dtype), max_channels)

    tags = []

    def image(tag: str, img: Any) -> None:
        writer.add_image(f"{tag_prefix}/{tag}", img, step)
        tags.append(f"{tag_prefix}/{tag}")

    # The input and its max-pooled version share one scale factor, so the halving shows.
    factor = _factor(x01, MIN_INPUT)
    image("input", _grid(x01, factor=factor))
    # The course's pooling on images: 3x3 windows at stride 2 keep each window's brightest
    # pixel, so the picture halves in size and bright strokes thicken.
    image("maxpool_k3s2", _grid(F.max_pool2d(x01, kernel_size=3, stride=2), factor=factor))
    for i, (name, out) in enumerate(taps):
        c, h, w = out.shape
        tiles = _norm_tiles(out).unsqueeze(1)  # (C, 1, h, w): one grayscale tile a channel
        image(f"map{i}_{h}x{w}_{name}", _grid(tiles))
    if first_conv is not None:
        name = next(n for n, mod in net.named_modules() if mod is first_conv)
        image(f"kernels_{name}", kernel_grid(first_conv, max_kernels))
    writer.flush()
    return tags
