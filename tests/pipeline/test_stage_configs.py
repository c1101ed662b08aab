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
