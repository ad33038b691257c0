"""The course's AlexNet, made correct, registered in timm as ``cnnlab_alexnet``.

The course's layer plan is kept (convs 48-128-192-192-128, three 3x3/2 max-pools, FC
2048-1024-classes); its bugs are fixed: a ReLU after every conv and hidden FC (it had none,
so the net was one linear map), dropout before each hidden FC, optional BatchNorm, and a
classifier width computed from the input size instead of a hard-coded 128*3*3:
    224, 11x11/4 stem: 224 -> conv 55 -> pool 27 -> conv 27 -> pool 13 -> convs 13 -> pool 6: 128*6*6
    32, small_input 3x3/1 stem: 32 -> 32 -> pool 15 -> 15 -> pool 7 -> 7 -> pool 3: 128*3*3 = 1152
Hence the pretrained cfg's ``fixed_input_size`` and the ``img_size`` argument, as timm's ViTs.
Feature stages (``forward_intermediates``, ``features_only``) end at conv1's, conv2's and
conv5's ReLU and the last pool: strides 4, 8, 16, 32 (1, 2, 4, 8 with ``small_input``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._features import feature_take_indices
from torch import nn

from cnnlab.models.registry import register

__all__ = ["AlexNet"]

_logger = logging.getLogger(__name__)


def _conv(c_in: int, c_out: int, k: int, s: int, p: int, batch_norm: bool) -> list[nn.Module]:
    # With BatchNorm the conv's bias is redundant (BN re-centres each channel).
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, s, p, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _out_side(h: int, m: nn.Module) -> int:
    k, s, p, d = (m.kernel_size, m.stride, m.padding, m.dilation)
    k, s, p, d = (v[0] if isinstance(v, tuple) else v for v in (k, s, p, d))
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


class AlexNet(nn.Module):
    """AlexNet with the course's widths and timm's model API. ``num_classes=0`` leaves the
    1024-wide pre-logits; ``global_pool=""`` makes ``forward_head`` return the map untouched."""

    widths = (48, 128, 192, 192, 128)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | Sequence[int] = 224,
        small_input: bool = False,
        drop_rate: float = 0.5,
        batch_norm: bool = True,
        global_pool: str = "flatten",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:  # e.g. drop_path_rate, which AlexNet has no use for
            _logger.warning("AlexNet ignores unsupported kwargs: %s", ", ".join(sorted(kwargs)))
        if global_pool not in ("flatten", ""):
            raise ValueError(f"global_pool must be 'flatten' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        c1, c2, c3, c4, c5 = self.widths
        # The stem is the only difference between the two modes: ImageNet's 11x11/4
        # conv would shrink a 32x32 image to 7x7 before the first pool.
        stem = (3, 1, 1) if small_input else (11, 4, 2)
        self.features = nn.Sequential(
            *_conv(in_chans, c1, *stem, batch_norm),
            nn.MaxPool2d(3, 2),
            *_conv(c1, c2, 5, 1, 2, batch_norm),
            nn.MaxPool2d(3, 2),
            *_conv(c2, c3, 3, 1, 1, batch_norm),
            *_conv(c3, c4, 3, 1, 1, batch_norm),
            *_conv(c4, c5, 3, 1, 1, batch_norm),
            nn.MaxPool2d(3, 2),
        )
        # The course's "dimensions after pooling", worked out layer by layer with
        # floor((H + 2p - d(k-1) - 1) / s) + 1, so any input size works.
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        for m in self.features:
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                h, w = _out_side(h, m), _out_side(w, m)
        if min(h, w) < 1:
            raise ValueError(f"img_size={img_size} is too small for AlexNet (map shrinks below 1x1)")
        flat = c5 * h * w  # e.g. 128*3*3 = 1152 at 32x32, small_input
        self.num_features = c5
        self.head_hidden_size = 1024
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(flat, 2048),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(2048, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity(),
        )
        # The four stages end at the ReLU before each max-pool, and at the last pool.
        layers = list(self.features)
        ends = [i - 1 for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)] + [len(layers) - 1]
        self.stage_ends = ends  # index in features of each stage's last layer
        stride = stem[1]
        self.feature_info = [
            dict(num_chs=c, reduction=stride * 2**j, module=f"features.{e}")
            for j, (c, e) in enumerate(zip((c1, c2, c5, c5), ends, strict=True))
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^features\.0\.", blocks=r"^features\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise NotImplementedError("AlexNet does not support gradient checkpointing")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("flatten", ""):
                raise ValueError(f"global_pool must be 'flatten' or '', got {global_pool!r}")
            self.global_pool = global_pool
        if len(self.classifier) == 0:
            if num_classes > 0:
                raise RuntimeError("this AlexNet's classifier was pruned (prune_intermediate_layers)")
            self.num_classes = 0
            return
        self.num_classes = num_classes
        ref = self.classifier[1].weight  # keep the new layer on the model's device and dtype
        if num_classes > 0:
            head = nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.normal_(head.weight, 0, 0.01)
            nn.init.zeros_(head.bias)
            self.classifier[-1] = head
        else:
            self.classifier[-1] = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, in_chans, H, W) -> the last pooled map, (B, 128, h, w)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the four stage outputs (timm's API, as ResNet's).

        ``indices``: the last n stages if an int, all if None, else the stages (0-3) listed.
        ``norm`` is accepted for timm's API (AlexNet has no final norm). With
        ``stop_early`` the layers after the last stage asked for are skipped.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        del norm
        intermediates: list[torch.Tensor] = []
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        take_ends = [self.stage_ends[i] for i in take_indices]
        last = len(self.features) - 1
        if stop_early and not torch.jit.is_scripting():
            last = self.stage_ends[max_index]
        for i, layer in enumerate(self.features):
            if i <= last:
                x = layer(x)
                if i in take_ends:
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
        """Drop the layers after the last stage of ``indices`` (and the classifier); return those kept."""
        del prune_norm  # no final norm
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        prune_end = max_index < len(self.stage_ends) - 1
        self.features = self.features[: self.stage_ends[max_index] + 1]
        self.stage_ends = self.stage_ends[: max_index + 1]
        if prune_end:  # the classifier was sized for the last pool's map
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.classifier = nn.Sequential()
            self.num_classes = 0
            self.global_pool = ""
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 128, h, w) -> logits (B, num_classes), or (B, 1024) with ``pre_logits``."""
        if self.global_pool == "":
            return x
        x = torch.flatten(x, 1)
        last = len(self.classifier) - 1
        for i, layer in enumerate(self.classifier):
            if not (pre_logits and i == last):  # the class layer is the last one
                x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


# --- timm registration -------------------------------------------------------------

# No published weights: the cfg describes the input the architecture expects. The
# classifier's width follows the input size, hence fixed_input_size (timm then passes
# img_size from input_size when none is given).
default_cfgs: dict[str, dict[str, Any]] = {
    "cnnlab_alexnet": {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "fixed_input_size": True,
        "pool_size": (6, 6),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "features.0",
        "classifier": "classifier.6",
        "paper_name": "ImageNet Classification with Deep Convolutional Neural Networks",
    }
}


@register(("img_size", "small_input", "batch_norm"))
def cnnlab_alexnet(pretrained: bool = False, **kwargs: Any) -> AlexNet:
    """The course's AlexNet (convs 48-128-192-192-128, FC 2048-1024): about 5.4M params at 32x32."""
    import timm.models

    from cnnlab.models import weights

    if pretrained:
        weights.check_weight_source("cnnlab_alexnet", kwargs)
    return timm.models.build_model_with_cfg(
        AlexNet,
        "cnnlab_alexnet",
        pretrained,
        # features_only: timm's FeatureGetterNet, which calls forward_intermediates.
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )
