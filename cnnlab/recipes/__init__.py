"""Modern training recipes, each off by default and each built on the library that has it.

- :mod:`~cnnlab.recipes.mix`: Mixup/CutMix on the device batch (timm.data.Mixup).
- :mod:`~cnnlab.recipes.ema`: an EMA of the weights for val and test (timm.utils.ModelEmaV3).
- :mod:`~cnnlab.recipes.policy`: RandAugment, TrivialAugment, AutoAugment per image
  (torchvision.transforms.v2) and random erasing (timm.data.RandomErasing).
- :mod:`~cnnlab.recipes.optim`: no weight decay on norm and bias parameters (timm.optim).
- :mod:`~cnnlab.recipes.freeze`: frozen backbone or stages, unfreezing, head lr and layer-wise
  lr decay (timm's feature_info, param_groups_layer_decay).
- :mod:`~cnnlab.recipes.imbalance`: a long-tailed train split, class weights, balanced sampling.

Label smoothing (``F.cross_entropy(label_smoothing=)``), gradient accumulation and
the warm-up (``cnnlab.schedulers.with_warmup``) need no module of their own. Each
function takes plain arguments; ``cnnlab.train`` reads the config and passes them.
"""
