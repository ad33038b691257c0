"""MogaNet: Multi-order Gated Aggregation Network (Li et al., ICLR 2024, arXiv 2211.03295).

timm does not ship MogaNet, so this module builds it with timm's layers and registers
five variants in timm's model registry on import::

    import cnnlab.models.moganet  # noqa: F401  (registers moganet_*)
    model = timm.create_model("moganet_tiny", num_classes=10, in_chans=1, small_input=True)

Module and parameter names follow the released checkpoints (``patch_embed1.projection.0``,
``blocks3.9.attn.value.DW_conv1``, ``norm4``, ``head`` ...), so a published state dict
loads with ``strict=True``. Shapes in comments: B batch, C width of the stage, H x W the
stage's spatial size, r the FFN ratio.
"""

import logging
import math
from collections.abc import Sequence
from typing import Any

import timm.models
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices

from cnnlab.models import weights
from cnnlab.models.registry import register

__all__ = ["MogaNet", "split_channels"]

_logger = logging.getLogger(__name__)


def split_channels(dim: int) -> tuple[int, int, int]:
    """Split ``dim`` channels in the ratio 1:3:4 used by the multi-order DW convs.

    Returns ``(c0, c1, c2)`` with ``c1 = 3 * dim / 8``, ``c2 = dim / 2`` and
    ``c0 = dim - c1 - c2``; ``dim`` must be divisible by 8.
    """
    if dim % 8 != 0:
        raise ValueError(f"MogaNet widths must be divisible by 8 (1:3:4 split), got {dim}")
    c1 = dim * 3 // 8
    c2 = dim * 4 // 8
    return dim - c1 - c2, c1, c2


