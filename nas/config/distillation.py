"""ALBEF's momentum distillation weight α: the `distillation` block of the ALBEF-family training sections
(`pretrain_stage1`, `pretrain_stage2`, `finetune`) and the step-input hook that feeds it to the model.

The engine knows nothing of α: it calls a recipe's `step_inputs(iteration, epoch_length)` hook each step
and passes the returned dict to the model as keyword arguments (`model(batch, alpha=...)`), logging each
value as a step scalar (`train/alpha`). Recipes whose models have no distillation (MUG, UTA) pass no
hook, and their models are called `model(batch)`.

The ramp (ALBEF, salesforce/ALBEF Pretrain.py `train`): in the first epoch
`alpha = config['alpha'] * min(1, i / len(data_loader))` with `i` the 0-based iteration inside the
epoch, afterwards the configured value (0.4, NAS paper "Experiment setup"). Pure data and arithmetic:
nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DistillationConfig", "alpha_at"]


def alpha_at(iteration: int, epoch_length: int, alpha: float) -> float:
    """Distillation weight at 0-based global `iteration`: ramps 0 -> alpha over the first epoch."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if epoch_length < 1:
        raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
    return alpha * min(1.0, iteration / epoch_length)


@dataclass
class DistillationConfig:
    """How much of ITC's and MLM's targets come from the momentum model: `α · soft + (1 − α) · one-hot`.
    Defaults: the paper's (NAS paper "Experiment setup" and ALBEF: 0.4, ramped over the first epoch)."""

    alpha: float = 0.4
    # ALBEF ramps α from 0 over the first epoch of a run (Pretrain.py). A stage that continues
    # another (NAS stage 2) may want the full α from its first step: set false.
    ramp: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def alpha_at(self, iteration: int, epoch_length: int) -> float:
        """α at 0-based global `iteration` of a run with `epoch_length` steps per epoch."""
        return alpha_at(iteration, epoch_length, self.alpha) if self.ramp else self.alpha

    def step_inputs(self, iteration: int, epoch_length: int) -> dict[str, float]:
        """The engine's step-input hook (`create_trainer(step_inputs=cfg.step_inputs)`): {"alpha": α}.
        A bound method of a plain dataclass, so it pickles into spawned workers."""
        return {"alpha": self.alpha_at(iteration, epoch_length)}
