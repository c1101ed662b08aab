"""`fit` on every process of a torchrun job: `torchrun --nproc_per_node=2 engine_fit_worker.py OUT_DIR`.

Each rank also saves its own final model state to OUT_DIR/rank<r>.pt, so the test can check that
the replicas (weights, momentum copy, queue, pointer) stayed identical.
"""

from __future__ import annotations

import sys

import ignite.distributed as idist
import torch
from engine_toy import ToyDataset, ToyMomentumModel, collate, toy_step_inputs

from nas.engine import ScheduleConfig, TrainConfig, fit, launch


def run(local_rank: int, out_dir: str) -> None:
    torch.manual_seed(0)
    model = ToyMomentumModel(queue_size=12)
    # Global batch 8 = 2 ranks x 4; the DistributedSampler needs set_epoch, which fit calls.
    loader = idist.auto_dataloader(
        ToyDataset(size=16),
        batch_size=4 * idist.get_world_size(),
        shuffle=True,
        drop_last=True,
        collate_fn=collate,
    )
    cfg = TrainConfig(epochs=2, schedule=ScheduleConfig(warmup_steps=1), progress_bar=False)
    result = fit(model, loader, cfg, output_dir=out_dir, step_inputs=toy_step_inputs)
    torch.save(
        {"state": model.state_dict(), "history": result["history"]}, f"{out_dir}/rank{idist.get_rank()}.pt"
    )


if __name__ == "__main__":
    launch(run, sys.argv[1], nproc_per_node=2, backend="gloo")
