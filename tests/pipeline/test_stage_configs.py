"""Stage-level config decisions: fine-tuning replicates and the evaluation input size."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.evaluate import data_as_trained, model_runs
from experiments.finetune import FinetuneConfig
from nas.config import ConfigError, from_dict
from nas.config.data import DataConfig


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1]])
def test_finetune_seeds_must_be_distinct_non_negative(seeds):
    with pytest.raises((ValueError, ConfigError), match="seeds"):
        from_dict(FinetuneConfig, {"seeds": seeds}, "finetune")


def test_evaluate_scores_every_finetuning_replicate_and_the_pretrained_model():
    cfg = {"finetune": {"seeds": [0, 2]}}
    assert model_runs("finetune", "nas", cfg) == [
        Path("runs/finetune/nas/seed0"),
        Path("runs/finetune/nas/seed2"),
    ]
    assert model_runs("pretrain_stage2", "nas", cfg) == [Path("runs/pretrain_stage2/nas")]


def test_evaluation_input_size_comes_from_the_recorded_run_not_the_params():
    data = from_dict(DataConfig, {"transform": {"image_size": 64}}, "data")
    assert data_as_trained(data, {"data": {"transform": {"image_size": 96}}}).transform.image_size == 96
    assert data_as_trained(data, {}).transform.image_size == 64
    assert data.transform.image_size == 64  # the params' config is not mutated


def test_the_experiment_sections_are_checked_with_every_run():
    """`finetune` and `evaluate` are typed in experiment modules; experiments.common registers them, so
    a pretraining run refuses a bad fine-tuning or evaluation setting before it starts."""
    from experiments.evaluate import EvaluateConfig
    from nas.config.params import load_params
    from nas.config.schema import SECTIONS, check_params

    assert SECTIONS["finetune"].dataclass() is FinetuneConfig
    assert SECTIONS["evaluate"].dataclass() is EvaluateConfig
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    cases = {
        "finetune.model_overrides.mlm_weight=0.5": "finetune: model_overrides must not set mlm_weight",
        "finetune.seeds=[0,0]": "finetune: seeds must be distinct non-negative offsets",
        "finetune.model_overrides.nva_enabled=true": "unknown config key 'finetune.model_overrides.nva_enabled'",
        "evaluate.retrieval.k_tset=4": "unknown config key 'evaluate.retrieval.k_tset'",
        "evaluate.checkpoint_stages=[pretrain_stage2,finetuned]": "evaluate.checkpoint_stages[1]: 'finetuned'",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as info:
            check_params(params, "albef", [override])
        assert str(info.value).startswith(f"--set {override}: ") and message in str(info.value)
    # NVA is a NAS model switch: on the NAS variant the same fine-tuning override is fine.
    check_params(params, "nas", ["finetune.model_overrides.nva_enabled=true"])
