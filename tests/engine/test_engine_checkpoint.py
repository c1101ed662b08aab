from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from engine_toy import ToyMomentumModel, make_loader
from ignite.engine import Engine

from nas.engine import RngState, ScheduleConfig, TrainConfig, atomic_save, fit, load_objects, read_checkpoint
from nas.engine.checkpoint import epoch_checkpointer, list_checkpoints

CFG = TrainConfig(
    epochs=2, max_steps_per_epoch=2, schedule=ScheduleConfig(warmup_steps=1), progress_bar=False
)


def _crashing_save(real_save, fail_on_call):
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            f.write(b"half a checkpoint")  # the process dies mid-write
            raise OSError("No space left on device")
        return real_save(obj, f, *args, **kwargs)

    return save


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = TrainConfig(**{**CFG.__dict__, "keep_checkpoints": 1})  # Ignite alone would delete first
    monkeypatch.setattr(torch, "save", _crashing_save(torch.save, fail_on_call=2))
    torch.manual_seed(0)
    with pytest.raises(OSError, match="No space left"):
        fit(ToyMomentumModel(), make_loader(), cfg, output_dir=tmp_path)
    monkeypatch.undo()

    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_1.pt"]
    assert read_checkpoint(tmp_path / "checkpoints" / "checkpoint_1.pt")["trainer"]["iteration"] == 2

    torch.manual_seed(0)
    result = fit(ToyMomentumModel(), make_loader(), cfg, output_dir=tmp_path)
    assert result["resumed_from"].endswith("checkpoint_1.pt")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_2.pt"]


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"value": torch.tensor([1.0])}, path)
    monkeypatch.setattr(torch, "save", _crashing_save(torch.save, fail_on_call=1))
    with pytest.raises(OSError):
        atomic_save({"value": torch.tensor([2.0])}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["value"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_checkpointer_keeps_the_newest_files_across_restarts(tmp_path):
    for epoch in (1, 2, 3):
        (tmp_path / f"checkpoint_{epoch}.pt").write_bytes(b"from a killed run")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    to_save = {"model": torch.nn.Linear(2, 2), "rng": RngState()}
    checkpointer = epoch_checkpointer(to_save, tmp_path, keep=2)
    engine = Engine(lambda e, b: None)
    engine.state.epoch = 4
    checkpointer(engine)
    assert [epoch for epoch, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert set(read_checkpoint(tmp_path / "checkpoint_4.pt")) == {"model", "rng"}
    assert (tmp_path / "notes.txt").exists()


def test_single_object_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="several objects"):
        epoch_checkpointer({"model": torch.nn.Linear(2, 2)}, tmp_path, keep=1)


def test_rng_state_restores_every_generator(tmp_path):
    rng = RngState()
    atomic_save({"rng": rng.state_dict()}, tmp_path / "rng.pt")  # survives weights_only loading
    draws = (random.random(), np.random.rand(), torch.rand(2), np.random.randn())
    rng.load_state_dict(read_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2), np.random.randn())
    assert draws[0] == again[0] and draws[1] == again[1] and draws[3] == again[3]
    assert torch.equal(draws[2], again[2])


def test_rng_state_rejects_garbage():
    with pytest.raises(ValueError, match="per_rank"):
        RngState().load_state_dict({"torch": torch.get_rng_state()})


def test_load_objects_names_what_is_wrong(tmp_path):
    path = tmp_path / "stage.pt"
    atomic_save({"model": torch.nn.Linear(2, 2).state_dict()}, path)
    to_load = {"model": torch.nn.Linear(2, 2), "optimizer": None}
    with pytest.raises(KeyError, match=r"has no \['optimizer'\]"):
        load_objects(to_load, path, ["model", "optimizer"])
    with pytest.raises(ValueError, match="known objects"):
        load_objects(to_load, path, ["scheduler"])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_objects(to_load, tmp_path / "missing.pt", ["model"])
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RuntimeError, match=r"corrupt\.pt cannot be read"):
        load_objects(to_load, tmp_path / "corrupt.pt", ["model"])
    model = torch.nn.Linear(2, 2)
    load_objects({"model": model}, path, ["model"])
    assert torch.equal(model.weight, read_checkpoint(path)["model"]["weight"])
