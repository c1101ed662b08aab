"""Image-text matching (ITM) with in-batch hard negatives (NAS_METHOD §2, ALBEF).

For each text one negative image is drawn from the local batch with probability ∝ softmax of its
text→image similarity, pairs showing the same image excluded; for each image a negative text
likewise. The fusion encoder's [CLS] goes through a 2-way head; the loss is the cross-entropy over
all rows. Rows come in blocks (`ITMBlock`), so a method can add its own negatives: ALBEF has 3B
rows (positives, text + negative image, negative text + image); NAS adds an NVA block (4B, §4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from nas.finite import check_finite

MATCH, NO_MATCH = 1, 0  # ITM class indices: column 1 of the head is "matched" (ALBEF)


class ITMBlock(NamedTuple):
    """Row-aligned (image, text) pairs that share one label."""

    image_tokens: torch.Tensor  # [N, 1 + L, D] image tokens as ITM sees them
    text_tokens: torch.Tensor  # [N, T, H] text-encoder output
    attention_mask: torch.Tensor  # [N, T]
    label: int  # MATCH or NO_MATCH


def negative_weights(sim: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """Row-wise sampling weights: softmax of `sim [B, B]` over the columns showing another image.

    The excluded columns are every column with the row's `image_id`, not only the diagonal. [D] This
    is ALBEF's *fine-tuning* rule (and [A]'s: "in-batch ITM negatives exclude captions of the same
    image"); ALBEF's *pretraining* zeroes the diagonal only. The two are equal whenever the ids of a
    batch are unique (web-scale pretraining, where a repeated image in one batch is rare). Where a
    batch holds several captions of one image — the synthetic default has two per image, COCO five
    — the diagonal rule would draw the same image as a "negative" for its own caption's twin and
    teach ITM to reject a true match, so the harness excludes by id in every stage.

    Renormalised as ALBEF's softmax-then-zero (which `multinomial` does), but computed with the
    excluded columns at −inf so that a very confident row cannot underflow to all zeros.
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1] or image_ids.shape != sim.shape[:1]:
        raise ValueError(
            f"negative_weights: sim must be [B, B] and image_ids [B]; got {tuple(sim.shape)}, "
            f"{tuple(image_ids.shape)}"
        )
    same_image = image_ids[:, None] == image_ids[None, :]
    lonely = same_image.all(dim=1)
    if bool(lonely.any()):
        row = int(lonely.nonzero()[0])
        raise ValueError(
            f"ITM hard negatives: batch row {row} (image_id {int(image_ids[row])}) has no other image in "
            f"the batch to pair with; batches need at least two distinct image_ids"
        )
    return F.softmax(sim.float().masked_fill(same_image, float("-inf")), dim=1)


