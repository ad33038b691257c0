"""Fine-tuning: frozen layers, gradual unfreezing, and per-group learning rates.

``model.freeze``: ``none``, ``backbone`` (every parameter but the classifier's) or ``stages=N``
(the stem and the first N feature stages: the modules up to the N-th entry of timm's
``feature_info``). Frozen parameters get ``requires_grad=False`` and stay out of the
optimizer; frozen BatchNorm layers run in eval mode, so their running statistics stay those
of the pretrained weights. ``model.unfreeze_epoch``: at that epoch they join the optimizer.

The optimizer's groups are fixed when it is built: each group that has frozen parameters
gets a twin group, same hyper-parameters, with no parameters until the unfreeze. So the
schedule (LambdaLR's base_lrs, OneCycleLR's per-group max_lr, the warm-up) knows every group
from step 0, an unfrozen parameter takes "the schedule's current lr" of its group for free,
and a checkpoint's optimizer state loads into an optimizer rebuilt in the same phase.

``optimizer.head_lr_mult`` and ``optimizer.layer_decay`` scale each group's lr: the scale goes
into the group's initial lr, which every scheduler here multiplies (LambdaLR, LinearLR) or
starts from (OneCycleLR), so it survives any schedule and warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import ConfigError


def classifier_prefix(model: Any) -> str:
    """The dotted name of the classifier module: timm's ``pretrained_cfg['classifier']``, else
    torchvision's ``fc`` / ``classifier`` / ``heads``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier")
    if isinstance(name, (list, tuple)):  # a few timm models name two heads (distilled)
        name = name[0]
    if not name:
        name = next((n for n in ("fc", "classifier", "heads", "head") if hasattr(model, n)), None)
    if not name:
        raise ConfigError(f"model.freeze: {type(model).__name__} names no classifier (no pretrained_cfg"
                          "['classifier'], fc or classifier): use model.freeze=none")
    return name


def under(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or inside it (dotted names)."""
    return name == prefix or name.startswith(prefix + ".")


def head_names(model: Any) -> set[str]:
    """Names of the classifier's parameters."""
    prefix = classifier_prefix(model)
    return {n for n, _ in model.named_parameters() if under(n, prefix)}


def frozen_names(model: Any, spec: str) -> list[str]:
    """The parameter names ``model.freeze=spec`` freezes, in the model's order."""
    if spec == "none":
        return []
    names = [n for n, _ in model.named_parameters()]
    if spec == "backbone":
        head = head_names(model)
        return [n for n in names if n not in head]
    n_stages = int(spec.removeprefix("stages="))
    info = getattr(model, "feature_info", None)
    stages = [f["module"] for f in info] if info is not None else []
    if not stages:
        raise ConfigError(f"model.freeze={spec}: {type(model).__name__} has no timm feature_info to count "
                          "stages by: use model.freeze=backbone")
    if n_stages > len(stages):
        raise ConfigError(f"model.freeze={spec} is more than this model's {len(stages)} feature stages "
                          f"({', '.join(stages)}): use stages=1..{len(stages)} or backbone")
    # Every module registered up to the last one inside the N-th stage's module (registration
    # order is the forward order for timm's sequential backbones): the stem and stages 1..N.
    last_stage = stages[n_stages - 1]
    modules = [n for n, _ in model.named_modules()]
    end = max(i for i, n in enumerate(modules) if under(n, last_stage))
    frozen: list[str] = []
    for mod_name in modules[: end + 1]:
        mod = model.get_submodule(mod_name)
        frozen += [f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False)]
    return [n for n in names if n in set(frozen)]


def _bn_eval(module: Any, args: Any) -> None:
    """Forward pre-hook of a frozen BatchNorm layer: normalise with the running statistics and
    leave them alone, whatever the last ``model.train()`` said (the loop calls it every epoch)."""
    module.training = False


@dataclass
class Freezer:
    """What ``model.freeze`` froze, and the optimizer groups waiting for it (see the module doc)."""

    params: list[Any] = field(default_factory=list)          # the frozen parameters
    pending: dict[int, list[Any]] = field(default_factory=dict)  # empty group index -> its frozen params
    hooks: list[Any] = field(default_factory=list)            # the frozen BatchNorms' pre-hooks

    @property
    def frozen(self) -> bool:
        return bool(self.params)

    def freeze(self, model: Any, names: list[str]) -> None:
        """requires_grad=False on ``names``; BatchNorm layers whose (affine) parameters are all frozen
        run in eval mode."""
        from torch.nn.modules.batchnorm import _BatchNorm

        by_name = dict(model.named_parameters())
        self.params = [by_name[n] for n in names]
        for p in self.params:
            p.requires_grad_(False)
        frozen = set(names)
        for mod_name, mod in model.named_modules():
            own = [f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False)]
            if isinstance(mod, _BatchNorm) and own and all(n in frozen for n in own):
                self.hooks.append(mod.register_forward_pre_hook(_bn_eval))

    def unfreeze(self, optimizer: Any) -> int:
        """Everything trains from now on: the frozen parameters join their waiting optimizer
        groups (whose lr the schedule has kept current); returns how many joined."""
        for p in self.params:
            p.requires_grad_(True)
        for h in self.hooks:
            h.remove()
        for i, params in self.pending.items():
            optimizer.param_groups[i]["params"].extend(params)
        n = len(self.params)
        self.params, self.pending, self.hooks = [], {}, []
        return n


def lr_groups(model: Any, lr: float, weight_decay: float, no_weight_decay_norm_bias: bool,
              head_lr_mult: float = 1.0, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """The optimizer's parameter groups, each with its own ``lr`` (= ``lr`` x its scale) and
    ``weight_decay``, every parameter included (frozen or not: :func:`split_frozen` cuts them).

    ``layer_decay``: timm's ``param_groups_layer_decay`` (a scale of layer_decay^(depth from the
    top) per block, 1-D params without decay: it always separates norm and bias); it needs
    the model's ``group_matcher``. ``head_lr_mult``: the classifier's scale is multiplied by it.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise ConfigError(f"optimizer.layer_decay={layer_decay}: {type(model).__name__} has no timm "
                              "group_matcher to group its layers by: use a timm model or optimizer.layer_decay=null")
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    elif no_weight_decay_norm_bias:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    head = {id(p) for n, p in model.named_parameters() if n in head_names(model)} if head_lr_mult != 1.0 else set()
    out = []
    for g in groups:
        scale = g.pop("lr_scale", 1.0)
        params = list(g.pop("params"))
        for is_head in (False, True):  # the head's share of a group gets its own lr
            part = [p for p in params if (id(p) in head) == is_head]
            if part:
                s = scale * (head_lr_mult if is_head else 1.0)
                out.append({**g, "params": part, "lr": lr * s, "lr_scale": s})
    return out


def split_frozen(groups: list[dict[str, Any]], freezer: Freezer) -> list[dict[str, Any]]:
    """Each group's frozen parameters moved to an empty twin group, remembered in ``freezer.pending``."""
    frozen = {id(p) for p in freezer.params}
    out: list[dict[str, Any]] = []
    for g in groups:
        live = [p for p in g["params"] if id(p) not in frozen]
        waiting = [p for p in g["params"] if id(p) in frozen]
        if live:
            out.append({**g, "params": live})
        if waiting:
            freezer.pending[len(out)] = waiting
            out.append({**g, "params": []})
    return out

