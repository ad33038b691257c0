"""Models: one factory, one API, every source.

``build_model`` is the ``_target_`` of every conf/model/*.yaml. Whatever the source
(timm, with cnnlab's own AlexNet and MogaNet registered in it, or torchvision), the
result is an ``nn.Module`` that maps (B, in_chans, H, W) to logits (B, num_classes)
in eval mode. In train mode a model may also return extra loss terms: see
``cnnlab.models.outputs``.

Importing this package imports torch and timm, and registers cnnlab's models in timm's
registry (``cnnlab_alexnet``, ``moganet_*``), so ``timm.create_model("moganet_tiny")``
works afterwards; ``cnnlab.models.registry.cnnlab_models()`` lists them.
"""

from cnnlab.models import alexnet, moganet  # noqa: F401  (register cnnlab_alexnet, moganet_* in timm)
from cnnlab.models.factory import build_model

__all__ = ["build_model"]
