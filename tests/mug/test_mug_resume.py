"""MUG through the engine: a run killed after an epoch and run again ends with exactly the weights
of an uninterrupted run (the masking draws come from the checkpointed global RNG)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from nas.engine import ScheduleConfig, TrainConfig, fit
from nas.models.registry import create_model

CFG = TrainConfig(
    epochs=2,
    max_steps_per_epoch=2,
    schedule=ScheduleConfig(lr=1e-3, min_lr=1e-4, warmup_steps=1),
    progress_bar=False,
    log_every_steps=1,
)
WORDS = [320, 1746, 736]


class Killed(Exception):
    pass


def _items():
    gen = torch.Generator().manual_seed(0)
    items = []
    for k in range(12):
        ids = torch.zeros(8, dtype=torch.long)
        mask = torch.zeros(8, dtype=torch.long)
        seq = [49406, *WORDS[: 1 + k % 3], 49407]
        ids[: len(seq)], mask[: len(seq)] = torch.tensor(seq), 1
        items.append((torch.randn(3, 64, 64, generator=gen), ids, mask))
    return items


def _collate(items):
    images, ids, masks = zip(*items)
    return {
        "image": torch.stack(images),
        "input_ids": torch.stack(ids),
        "attention_mask": torch.stack(masks),
        "num_skipped": 0,
    }


def _loader():
    return DataLoader(_items(), batch_size=4, shuffle=True, collate_fn=_collate)


def _model(seed=0):
    torch.manual_seed(seed)
    model = create_model(
        "mug_tiny",
        vision={"embed_dim": 24, "depth": 1, "num_heads": 2},
        decoder={"embed_dim": 16, "depth": 1},
        caption={"width": 16, "context_length": 8, "corpus_slots": 8},
    )
    model.set_vocabulary(WORDS)
    return model


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    reference = _model()
    fit(reference, _loader(), CFG, output_dir=tmp_path / "reference")

    def crash(epoch, metrics):
        raise Killed

    with pytest.raises(Killed):
        fit(_model(), _loader(), CFG, output_dir=tmp_path / "killed", on_epoch_end=crash)
    torch.manual_seed(123)  # a "new process": other RNG state, other initialisation
    resumed = _model(seed=7)
    result = fit(resumed, _loader(), CFG, output_dir=tmp_path / "killed")
    assert result["resumed_from"].endswith("checkpoint_1.pt")
    moved = False
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
        moved |= not torch.equal(value, _model().state_dict()[key])
    assert moved
