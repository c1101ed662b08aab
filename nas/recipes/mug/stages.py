"""The command line of the MUG stages (`nas mug`, `python -m experiments.mug`): read the arguments, run the
stage through `nas.recipes.stage.run_stage` (params checked whole, Sacred record on rank 0). `mug_pretrain`
is swept by dvc.yaml (`matrix:` arms x seeds): one process trains `--run arm=A --run seed=S`."""

from __future__ import annotations

from functools import partial

from nas.recipes.mug.paths import STAGES
from nas.recipes.stage import parse_stage_args, run_stage

__all__ = ["STAGES", "main"]


def main(argv=None) -> None:
    args = parse_stage_args("mug", argv)  # --stage: one of STAGES; --run checked against its axes
    if args.stage == "mug_vocabulary":
        from nas.recipes.mug.train import vocabulary as work
    elif args.stage == "mug_pretrain":
        from nas.recipes.mug.train import pretrain as work
    else:
        from nas.recipes.mug.evaluate import evaluate as work
    launch = ("mug", "train", "launch") if args.stage == "mug_pretrain" else None
    run_stage(args.stage, partial(work, **args.run_values), args=args, nproc_key=launch)
