from __future__ import annotations

import pytest
import torch
from engine_toy import ToyMomentumModel

from nas.config import ConfigError, from_dict
from nas.engine.optim import OptimConfig, build_optimizer


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_weight_decay_skips_norms_biases_and_momentum_copies():
    model = ToyMomentumModel()
    optimizer = build_optimizer(model, OptimConfig(), lr=1e-4)
    by_decay = {group["weight_decay"]: _names(model, group) for group in optimizer.param_groups}
    assert by_decay == {
        0.02: {"encoder.0.weight", "encoder.4.weight", "head.weight"},
        0.0: {"encoder.0.bias", "encoder.1.weight", "encoder.1.bias", "encoder.4.bias", "head.bias"},
    }
    optimized = set().union(*by_decay.values())
    assert not any(name.startswith("encoder_m.") for name in optimized)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    assert not optimizer.defaults["fused"]  # CPU parameters: 'auto' does not fuse


def test_decay_shrinks_matrices_only():
    # With zero gradients Adam's update is 0, so only decoupled decay moves the weights: w *= 1 - lr * wd.
    model = ToyMomentumModel()
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.5), lr=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(model.head.weight, before["head.weight"] * 0.95)
    assert torch.equal(model.head.bias, before["head.bias"])
    assert torch.equal(model.encoder[1].weight, before["encoder.1.weight"])  # LayerNorm scale


def test_fused_true_needs_cuda():
    with pytest.raises(ValueError, match="fused_adamw"):
        build_optimizer(ToyMomentumModel(), OptimConfig(fused_adamw="true"), lr=1e-4)


def test_no_trainable_parameters_is_an_error():
    model = ToyMomentumModel().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        build_optimizer(model, OptimConfig(), lr=1e-4)


def test_optim_config_is_strict():
    with pytest.raises(ConfigError, match="weight_decy"):
        from_dict(OptimConfig, {"weight_decy": 0.1})
    with pytest.raises(ConfigError, match="fused_adamw"):
        from_dict(OptimConfig, {"fused_adamw": "yes"})
    with pytest.raises(ConfigError, match="betas"):
        from_dict(OptimConfig, {"betas": [0.9, 1.5]})
    assert from_dict(OptimConfig, {"betas": [0.9, 0.98]}).betas == (0.9, 0.98)
