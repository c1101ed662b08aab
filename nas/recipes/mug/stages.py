"""The command line of the MUG stages (`nas mug`, `python -m experiments.mug`): read the arguments, run the
stage through `nas.recipes.stage.run_stage` (params checked whole, Sacred record on rank 0). `mug_pretrain`
is swept by dvc.yaml (`matrix:` arms x seeds): one process trains `--run arm=A --run seed=S`."""

from __future__ import annotations

from functools import partial
from typing import Any

from nas.recipes.mug.paths import STAGES
from nas.recipes.stage import Recorder, check_listed, parse_stage_args, run_stage

__all__ = ["STAGES", "main"]


def _work(stage: str, cfg: dict[str, Any], record: Recorder, **run_values: Any) -> None:
    """The stage function of `stage`; its module (and torch) is imported by the stage, not at start-up."""
    if stage == "mug_vocabulary":
        from nas.recipes.mug.train import vocabulary as work
    elif stage == "mug_pretrain":
        from nas.recipes.mug.train import pretrain as work
    else:
        from nas.recipes.mug.evaluate import evaluate as work
    work(cfg, record, **run_values)


def main(argv=None) -> None:
    args = parse_stage_args("mug", argv)  # --stage: one of STAGES; --run checked against its axes
    launch = ("mug", "train", "launch") if args.stage == "mug_pretrain" else None
    # A `--run` value the params do not list is a usage error before Sacred (the stage checks it again).
    listed = {"arm": "mug.arms", "seed": "mug.seeds"} if args.stage == "mug_pretrain" else {}
    check = partial(check_listed, run_values=args.run_values, where=listed)
    run_stage(
        args.stage, partial(_work, args.stage, **args.run_values), args=args, nproc_key=launch, check=check
    )
