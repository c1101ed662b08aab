"""A stage killed after an epoch and run again ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from engine_toy import ToyDataset, ToyMomentumModel, collate, make_loader, toy_step_inputs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, RandomSampler

from nas.engine import ScheduleConfig, TrainConfig, fit, read_checkpoint

# 5 batches per pass, epochs cut to 3 steps: the shuffle, the dropout and the noise in forward
# all draw from the global RNGs, so only a complete RNG restore reproduces the second epoch.
CFG = TrainConfig(
    epochs=2,
    max_steps_per_epoch=3,
    schedule=ScheduleConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2),
    progress_bar=False,
    log_every_steps=1,
)


class Killed(Exception):
    pass


def _fresh_model(seed: int = 0) -> ToyMomentumModel:
    torch.manual_seed(seed)
    return ToyMomentumModel()


def _assert_same(a, b, where="last.pt"):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            if key != "seconds":  # wall-clock time is the one thing allowed to differ
                _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _without_seconds(history):
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    model = _fresh_model()
    result = fit(model, make_loader(size=20), CFG, output_dir=out, step_inputs=toy_step_inputs)
    return out, model, result


def test_killed_and_rerun_equals_uninterrupted(tmp_path, uninterrupted):
    reference_dir, reference_model, reference = uninterrupted

    def crash_after_first_epoch(epoch, metrics):
        raise Killed

    with pytest.raises(Killed):
        fit(
            _fresh_model(),
            make_loader(size=20),
            CFG,
            output_dir=tmp_path,
            on_epoch_end=crash_after_first_epoch,
            step_inputs=toy_step_inputs,
        )
    assert not (tmp_path / "last.pt").exists()

    # "New process": other global RNG states, another initialisation, new loader and optimizer.
    random.seed(7)
    np.random.seed(7)
    model = _fresh_model(seed=123)
    result = fit(model, make_loader(size=20), CFG, output_dir=tmp_path, step_inputs=toy_step_inputs)

    assert result["resumed_from"] == str(tmp_path / "checkpoints" / "checkpoint_1.pt")
    assert _without_seconds(result["history"]) == _without_seconds(reference["history"])
    # the logged steps (loss curves) of the killed epoch survive the resume, identical
    assert result["steps"] and result["steps"] == reference["steps"]
    for key, value in reference_model.state_dict().items():  # weights, momentum copy, queue, pointer
        assert torch.equal(model.state_dict()[key], value), key
    # optimizer moments and steps, schedule counter, trainer counters, RNG states, history
    _assert_same(read_checkpoint(reference_dir / "last.pt"), read_checkpoint(tmp_path / "last.pt"))


def test_training_actually_moved_what_resume_must_restore(uninterrupted):
    _, model, result = uninterrupted
    initial = _fresh_model().state_dict()
    for key in ("head.weight", "encoder_m.0.weight", "queue"):
        assert not torch.equal(model.state_dict()[key], initial[key]), key
    assert model.queue_ptr.item() == (2 * 3 * 4) % 10
    assert [e["images_seen"] for e in result["history"]] == [12, 12]
    assert [e["images_skipped"] for e in result["history"]] == [3, 3]


def test_rerunning_a_finished_stage_trains_nothing(uninterrupted):
    reference_dir, reference_model, reference = uninterrupted
    before = (reference_dir / "last.pt").stat().st_mtime_ns
    model = _fresh_model(seed=5)
    result = fit(model, make_loader(size=20), CFG, output_dir=reference_dir, step_inputs=toy_step_inputs)
    assert _without_seconds(result["history"]) == _without_seconds(reference["history"])
    assert result["steps"] == reference["steps"]
    assert torch.equal(model.head.weight, reference_model.head.weight)  # loaded, not retrained
    assert (reference_dir / "last.pt").stat().st_mtime_ns == before


def test_resume_refuses_a_different_epoch_length(uninterrupted):
    reference_dir, _, _ = uninterrupted
    other = TrainConfig(epochs=3, max_steps_per_epoch=2, progress_bar=False)
    with pytest.raises(ValueError, match="3 steps per epoch, this run has 2"):
        fit(_fresh_model(), make_loader(size=20), other, output_dir=reference_dir)


def test_next_stage_continues_the_schedule_from_the_previous_last_pt(tmp_path, uninterrupted):
    reference_dir, reference_model, _ = uninterrupted
    stage2 = TrainConfig(epochs=1, max_steps_per_epoch=3, schedule=CFG.schedule, progress_bar=False)
    result = fit(
        _fresh_model(seed=9),
        make_loader(size=20),
        stage2,
        output_dir=tmp_path,
        init_checkpoint=reference_dir / "last.pt",
        init_objects=("model", "optimizer", "lr_scheduler"),
    )
    assert result["init_report"] == {"missing": [], "unexpected": []}
    # The schedule counter continued past its end (6 steps done): the lr is held at the floor.
    assert result["history"][0]["lr"] == CFG.schedule.min_lr
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["lr_scheduler"]["event_index"] == 9
    assert state["trainer"]["iteration"] == 3  # a new stage counts its own epochs
    reference_steps = read_checkpoint(reference_dir / "last.pt")["optimizer"]["state"][0]["step"]
    assert state["optimizer"]["state"][0]["step"] == reference_steps + 3  # Adam moments continued


def test_fine_tuning_loads_only_the_model_and_may_be_non_strict(tmp_path, uninterrupted):
    reference_dir, _, _ = uninterrupted

    class Wider(ToyMomentumModel):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match=r"cannot load 'model' from checkpoint .*last\.pt"):
        fit(
            Wider(),
            make_loader(size=20),
            CFG,
            output_dir=tmp_path / "strict",
            init_checkpoint=reference_dir / "last.pt",
        )

    torch.manual_seed(0)
    result = fit(
        Wider(),
        make_loader(size=20),
        TrainConfig(epochs=1, max_steps_per_epoch=3, schedule=CFG.schedule, progress_bar=False),
        output_dir=tmp_path / "loose",
        init_checkpoint=reference_dir / "last.pt",
        init_strict=False,
    )
    assert result["init_report"] == {"missing": ["model.extra.weight", "model.extra.bias"], "unexpected": []}
    assert (
        read_checkpoint(tmp_path / "loose" / "last.pt")["lr_scheduler"]["event_index"] == 3
    )  # fresh schedule


def test_init_objects_must_exist(tmp_path, uninterrupted):
    reference_dir, _, _ = uninterrupted
    with pytest.raises(ValueError, match="'optimiser'"):
        fit(
            _fresh_model(),
            make_loader(size=20),
            CFG,
            output_dir=tmp_path,
            init_checkpoint=reference_dir / "last.pt",
            init_objects=("model", "optimiser"),
        )


def test_tensorboard_has_every_term_lr_and_alpha_per_step(uninterrupted):
    reference_dir, _, reference = uninterrupted
    events = EventAccumulator(str(reference_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {f"train/{k}" for k in ("fit", "queue", "distill", "total", "lr", "alpha")}
    assert [e.step for e in events.Scalars("train/alpha")] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("train/alpha")][:4] == pytest.approx([0.0, 0.4 / 3, 0.8 / 3, 0.4])
    # The step input is a schedule like the lr: in every logged step, and per epoch its last step's value.
    assert [row["alpha"] for row in reference["steps"]] == pytest.approx(
        [0.0, 0.4 / 3, 0.8 / 3, 0.4, 0.4, 0.4]
    )
    assert [epoch["alpha"] for epoch in reference["history"]] == pytest.approx([0.8 / 3, 0.4])


class _EpochAwareSampler(RandomSampler):
    """Stands in for DistributedSampler: it only reshuffles when told the epoch."""

    calls: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.calls.append(epoch)


def test_fit_tells_the_sampler_the_epoch_also_after_resume(tmp_path):
    dataset = ToyDataset(size=8)
    loader = DataLoader(dataset, batch_size=4, sampler=_EpochAwareSampler(dataset), collate_fn=collate)
    cfg = TrainConfig(epochs=2, progress_bar=False)

    def crash(epoch, metrics):
        raise Killed

    _EpochAwareSampler.calls = []
    with pytest.raises(Killed):
        fit(_fresh_model(), loader, cfg, output_dir=tmp_path, on_epoch_end=crash)
    fit(_fresh_model(), loader, cfg, output_dir=tmp_path)
    assert _EpochAwareSampler.calls == [0, 1]
