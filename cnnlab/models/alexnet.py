"""The course's AlexNet, written by hand and made correct.

The course's layer plan is kept: five convs with 48-128-192-192-128 channels,
three 3x3/2 max-pools, and a classifier 2048-1024-classes. What the course's
version got wrong is fixed:

* it had no activation anywhere, so the whole net collapsed into one linear map;
  here a ReLU follows every conv and every hidden FC;
* dropout sits before each hidden FC (Krizhevsky et al. 2012), BatchNorm is optional;
* the classifier's input width is computed from the input size, not hard-coded
  as 128*3*3, so any image size works.

Shapes at 224x224 (ImageNet stem, 11x11/4 conv):
    224 -> conv 55 -> pool 27 -> conv 27 -> pool 13 -> convs 13 -> pool 6: 128*6*6 features.
Shapes at 32x32 with small_input (3x3/1 conv):
    32 -> conv 32 -> pool 15 -> conv 15 -> pool 7 -> convs 7 -> pool 3: 128*3*3 = 1152,
which is the course's 128*3*3.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int, k: int, s: int, p: int, batch_norm: bool) -> list[nn.Module]:
    # With BatchNorm the conv's bias is redundant (BN re-centres each channel).
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, s, p, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _out_side(h: int, m: nn.Module) -> int:
    """Output side of a square conv or pool layer for input side ``h``."""
    k, s, p, d = (m.kernel_size, m.stride, m.padding, m.dilation)
    k, s, p, d = (v[0] if isinstance(v, tuple) else v for v in (k, s, p, d))
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


class AlexNet(nn.Module):
    """AlexNet with the course's widths; timm-style API (num_classes, in_chans, drop_rate)."""

    widths = (48, 128, 192, 192, 128)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        small_input: bool = False,
        drop_rate: float = 0.5,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
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
        side = img_size
        for m in self.features:
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                side = _out_side(side, m)
        if side < 1:
            raise ValueError(f"img_size={img_size} is too small for AlexNet (map shrinks below 1x1)")
        self.feature_shape = (c5, side, side)
        self.num_features = c5 * side * side  # e.g. 128*3*3 = 1152 at 32x32, small_input
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(self.num_features, 2048),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(2048, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> the last pooled map, (B, 128, h, w)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))
