"""UTA's objective: `1 - cos` between the student's projected tokens and the frozen teacher's tokens.

MUG_UTA.md §2 "Decisions": the loss is averaged over the CLS token and the visible patch tokens,
computed in fp32 (also under bf16 autocast); the teacher's tokens are taken after its final norm and
projection. When the teacher's patch grid differs from the student's (a B/16 student under a /14
teacher), the teacher's patch-token map is resampled to the student's grid before the visible
tokens are picked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cosine per token, fp32, [B, T] for [B, T, D] inputs of the same shape."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student tokens {tuple(student.shape)} and teacher tokens {tuple(teacher.shape)} differ"
        )
    with torch.autocast(device_type=student.device.type, enabled=False):
        return F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)


def alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of `1 - cos` over every token of every image (CLS + visible patches), a fp32 scalar."""
    return (1.0 - token_cosine(student, teacher)).mean()


def gather_tokens(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """CLS plus the kept patch tokens: [B, 1 + N, D] and keep [B, K] -> [B, 1 + K, D]."""
    if keep.ndim != 2 or keep.shape[0] != tokens.shape[0]:
        raise ValueError(f"keep must be [B, K] with B={tokens.shape[0]}, got {tuple(keep.shape)}")
    patches = tokens[:, 1:]
    index = keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    return torch.cat([tokens[:, :1], torch.gather(patches, 1, index)], dim=1)


def resample_token_grid(
    tokens: torch.Tensor, from_grid: tuple[int, int], to_grid: tuple[int, int]
) -> torch.Tensor:
    """[B, 1 + Hf*Wf, D] -> [B, 1 + Ht*Wt, D]: the patch-token map resized bilinearly, CLS kept.

    Identity when the grids agree (the CPU profile uses equal patch sizes).
    """
    from_grid, to_grid = tuple(from_grid), tuple(to_grid)
    if tokens.shape[1] != 1 + from_grid[0] * from_grid[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not fit CLS + a {from_grid} grid")
    if from_grid == to_grid:
        return tokens
    b, _, d = tokens.shape
    grid = tokens[:, 1:].transpose(1, 2).reshape(b, d, *from_grid).float()
    resized = F.interpolate(grid, size=to_grid, mode="bilinear", align_corners=False, antialias=True)
    patches = resized.reshape(b, d, -1).transpose(1, 2).to(tokens.dtype)
    return torch.cat([tokens[:, :1], patches], dim=1)
