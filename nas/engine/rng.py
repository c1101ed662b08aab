"""Every random-number state a training step draws from, as one checkpointable object.

A model's forward draws from the global generators (MLM masking, ITM negative sampling, dropout),
and a DataLoader draws its shuffling seed from torch's global generator. A resumed run continues
bit for bit only if all of them are restored: python `random`, numpy's legacy global generator,
torch's CPU generator and, where present, the CUDA generators.

Each rank has its own streams (ALBEF seeds every rank with `seed + rank`), so `state_dict()` gathers
all ranks' states (a collective: call it on every rank, as Ignite's `Checkpoint` does) and
`load_state_dict()` restores this rank's own.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch

logger = logging.getLogger(__name__)


def _capture() -> dict[str, Any]:
    """This process's generator states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            logger.warning(
                "checkpoint holds %d CUDA generator states, this host has %d devices: CUDA RNG not restored",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


class RngState:
    """Checkpointable view of the global RNGs of every rank (goes into Ignite `Checkpoint`'s to_save)."""

    def state_dict(self) -> dict[str, Any]:
        return {"per_rank": list(idist.all_gather(_capture()))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("per_rank") if isinstance(state_dict, dict) else None
        if not per_rank:
            raise ValueError(
                f"RNG state must be a dict with a non-empty 'per_rank' list, got {state_dict!r:.200}"
            )
        rank, world = idist.get_rank(), idist.get_world_size()
        if len(per_rank) != world:
            # Resuming on a different number of processes cannot continue every stream exactly.
            logger.warning(
                "RNG state was saved by %d processes, now running %d: rank %d takes saved rank %d's streams",
                len(per_rank),
                world,
                rank,
                rank % len(per_rank),
            )
        _restore(per_rank[rank % len(per_rank)])
