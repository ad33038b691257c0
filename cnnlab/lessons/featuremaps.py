"""What the network sees: feature maps, max-pooled inputs and first-layer kernels in TensorBoard.

One call, :func:`log_feature_maps`, writes under ``<tag_prefix>/``:

* ``input``: the input batch, as the images the learner knows;
* ``maxpool_k3s2``: the same batch after ``F.max_pool2d(kernel_size=3, stride=2)``,
  the course's pooling lesson on real images;
* ``map<i>_<H>x<W>_<layer>``: for the first image, the output channels of the first
  conv layer and of every downsampling stage, each channel its own grayscale tile,
  normalised on its own (min -> black, max -> white). The course instead reshaped 6
  channels into two RGB pictures, which mixes unrelated channels into one colour; here
  a tile is one channel. An all-black tile is a channel that is zero everywhere (a
  dead ReLU, or a filter that does not fire on this image);
* ``kernels_<layer>``: the first conv layer's kernels, each normalised on its own; RGB
  when the input has 3 channels, else one grayscale tile per (kernel, input channel).

Stages are found without knowing the architecture: forward hooks on every leaf module
follow the "trunk" resolution, starting at the input's; a layer whose input is at the
trunk resolution and whose output is smaller is a downsampling step (a strided conv, a
pool, a patch embedding), and its output is logged. Squeeze-excitation branches (their
input is already 1x1) and global pools (adaptive pools, meant to end the trunk) are not
stages. This works for the hand-written AlexNet, timm and torchvision models and MogaNet.

The cost is one probe of the first image (eval mode, no_grad), plus encoding a handful
of small PNGs; channel and kernel counts are capped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Tiles smaller than this (in pixels) are scaled up, nearest-neighbour, so a 3x3 kernel or a
# 4x4 map is visible in TensorBoard rather than a few dots.
MIN_TILE = 32
MIN_INPUT = 64  # the same for the input images (a 32x32 image is shown at 64x64)


def _writer(writer_or_tracker: Any) -> Any:
    """A SummaryWriter from a writer or a RunTracker (``.tb``; None when TensorBoard is off)."""
    if hasattr(writer_or_tracker, "add_image"):
        return writer_or_tracker
    return getattr(writer_or_tracker, "tb", None)


def _norm_tiles(x: Any) -> Any:
    """(N, ...) -> each of the N tiles scaled to [0, 1] on its own; a constant tile -> 0."""
    import torch

    flat = x.reshape(x.shape[0], -1).float()
    lo = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - lo
    out = torch.where(span > 1e-12, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return out.reshape(x.shape)


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
    image's (C, h, w) channels, capped, on the CPU), and the first conv."""
    import torch
    from torch import nn

    from cnnlab.models.profile import probe

    taps: list[tuple[str, Any]] = []
    first_conv: list[nn.Conv2d] = []
    trunk = [x.shape[-2] * x.shape[-1]]  # the trunk's spatial size (h*w), input's at first

    def hook(name: str):
        def fn(m: nn.Module, inp: tuple, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) else out
            if not (isinstance(t, torch.Tensor) and t.dim() == 4):
                return
            size = t.shape[-2] * t.shape[-1]
            is_first_conv = isinstance(m, nn.Conv2d) and not first_conv
            src = inp[0] if inp and isinstance(inp[0], torch.Tensor) and inp[0].dim() == 4 else None
            downsamples = (
                src is not None
                and src.shape[-2] * src.shape[-1] == trunk[0]  # on the trunk, not a side branch
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


def log_feature_maps(
    model: Any,
    images: Any,
    writer_or_tracker: Any,
    step: int,
    tag_prefix: str = "feature_maps",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_channels: int = 32,
    max_kernels: int = 64,
) -> list[str]:
    """Write the input, max-pooled input, feature maps and first-layer kernels; return the tags.

    ``images``: (N, C, H, W) floats in [0, 1] (a few: N=1..8; the maps use the first).
    ``mean``/``std``: the dataset's normalisation, applied before the forward (the
    model was trained on normalised images); None = feed ``images`` as they are.
    ``writer_or_tracker``: a SummaryWriter or a RunTracker; nothing is written (and []
    is returned) when it has no TensorBoard writer. The model (its unwrapped module,
    for DDP / torch.compile) is probed (:func:`cnnlab.models.profile.probe`): eval
    mode, no_grad, its mode and the RNG states restored.
    """
    import torch
    import torch.nn.functional as F

    from cnnlab.lifecycle.checkpoint import unwrap

    writer = _writer(writer_or_tracker)
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

    threads = torch.get_num_threads()
    if param.device.type == "cpu":
        # These tensors are tiny: with several threads the sync costs more than the math
        # (measured 3x slower on 2 busy cores). Restored below.
        torch.set_num_threads(1)
    try:
        # Only the first image's maps are shown: forward it alone (B=1), not the batch.
        taps, first_conv = _taps(net, x[:1].to(param.dtype), max_channels)
    finally:
        torch.set_num_threads(threads)

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
