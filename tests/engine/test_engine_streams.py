"""Random streams and kernels of a run: deterministic kernels by default, the run's seed reaching the
model's own generators, and a stage that continues another (NAS stage 2) instead of replaying it."""

from __future__ import annotations

import pytest
import torch
from engine_toy import ToyMomentumModel, make_loader

from nas.engine import ScheduleConfig, TrainConfig, fit, read_checkpoint
from nas.engine.fit import deterministic_kernels
from nas.engine.optim import OptimConfig

SCHEDULE = ScheduleConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2)


def _cfg(**changes) -> TrainConfig:
    base = dict(epochs=1, max_steps_per_epoch=3, schedule=SCHEDULE, progress_bar=False, log_every_steps=1)
    return TrainConfig(**{**base, **changes})


class Recording(ToyMomentumModel):
    """Records the image rows of every batch, the kernel mode seen inside forward, and the stream seed."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[torch.Tensor] = []
        self.deterministic_seen: list[bool] = []
        self.stream_seed: int | None = None

    def seed_random_streams(self, seed: int) -> None:
        self.stream_seed = seed

    def forward(self, batch):
        self.batches.append(batch["image"].clone())
        self.deterministic_seen.append(torch.are_deterministic_algorithms_enabled())
        return super().forward(batch)


def _model(seed: int = 0) -> Recording:
    torch.manual_seed(seed)
    return Recording()


def test_deterministic_kernels_by_default_and_restored_after(tmp_path):
    assert TrainConfig().deterministic is True
    before = torch.are_deterministic_algorithms_enabled()
    model = _model()
    fit(model, make_loader(size=20), _cfg(), output_dir=tmp_path / "on")
    assert model.deterministic_seen == [True] * 3
    assert torch.are_deterministic_algorithms_enabled() == before

    model = _model()
    fit(model, make_loader(size=20), _cfg(deterministic=False), output_dir=tmp_path / "off")
    assert model.deterministic_seen == [False] * 3


def test_deterministic_kernels_restores_after_an_error():
    before = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="boom"), deterministic_kernels(not before, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() is (not before)
        raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled() is before


def test_the_run_seed_reaches_the_models_own_streams(tmp_path):
    model = _model()
    fit(model, make_loader(size=20), _cfg(seed=7), output_dir=tmp_path)
    assert model.stream_seed == 7


def _stage1(tmp_path):
    model = _model()
    fit(model, make_loader(size=20), _cfg(epochs=1, max_steps_per_epoch=5), output_dir=tmp_path / "s1")
    return model, tmp_path / "s1" / "last.pt"


def _stage2(tmp_path, init, objects, name, **cfg_changes):
    model = _model(seed=1)
    fit(
        model,
        make_loader(size=20),
        _cfg(**cfg_changes),
        output_dir=tmp_path / name,
        init_checkpoint=init,
        init_objects=objects,
    )
    return model


def test_a_stage_that_takes_the_rng_continues_instead_of_replaying(tmp_path):
    stage1, last = _stage1(tmp_path)
    first_epoch = torch.cat(stage1.batches[:3])
    replay = _stage2(tmp_path, last, ("model", "optimizer", "lr_scheduler"), "replay")
    # Without the RNG the new stage reseeds with the same seed: its first batches repeat stage 1's.
    assert torch.equal(torch.cat(replay.batches), first_epoch)
    continued = _stage2(tmp_path, last, ("model", "optimizer", "lr_scheduler", "rng"), "continued")
    assert not torch.equal(torch.cat(continued.batches), first_epoch)
    # ... and it continues exactly: the shuffle stage 1's RNG would have drawn for a second epoch.
    again = _stage2(tmp_path, last, ("model", "optimizer", "lr_scheduler", "rng"), "again")
    assert torch.equal(torch.cat(again.batches), torch.cat(continued.batches))
    assert read_checkpoint(tmp_path / "continued" / "last.pt")["data_order"] == {"epoch_offset": 1}
    assert read_checkpoint(tmp_path / "replay" / "last.pt")["data_order"] == {"epoch_offset": 0}


class EpochSampler(torch.utils.data.Sampler):
    """Stands in for a DistributedSampler: records the epochs it is told."""

    def __init__(self, size: int) -> None:
        self.size, self.epochs = size, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


def test_a_continuing_stage_counts_sampler_epochs_on(tmp_path):
    _, last = _stage1(tmp_path)
    loader = make_loader(size=20)
    sampler = EpochSampler(20)
    loader = torch.utils.data.DataLoader(
        loader.dataset, batch_size=4, sampler=sampler, drop_last=True, collate_fn=loader.collate_fn
    )
    fit(
        _model(1),
        loader,
        _cfg(epochs=2),
        output_dir=tmp_path / "s2",
        init_checkpoint=last,
        init_objects=("model", "rng"),
    )
    assert sampler.epochs == [1, 2]  # stage 1 ran epoch 0


def test_carried_over_optimizer_state_keeps_this_stages_hyperparameters(tmp_path):
    _, last = _stage1(tmp_path)
    own = OptimConfig(weight_decay=0.5, betas=(0.5, 0.6), eps=1e-6)
    _stage2(tmp_path, last, ("model", "optimizer"), "s2", optim=own)
    state = read_checkpoint(tmp_path / "s2" / "last.pt")["optimizer"]
    decays = sorted({group["weight_decay"] for group in state["param_groups"]})
    assert decays == [0.0, 0.5]  # biases and norms stay undecayed
    assert {tuple(group["betas"]) for group in state["param_groups"]} == {(0.5, 0.6)}
    assert {group["eps"] for group in state["param_groups"]} == {1e-6}
    stage1_steps = read_checkpoint(last)["optimizer"]["state"][0]["step"]
    assert state["state"][0]["step"] == stage1_steps + 3  # the moments themselves are carried over
