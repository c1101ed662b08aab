"""A ring buffer of momentum features for the contrastive loss (MoCo / ALBEF queue, NAS_METHOD §2).

Rows start as L2-normalised random normal vectors (ALBEF's initialisation) and are overwritten
oldest-first. ALBEF asserts `queue_size % batch_size == 0`; this queue wraps around instead, so any
gathered batch size works (a batch larger than the queue keeps only its last `size` rows).
All state is in buffers, so it travels with `state_dict` and checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Id of a row that holds no real sample (ALBEF's retrieval idx_queue starts at -100): it never
# equals an image id, so random initial rows are never counted as positives.
EMPTY_ID = -100


class FeatureQueue(nn.Module):
    """`features [size, dim]` (+ `ids [size]` when `track_ids`), and the write pointer `ptr`."""

    features: torch.Tensor
    ids: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int, *, track_ids: bool = False) -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"FeatureQueue: size and dim must be positive, got size={size}, dim={dim}")
        self.size = size
        self.track_ids = track_ids
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        if track_ids:
            self.register_buffer("ids", torch.full((size,), EMPTY_ID, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Write `features [n, dim]` (and `ids [n]`) at the pointer, wrapping around the end."""
        if features.dim() != 2 or features.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"FeatureQueue.enqueue: expected [n, {self.features.shape[1]}] features, got {tuple(features.shape)}"
            )
        if self.track_ids != (ids is not None):
            raise ValueError(f"FeatureQueue.enqueue: ids {'required' if self.track_ids else 'not tracked'}")
        if ids is not None and ids.shape != features.shape[:1]:
            raise ValueError(f"FeatureQueue.enqueue: ids shape {tuple(ids.shape)} != ({features.shape[0]},)")
        count = features.shape[0]
        skip = max(0, count - self.size)  # rows that would be overwritten within this same write
        slots = (self.ptr + skip + torch.arange(count - skip, device=self.ptr.device)) % self.size
        self.features[slots] = features[skip:].to(self.features.dtype)
        if ids is not None:
            self.ids[slots] = ids[skip:].to(self.ids.dtype)
        self.ptr.copy_((self.ptr + count) % self.size)
