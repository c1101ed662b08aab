"""The params sections typed above nas.config, registered with its schema from here (so nas.config imports
nothing above it): `finetune` and `evaluate` (the NAS study's stages), `mug` and `uta` (typed by the
companion recipes' cards), and the model registry that model specs in params are checked against.
String targets: each is imported when params that have the section are checked.
"""

from __future__ import annotations

from typing import Any

from nas.config.base import ConfigError
from nas.config.schema import Section, by_name, check_init_from, register_section, use_model_registry

use_model_registry("nas.models.registry")


def _finetune_model_overrides(spec: Any, finetune: Any) -> dict[str, Any]:
    from nas.recipes.finetune import effective_overrides

    return effective_overrides(spec, finetune, image_size=finetune.image_size)


# Stages whose models `evaluate` scores (nas.recipes.evaluate.model_runs); "untrained": the architecture
# at its random init, the baseline every trained figure is compared with.
SCORED_STAGES = ("untrained", "pretrain_stage1", "pretrain_stage2", "finetune")


def _check_evaluate(name: str, evaluate: Any, sections: Any) -> None:
    from nas.config.base import did_you_mean

    for index, stage in enumerate(evaluate.checkpoint_stages):
        if stage not in SCORED_STAGES:
            raise ConfigError(
                f"{name}.checkpoint_stages[{index}]: {stage!r} is not a stage with a model to score"
                f"{did_you_mean(stage, SCORED_STAGES)}; choose from {list(SCORED_STAGES)}",
                path=f"{name}.checkpoint_stages",
            )


register_section(
    "finetune",
    Section(
        "nas.recipes.finetune:FinetuneConfig",
        model_overrides=_finetune_model_overrides,
        check=check_init_from,
    ),
)
register_section("evaluate", Section("nas.recipes.evaluate:EvaluateConfig", check=_check_evaluate))
register_section(
    "mug", Section("nas.recipes.mug.card:MUGSection", check=by_name("nas.recipes.mug.card:check_section"))
)
register_section(
    "uta", Section("nas.recipes.uta.card:UTASection", check=by_name("nas.recipes.uta.card:check_section"))
)
