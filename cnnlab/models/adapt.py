"""Adapting ImageNet models to other inputs: small images, other channel counts.

An ImageNet stem downsamples by 4 before the first block, so a 32x32 image ends as a 1x1
map. ``adapt_small_input`` applies a family's well-known CIFAR-style change (ResNet,
MobileNet, GoogLeNet), else the general rule ``_reduce_stem``; docs/models.md has the table.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from cnnlab.models.profile import probe

log = logging.getLogger(__name__)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent module, attribute name, conv) of the first Conv2d in definition order."""
    # named_modules is a pre-order walk: the first Conv2d it yields is the first in
    # definition order, even when a sibling of its parent is a Conv2d too.
    for qual_name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            parent_name, _, name = qual_name.rpartition(".")
            return model.get_submodule(parent_name), name, m
    raise ValueError(f"{type(model).__name__} has no Conv2d")


def _small_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A 3x3 stride-1 'same' conv with the same channels as ``conv``."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)


def adapt_small_input(model: nn.Module, img_size: int = 32) -> nn.Module:
    """Reduce the early downsampling of an ImageNet model for ~32x32 inputs (in place)."""
    log.info("small_input: %s: %s", type(model).__name__, _small_input_rule(model, img_size))
    return model


def _small_input_rule(model: nn.Module, img_size: int) -> str:
    """Apply the small-input rule of ``model``'s family (in place); return what was done."""
    kind = type(model).__name__
    stem = getattr(model, "conv1", None)
    if hasattr(model, "maxpool") and isinstance(stem, (nn.Conv2d, nn.Sequential)):
        model.maxpool = nn.Identity()
        if isinstance(stem, nn.Conv2d):  # ResNet (timm and torchvision share these names)
            model.conv1 = _small_conv(stem)
            return "ResNet: conv1 -> 3x3/1, no max-pool"
        # timm's deep-stem ResNets (resnet*d, resnet*t): three 3x3 convs, the first at
        # stride 2, then the max-pool. Unstride the first and drop the pool: total /1.
        _first_conv(stem)[2].stride = (1, 1)
        return "deep stem: first stem conv -> stride 1, no max-pool"
    if hasattr(model, "conv_stem") and isinstance(model.conv_stem, nn.Conv2d):
        # timm's MobileNetV3 / MobileNetV4 / EfficientNet family.
        model.conv_stem.stride = (1, 1)
        return "MobileNet: conv_stem -> stride 1"
    if kind in ("MobileNetV2", "MobileNetV3"):
        # torchvision: features[0] is Conv2dNormActivation(conv stride 2, BN, act).
        model.features[0][0].stride = (1, 1)
        return "MobileNet: stem conv -> stride 1"
    if kind in ("GoogLeNet", "GoogLeNetAux"):
        # torchvision's BasicConv2d: conv1.conv is 7x7/2. Keep the four max-pools,
        # so the inception blocks run at 8, 4 and 2 pixels instead of 28/14/7 at 224.
        model.conv1.conv = _small_conv(model.conv1.conv)
        return "GoogLeNet: conv1 -> 3x3/1"
    return _reduce_stem(model, img_size)


def _stride(m: nn.Module) -> int:
    s = m.stride
    return int(s[0] if isinstance(s, tuple) else s)


def _set_stride(m: nn.Module, s: int) -> None:
    m.stride = (s, s) if isinstance(m, nn.Conv2d) else s


