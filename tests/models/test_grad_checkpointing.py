"""Activation checkpointing (paper-size memory knob) changes memory, never values or gradients."""

from __future__ import annotations

import torch

from nas.models.registry import create_model


def _loss_and_grads(checkpointing: bool, monkeypatch=None):
    torch.manual_seed(0)
    model = create_model(
        "albef_tiny",
        vision={"grad_checkpointing": checkpointing, "depth": 2},
        text={"grad_checkpointing": checkpointing, "num_text_layers": 1, "num_fusion_layers": 1},
        queue_size=8,
    ).train()
    torch.manual_seed(1)
    batch = {
        "image": torch.randn(4, 3, 64, 64),
        "input_ids": torch.randint(1000, 2000, (4, 6)),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
        "index": torch.arange(4),
        "image_id": torch.arange(4),
    }
    batch["input_ids"][:, 0] = 101
    calls = []
    if monkeypatch is not None:
        original = torch.utils.checkpoint.checkpoint
        monkeypatch.setattr(
            torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k)
        )
    terms = model(batch, alpha=0.0)
    if checkpointing:  # engaged: timm's ViT flag, and one call per online text/fusion layer
        assert model.visual_encoder.grad_checkpointing is True
        assert len(calls) >= 2
    total = sum(terms.values())
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_gives_the_same_loss_and_gradients(monkeypatch):
    loss_plain, grads_plain = _loss_and_grads(False)
    loss_ckpt, grads_ckpt = _loss_and_grads(True, monkeypatch)
    assert torch.equal(loss_plain, loss_ckpt)
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) > 20
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)
