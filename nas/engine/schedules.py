"""The learning-rate schedule of every training run (ALBEF/NAS, MUG, UTA).

Learning rate (NAS paper, "Experiment setup"): linear warm-up over the first 1,000 iterations to the
peak 1e-4, then cosine decay to 1e-5. Both are pure functions of the global iteration, so the
schedule itself holds no state except "how many iterations have run" (`event_index`), which Ignite's
`ParamScheduler` already saves and restores; stage 2 loads that counter from stage 1 and continues
(at the floor, NAS_METHOD.md §6).

ALBEF's other per-iteration schedule, the distillation weight α, is not the engine's: it is ALBEF's
step input (nas.config.distillation), which the recipes hand to the engine as its `step_inputs` hook.
"""

from __future__ import annotations

import math
from typing import Any

from ignite.handlers.param_scheduler import ParamScheduler
from torch.optim import Optimizer

from nas.config.train import ScheduleConfig  # the `train.schedule` params block (pure data)


def lr_at(
    step: int,
    *,
    peak: float,
    floor: float,
    warmup_steps: int,
    total_steps: int,
    warmup_start_lr: float = 0.0,
) -> float:
    """Learning rate at 0-based global iteration `step`.

    Linear from `warmup_start_lr` (step 0) to `peak` (step `warmup_steps`), cosine from `peak` to
    `floor` between `warmup_steps` and `total_steps`, then held at `floor`.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps and total_steps must be >= 0, got {warmup_steps}, {total_steps}")
    if step < warmup_steps:
        return warmup_start_lr + (peak - warmup_start_lr) * step / warmup_steps
    if step >= total_steps:
        return floor
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(ParamScheduler):
    """`lr_at` as an Ignite `ParamScheduler`: call it on ITERATION_STARTED.

    Its state (`event_index`, the number of iterations already scheduled) goes into the checkpoint;
    the schedule's shape comes from the config, so a later stage can load the counter and continue.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        peak: float,
        floor: float,
        warmup_steps: int,
        total_steps: int,
        warmup_start_lr: float = 0.0,
        param_name: str = "lr",
        save_history: bool = False,
    ) -> None:
        super().__init__(optimizer, param_name, save_history=save_history)
        self.shape: dict[str, Any] = {
            "peak": peak,
            "floor": floor,
            "warmup_steps": warmup_steps,
            "total_steps": total_steps,
            "warmup_start_lr": warmup_start_lr,
        }

    def get_param(self) -> float | list[float]:
        lr = lr_at(self.event_index, **self.shape)
        # Layer-wise lr decay (timm's layer-decay groups carry `lr_scale`): each group gets its share.
        scales = [group.get("lr_scale", 1.0) for group in self.optimizer_param_groups]
        return lr if all(s == 1.0 for s in scales) else [lr * s for s in scales]


def build_lr_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, *, total_steps: int) -> WarmupCosineLR:
    return WarmupCosineLR(
        optimizer,
        peak=cfg.lr,
        floor=cfg.min_lr,
        warmup_steps=cfg.warmup_steps,
        total_steps=total_steps,
        warmup_start_lr=cfg.warmup_start_lr,
    )
