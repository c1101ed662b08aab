"""Image-text contrastive loss (ITC) with a feature queue and momentum distillation (NAS_METHOD §2).

Each image is scored against the batch's momentum text features plus the text queue (and each text
against images likewise) at a learnable temperature τ (init 0.07, clamped to [0.001, 0.5] [B]).
Targets are `α · softmax(s_m / τ) + (1 − α) · positives`, where `s_m` are the momentum model's
similarities and `positives` is the one-hot diagonal (ALBEF pretraining) or, with `match_ids`,
every column with the same image id, normalised per row (ALBEF's retrieval fine-tuning). The loss
is the mean of the image→text and text→image cross-entropies.

Only the momentum features of all ranks enter the queue (all-gather); the loss itself uses the
local batch and the queue, as in ALBEF.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nas.distributed import all_gather_cat
from nas.objectives.queue import FeatureQueue

# ALBEF's temperature: initial value (config `temp: 0.07`) and the clamp applied every step [B].
TEMP_INIT = 0.07
TEMP_MIN, TEMP_MAX = 0.001, 0.5


class ITCOutput(NamedTuple):
    loss: torch.Tensor
    sim_i2t: torch.Tensor  # [B, B + K] image -> (batch + queued) texts, divided by τ; has gradient
    sim_t2i: torch.Tensor  # [B, B + K]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of `−Σ_j targets_ij · log_softmax(logits)_ij` (targets rows sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def positive_targets(
    batch_size: int,
    total: int,
    ids: torch.Tensor | None = None,
    all_ids: torch.Tensor | None = None,
    *,
    device: torch.device | None = None,
) -> torch.Tensor:
    """`[B, total]` targets: the diagonal one-hot, or (with ids) all same-id columns normalised per row."""
    if ids is None:
        return torch.eye(batch_size, total, device=device)
    if all_ids is None or all_ids.shape != (total,):
        raise ValueError(f"positive_targets: all_ids must have shape ({total},)")
    same = (ids[:, None] == all_ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def distillation_targets(
    momentum_logits: torch.Tensor, positives: torch.Tensor, alpha: float
) -> torch.Tensor:
    """`α · softmax(momentum_logits) + (1 − α) · positives` (ALBEF's momentum distillation)."""
    if alpha == 0.0:
        return positives
    return alpha * F.softmax(momentum_logits, dim=1) + (1.0 - alpha) * positives


class ContrastiveLoss(nn.Module):
    """ITC: the learnable temperature, the image and text queues, and the loss."""

    def __init__(
        self,
        embed_dim: int,
        queue_size: int,
        *,
        temp: float = TEMP_INIT,
        match_ids: bool = False,
        gather: Callable[[torch.Tensor], torch.Tensor] = all_gather_cat,
    ) -> None:
        super().__init__()
        if not TEMP_MIN <= temp <= TEMP_MAX:
            raise ValueError(f"temp must be in [{TEMP_MIN}, {TEMP_MAX}], got {temp}")
        self.temp = nn.Parameter(torch.tensor(float(temp)))
        self.match_ids = match_ids
        self.gather = gather  # injectable: tests fake a world size > 1 on one process
        self.image_queue = FeatureQueue(queue_size, embed_dim, track_ids=match_ids)
        self.text_queue = FeatureQueue(queue_size, embed_dim, track_ids=match_ids)

    def forward(
        self,
        image_feat: torch.Tensor,
        text_feat: torch.Tensor,
        image_feat_m: torch.Tensor,
        text_feat_m: torch.Tensor,
        *,
        alpha: float,
        ids: torch.Tensor | None = None,
    ) -> ITCOutput:
        """All features `[B, E]`, L2-normalised; `_m`: momentum model's (no gradient needed)."""
        if self.match_ids and ids is None:
            raise ValueError("ContrastiveLoss(match_ids=True) needs the batch's image ids")
        with torch.no_grad():
            self.temp.clamp_(TEMP_MIN, TEMP_MAX)
            # Clone: the queues change in place after this step's loss, before its backward pass.
            image_all = torch.cat([image_feat_m, self.image_queue.features.clone()])
            text_all = torch.cat([text_feat_m, self.text_queue.features.clone()])
            all_ids = torch.cat([ids, self.image_queue.ids.clone()]) if self.match_ids else None
            positives = positive_targets(
                image_feat.shape[0],
                image_all.shape[0],
                ids if self.match_ids else None,
                all_ids,
                device=image_feat.device,
            ).to(image_feat.dtype)
            targets_i2t = distillation_targets(image_feat_m @ text_all.t() / self.temp, positives, alpha)
            targets_t2i = distillation_targets(text_feat_m @ image_all.t() / self.temp, positives, alpha)
        sim_i2t = image_feat @ text_all.t() / self.temp
        sim_t2i = text_feat @ image_all.t() / self.temp
        loss = (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2
        return ITCOutput(loss, sim_i2t, sim_t2i)

    @torch.no_grad()
    def enqueue(
        self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor, ids: torch.Tensor | None = None
    ) -> None:
        """Push the momentum features of every rank (all-gathered, rank order) into the queues."""
        gathered_ids = self.gather(ids) if self.match_ids else None
        self.image_queue.enqueue(self.gather(image_feat_m), gathered_ids)
        self.text_queue.enqueue(self.gather(text_feat_m), gathered_ids)


def itc_with_negative_texts(
    itc: ContrastiveLoss,
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    image_feat_m: torch.Tensor,
    text_feat_m: torch.Tensor,
    negative_text_feat_m: torch.Tensor,
    *,
    alpha: float,
    ids: torch.Tensor | None = None,
) -> ITCOutput:
    """ITC of `itc` (its temperature and queues) with one extra negative text per image (NTA, §5).

    Image→text scores `[B, 2B + K]`: columns are the batch's momentum texts, the NTA captions' momentum
    texts, then the text queue; the NTA columns get target 0 except through momentum distillation (their
    share of `softmax(s_m / τ)`), like every other negative. Text→image is exactly `itc`'s. As in ALBEF,
    the columns are momentum features, so the gradient of the i2t term reaches the image side only.
    The queues are not touched here (the caller enqueues the batch's own features).
    """
    batch_size = image_feat.shape[0]
    if negative_text_feat_m.shape != text_feat_m.shape:
        raise ValueError(
            f"negative_text_feat_m must match text_feat_m {tuple(text_feat_m.shape)} (one negative caption per "
            f"pair), got {tuple(negative_text_feat_m.shape)}"
        )
    if itc.match_ids and ids is None:
        raise ValueError("ContrastiveLoss(match_ids=True) needs the batch's image ids")
    with torch.no_grad():
        itc.temp.clamp_(TEMP_MIN, TEMP_MAX)
        image_queue, text_queue = itc.image_queue.features.clone(), itc.text_queue.features.clone()
        image_all = torch.cat([image_feat_m, image_queue])
        text_all = torch.cat([text_feat_m, negative_text_feat_m, text_queue])
        match = itc.match_ids
        # Both queues hold the same ids (they are enqueued together), so one positive mask serves both sides.
        all_ids = torch.cat([ids, itc.image_queue.ids.clone()]) if match else None
        positives = positive_targets(
            batch_size, image_all.shape[0], ids if match else None, all_ids, device=image_feat.device
        ).to(image_feat.dtype)
        # The NTA columns never hold a positive, with or without id matching.
        no_match = positives.new_zeros(batch_size, batch_size)
        positives_i2t = torch.cat([positives[:, :batch_size], no_match, positives[:, batch_size:]], dim=1)
        targets_i2t = distillation_targets(image_feat_m @ text_all.t() / itc.temp, positives_i2t, alpha)
        targets_t2i = distillation_targets(text_feat_m @ image_all.t() / itc.temp, positives, alpha)
    sim_i2t = image_feat @ text_all.t() / itc.temp
    sim_t2i = text_feat @ image_all.t() / itc.temp
    loss = (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2
    return ITCOutput(loss, sim_i2t, sim_t2i)
