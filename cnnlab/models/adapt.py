"""Adapting ImageNet models to other inputs: small images, other channel counts.

ImageNet stems downsample by 4 before the first block (a 7x7/2 conv and a 3x3/2
max-pool in ResNet), so a 32x32 CIFAR image is 8x8 after the stem and 1x1 at the
end. ``adapt_small_input`` applies the usual CIFAR-style changes per family:

=============  =====================================  ====================
family         change                                 final map at 32x32
=============  =====================================  ====================
ResNet         7x7/2 conv + max-pool -> 3x3/1 conv     4x4 (was 1x1)
MobileNet      stride-2 stem conv -> stride 1          2x2 (was 1x1)
GoogLeNet      7x7/2 conv1 -> 3x3/1 (pools kept)       2x2 (was 1x1)
other          first strided conv -> stride 1          (logged)
=============  =====================================  ====================

MogaNet takes ``small_input`` itself, and AlexNet has its own small stem.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent module, attribute name, conv) of the first Conv2d in definition order."""
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, name, child
    raise ValueError(f"{type(model).__name__} has no Conv2d")


def _small_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A 3x3 stride-1 'same' conv with the same channels as ``conv``."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)


def adapt_small_input(model: nn.Module) -> nn.Module:
    """Reduce the early downsampling of an ImageNet model for ~32x32 inputs (in place)."""
    kind = type(model).__name__
    if hasattr(model, "conv1") and hasattr(model, "maxpool") and isinstance(model.conv1, nn.Conv2d):
        # ResNet (timm and torchvision share these names).
        model.conv1 = _small_conv(model.conv1)
        model.maxpool = nn.Identity()
    elif hasattr(model, "conv_stem") and isinstance(model.conv_stem, nn.Conv2d):
        # timm's MobileNetV3 / MobileNetV4 / EfficientNet family.
        model.conv_stem.stride = (1, 1)
    elif kind in ("MobileNetV2", "MobileNetV3"):
        # torchvision: features[0] is Conv2dNormActivation(conv stride 2, BN, act).
        model.features[0][0].stride = (1, 1)
    elif kind in ("GoogLeNet", "GoogLeNetAux"):
        # torchvision's BasicConv2d: conv1.conv is 7x7/2. Keep the four max-pools,
        # so the inception blocks run at 8, 4 and 2 pixels instead of 28/14/7 at 224.
        model.conv1.conv = _small_conv(model.conv1.conv)
    else:
        parent, name, conv = _first_conv(model)
        if conv.stride != (1, 1):
            conv.stride = (1, 1)
        log.warning("small_input: no rule for %s; set the first conv (%s) to stride 1", kind, name)
    return model


def set_in_chans_torchvision(model: nn.Module, in_chans: int, pretrained: bool) -> None:
    """Replace the first conv so it takes ``in_chans`` (torchvision has no in_chans).

    Pretrained RGB filters are adapted with timm's ``adapt_input_conv`` (summed for
    one channel, tiled and rescaled for more), as timm does for its own models.
    """
    parent, name, conv = _first_conv(model)
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=conv.bias is not None)
    if pretrained:
        from timm.models import adapt_input_conv

        new.weight.data = adapt_input_conv(in_chans, conv.weight.data)
        if conv.bias is not None:
            new.bias.data = conv.bias.data.clone()
    setattr(parent, name, new)


def reset_torchvision_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear of a pretrained torchvision model for a fresh one."""
    last_parent, last_name, last = None, None, None
    for _, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last_parent, last_name, last = parent, name, child
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear head to replace")
    setattr(last_parent, last_name, nn.Linear(last.in_features, num_classes))


def googlenet_with_aux_loss(model: nn.Module, aux_weight: float = 0.3) -> nn.Module:
    """Make torchvision's GoogLeNet speak the loss-terms protocol of ``cnnlab.models.outputs``.

    In training with aux_logits, it returns ``(logits, [(w, aux1), (w, aux2)])``, so the
    loss is main + w * (aux1 + aux2) (Szegedy et al. 2015 use w = 0.3). In eval it returns
    the main logits. The class is swapped in place rather than wrapped, so the state
    dict keeps torchvision's names and its checkpoints load unchanged.
    """
    from torchvision.models import GoogLeNet

    class GoogLeNetAux(GoogLeNet):
        def forward(self, x):  # noqa: ANN001, ANN202 - same signature as GoogLeNet
            x = self._transform_input(x)
            logits, aux2, aux1 = self._forward(x)
            if self.training and aux1 is not None:
                return logits, [(self.aux_weight, aux1), (self.aux_weight, aux2)]
            return logits

    model.__class__ = GoogLeNetAux
    model.aux_weight = aux_weight
    return model
