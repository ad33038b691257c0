"""Models: one factory, one API, every source.

``build_model`` is the ``_target_`` of every conf/model/*.yaml. Whatever the source
(our hand-written AlexNet, timm, torchvision, or MogaNet registered in timm), the
result is an ``nn.Module`` that maps (B, in_chans, H, W) to logits (B, num_classes)
in eval mode. In train mode a model may also return extra loss terms: see
``cnnlab.models.outputs``.

Importing this package imports torch and timm, and registers MogaNet in timm's
registry, so ``timm.create_model("moganet_tiny")`` works afterwards.
"""

from cnnlab.models import moganet  # noqa: F401  (registers moganet_* in timm)
from cnnlab.models.factory import build_model

__all__ = ["build_model"]
