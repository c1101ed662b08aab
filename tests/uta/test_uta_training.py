"""UTA pretraining through the one engine: the teacher never receives gradients and never changes;
a run killed after an epoch and run again ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from uta_fixtures import tiny_student, tiny_teacher, toy_loader

from nas.engine import ScheduleConfig, TrainConfig, fit, read_checkpoint
from nas.models.block_masking import MaskingConfig
from nas.models.clip_teacher import ClipTrainer
from nas.models.uta import UTAPretrainer

CFG = TrainConfig(
    epochs=2,
    max_steps_per_epoch=2,
    schedule=ScheduleConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1),
    progress_bar=False,
    log_every_steps=1,
)


class Killed(Exception):
    pass


def _model(seed: int = 0, cache: dict | None = None) -> UTAPretrainer:
    return UTAPretrainer(tiny_student(seed), tiny_teacher(0), MaskingConfig(ratio=0.5, min_patches=2), cache)


def test_the_teacher_gets_no_gradient_and_stays_bit_identical(tmp_path):
    model = _model()
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}
    fit(model, toy_loader(), CFG, output_dir=tmp_path)
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert not model.teacher.training  # the engine calls model.train() every step
    moved = [k for k, v in model.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert len(moved) > 10  # the student did train


def _same(a, b, where="last.pt"):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            if key != "seconds":
                _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("cached", [False, True])
def test_killed_and_rerun_equals_uninterrupted(tmp_path, cached):
    reference = _model(cache={} if cached else None)
    fit(reference, toy_loader(), CFG, output_dir=tmp_path / "reference")

    def crash(epoch, metrics):
        raise Killed

    with pytest.raises(Killed):
        fit(
            _model(cache={} if cached else None),
            toy_loader(),
            CFG,
            output_dir=tmp_path / "killed",
            on_epoch_end=crash,
        )
    # "New process": other global RNG states, another initialisation, an empty token cache.
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    resumed = _model(seed=123, cache={} if cached else None)
    result = fit(resumed, toy_loader(), CFG, output_dir=tmp_path / "killed")
    assert result["resumed_from"].endswith("checkpoint_1.pt")
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    # masks drawn from the checkpointed RNG, optimizer moments, schedule, history: all identical
    _same(
        read_checkpoint(tmp_path / "reference" / "last.pt"), read_checkpoint(tmp_path / "killed" / "last.pt")
    )


def test_the_tiny_clip_teacher_trains_with_the_contrastive_loss(tmp_path):
    teacher = tiny_teacher()
    before = teacher.clip.visual.proj.detach().clone()
    result = fit(ClipTrainer(teacher), toy_loader(), CFG, output_dir=tmp_path)
    assert set(result["history"][-1]) >= {"clip", "total"}
    assert not torch.equal(teacher.clip.visual.proj, before)
    assert torch.isfinite(torch.tensor(result["history"][-1]["clip"]))