def _multinomial(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row; runs on the generator's device when one is given."""
    device = weights.device if generator is None else generator.device
    return torch.multinomial(weights.to(device), 1, generator=generator).squeeze(1).to(weights.device)


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices `(negative image per text [B], negative text per image [B])` into the local batch.

    `sim_i2t`, `sim_t2i`: `[B, B]` in-batch similarities (ALBEF uses the ITC logits' first B columns).
    """
    # Exploding weights show up here first (multinomial would fail naming nothing): stop by name.
    weights_t2i = check_finite(
        negative_weights(sim_t2i, image_ids), "ITM hard-negative image weights (text→image)"
    )
    weights_i2t = check_finite(
        negative_weights(sim_i2t, image_ids), "ITM hard-negative text weights (image→text)"
    )
    negative_image_per_text = _multinomial(weights_t2i, generator)
    negative_text_per_image = _multinomial(weights_i2t, generator)
    return negative_image_per_text, negative_text_per_image


@dataclass
class HardNegativeSchedule:
    """[D] A curriculum for ALBEF's in-batch ITM negatives (not in ALBEF or NAS; the defaults are ALBEF).

    Each row's negative is drawn either ALBEF's way (∝ softmax of the ITC similarity, "hard") or
    uniformly over the batch's other images ("easy"); the share of hard rows is 0 for the first
    `uniform_steps` training steps, rises linearly to `final_hard_fraction` over the next `ramp_steps`,
    and stays there.

    Why (measured on the embedded default, issue 12): a fusion encoder trained from scratch on hard
    negatives alone never leaves ITM's prior (0.636 = H(1/3) after 135, 210 and 672 steps), because
    the negatives ITC picks differ from the positive only in what ITC cannot tell apart yet: the
    fusion gets no gradient it can follow. With uniform negatives the same model reaches 0.29 in 135
    steps. At paper scale, a BERT-initialised fusion encoder does not need this (the defaults).
    """

    uniform_steps: int = 0
    ramp_steps: int = 0
    final_hard_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.uniform_steps < 0 or self.ramp_steps < 0:
            raise ValueError(
                f"uniform_steps and ramp_steps must be >= 0, got {self.uniform_steps}, {self.ramp_steps}"
            )
        if not 0.0 <= self.final_hard_fraction <= 1.0:
            raise ValueError(f"final_hard_fraction must be in [0, 1], got {self.final_hard_fraction}")

    def hard_fraction(self, step: int) -> float:
        """The share of hard-negative rows at training step `step` (0-based count of steps taken)."""
        if step < self.uniform_steps:
            return 0.0
        if self.ramp_steps == 0:
            return self.final_hard_fraction
        progress = min(1.0, (step - self.uniform_steps + 1) / self.ramp_steps)
        return self.final_hard_fraction * progress


@torch.no_grad()
def sample_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    hard_fraction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_hard_negatives`, with each row's draw uniform over the other images instead with
    probability `1 - hard_fraction` (`HardNegativeSchedule`). At 1.0 it is `sample_hard_negatives`,
    draw for draw (no extra random numbers are taken)."""
    if hard_fraction >= 1.0:
        return sample_hard_negatives(sim_i2t, sim_t2i, image_ids, generator)
    uniform = sample_hard_negatives(
        torch.zeros_like(sim_i2t), torch.zeros_like(sim_t2i), image_ids, generator
    )
    if hard_fraction <= 0.0:
        return uniform
    hard = sample_hard_negatives(sim_i2t, sim_t2i, image_ids, generator)
    device = sim_i2t.device if generator is None else generator.device
    pick = torch.rand(2, sim_i2t.shape[0], generator=generator, device=device).to(sim_i2t.device)
    pick = pick < hard_fraction
    return (
        torch.where(pick[0], hard[0], uniform[0]),
        torch.where(pick[1], hard[1], uniform[1]),
    )


def select_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`tensor[index]` along dim 0 with a backward that sums repeated rows in a fixed order.

    An image drawn as hard negative by several texts appears several times in `index`, so the
    backward accumulates several gradients into one row. `tensor[index]`'s backward is
    `index_put_(accumulate=True)`, which on CPU adds with atomic floats when more than one thread
    runs (unless deterministic algorithms are on): the sum order, and so the last bits of the
    gradient, change from run to run. `index_select`'s backward (`index_add_`) accumulates serially
    on CPU. On CUDA it is the other way round: `index_add_` is atomic and `tensor[index]`'s
    accumulate is sort-based and deterministic. Same values forward, either way.
    """
    if tensor.device.type == "cuda":
        return tensor[index]
    return tensor.index_select(0, index)


def hard_negative_blocks(
    image_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    negative_image_per_text: torch.Tensor,
    negative_text_per_image: torch.Tensor,
) -> list[ITMBlock]:
    """ALBEF's two negative blocks: (text, its sampled image) and (sampled text, the image)."""
    return [
        ITMBlock(select_rows(image_tokens, negative_image_per_text), text_tokens, attention_mask, NO_MATCH),
        ITMBlock(
            image_tokens,
            select_rows(text_tokens, negative_text_per_image),
            attention_mask[negative_text_per_image],
            NO_MATCH,
        ),
    ]


def concat_blocks(
    blocks: Sequence[ITMBlock],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack blocks into `(image_tokens, text_tokens, attention_mask, labels [N])` for one fusion pass."""
    if not blocks:
        raise ValueError("concat_blocks: no ITM blocks")
    device = blocks[0].text_tokens.device
    labels = torch.cat(
        [torch.full((b.text_tokens.shape[0],), b.label, dtype=torch.long, device=device) for b in blocks]
    )
    return (
        torch.cat([b.image_tokens for b in blocks]),
        torch.cat([b.text_tokens for b in blocks]),
        torch.cat([b.attention_mask for b in blocks]),
        labels,
    )


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `[N, 2]` ITM logits against labels (1 = matched)."""
    return F.cross_entropy(logits, labels)
