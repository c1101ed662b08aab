"""Optional contrastive fine-tuning through the one engine (`fit`): timm's LAMB with layer-wise lr
decay (the engine's OptimConfig), its schedule times each group's lr_scale, fixed temperature,
teacher vision tower frozen."""

from __future__ import annotations

import pytest
import torch
from uta_fixtures import tiny_student, tiny_teacher, toy_loader

from nas.engine import ScheduleConfig, TrainConfig, fit
from nas.engine.optim import OptimConfig, build_optimizer
from nas.engine.schedules import build_lr_scheduler
from nas.models.uta import UTAContrastive

TRAIN = TrainConfig(
    epochs=1,
    max_steps_per_epoch=2,
    schedule=ScheduleConfig(lr=1e-3, min_lr=0.0, warmup_steps=0),
    progress_bar=False,
    log_every_steps=1,
    optim=OptimConfig(name="lamb", layer_decay=0.75, weight_decay=0.05),
)


def _model() -> UTAContrastive:
    return UTAContrastive(tiny_student(depth=2), tiny_teacher().freeze(), temperature=0.01)


def test_layer_decay_groups_and_the_scaled_schedule():
    model = _model()
    optimizer = build_optimizer(model, OptimConfig(name="lamb", layer_decay=0.5, weight_decay=0.05), lr=1.0)
    assert type(optimizer).__name__ == "Lamb"
    names = {id(p): n for n, p in model.named_parameters()}
    scale_of = {names[id(p)]: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    # timm's grouping: stem 0, blocks 1-2 (the final norm with the last block), everything
    # unmatched (head, text tower) 3 = the top layer with the full lr
    assert scale_of["student.vit.patch_embed.proj.weight"] == pytest.approx(0.5**3)
    assert scale_of["student.vit.cls_token"] == pytest.approx(0.5**3)
    assert scale_of["student.vit.blocks.0.attn.q_proj.weight"] == pytest.approx(0.5**2)
    assert scale_of["student.vit.blocks.1.attn.q_proj.weight"] == pytest.approx(0.5)
    assert scale_of["student.vit.norm.weight"] == pytest.approx(0.5)
    assert scale_of["student.head.weight"] == 1.0 and scale_of["text.clip.text_projection"] == 1.0
    assert not any(name.startswith(("text.clip.visual.", "text.clip.logit_")) for name in scale_of)
    schedule = build_lr_scheduler(optimizer, ScheduleConfig(lr=2.0, warmup_steps=0), total_steps=10)
    schedule(None)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(2.0 * group["lr_scale"])


def test_finetuning_moves_student_and_text_tower_not_the_teachers_vision(tmp_path):
    model = _model()
    assert model.logit_scale.item() == pytest.approx(100.0)  # 1 / 0.01, fixed
    visual = {k: v.clone() for k, v in model.text.clip.visual.state_dict().items()}
    head = model.student.head.weight.detach().clone()
    text_proj = model.text.clip.text_projection.detach().clone()
    result = fit(model, toy_loader(), TRAIN, output_dir=tmp_path)
    outputs = result["steps"]
    assert len(outputs) == 2 and all(torch.isfinite(torch.tensor(o["clip"])) for o in outputs)
    assert (tmp_path / "last.pt").is_file()  # resumable like every other stage
    assert not torch.equal(model.student.head.weight, head)
    assert not torch.equal(model.text.clip.text_projection, text_proj)
    for key, value in model.text.clip.visual.state_dict().items():
        assert torch.equal(value, visual[key]), key


def test_a_non_positive_temperature_is_an_error():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        UTAContrastive(tiny_student(), tiny_teacher(), temperature=0.0)
