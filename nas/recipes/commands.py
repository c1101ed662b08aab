"""The `nas` subcommands: one per pipeline stage (or several stages of one experiment module).

Kept free of heavy imports (no torch, no Sacred), so `nas --help`, `nas <command> --help` and usage
errors are answered before any experiment module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageCommand:
    """A `nas` subcommand: one pipeline stage, or several of one experiment module chosen by `--stage`.

    Kept here, free of heavy imports, so `nas <command> --help` and usage errors are answered before the
    experiment module (torch, timm, transformers: seconds) is imported."""

    module: str  # the experiment module; `python -m <module>` is the same run
    help: str  # one line for `nas --help`
    stages: dict[str, str]  # stage name (as in dvc.yaml) -> what it does; several: `--stage` picks one
    default: str | None = None  # the stage without `--stage` (several stages only)
    needs_variant: bool = False
    # A swept stage (a dvc.yaml `matrix:`) -> its axes, in the matrix's order: one process trains one entry,
    # named by `--run KEY=VALUE` for each axis (DVC names the entry `<stage>@<value>-<value>`; with
    # `needs_variant`, the variant is the matrix's first axis: `<stage>@<variant>-<value>`). NAS's seed is
    # an offset of `study.seeds`, MUG's and UTA's one of `mug.seeds` / `uta.seeds` (`uta.context_seeds` for
    # `uta_context`).
    runs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self.stages)


# `nas` subcommand -> its stages, in pipeline order (dvc.yaml runs each stage as `python -m <module>
# [--stage <stage>]`; tests/pipeline/test_cli.py checks every dvc.yaml stage has its command here).
STAGE_COMMANDS: dict[str, StageCommand] = {
    "data": StageCommand(
        "experiments.data",
        "generate/fetch the data set and the benchmark probes",
        {"data": "the data set (synthetic scenes or the real corpora) and the fine-grained probes"},
    ),
    "build-vd": StageCommand(
        "experiments.build_vd",
        "build the initial visual dictionary of a variant",
        {"build_vd": "the initial visual dictionary (k-means over neck features, or random)"},
        needs_variant=True,
        runs={"build_vd": ("seed",)},
    ),
    "pretrain": StageCommand(
        "experiments.pretrain",
        "pretraining of a variant, stage 1 or 2",
        {
            "pretrain_stage1": "ITC + ITM + MLM, VD EMA with the gamma ramp",
            "pretrain_stage2": "continues stage 1; VD frozen; NAS adds an NVA negative per pair",
        },
        default="pretrain_stage1",
        needs_variant=True,
        runs={"pretrain_stage1": ("seed",), "pretrain_stage2": ("seed",)},
    ),
    "finetune": StageCommand(
        "experiments.finetune",
        "text-augmented fine-tuning of one pretraining replicate of a variant",
        {"finetune": "text-augmented fine-tuning (NTA hard-negative captions, NVA)"},
        needs_variant=True,
        runs={"finetune": ("seed",)},
    ),
    "evaluate": StageCommand(
        "experiments.evaluate",
        "retrieval and fine-grained evaluation of a variant",
        {"evaluate": "zero-shot retrieval and the fine-grained probes of every trained model"},
        needs_variant=True,
    ),
    "mug": StageCommand(
        "experiments.mug",
        "MUG: masked reconstruction + captioning, every arm x seed",
        {
            "mug_vocabulary": "check the training captions once; the caption decoder's corpus vocabulary",
            "mug_pretrain": "train one arm (mug.arms) x seed (mug.seeds): --run arm=A --run seed=S",
            "mug_evaluate": "probes, captions, held-out losses and the fine-grained probes of every run",
        },
        default="mug_pretrain",
        runs={"mug_pretrain": ("arm", "seed")},
    ),
    "uta": StageCommand(
        "experiments.uta",
        "UTA: CLIP teacher, students aligned on unmasked tokens, fine-tuning, evaluation",
        {
            "uta_teacher": "train and freeze the tiny CLIP teacher (or load an EVA-CLIP checkpoint)",
            "uta_pretrain": "one student run: --run arm=<uta.arms key> --run seed=<one of uta.seeds>",
            "uta_context": "one context-arm student run: --run arm=<uta.context_arms key> "
            "--run seed=<one of uta.context_seeds>",
            "uta_finetune": "contrastive fine-tuning of the main arm's student: --run seed=<seed> "
            "(uta.finetune.enabled)",
            "uta_evaluate": "zero-shot, probes, held-out 1 - cos, heatmaps and the fine-grained probes of "
            "every run",
        },
        default="uta_pretrain",
        runs={"uta_pretrain": ("arm", "seed"), "uta_context": ("arm", "seed"), "uta_finetune": ("seed",)},
    ),
    "report": StageCommand(
        "experiments.report",
        "write reports/results.md and the figures",
        {"report": "reports/results.md, the audits and the figures from the metric files"},
    ),
}


def command_of(stage: str) -> str:
    """The `nas` subcommand that runs `stage` (a stage name of dvc.yaml)."""
    for name, command in STAGE_COMMANDS.items():
        if stage in command.stages:
            return name
    raise KeyError(f"no `nas` command runs the stage {stage!r}")
