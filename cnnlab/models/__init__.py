"""Models: ``build_model``, the ``_target_`` of every conf/model/*.yaml, gives an ``nn.Module``
mapping (B, in_chans, H, W) to logits (B, num_classes) in eval mode (train mode may add loss
terms: ``cnnlab.models.outputs``). Importing this package imports torch and timm and registers
``cnnlab_alexnet`` and ``moganet_*`` in timm's registry.
"""

from cnnlab.models import alexnet, moganet  # noqa: F401  (register cnnlab_alexnet, moganet_* in timm)
from cnnlab.models.factory import build_model

__all__ = ["build_model"]
