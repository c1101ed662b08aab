"""Typed configs of the training stages (params sections `model`, `loader`, `pretrain_stage*`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from nas.data.loader import LoaderConfig
from nas.engine.trainer import TrainConfig

__all__ = ["LoaderConfig", "ModelSpec", "TrainStageConfig", "config_digest"]


@dataclass
class ModelSpec:
    """A registered architecture plus nested overrides (timm's `create_model(name, **kwargs)`)."""

    name: str = "albef_tiny"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainStageConfig:
    """One training stage: where it starts from and how it trains.

    `init_from` names an earlier stage of the same variant (e.g. stage 2 starts from
    `pretrain_stage1`); `init_objects` lists what it takes over from that checkpoint (stage 2
    continues the model, momentum model, queues, VD, optimizer and lr schedule [NAS_METHOD §6]).
    """

    init_from: str | None = None
    init_objects: tuple[str, ...] = ("model",)
    # Architecture switches of this stage only, merged into `model.overrides` (e.g. NAS stage 2:
    # `{nva_enabled: true, vd: {frozen: true}}`); the weights stay compatible across stages.
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        allowed = {"model", "optimizer", "lr_scheduler", "trainer", "rng", "history"}
        unknown = set(self.init_objects) - allowed
        if unknown:
            raise ValueError(f"init_objects: unknown {sorted(unknown)}; choose from {sorted(allowed)}")


def config_digest(resolved: dict[str, Any]) -> str:
    """Short stable hash of a resolved config: checkpoints of a different config never resume."""
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
