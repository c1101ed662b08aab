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
    assert optimizer.defaults["fused"]  # CPU parameters: "auto" fuses (torch >= 2.4)


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


def test_auto_fuses_on_cpu_and_matches_the_foreach_update():
    """auto = fused on CPU (torch's fused kernels); the update equals the foreach path's to rounding."""
    torch.manual_seed(0)
    fused_model = ToyMomentumModel()
    plain_model = ToyMomentumModel()
    plain_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, OptimConfig(), lr=1e-2)
    plain = build_optimizer(plain_model, OptimConfig(fused_adamw="false"), lr=1e-2)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            for i, p in enumerate(model.parameters()):
                p.grad = torch.full_like(p, 0.1 * (i + 1))
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_fused_true_needs_one_cpu_or_cuda_device():
    with pytest.raises(ValueError, match="fused_adamw"):
        build_optimizer(ToyMomentumModel().to("meta"), OptimConfig(fused_adamw="true"), lr=1e-4)


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
