"""Evaluation sharded across ranks: each rank embeds its contiguous share of the images and texts,
and every quantity is gathered exactly once (one all_gather per tensor), in rank order.

Shares differ by at most one row; a gather pads every share to the largest and drops the padding
after, because `all_gather` needs equal shapes on every rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nas.distributed import all_gather_cat, rank, world_size


def shard_bounds(n: int, shard: int, shards: int) -> tuple[int, int]:
    """[start, stop) of shard `shard` of `n` rows split into `shards` contiguous parts."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards} is not a valid shard")
    base, extra = divmod(n, shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def shard_slice(n: int, shard: int | None = None, shards: int | None = None) -> slice:
    """This rank's rows of `n` (the whole range in a single process)."""
    shard = rank() if shard is None else shard
    shards = world_size() if shards is None else shards
    return slice(*shard_bounds(n, shard, shards))


@torch.no_grad()
def gather_shards(
    local: torch.Tensor,
    n_total: int,
    *,
    shards: int | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] = all_gather_cat,
) -> torch.Tensor:
    """The full `[n_total, ...]` tensor from every rank's share (`shard_bounds` order), one gather."""
    shards = world_size() if shards is None else shards
    if shards == 1:
        if len(local) != n_total:
            raise ValueError(f"one process holds {len(local)} rows, expected {n_total}")
        return local
    width = -(-n_total // shards)  # the largest share
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: len(local)] = local
    everything = gather(padded)
    parts = []
    for shard in range(shards):
        start, stop = shard_bounds(n_total, shard, shards)
        parts.append(everything[shard * width : shard * width + (stop - start)])
    return torch.cat(parts)
