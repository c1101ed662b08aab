from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from ignite.engine import Engine, Events

from nas.config import ConfigError, from_dict
from nas.engine.schedules import ScheduleConfig, WarmupCosineLR, lr_at

# NAS paper "Experiment setup": warm-up 1,000 iterations to 1e-4, cosine to 1e-5.
PAPER = {"peak": 1e-4, "floor": 1e-5, "warmup_steps": 1000, "total_steps": 10_000}


def test_lr_follows_the_paper_numbers():
    assert lr_at(0, **PAPER) == 0.0
    assert lr_at(500, **PAPER) == pytest.approx(5e-5, rel=1e-12)
    assert lr_at(1000, **PAPER) == pytest.approx(1e-4, rel=1e-12)
    assert lr_at(5500, **PAPER) == pytest.approx((1e-4 + 1e-5) / 2, rel=1e-12)  # cosine midpoint
    assert lr_at(10_000, **PAPER) == 1e-5
    assert lr_at(10_001, **PAPER) == 1e-5
    assert lr_at(1_000_000, **PAPER) == 1e-5


def test_warmup_can_start_above_zero():
    assert lr_at(0, **PAPER, warmup_start_lr=1e-5) == 1e-5
    assert lr_at(500, **PAPER, warmup_start_lr=1e-5) == pytest.approx(5.5e-5, rel=1e-12)
    flat = {**PAPER, "warmup_start_lr": 1e-4}  # [A]'s flat fine-tuning warm-up
    assert {lr_at(s, **flat) for s in (0, 250, 999, 1000)} == {1e-4}


def test_no_warmup_starts_at_peak():
    assert lr_at(0, peak=1e-4, floor=1e-5, warmup_steps=0, total_steps=10) == 1e-4


@given(
    warmup=st.integers(0, 50),
    span=st.integers(1, 200),
    a=st.integers(0, 300),
    b=st.integers(0, 300),
)
def test_lr_is_monotone_within_each_phase_and_bounded(warmup, span, a, b):
    shape = {"peak": 1e-4, "floor": 1e-5, "warmup_steps": warmup, "total_steps": warmup + span}
    a, b = min(a, b), max(a, b)
    la, lb = lr_at(a, **shape), lr_at(b, **shape)
    assert 0.0 <= la <= 1e-4 and 0.0 <= lb <= 1e-4
    if b <= warmup:
        assert la <= lb
    if a >= warmup:
        assert la >= lb - 1e-18
        assert lb >= 1e-5 - 1e-18


def test_lr_rejects_negative_step():
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, **PAPER)


def test_scheduler_sets_the_optimizer_lr_every_iteration_and_resumes():
    param = torch.nn.Parameter(torch.zeros(1))
    shape = {"peak": 1e-3, "floor": 1e-4, "warmup_steps": 3, "total_steps": 8}

    def run(scheduler, optimizer, iterations):
        seen = []
        engine = Engine(lambda e, b: seen.append(optimizer.param_groups[0]["lr"]))
        engine.add_event_handler(Events.ITERATION_STARTED, scheduler)
        engine.run(range(iterations), max_epochs=1)
        return seen

    optimizer = torch.optim.SGD([param], lr=1.0)
    first = WarmupCosineLR(optimizer, **shape)
    seen = run(first, optimizer, 5)
    assert seen == pytest.approx([lr_at(i, **shape) for i in range(5)])

    # A new scheduler (new process) that loads the state continues at step 5.
    optimizer2 = torch.optim.SGD([param], lr=1.0)
    second = WarmupCosineLR(optimizer2, **shape)
    second.load_state_dict(first.state_dict())
    assert run(second, optimizer2, 6) == pytest.approx([lr_at(i, **shape) for i in range(5, 11)])
    assert optimizer2.param_groups[0]["lr"] == 1e-4  # held at the floor past total_steps


def test_schedule_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="min_lr"):
        from_dict(ScheduleConfig, {"lr": 1e-4, "min_lr": 1e-3})
    with pytest.raises(ConfigError, match="warmup_steps"):
        from_dict(ScheduleConfig, {"warmup_steps": -1})
    assert from_dict(ScheduleConfig, {"lr": "1e-4"}).lr == 1e-4  # YAML reads 1e-4 as a string
