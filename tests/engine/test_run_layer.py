"""The run layer (nas.engine.run): a run's digest covers only the params it reads, so a killed run resumes
after an unrelated params edit and ends bit-identical to an uninterrupted one; a related edit starts a new
run; the one saved format reloads through the one reloader."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from engine_toy import ToyMomentumModel, make_loader
from torch import nn

from nas.engine import ScheduleConfig, TrainConfig, read_checkpoint
from nas.engine.run import RunSpec, load_run, run_digest, train_run
from nas.recipes.pretrain import run_reads

STAGE = "pretrain_stage1"
TRAIN = TrainConfig(
    epochs=2,
    max_steps_per_epoch=3,
    schedule=ScheduleConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2),
    progress_bar=False,
    log_every_steps=1,
)
PARAMS = {
    "seed": 3,
    "data": {"root": "data/synthetic"},
    "model": {"name": "albef_tiny", "overrides": {}},
    "loader": {"batch_size_per_gpu": 4},
    STAGE: {"train": {"epochs": 2}, "distillation": {"alpha": 0.0, "ramp": True}},
    "report": {"title": "results"},
    "uta": {"evaluation": {"batch_size": 64}},
    "mug": {"seeds": [0, 1]},
    "variants": {"albef": {}},
}


class Killed(Exception):
    pass


class KillAfterFirstEpoch:
    """A record whose first per-epoch scalar raises: the run dies after its epoch-1 checkpoint."""

    def log_scalar(self, name, value, step=None):
        if name.startswith("train."):
            raise Killed


def spec_for(params, tmp_path, **changes) -> RunSpec:
    return RunSpec(
        stage=STAGE,
        label="toy/seed0",
        seed=params["seed"],
        reads=run_reads(params, STAGE),
        train=TRAIN,
        checkpoints=tmp_path / "checkpoints",
        run_dir=tmp_path / "run",
        config=params,
        tensorboard_dir=tmp_path / "tb",
        **changes,
    )


def build():
    return ToyMomentumModel(), make_loader(size=20)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, train_run(spec_for(PARAMS, out), build)


def test_a_killed_run_resumes_after_an_unrelated_params_edit(tmp_path, uninterrupted):
    reference_dir, reference = uninterrupted
    with pytest.raises(Killed):
        train_run(spec_for(PARAMS, tmp_path), build, KillAfterFirstEpoch())
    edited = copy.deepcopy(PARAMS)
    edited["report"]["title"] = "another title"  # another stage's section
    edited["uta"]["evaluation"]["batch_size"] = 7  # another recipe's section
    edited["mug"]["seeds"] = [0, 1, 2]
    edited["variants"]["nas"] = {"model": {"overrides": {"nva_enabled": True}}}  # another variant
    result = train_run(spec_for(edited, tmp_path), build)

    digest = reference["config_digest"]
    assert result["config_digest"] == digest
    assert result["resumed_from"] == str(
        tmp_path / "checkpoints" / digest / "checkpoints" / "checkpoint_1.pt"
    )
    assert result["steps"] == reference["steps"]
    for key, value in reference["model"].state_dict().items():
        assert torch.equal(result["model"].state_dict()[key], value), key
    ours = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    theirs = read_checkpoint(reference_dir / "run" / "checkpoint.pt")
    for key, value in theirs["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(ours["optimizer"]["state"][key][name], tensor), (key, name)


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.__setitem__("seed", 4),
        lambda p: p["loader"].__setitem__("batch_size_per_gpu", 8),
        lambda p: p["model"]["overrides"].__setitem__("embed_dim", 64),
        lambda p: p[STAGE]["train"].__setitem__("epochs", 3),
        lambda p: p[STAGE]["distillation"].__setitem__("alpha", 0.4),  # ALBEF's α: another run
        lambda p: p[STAGE]["distillation"].__setitem__("ramp", False),
    ],
    ids=["seed", "loader", "model", "own-section", "distillation-alpha", "distillation-ramp"],
)
def test_an_edit_the_run_reads_names_another_run(tmp_path, edit):
    edited = copy.deepcopy(PARAMS)
    edit(edited)
    assert run_digest(spec_for(edited, tmp_path))[1] != run_digest(spec_for(PARAMS, tmp_path))[1]


def test_the_hand_off_is_a_hard_link_with_its_config_and_run_block(uninterrupted):
    out, result = uninterrupted
    run = out / "run"
    last = out / "checkpoints" / result["config_digest"] / "last.pt"
    assert (run / "checkpoint.pt").stat().st_ino == last.stat().st_ino  # one copy on disk
    config = json.loads((run / "config.json").read_text())
    assert config["report"] == PARAMS["report"]  # the resolved config as it ran
    assert config["run"] == {"stage": STAGE, "seed": 3, "config_digest": result["config_digest"]}


class Wrapper(nn.Module):
    """A module trained inside another (as a UTA student inside its distillation wrapper)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.head = nn.Linear(2, 2)


