"""The command line of the UTA stages (`nas uta`, `python -m experiments.uta`): read the arguments, run the
stage through `nas.recipes.stage.run_stage` (params checked whole, Sacred record on rank 0). Swept stages
(dvc.yaml `matrix:`): `uta_pretrain --run arm=<arm> --run seed=<seed>`, `uta_context` (the same with a context
arm and seed), `uta_finetune --run seed=<seed>`."""

from __future__ import annotations

from functools import partial
from typing import Any

from nas.recipes.stage import Recorder, check_listed, parse_stage_args, run_stage

STAGES = ("uta_teacher", "uta_pretrain", "uta_context", "uta_finetune", "uta_evaluate")
# The process count of a distributed stage, in the resolved params.
LAUNCH = {
    "uta_teacher": ("uta", "teacher", "train", "launch"),
    "uta_pretrain": ("uta", "student", "train", "launch"),
    "uta_context": ("uta", "student", "train", "launch"),
}
# Where a swept stage's `--run` values must be listed (checked before Sacred; the stage checks them again).
LISTED = {
    "uta_pretrain": {"arm": "uta.arms", "seed": "uta.seeds"},
    "uta_context": {"arm": "uta.context_arms", "seed": "uta.context_seeds"},
    "uta_finetune": {"seed": "uta.seeds"},
}


def _work(stage: str, cfg: dict[str, Any], record: Recorder, **run_values: Any) -> None:
    """The stage function of `stage`; its module (and torch) is imported by the stage, not at start-up."""
    from nas.recipes.uta.evaluate import evaluate
    from nas.recipes.uta.train import train_context, train_finetune, train_student, train_teacher

    work = {
        "uta_teacher": train_teacher,
        "uta_pretrain": train_student,
        "uta_context": train_context,
        "uta_finetune": train_finetune,
    }
    work.get(stage, evaluate)(cfg, record, **run_values)


def main(argv=None) -> None:
    args = parse_stage_args("uta", argv)  # --stage: one of STAGES; --run checked against its axes
    stage_main = partial(_work, args.stage, **args.run_values)
    check = partial(check_listed, run_values=args.run_values, where=LISTED.get(args.stage, {}))
    run_stage(args.stage, stage_main, args=args, nproc_key=LAUNCH.get(args.stage), check=check)
