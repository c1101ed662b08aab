"""Factories for the 2-process gloo parity run of the NAS model (`nas.engine.parity`): a small NAS with an
unfrozen dictionary (stage 1's EMA) and NVA on, and a global batch per step. Imported by spawned workers
as "nas_parity_worker:model" / "nas_parity_worker:batch", with ALBEF's distillation (α 0.4, ramped) as the
engine's step input "nas_parity_worker:step_inputs"."""

from __future__ import annotations

import torch

from nas.config.distillation import DistillationConfig
from nas.models.nas_model import NAS
from nas.models.registry import create_model

GLOBAL_BATCH, TEXT_LENGTH, IMAGE_SIZE = 4, 8, 32
# A 4 x 4 patch grid, one text and one fusion layer, a small vocabulary: seconds per step on one thread.
SMALL = {
    "vision": {"img_size": IMAGE_SIZE, "depth": 1},
    "text": {"vocab_size": 1000, "num_text_layers": 1, "num_fusion_layers": 1},
    "vd": {"num_codes": 16},
    "queue_size": 64,
}
TOTAL_STEPS = 5  # the γ ramp's T: γ = 0.2, 0.4, 0.6 over the recorded steps
step_inputs = DistillationConfig(alpha=0.4, ramp=True).step_inputs


def model() -> NAS:
    nas = create_model("nas_tiny", nva_enabled=True, **SMALL)
    nas.set_total_steps(TOTAL_STEPS)
    return nas


def batch(step: int) -> dict:
    generator = torch.Generator().manual_seed(100 + step)
    input_ids = torch.randint(200, 1000, (GLOBAL_BATCH, TEXT_LENGTH), generator=generator)
    input_ids[:, 0] = 101
    return {
        "image": torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones(GLOBAL_BATCH, TEXT_LENGTH, dtype=torch.long),
        "image_id": torch.arange(GLOBAL_BATCH) + 10 * step,
        "num_skipped": 0,
    }
