"""Which patch tokens the UTA student sees: exactly K visible per image, as a dense [B, K] index.

Schemes (MUG_UTA.md §2 "Decisions"; the masking ablation runs all four at equal steps):
- `reversed_blockwise` (UTA): BEiT/EVA-02's block-wise generator run with a target of K tokens,
  its blocks taken as the *visible* set, so visible tokens gather in the centre of the image;
- `blockwise` (BEiT/EVA-02 as published): the blocks are the *masked* set (N - K tokens), the rest
  is visible, so visible tokens gather at the borders;
- `random`: K tokens uniformly at random (MAE-style);
- `none`: every token visible (K = N), the no-masking baseline.

The block-wise generator (BEiT, Bao et al. 2022, §2.2 and its `MaskingGenerator`; EVA-02 uses the
same): repeatedly draw a rectangle of area uniform in [min_patches, remaining target] and aspect
ratio log-uniform in [0.3, 1/0.3], up to 10 attempts per block, place it uniformly and accept it if it
adds between 1 and `remaining` new tokens; stop at the target or when a block adds nothing. Its count
can fall short of the target, so tokens are then added (or dropped) at random until exactly K are
visible: a dense [B, K] gather needs the same K in every row.

Randomness: one 63-bit seed per call is drawn from a torch generator (the global one by default,
which the engine checkpoints, or an explicit one), and the per-image draws come from a numpy
generator seeded with it (fast scalar draws). Same generator state => same masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Scheme = Literal["none", "random", "blockwise", "reversed_blockwise"]
SCHEMES: tuple[str, ...] = ("none", "random", "blockwise", "reversed_blockwise")

# BEiT MaskingGenerator defaults: aspect ratio in [0.3, 1/0.3], 10 attempts per block.
BEIT_MIN_ASPECT = 0.3
BEIT_ATTEMPTS = 10


@dataclass
class MaskingConfig:
    """How the student's visible tokens are chosen. Defaults: the tiny CPU profile."""

    scheme: Scheme = "reversed_blockwise"  # UTA [P]: reversed block-wise
    ratio: float = 0.5  # masked fraction r; UTA [P]: 0.4 (base), 0.5 (large)
    # Smallest block area in tokens. BEiT/EVA-02 use 16 on a 14x14 grid; 4 suits an 8x8 grid.
    min_patches: int = 4
    min_aspect: float = BEIT_MIN_ASPECT

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {self.scheme!r}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio (the mask ratio) must be in (0, 1), got {self.ratio}")
        if self.min_patches < 1:
            raise ValueError(f"min_patches must be >= 1, got {self.min_patches}")
        if not 0.0 < self.min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {self.min_aspect}")


def num_visible(num_tokens: int, ratio: float, scheme: str = "reversed_blockwise") -> int:
    """K = round((1 - r) N) (Python's round: halves to even; N for scheme "none"); an error if that
    leaves no visible token."""
    if scheme == "none":
        return num_tokens
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"masking.ratio must be in (0, 1), got {ratio}")
    k = int(round((1.0 - ratio) * num_tokens))
    if not 1 <= k <= num_tokens:
        raise ValueError(
            f"masking.ratio={ratio} on a grid of {num_tokens} tokens leaves {k} visible; "
            "lower the ratio or use a finer grid"
        )
    return k


def _blocks(grid: tuple[int, int], target: int, cfg: MaskingConfig, rng: np.random.Generator) -> np.ndarray:
    """BEiT's block-wise generator: a bool map with at most `target` tokens set, in rectangles."""
    height, width = grid
    chosen = np.zeros(grid, dtype=bool)
    log_aspect = (math.log(cfg.min_aspect), -math.log(cfg.min_aspect))
    count = 0
    while count < target:
        remaining = target - count
        added = 0
        for _ in range(BEIT_ATTEMPTS):
            # As Python's random.uniform (BEiT's draw), the bounds may come in either order.
            area = cfg.min_patches + (remaining - cfg.min_patches) * rng.random()
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (1 <= h < height and 1 <= w < width):
                continue
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            window = chosen[top : top + h, left : left + w]
            new = h * w - int(window.sum())
            if 0 < new <= remaining:
                window[...] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return chosen


def _exactly(visible: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Add (or drop) random tokens until exactly `k` are visible; the flat indices, sorted."""
    flat = visible.reshape(-1).copy()
    shown, hidden = np.flatnonzero(flat), np.flatnonzero(~flat)
    if len(shown) < k:
        flat[rng.choice(hidden, size=k - len(shown), replace=False)] = True
    elif len(shown) > k:
        flat[rng.choice(shown, size=len(shown) - k, replace=False)] = False
    return np.flatnonzero(flat)


def visible_map(grid: tuple[int, int], cfg: MaskingConfig, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of the K visible tokens of one image."""
    n = grid[0] * grid[1]
    k = num_visible(n, cfg.ratio, cfg.scheme)
    if cfg.scheme == "none":
        return np.arange(n)
    if cfg.scheme == "random":
        return np.sort(rng.permutation(n)[:k])
    if cfg.scheme == "reversed_blockwise":
        return _exactly(_blocks(grid, k, cfg, rng), k, rng)
    return _exactly(~_blocks(grid, n - k, cfg, rng), k, rng)  # blockwise: the blocks are masked


def sample_visible(
    batch_size: int,
    grid: tuple[int, int],
    cfg: MaskingConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Visible token indices, long [B, K], each row sorted ascending (row-major flat grid indices)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if min(grid) < 1:
        raise ValueError(f"the token grid must be at least 1 x 1, got {grid}")
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    rng = np.random.default_rng(seed)
    rows = np.stack([visible_map(grid, cfg, rng) for _ in range(batch_size)])
    return torch.as_tensor(rows, dtype=torch.long, device=device)


def visibility_frequency(
    grid: tuple[int, int], cfg: MaskingConfig, draws: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """P(visible) per grid position over `draws` masks, float [H, W] (the spec's centre/corner figure)."""
    keep = sample_visible(draws, grid, cfg, generator=generator)
    counts = torch.zeros(grid[0] * grid[1])
    counts.index_add_(0, keep.reshape(-1), torch.ones(keep.numel()))
    return (counts / draws).reshape(grid)
