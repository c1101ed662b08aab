"""ALBEF's distillation weight α: its own typed section of the ALBEF stages (`<stage>.distillation`), the ramp
(ALBEF Pretrain.py: `alpha * min(1, i / len(data_loader))` in epoch 0, alpha afterwards) and the engine's
step-input hook built from it; the old `<stage>.train.alpha` keys are refused by name."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import pytest

from nas.config import ConfigError, from_dict
from nas.config.distillation import DistillationConfig, alpha_at
from nas.config.params import load_params
from nas.config.stages import TrainStageConfig
from nas.config.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_alpha_ramps_over_the_first_epoch_only():
    # ALBEF Pretrain.py: alpha * min(1, i / len(loader)) in epoch 0, alpha afterwards.
    assert alpha_at(0, 100, 0.4) == 0.0
    assert alpha_at(50, 100, 0.4) == pytest.approx(0.2)
    assert alpha_at(99, 100, 0.4) == pytest.approx(0.396)
    assert alpha_at(100, 100, 0.4) == 0.4  # first iteration of the second epoch
    assert alpha_at(12_345, 100, 0.4) == 0.4
    ramp = [alpha_at(i, 100, 0.4) for i in range(100)]
    assert all(math.isclose(b - a, 0.004) for a, b in zip(ramp, ramp[1:]))
    with pytest.raises(ValueError, match="iteration"):
        alpha_at(-1, 100, 0.4)
    with pytest.raises(ValueError, match="epoch_length"):
        alpha_at(0, 0, 0.4)


def test_the_step_input_hook_ramps_or_holds_alpha():
    ramped = DistillationConfig(alpha=0.4, ramp=True).step_inputs
    # epochs of 4 steps: 0.4 * i / 4 over the first epoch, then 0.4
    assert [set(ramped(i, 4)) for i in range(6)] == [{"alpha"}] * 6
    assert [ramped(i, 4)["alpha"] for i in range(6)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    held = DistillationConfig(alpha=0.4, ramp=False).step_inputs
    assert [held(i, 4)["alpha"] for i in range(6)] == [0.4] * 6  # full α from the first step
    assert DistillationConfig().alpha == 0.4 and DistillationConfig().ramp is True  # the paper's
    # spawned workers (torchrun / parity) receive the hook pickled
    assert pickle.loads(pickle.dumps(held))(0, 4) == {"alpha": 0.4}


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_0_1_is_refused_with_the_key(alpha):
    with pytest.raises(ConfigError, match=r"pretrain_stage1\.distillation: alpha must be in \[0, 1\]"):
        from_dict(TrainStageConfig, {"distillation": {"alpha": alpha}}, "pretrain_stage1")


def test_the_stage_sections_hold_it_and_the_train_block_no_longer_does():
    stage = from_dict(TrainStageConfig, {"distillation": {"alpha": 0.3, "ramp": False}}, "pretrain_stage2")
    assert stage.distillation == DistillationConfig(alpha=0.3, ramp=False)
    assert not hasattr(TrainConfig(), "alpha") and not hasattr(TrainConfig(), "alpha_ramp")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'pretrain_stage1\.train\.alpha' \(.*distillation\.alpha"
    ):
        from_dict(TrainStageConfig, {"train": {"alpha": 0.4}}, "pretrain_stage1")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'finetune\.train\.alpha_ramp' \(.*distillation\.ramp"
    ):
        from_dict(TrainConfig, {"alpha_ramp": True}, "finetune.train")


@pytest.fixture(scope="module")
def shipped():
    import nas.recipes.stage  # noqa: F401  (registers the sections typed above nas.config)

    return load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("stage", ["pretrain_stage1", "pretrain_stage2", "finetune"])
def test_an_old_train_alpha_in_a_params_file_is_an_error_naming_the_key(shipped, stage):
    from nas.config.schema import check_params

    params = copy.deepcopy(shipped)
    params[stage]["train"]["alpha"] = 0.4
    with pytest.raises(ConfigError) as info:
        check_params(params, None, source="p.yaml")
    assert f"unknown config key '{stage}.train.alpha'" in str(info.value)
    assert "distillation.alpha" in str(info.value)


def test_mug_and_uta_train_blocks_refuse_alpha_too(shipped):
    from nas.config.schema import check_params

    for dotted in ("mug.train.alpha=0.0", "uta.student.train.alpha_ramp=false"):
        with pytest.raises(ConfigError, match="unknown config key"):
            check_params(shipped, None, [dotted])


@pytest.mark.parametrize(
    ("profile", "values"),
    [
        # the tiny profile distils nothing (comment in params.yaml); the paper's 0.4, stage 2 unramped
        (
            "params.yaml",
            {"pretrain_stage1": (0.0, True), "pretrain_stage2": (0.0, False), "finetune": (0.0, True)},
        ),
        (
            "profiles/paper/params.yaml",
            {"pretrain_stage1": (0.4, True), "pretrain_stage2": (0.4, False), "finetune": (0.4, True)},
        ),
    ],
)
def test_the_shipped_profiles_set_it_per_albef_stage(shipped, profile, values):
    params = load_params(ROOT / profile)
    for stage, (alpha, ramp) in values.items():
        assert params[stage]["distillation"] == {"alpha": alpha, "ramp": ramp}, stage
        assert not {"alpha", "alpha_ramp"} & set(params[stage]["train"]), stage
    assert "alpha" not in params["mug"]["train"]
    for block in ("teacher", "student", "finetune"):
        assert "alpha" not in params["uta"][block]["train"], block
