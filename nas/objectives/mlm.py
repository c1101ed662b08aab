"""Masked language modelling (MLM) conditioned on the image, with momentum distillation (§2).

Masking follows BERT/ALBEF: each token is selected with probability 0.15 (never [PAD]/[CLS]/[SEP]);
a selected token becomes [MASK] with probability 0.8, a uniformly random token with 0.1, and stays
itself otherwise. Only selected tokens carry a label. The loss is
`(1 − α) · CE(logits, token) + α · CE(logits, softmax(momentum logits))` over the selected
positions; callers compute the vocabulary head on those positions only (same loss, far cheaper).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nas.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID  # bert-base-uncased ids, defined once

IGNORE_INDEX = -100  # label of an unselected position (PyTorch's cross_entropy default)
# BERT / ALBEF masking probabilities [B].
MASK_PROBABILITY, REPLACE_PROBABILITY, RANDOM_PROBABILITY = 0.15, 0.8, 0.1
# ALBEF masks neither [PAD] nor [CLS]; we also keep [SEP] (task brief; BERT's own recipe does too).
PROTECTED_IDS = (PAD_ID, CLS_ID, SEP_ID)


def _uniform(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = like.device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    vocab_size: int,
    mask_probability: float = MASK_PROBABILITY,
    replace_probability: float = REPLACE_PROBABILITY,
    random_probability: float = RANDOM_PROBABILITY,
    mask_token_id: int = MASK_ID,
    protected_ids: Sequence[int] = PROTECTED_IDS,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(masked input_ids, labels)`: labels hold the original id at selected positions, −100 elsewhere.

    `replace_probability` and `random_probability` are conditional on selection; the remainder
    `1 − replace − random` keeps the token. Draws from `generator` (torch's global RNG when None).
    """
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    if replace_probability < 0 or random_probability < 0 or replace_probability + random_probability > 1.0:
        raise ValueError(
            f"replace_probability ({replace_probability}) and random_probability ({random_probability}) "
            "must be >= 0 and sum to at most 1"
        )
    protected = torch.isin(input_ids, torch.tensor(list(protected_ids), device=input_ids.device))
    selected = (_uniform(input_ids.shape, input_ids, generator) < mask_probability) & ~protected
    action = _uniform(input_ids.shape, input_ids, generator)
    to_mask = selected & (action < replace_probability)
    to_random = (
        selected & (action >= replace_probability) & (action < replace_probability + random_probability)
    )
    device = input_ids.device if generator is None else generator.device
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device).to(input_ids)

    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def mlm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    momentum_logits: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """`(1 − α) · CE(logits, targets) + α · CE(logits, softmax(momentum_logits))`, mean over positions.

    `logits`, `momentum_logits`: `[M, V]` at the M selected positions; `targets`: `[M]` token ids.
    With no selected position (possible on tiny batches) the loss is a graph-connected zero, not NaN.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    hard = F.cross_entropy(logits, targets)
    if momentum_logits is None or alpha == 0.0:
        return hard
    soft_targets = F.softmax(momentum_logits, dim=-1)
    soft = -(soft_targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    return (1.0 - alpha) * hard + alpha * soft
