"""MAE random masking: which patch tokens the encoder sees, and how to put them back in grid order.

He et al. (2022), "Masked Autoencoders Are Scalable Vision Learners" [B]: per image, draw one uniform
noise value per patch, sort, keep the first K patches of the shuffle. `ids_restore` is the inverse
permutation, so a decoder can scatter the visible tokens and the mask tokens back to grid order.
MUG (MUG_UTA.md §1) feeds the latent of this masked view to both its branches.

Conventions (MAE's): `mask[b, i] = 1` for a masked (hidden) patch, 0 for a visible one, in grid
order; `ids_keep[b]` lists the visible patches in shuffle order. Randomness comes from `generator`
or, when None, the torch global RNG (which the training engine checkpoints, so resume is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per image: `N - round(r * N)` (MUG_UTA.md §3); at least one must remain."""
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = num_patches - round(mask_ratio * num_patches)
    if keep < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} hides all {num_patches} patches; lower it so that one stays visible"
        )
    return keep


@dataclass(frozen=True)
class MaskedView:
    """One masking draw for a batch. Shapes: ids_keep [B, K], ids_restore [B, N], mask [B, N]."""

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor

    @property
    def num_patches(self) -> int:
        return self.ids_restore.shape[1]

    def select(self, rows: slice | torch.Tensor) -> MaskedView:
        """The view of a subset of the batch's images."""
        return MaskedView(self.ids_keep[rows], self.ids_restore[rows], self.mask[rows])


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> MaskedView:
    """A fresh uniform random mask per image, exactly `num_visible(N, r)` patches visible in each."""
    keep = num_visible(num_patches, mask_ratio)
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :keep] = 0.0
    return MaskedView(ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore))


def no_masking(batch_size: int, num_patches: int, *, device: torch.device | str = "cpu") -> MaskedView:
    """The identity view: every patch visible, in grid order (evaluation, captioning, probes)."""
    ids = torch.arange(num_patches, device=device).expand(batch_size, num_patches)
    return MaskedView(ids, ids, torch.zeros(batch_size, num_patches, device=device))


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`tokens[b, ids[b, k]]` for every b, k: [B, N, D] tokens, [B, K] ids -> [B, K, D]."""
    if tokens.dim() != 3 or ids.dim() != 2 or ids.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"expected tokens [B, N, D] and ids [B, K], got {tuple(tokens.shape)}, {tuple(ids.shape)}"
        )
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def restore_order(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Visible tokens [B, K, D] (shuffle order) plus mask tokens for the rest, unshuffled to grid
    order [B, N, D]: position i holds the visible token of patch i, or `mask_token` if i was masked."""
    batch, keep, dim = visible.shape
    hidden = ids_restore.shape[1] - keep
    filler = mask_token.reshape(1, 1, dim).to(visible.dtype).expand(batch, hidden, dim)
    return gather_tokens(torch.cat([visible, filler], dim=1), ids_restore)
