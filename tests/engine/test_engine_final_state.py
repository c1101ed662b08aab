"""A finished run keeps last.pt only (prune_when_done), optionally without optimizer moments
(final_state: weights), and a rerun of it still trains nothing and returns the same result."""

from __future__ import annotations

import os

import pytest
import torch
from engine_toy import ToyMomentumModel, make_loader

from nas.atomic import atomic_link
from nas.engine import ScheduleConfig, TrainConfig, fit, read_checkpoint

CFG = TrainConfig(
    epochs=2,
    progress_bar=False,
    log_every_steps=1,
    schedule=ScheduleConfig(lr=0.05, warmup_steps=0),
    prune_when_done=True,
)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("final_state", ["full", "weights"])
def test_finished_run_keeps_last_only_and_resumes_from_it(tmp_path, final_state):
    cfg = TrainConfig(**{**CFG.__dict__, "final_state": final_state})
    torch.manual_seed(0)
    model = ToyMomentumModel()
    first = fit(model, make_loader(), cfg, output_dir=tmp_path)
    assert not list((tmp_path / "checkpoints").glob("checkpoint_*.pt")), "epoch checkpoints pruned"
    state = read_checkpoint(tmp_path / "last.pt")
    assert ("optimizer" in state) == (final_state == "full")
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]

    torch.manual_seed(1)  # another init: the rerun must load the finished weights, not train these
    again_model = ToyMomentumModel()
    again = fit(again_model, make_loader(), cfg, output_dir=tmp_path)
    assert again["resumed_from"] == str(tmp_path / "last.pt")
    assert again["history"] == first["history"] and again["steps"] == first["steps"]
    for key, value in _weights(model).items():
        assert torch.equal(value, again_model.state_dict()[key]), key


def test_a_weights_only_run_cannot_be_extended(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "final_state": "weights"})
    fit(ToyMomentumModel(), make_loader(), cfg, output_dir=tmp_path)
    longer = TrainConfig(**{**cfg.__dict__, "epochs": 3})
    with pytest.raises(KeyError, match="final_state: weights cannot be trained further"):
        fit(ToyMomentumModel(), make_loader(), longer, output_dir=tmp_path)


def test_atomic_link_shares_the_bytes_and_survives_a_replaced_source(tmp_path):
    source, link = tmp_path / "last.pt", tmp_path / "runs" / "checkpoint.pt"
    source.write_bytes(b"weights v1")
    atomic_link(source, link)
    assert link.read_bytes() == b"weights v1" and os.stat(link).st_ino == os.stat(source).st_ino
    # writers replace names (atomic_write), so the hand-off keeps its bytes when the source is rewritten
    tmp = tmp_path / "new"
    tmp.write_bytes(b"weights v2")
    os.replace(tmp, source)
    assert link.read_bytes() == b"weights v1"
    atomic_link(source, link)  # linking again replaces the old hand-off
    assert link.read_bytes() == b"weights v2"