def test_load_run_rebuilds_the_exported_module_through_the_registry(tmp_path):
    from nas.engine.checkpoint import atomic_save
    from nas.models.registry import create_model

    spec = {"name": "albef_tiny", "overrides": {"queue_size": 64}}
    torch.manual_seed(0)
    trained = Wrapper(create_model(spec["name"], **spec["overrides"]))
    atomic_save({"model": trained.state_dict()}, tmp_path / "checkpoint.pt")
    run_block = {"stage": "toy", "seed": 0, "model": spec, "export": "student"}
    (tmp_path / "config.json").write_text(json.dumps({"run": run_block}))

    model, config = load_run(tmp_path)
    assert config["run"]["export"] == "student" and not model.training
    want = trained.student.state_dict()
    assert set(model.state_dict()) == set(want)
    for key, value in want.items():
        assert torch.equal(model.state_dict()[key], value), key

    run_block["export"] = "teacher"
    (tmp_path / "config.json").write_text(json.dumps({"run": run_block}))
    with pytest.raises(KeyError, match="teacher"):
        load_run(tmp_path / "checkpoint.pt")
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path)


class _RecordsKwargs(ToyMomentumModel):
    def __init__(self) -> None:
        super().__init__()
        self.kwargs: list[dict] = []

    def forward(self, batch, **kwargs):
        self.kwargs.append(kwargs)
        return super().forward(batch, **kwargs)


def test_the_run_spec_hands_its_step_inputs_to_the_model_and_the_record(tmp_path):
    from nas.config import from_dict
    from nas.config.distillation import DistillationConfig

    class Record:
        def __init__(self):
            self.scalars = {}

        def log_scalar(self, name, value, step=None):
            self.scalars[(name, step)] = value

    model, record = _RecordsKwargs(), Record()
    params = copy.deepcopy(PARAMS)
    params[STAGE]["distillation"]["alpha"] = 0.3  # as a pretraining stage builds its hook: from its section
    distillation = from_dict(DistillationConfig, params[STAGE]["distillation"], f"{STAGE}.distillation")
    spec = spec_for(params, tmp_path, step_inputs=distillation.step_inputs)
    result = train_run(spec, lambda: (model, make_loader(size=20)), record)
    # 2 epochs of 3 steps: α = 0.3 * i / 3 over the first epoch, then 0.3
    assert [k["alpha"] for k in model.kwargs] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3])
    assert [row["alpha"] for row in result["steps"]] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3])
    assert record.scalars[("train.alpha", 1)] == pytest.approx(0.2)  # the epoch printer: last step's α
    assert record.scalars[("train.alpha", 2)] == pytest.approx(0.3)

    plain = _RecordsKwargs()
    bare = train_run(spec_for(PARAMS, tmp_path / "bare"), lambda: (plain, make_loader(size=20)))
    assert plain.kwargs == [{}] * 6 and "alpha" not in bare["final"]
