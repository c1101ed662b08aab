"""The one Ignite training engine every recipe trains through (ALBEF, NAS stages, ablations, MUG, UTA).

`fit` wires it all (resume, checkpoints, logging); `create_trainer` is the bare step as an Engine;
`launch` starts 1 or N processes through `ignite.distributed`.
"""

from nas.engine.checkpoint import (
    atomic_save,
    latest_checkpoint,
    list_checkpoints,
    load_objects,
    read_checkpoint,
)
from nas.engine.fit import fit
from nas.engine.launch import LaunchConfig, launch, resolve_backend, unwrap_model, wrap_model
from nas.engine.optim import OptimConfig, build_optimizer
from nas.engine.rng import RngState
from nas.engine.schedules import ScheduleConfig, WarmupCosineLR, build_lr_scheduler, lr_at
from nas.engine.trainer import (
    NonFiniteLossError,
    NonFiniteTrainingError,
    StepInputs,
    TrainConfig,
    create_trainer,
)

__all__ = [
    "LaunchConfig",
    "NonFiniteLossError",
    "NonFiniteTrainingError",
    "OptimConfig",
    "RngState",
    "ScheduleConfig",
    "StepInputs",
    "TrainConfig",
    "WarmupCosineLR",
    "atomic_save",
    "build_lr_scheduler",
    "build_optimizer",
    "create_trainer",
    "fit",
    "latest_checkpoint",
    "launch",
    "list_checkpoints",
    "load_objects",
    "lr_at",
    "read_checkpoint",
    "resolve_backend",
    "unwrap_model",
    "wrap_model",
]