class ElementScale(nn.Module):
    """Learnable per-channel scale, held as ``scale`` of shape (1, C, 1, 1)."""

    def __init__(self, dim: int, init_value: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        self.scale = nn.Parameter(
            torch.full((1, dim, 1, 1), init_value, device=device, dtype=dtype)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class MultiOrderDWConv(nn.Module):
    """Value branch: a 5x5 DW conv, then dilated DW convs on 3/8 and 4/8 of the channels.

    The three channel groups see receptive fields of 5, 5+8=13 and 5+18=23 pixels, which
    is how MogaNet mixes low-, middle- and high-order interactions at the cost of DW convs.
    """

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.split = split_channels(dim)
        c0, c1, c2 = self.split
        # padding = dilation * (k - 1) / 2 keeps H x W unchanged.
        self.DW_conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, **dd)
        self.DW_conv1 = nn.Conv2d(c1, c1, 5, padding=4, dilation=2, groups=c1, **dd)
        self.DW_conv2 = nn.Conv2d(c2, c2, 7, padding=9, dilation=3, groups=c2, **dd)
        self.PW_conv = nn.Conv2d(dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0, c1, c2 = self.split
        x0 = self.DW_conv0(x)  # (B, C, H, W)
        x1 = self.DW_conv1(x0[:, c0 : c0 + c1])  # (B, 3C/8, H, W), dilation 2
        x2 = self.DW_conv2(x0[:, self.dim - c2 :])  # (B, C/2, H, W), dilation 3
        x = torch.cat([x0[:, :c0], x1, x2], dim=1)  # (B, C, H, W)
        return self.PW_conv(x)


class MultiOrderGatedAggregation(nn.Module):
    """Spatial aggregation ("Moga" module, ``attn``): SiLU-gated multi-order DW convs."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.proj_1 = nn.Conv2d(dim, dim, 1, **dd)
        self.gate = nn.Conv2d(dim, dim, 1, **dd)
        self.value = MultiOrderDWConv(dim, **dd)
        self.proj_2 = nn.Conv2d(dim, dim, 1, **dd)
        self.act_value = nn.SiLU()
        self.act_gate = nn.SiLU()
        self.sigma = ElementScale(dim, init_value=1e-5, **dd)

    def feat_decompose(self, x: torch.Tensor) -> torch.Tensor:
        """proj_1, then push features away from their global mean: y + sigma * (y - GAP(y))."""
        x = self.proj_1(x)  # (B, C, H, W)
        x_d = F.adaptive_avg_pool2d(x, output_size=1)  # (B, C, 1, 1)
        x = x + self.sigma(x - x_d)  # re-weights the interaction orders GAP would wash out
        return self.act_value(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.feat_decompose(x)
        g = self.gate(x)  # (B, C, H, W)
        v = self.value(x)  # (B, C, H, W)
        x = self.proj_2(self.act_gate(g) * self.act_gate(v))
        return x + shortcut


class ChannelAggregationFFN(nn.Module):
    """FFN (``mlp``) with a depth-wise 3x3 conv and channel-aggregation re-weighting."""

    def __init__(
        self, dim: int, hidden_dim: int, drop: float = 0.0, device=None, dtype=None
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, **dd)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim, **dd)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, **dd)
        self.drop = nn.Dropout(drop)
        # H -> 1 projection: a single "shared" channel that every channel is contrasted with.
        self.decompose = nn.Conv2d(hidden_dim, 1, 1, **dd)
        self.sigma = ElementScale(hidden_dim, init_value=1e-5, **dd)
        self.decompose_act = nn.GELU()

    def feat_decompose(self, x: torch.Tensor) -> torch.Tensor:
        """h + sigma * (h - GELU(decompose(h))); the (B, 1, H, W) term broadcasts over rC."""
        return x + self.sigma(x - self.decompose_act(self.decompose(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)  # (B, rC, H, W)
        x = self.dwconv(x)
        x = self.drop(self.act(x))
        x = self.feat_decompose(x)
        x = self.fc2(x)  # (B, C, H, W)
        return self.drop(x)


class MogaBlock(nn.Module):
    """x + DropPath(ls1 * attn(BN(x))), then x + DropPath(ls2 * mlp(BN(x)))."""

    def __init__(
        self,
        dim: int,
        ffn_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        init_value: float = 1e-5,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = nn.BatchNorm2d(dim, **dd)
        self.attn = MultiOrderGatedAggregation(dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim, **dd)
        self.mlp = ChannelAggregationFFN(dim, int(dim * ffn_ratio), drop=drop, **dd)
        # Layer scales start tiny so each block begins close to the identity.
        self.layer_scale_1 = nn.Parameter(torch.full((1, dim, 1, 1), init_value, **dd))
        self.layer_scale_2 = nn.Parameter(torch.full((1, dim, 1, 1), init_value, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))
        return x


class StackConvPatchEmbed(nn.Module):
    """Stage-1 stem: conv3x3 -> BN -> GELU -> conv3x3 -> BN (``projection.0`` .. ``.4``)."""

    def __init__(self, in_chans: int, dim: int, stride: int = 2, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.projection = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, 3, stride=stride, padding=1, **dd),
            nn.BatchNorm2d(dim // 2, **dd),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, stride=stride, padding=1, **dd),
            nn.BatchNorm2d(dim, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)  # (B, C1, H/stride^2, W/stride^2)


class ConvPatchEmbed(nn.Module):
    """Stage-2..4 downsampling: conv3x3 stride 2 (``projection``), then BN (``norm``)."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.projection = nn.Conv2d(in_chans, dim, 3, stride=2, padding=1, **dd)
        self.norm = nn.BatchNorm2d(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.projection(x))  # (B, C_i, H/2, W/2)


class BlockSequence(nn.Sequential):
    """A stage's MogaBlocks (keys ``blocks<i>.<j>.*``), optionally activation-checkpointed.

    A Sequential rather than a ModuleList so each stage is one call (``self.blocks3(x)``),
    which TorchScript and FX can follow; the state-dict keys are the same.
    """

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # One segment per block: only block inputs are kept, each block recomputed.
            return checkpoint_seq(self, x, use_reentrant=False)
        for block in self:
            x = block(x)
        return x


class MogaNet(nn.Module):
    """MogaNet classifier with timm's model API.

    Args:
        embed_dims: widths C1..C4 of the four stages (each divisible by 8).
        depths: MogaBlocks per stage.
        ffn_ratios: FFN expansion ratio per stage.
        num_classes: classifier outputs; 0 gives an identity head (pooled features).
        in_chans: input image channels.
        drop_rate: dropout before the classifier (timm convention); also the FFN dropout
            of the paper unless ``proj_drop_rate`` is given.
        proj_drop_rate: FFN dropout; ``None`` means ``drop_rate``.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks.
        small_input: both stage-1 convs use stride 1 (total stride 8, for 32x32 images).
        global_pool: ``"avg"`` or ``""`` (no pooling in ``forward_head``).
        init_value: initial layer-scale value.
        device, dtype: factory kwargs for parameters (e.g. ``device="meta"``).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (3, 3, 12, 2),
        ffn_ratios: Sequence[float] = (8, 8, 4, 4),
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        small_input: bool = False,
        global_pool: str = "avg",
        proj_drop_rate: float | None = None,
        init_value: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:  # e.g. timm train-script options MogaNet has no use for
            _logger.warning("MogaNet ignores unsupported kwargs: %s", ", ".join(sorted(kwargs)))
        if not (len(embed_dims) == len(depths) == len(ffn_ratios) == 4):
            raise ValueError("embed_dims, depths and ffn_ratios need one entry per stage (4)")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        dd = {"device": device, "dtype": dtype}
        for dim in embed_dims:
            split_channels(dim)  # fail early on widths the 1:3:4 split cannot take

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.ffn_ratios = tuple(ffn_ratios)
        self.small_input = small_input
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.grad_checkpointing = False
        proj_drop = drop_rate if proj_drop_rate is None else proj_drop_rate

        # Stochastic depth: linear 0 -> drop_path_rate across all blocks of all stages.
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stem_stride = 1 if small_input else 2
        reduction = stem_stride**2
        self.feature_info = []  # one dict per stage (timm FeatureInfo); no annotation: TorchScript
        self.num_stages = 4  # fewer after prune_intermediate_layers
        cur = 0
        for i, (dim, depth, ratio) in enumerate(zip(embed_dims, depths, ffn_ratios, strict=True)):
            if i == 0:
                patch_embed: nn.Module = StackConvPatchEmbed(in_chans, dim, stem_stride, **dd)
            else:
                patch_embed = ConvPatchEmbed(embed_dims[i - 1], dim, **dd)
                reduction *= 2
            blocks = BlockSequence(
                *(MogaBlock(dim, ratio, proj_drop, dpr[cur + j], init_value, **dd) for j in range(depth))
            )
            cur += depth
            # Registration order patch_embed_i, blocks_i, norm_i matches the checkpoints' key order.
            self.add_module(f"patch_embed{i + 1}", patch_embed)
            self.add_module(f"blocks{i + 1}", blocks)
            self.add_module(f"norm{i + 1}", nn.BatchNorm2d(dim, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"norm{i + 1}"))

        self.head_drop = nn.Dropout(drop_rate)
        self.head = (
            nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Linear: trunc-normal(0.02); Conv2d: He-normal on fan-out; BN: weight 1, bias 0."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay beyond timm's 1-D rule: none, as in the paper's recipe."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise LR decay: stem, then stages (coarse) or blocks."""
        if coarse:
            blocks: Any = r"^(?:patch_embed|blocks|norm)(\d+)\."
        else:
            blocks = [
                (r"^patch_embed(\d+)\.", (-1,)),  # downsampling opens its stage
                (r"^blocks(\d+)\.(\d+)\.", None),
                (r"^norm(\d+)\.", (99999,)),  # 99999: merge into the stage's last block
            ]
        return dict(stem=r"^patch_embed1\.", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for blocks in (self.blocks1, self.blocks2, self.blocks3, self.blocks4):
            if isinstance(blocks, BlockSequence):
                blocks.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` outputs."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = next(self.parameters())  # keep the new head on the model's device and dtype
        if num_classes > 0:
            self.head = nn.Linear(
                self.num_features, num_classes, device=ref.device, dtype=ref.dtype
            )
            self._init_weights(self.head)
        else:
            self.head = nn.Identity()

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` (0-3): downsample, MogaBlocks, BN. (B, C_i-1, H, W) -> (B, C_i, H/2, W/2).

        Spelled out per stage, not ``getattr(self, f"blocks{i}")``: TorchScript needs
        attribute names it can read, and the checkpoints fix the names ``blocks1`` ...
        """
        if i == 0:
            return self.norm1(self.blocks1(self.patch_embed1(x)))  # stage 1 embed: stride 4 (1)
        if i == 1:
            return self.norm2(self.blocks2(self.patch_embed2(x)))
        if i == 2:
            return self.norm3(self.blocks3(self.patch_embed3(x)))
        return self.norm4(self.blocks4(self.patch_embed4(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, C4, H/32, W/32) (H/8 with ``small_input``), after norm4."""
        for i in range(self.num_stages):
            x = self._stage(i, x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the stage outputs (timm's API, as ConvNeXt's).

        Args:
            x: (B, in_chans, H, W).
            indices: stages to return (0-3): the last n if an int, all if None, negative
                indices count from the end.
            norm: accepted for timm's API; every stage output is already normalised
                (each stage ends in its own BatchNorm, ``norm<i>``), so it changes nothing.
            stop_early: stop after the last stage asked for (the final features are then
                that stage's output).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list.

        Returns:
            ``intermediates`` or ``(final features, intermediates)``; stage i's output is
            (B, C_i, H / r_i, W / r_i) with r_i the ``feature_info`` reduction.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        del norm  # per-stage BN is part of each stage
        intermediates: list[torch.Tensor] = []
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        last = self.num_stages - 1 if torch.jit.is_scripting() or not stop_early else max_index
        for i in range(last + 1):
            x = self._stage(i, x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the head); return the kept indices.

        ``prune_norm`` is accepted for timm's API: MogaNet has no final norm apart from
        stage 4's own ``norm4``, which goes with stage 4.
        """
        del prune_norm
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{i + 1}", f"blocks{i + 1}", f"norm{i + 1}"):
                setattr(self, name, nn.Identity())
        prune_end = max_index < self.num_stages - 1
        self.num_stages = max_index + 1
        if prune_end:  # the features now end at the last kept stage; the head was sized for C4
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C4, h, w) -> (B, num_classes), or pooled (B, C4) with ``pre_logits``."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- timm registration -------------------------------------------------------------

MOGANET_ARCHS: dict[str, dict[str, tuple[int, ...]]] = {
    "moganet_xtiny": dict(
        embed_dims=(32, 64, 96, 192), depths=(3, 3, 10, 2), ffn_ratios=(8, 8, 4, 4)
    ),
    "moganet_tiny": dict(
        embed_dims=(32, 64, 128, 256), depths=(3, 3, 12, 2), ffn_ratios=(8, 8, 4, 4)
    ),
    "moganet_small": dict(
        embed_dims=(64, 128, 320, 512), depths=(2, 3, 12, 2), ffn_ratios=(8, 8, 4, 4)
    ),
    "moganet_base": dict(
        embed_dims=(64, 160, 320, 512), depths=(4, 6, 22, 3), ffn_ratios=(8, 8, 4, 4)
    ),
    "moganet_large": dict(
        embed_dims=(64, 160, 320, 640), depths=(4, 6, 44, 4), ffn_ratios=(8, 8, 4, 4)
    ),
}


def _cfg(url: str, **kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg of one official ImageNet-1K release (evaluated at crop_pct 0.9, bicubic)."""
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed1.projection.0",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2211.03295",
        "paper_name": "MogaNet: Multi-order Gated Aggregation Network",
        "origin_url": "https://github.com/Westlake-AI/MogaNet",
        **kwargs,
    }


# The official ImageNet-1K weights: the "ImageNet-1K Trained Models" table of the authors'
# README (https://github.com/Westlake-AI/MogaNet, README.md section 3), files of the GitHub
# release `moganet-in1k-weights`. Evaluation settings from its TRAINING.md (crop_pct 0.9;
# EMA weights for small/base/large, which weights.checkpoint_filter_fn picks).
_RELEASE = "https://github.com/Westlake-AI/MogaNet/releases/download/moganet-in1k-weights/"

# timm's register_model reads this module-level dict: the first tag of a variant is its default.
default_cfgs = generate_default_cfgs({
    "moganet_xtiny.in1k": _cfg(_RELEASE + "moganet_xtiny_sz224_8xbs128_ep300.pth.tar"),
    "moganet_xtiny.in1k_256": _cfg(
        _RELEASE + "moganet_xtiny_sz256_8xbs128_ep300.pth.tar", input_size=(3, 256, 256), pool_size=(8, 8)
    ),
    "moganet_tiny.in1k": _cfg(_RELEASE + "moganet_tiny_sz224_8xbs128_ep300.pth.tar"),
    "moganet_tiny.in1k_256": _cfg(
        _RELEASE + "moganet_tiny_sz256_8xbs128_ep300.pth.tar", input_size=(3, 256, 256), pool_size=(8, 8)
    ),
    "moganet_small.in1k": _cfg(_RELEASE + "moganet_small_sz224_8xbs128_ep300.pth.tar"),
    "moganet_base.in1k": _cfg(_RELEASE + "moganet_base_sz224_8xbs128_ep300.pth.tar"),
    "moganet_large.in1k": _cfg(_RELEASE + "moganet_large_sz224_8xbs64_ep300.pth.tar"),
})


def _create_moganet(variant: str, pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """Build ``variant`` through timm's ``build_model_with_cfg``.

    ``pretrained=True`` loads the official release (downloaded once to torch.hub's
    ``checkpoints/`` folder), or a local copy given as
    ``pretrained_cfg_overlay=dict(file=PATH)``; offline without either it raises a
    one-line ModelError naming the URL. Loading is ``weights_only=True`` with only
    ``argparse.Namespace`` allowed, and strict (the head is re-initialised when
    ``num_classes`` is not 1000, timm's rule).
    """
    if pretrained:
        weights.check_weight_source(variant, kwargs)
    model_args = {**MOGANET_ARCHS[variant], **kwargs}
    with weights.release_loading(variant, kwargs):
        return timm.models.build_model_with_cfg(
            MogaNet,
            variant,
            pretrained,
            pretrained_filter_fn=weights.checkpoint_filter_fn,
            # features_only: timm's FeatureGetterNet, which calls forward_intermediates.
            feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
            **model_args,
        )


_EXTRA = ("small_input",)  # the factory passes model.small_input to these


@register(_EXTRA)
def moganet_xtiny(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """MogaNet-XTiny: 2.96M params, 0.80G MACs at 224."""
    return _create_moganet("moganet_xtiny", pretrained, **kwargs)


@register(_EXTRA)
def moganet_tiny(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """MogaNet-Tiny: 5.20M params, 1.10G MACs at 224."""
    return _create_moganet("moganet_tiny", pretrained, **kwargs)


@register(_EXTRA)
def moganet_small(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """MogaNet-Small: 25.3M params, 4.97G MACs at 224."""
    return _create_moganet("moganet_small", pretrained, **kwargs)


@register(_EXTRA)
def moganet_base(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """MogaNet-Base: 43.9M params, 9.93G MACs at 224."""
    return _create_moganet("moganet_base", pretrained, **kwargs)


@register(_EXTRA)
def moganet_large(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """MogaNet-Large: 82.5M params, 15.9G MACs at 224."""
    return _create_moganet("moganet_large", pretrained, **kwargs)
