"""Typed configs of the training stages (params sections `model`, `loader`, `pretrain_stage*`)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.config.data import LoaderConfig
from nas.config.distillation import DistillationConfig
from nas.config.train import TrainConfig

__all__ = [
    "DistillationConfig",
    "LoaderConfig",
    "ModelSpec",
    "StudyConfig",
    "TrainConfig",
    "TrainStageConfig",
    "checked_offset",
    "config_digest",
    "study_seeds",
]


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
    # ALBEF's momentum distillation weight α, fed to the model each step (the engine's step-input hook).
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    def __post_init__(self):
        allowed = {"model", "optimizer", "lr_scheduler", "trainer", "rng", "history"}
        unknown = set(self.init_objects) - allowed
        if unknown:
            raise ValueError(f"init_objects: unknown {sorted(unknown)}; choose from {sorted(allowed)}")


@dataclass
class StudyConfig:
    """The `study` params section: how many pretraining replicates, and how findings are judged.

    Every training stage (build_vd, both pretraining stages, fine-tuning) runs once per offset in
    `seeds`, with seed `params.seed + offset` (initialisation, data order, MLM masks, ITM and NVA
    draws); fine-tuning replicate k starts from pretraining replicate k, and every variant uses the same
    offsets, so variants are paired by seed (issue 12: the variance is in pretraining).
    """

    seeds: tuple[int, ...] = (0,)
    # Whose stage-1 run each variant's stage 2 continues (a variant missing here: its own). NAS continues
    # VD's: up to the end of stage 1 the two are the same run (NVA is stage-2 only, NAS_METHOD §6), so
    # sharing it isolates NVA's effect and saves a stage-1 run per seed; stage 2 checks that the shared
    # run was trained with the variant's own stage-1 params, and the variant's own build_vd and
    # pretrain_stage1 only record whose run they share.
    stage1_of: dict[str, str] = field(default_factory=dict)
    level: float = 0.95  # the findings' interval level
    resamples: int = 2000  # bootstrap resamples (over seeds and probe cases)
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative offsets, at least one; got {self.seeds}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100, got {self.resamples}")
        chained = {v: s for v, s in self.stage1_of.items() if self.stage1_of.get(s, s) != s}
        if chained:
            raise ValueError(
                f"stage1_of: {chained} take stage 1 from a variant that itself shares another's; name the "
                "variant that trains it"
            )

    def stage1_source(self, variant: str) -> str:
        """The variant whose stage-1 run `variant`'s stage 2 continues."""
        return self.stage1_of.get(variant, variant)


def study_seeds(cfg: dict[str, Any]) -> tuple[int, ...]:
    """The replicate offsets of a resolved params dict (`study.seeds`; (0,) without a study section)."""
    from nas.config.base import from_dict

    return from_dict(StudyConfig, cfg.get("study") or {}, "study").seeds


def checked_offset(cfg: dict[str, Any], offset: int) -> int:
    """`offset` (a `--run seed=` value) if `study.seeds` lists it; a ConfigError naming `study.seeds` if not."""
    from nas.config.base import ConfigError

    seeds = study_seeds(cfg)
    if offset not in seeds:
        raise ConfigError(f"--run seed={offset}: not among study.seeds ({list(seeds)})", path="study.seeds")
    return offset


def replicate_config(cfg: dict[str, Any], offset: int) -> dict[str, Any]:
    """The resolved params of replicate `offset`: seed `seed + offset`, and `study.seeds` narrowed to it, so
    a replicate's run identity never depends on which other replicates the study lists."""
    import copy

    out = copy.deepcopy(cfg)
    out["seed"] = cfg["seed"] + offset
    out["study"] = {**(cfg.get("study") or {}), "seeds": [offset]}
    return out


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
