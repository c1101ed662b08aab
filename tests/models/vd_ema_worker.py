"""Worker for the 2-process gloo test of the visual dictionary's distributed EMA update.

Run as `python vd_ema_worker.py BATCHES_PT RESULT_PT PORT`: starts two gloo processes through
`ignite.distributed.Parallel` (forked: the parent has run no torch computation yet, and forking saves the
seconds each fresh interpreter spends importing torch and ignite). Each runs the same dictionary on its
half of every global batch; rank 0 saves the resulting state, which the test compares with one process
running the whole batches.
"""

from __future__ import annotations

import sys

import ignite.distributed as idist
import torch

from nas.models.visual_dictionary import VisualDictionary, VisualDictionaryConfig

NUM_STEPS, GLOBAL_BATCH, SIDE, DIM, NUM_CODES = 2, 4, 3, 16, 8


def make_vd() -> VisualDictionary:
    """The same dictionary on every rank and in the single-process reference (float64, training)."""
    torch.manual_seed(0)
    vd = VisualDictionary(VisualDictionaryConfig(num_codes=NUM_CODES, dim=DIM)).double().train()
    vd.set_total_steps(20)
    return vd


def make_batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    shape = (GLOBAL_BATCH, 1 + SIDE * SIDE, DIM)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(NUM_STEPS)]


def run_rank(local_rank: int, batches_path: str, result_path: str) -> None:
    torch.set_num_threads(1)
    rank, world_size = idist.get_rank(), idist.get_world_size()
    assert world_size == 2, world_size
    vd = make_vd()
    for batch in torch.load(batches_path):
        vd(batch.chunk(world_size)[rank])
    if rank == 0:
        torch.save(vd.state_dict(), result_path)


def main(batches_path: str, result_path: str, port: str) -> None:
    with idist.Parallel(
        backend="gloo",
        nproc_per_node=2,
        master_addr="127.0.0.1",
        master_port=int(port),
        start_method="fork",
    ) as parallel:
        parallel.run(run_rank, batches_path, result_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
