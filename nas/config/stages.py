"""Typed configs of the training stages (params sections `model`, `loader`, `pretrain_stage*`)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
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


@functools.cache
def code_digest() -> str:
    """sha256 of every Python source file of the `nas` package (paths and bytes, sorted by path).

    Part of every run's identity: a checkpoint written by other model, loss or engine code is never
    resumed as if it were this code's (a stale run would otherwise be "already done")."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def config_digest(resolved: dict[str, Any]) -> str:
    """Short stable hash of a resolved config and of the harness code (`code_digest`): checkpoints of
    a different config, or written by different code, never resume."""
    text = json.dumps({"config": resolved, "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
