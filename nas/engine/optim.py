"""AdamW as ALBEF/NAS use it: weight decay on matrices only, momentum copies left out.

NAS paper "Experiment setup": AdamW, weight decay 0.02. ALBEF builds it with timm's optimizer
factory, which exempts biases and other 1-D parameters (norm scales) from decay; we use timm's
`param_groups_weight_decay` for exactly that split. Parameters that do not require gradients
(ALBEF's momentum encoders, frozen parts) are not given to the optimizer at all.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from nas.config.train import OptimConfig  # the `train.optim` params block (pure data)


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, *, lr: float, no_weight_decay: Collection[str] = ()
) -> torch.optim.Optimizer:
    """AdamW (or `cfg.name` from timm's factory) over `model`'s trainable parameters; 1-D params, biases and `no_weight_decay` names undecayed.

    Call after the model is on its device (fused kernels need to see where the parameters are).
    """
    if cfg.name != "adamw" or cfg.layer_decay is not None:
        from timm.optim import create_optimizer_v2

        # timm's factory: the same no-decay split (1-D params, biases, the model's `no_weight_decay`),
        # plus layer-decay groups from the model's `group_matcher` (timm ViTs and EVA have one).
        return create_optimizer_v2(
            model,
            opt=cfg.name,
            lr=lr,
            weight_decay=cfg.weight_decay,
            layer_decay=cfg.layer_decay,
            betas=cfg.betas,
            eps=cfg.eps,
        )
    from timm.optim import param_groups_weight_decay  # here: reading OptimConfig needs no timm import

    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=no_weight_decay)
    params = [p for group in groups for p in group["params"]]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter that requires grad: nothing to train")
    devices = sorted({str(p.device) for p in params})
    fusable = len(devices) == 1 and params[0].device.type in ("cpu", "cuda")
    if cfg.fused_adamw == "true" and not fusable:
        raise ValueError(
            f"fused_adamw='true' needs every parameter on one CPU or CUDA device, found {devices}"
        )
    fused = cfg.fused_adamw == "true" or (cfg.fused_adamw == "auto" and fusable)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)
