"""The few collective operations the library needs, through `ignite.distributed` (idist).

Every function is a no-op in a single process, so library code and tests run anywhere. Modules
that communicate take these as defaults and accept injected fakes, so a test can emulate
world size > 1 on one CPU process (the open_clip habit).
"""

from __future__ import annotations

import ignite.distributed as idist
import torch


def world_size() -> int:
    return idist.get_world_size()


def rank() -> int:
    return idist.get_rank()


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0 (rank order). No gradient flows back."""
    if idist.get_world_size() == 1:
        return x
    return idist.all_gather(x.contiguous())


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks (returns a new tensor; the input is left alone)."""
    if idist.get_world_size() == 1:
        return x.clone()
    return idist.all_reduce(x.clone(), op="SUM")