def _budgets(model: nn.Module, img_size: int) -> tuple[int, int]:
    """(stem budget, wanted reduction): how much stride may go, and how much should.

    From timm's ``feature_info``: the stem is what comes before the first level at /4 or
    more; the final map (4x4 wanted) is ``img_size`` over the last level's reduction.
    torchvision models have none: an ImageNet stem is /4 and their final reduction /32.
    """
    info = getattr(model, "feature_info", None)
    reductions = [int(f["reduction"]) for f in info] if isinstance(info, list) and info else []
    stem = next((r for r in reductions if r >= 4), 4)
    final = reductions[-1] if reductions else 32
    wanted = max(1, -(-4 * final // img_size))  # ceil: the factor that gives a 4x4 final map
    return stem, wanted


def _runs(model: nn.Module, img_size: int, in_chans: int, hooks: list = ()) -> bool:
    """Does one probe of a zero image (:func:`cnnlab.models.profile.probe`) run?"""
    try:
        probe(model, (in_chans, img_size, img_size), hooks)
        return True
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - any failure means "this change doesn't fit"
        return False


def _strided_layers(model: nn.Module, in_chans: int) -> list[tuple[str, nn.Module, int, int]]:
    """(name, layer, stride, input reduction) of every strided conv and pool, in call order.

    Found with forward hooks on one zero image at 128, else 224, pixels (an ImageNet
    model runs at both); the input reduction is the probe side over the layer's input
    side, so parallel branches (a block's conv and its strided shortcut) share one.
    """
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and _stride(m) > 1]
    for side in (128, 224):
        # id(layer) -> (name, layer, stride, input side); dicts keep insertion (= call) order.
        seen: dict[int, tuple[str, nn.Module, int, int]] = {}
        if _runs(model, side, in_chans, [(m, functools.partial(_record, seen, n)) for n, m in layers]):
            return [(n, m, s, max(1, side // x)) for n, m, s, x in seen.values()]
    return []


def _record(seen: dict, name: str, m: nn.Module, args: tuple, _out: object) -> None:
    """Forward hook: the first input side a strided layer sees."""
    if id(m) not in seen and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        seen[id(m)] = (name, m, _stride(m), int(args[0].shape[-1]))


def _reduce_stem(model: nn.Module, img_size: int) -> str:
    """The general rule (module docstring): divide the stem's strides, keep what runs."""
    budget, wanted = _budgets(model, img_size)
    try:
        in_chans = _first_conv(model)[2].in_channels
    except ValueError:
        in_chans = 3
    # The stem's strided layers, grouped by the reduction of their input (call order).
    groups: dict[int, list[tuple[str, nn.Module, int]]] = {}
    for name, m, s, level in _strided_layers(model, in_chans):
        if level < budget:
            groups.setdefault(level, []).append((name, m, s))
    # Planned cuts, one per group: each layer's stride divided by ``cut``.
    plan: list[tuple[int, list[tuple[str, nn.Module, int]]]] = []
    left = min(budget, wanted)
    for level in sorted(groups):
        cut = min(max(s for _, _, s in groups[level]), left, budget // level)
        if cut <= 1:
            break
        plan.append((cut, groups[level]))
        left //= cut

    def apply(k: int) -> None:
        for i, (cut, members) in enumerate(plan):
            for _, m, s in members:
                _set_stride(m, max(1, s // cut) if i < k else s)

    for k in range(len(plan), 0, -1):
        apply(k)
        if _runs(model, img_size, in_chans):
            done = ", ".join(f"{n} /{s}->/{max(1, s // cut)}" for cut, ms in plan[:k] for n, _, s in ms)
            return f"general rule: stem strides {done}"
    apply(0)
    return "general rule: no stem stride could be reduced and still run; unchanged"


def final_feature_map(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) of the last feature map before global pooling, for one eval-mode zero image.

    timm models have ``forward_features``. For torchvision's, hooks record every module's
    4-D output in call order up to the first 2-D one (the head), global pools skipped (1x1
    is not a feature map); a parent's hook fires after its children's, so an Inception
    block reports its concatenated output.
    """
    if hasattr(model, "forward_features"):
        return tuple(probe(model, input_shape, call=model.forward_features).shape[1:])
    maps: list[tuple[int, ...]] = []
    head_seen = False

    def hook(m: nn.Module, _inp: object, out: object) -> None:
        nonlocal head_seen
        if head_seen or not isinstance(out, torch.Tensor) or isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return
        if out.dim() == 4:
            maps.append(tuple(out.shape[1:]))
        elif out.dim() == 2:
            head_seen = True

    probe(model, input_shape, [(m, hook) for m in model.modules() if m is not model])
    if not maps:
        raise ValueError(f"{type(model).__name__}: no 4-D feature map seen before the head")
    return maps[-1]


def set_in_chans_torchvision(model: nn.Module, in_chans: int, pretrained: bool) -> None:
    """Replace the first conv so it takes ``in_chans`` (torchvision has no in_chans); pretrained
    RGB filters are adapted with timm's ``adapt_input_conv`` (summed for one channel)."""
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
    """Make torchvision's GoogLeNet return ``(logits, [(w, aux1), (w, aux2)])`` in training with
    aux_logits (``cnnlab.models.outputs``; Szegedy et al. 2015 use w = 0.3). The class is
    swapped in place, not wrapped, so the state dict keeps torchvision's names."""
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
