"""Scoring every (image, text) pair with a model's evaluation API (`encode_image`, `encode_text`,
`itm_logits`): the ITM match probability and the ITC cosine, with the evaluation scorers' arithmetic
(`nas.evaluation.model_scorers`). `ALBEF.score` (and so NAS's) calls `score_pairs`; `nas.inference`
re-exports both names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn


class PairScores(NamedTuple):
    """Scores of every (image, text) pair: row i = image i, column j = text j (float64, on the CPU)."""

    itm: torch.Tensor  # ITM match probability softmax(itm_logits)[:, 1]: the evaluation's default scorer
    itc: torch.Tensor  # ITC cosine of the L2-normalised [CLS] projections (no temperature)


def _text_inputs(texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(texts, Mapping) and "input_ids" in texts and "attention_mask" in texts:
        return texts["input_ids"], texts["attention_mask"]
    if (
        isinstance(texts, (tuple, list))
        and len(texts) == 2
        and all(isinstance(t, torch.Tensor) for t in texts)
    ):
        return texts[0], texts[1]
    raise TypeError(
        "texts must be the tokenizer's output {'input_ids', 'attention_mask'} (or the pair of tensors); "
        "tokenize captions first: model.score(images, tokenizer(captions))"
    )


def text_lengths(attention_mask: torch.Tensor) -> list[int]:
    """Per row, its last non-padding position + 1 (at least 1): where the row may be cut."""
    positions = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    return (attention_mask.bool() * positions).amax(dim=1).clamp(min=1).tolist()


def pad_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack `[L_i, ...]` tensors into `[B, max L_i, ...]`, zero-filled past each row."""
    width = max(row.shape[0] for row in rows)
    out = rows[0].new_zeros((len(rows), width, *rows[0].shape[1:]))
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def itm_functions(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, Callable]:
    """(the per-image ITM token function or None, the pair function). A model that splits ITM into
    `itm_image_tokens` + `fused_itm_logits` (ALBEF, NAS: its VD tokens) gets its ITM image tokens once
    per image rather than once per pair; `itm_logits` is exactly their composition."""
    if hasattr(model, "itm_image_tokens") and hasattr(model, "fused_itm_logits"):
        return model.itm_image_tokens, model.fused_itm_logits
    return None, model.itm_logits


TextRow = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (tokens [L, H], ITC feature [E], mask [L])


@torch.no_grad()
def encode_text_rows(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int
) -> list[TextRow]:
    """Per tokenised text, (its tokens up to its last non-padding position, its ITC feature, its
    attention mask up to there). Encoded longest first in batches of `batch_size`, each batch cut to
    its longest text: the padding is masked out of every attention, so only float rounding differs
    from encoding the full padded width (within 1e-6 on the tiny profile)."""
    device = _device_dtype(model)[0]
    lengths = text_lengths(attention_mask)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[Any] = [None] * len(lengths)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = lengths[rows[0]]
        mask = attention_mask[rows, :width].to(device)
        tokens, feats = model.encode_text(input_ids[rows, :width].to(device), mask)
        aligned = tokens.dim() >= 2 and tokens.shape[1] == width  # else keep the rows as they come
        for j, i in enumerate(rows):
            row_tokens = tokens[j, : lengths[i]].clone() if aligned else tokens[j].clone()
            out[i] = (row_tokens, feats[j].clone(), mask[j, : lengths[i]].clone())
    return out


@torch.no_grad()
def itm_pair_logits(
    pair_function: Callable[..., torch.Tensor],
    image_tokens: Sequence[torch.Tensor],
    texts: Sequence[TextRow],
    batch_size: int,
) -> list[torch.Tensor]:
    """ITM logits (float64 [2]) of the pairs `(image_tokens[i], texts[i])` (ITM image tokens,
    `encode_text_rows` rows): in batches of `batch_size` pairs, longest texts first, each batch's texts
    padded to its longest."""
    order = sorted(range(len(texts)), key=lambda i: -texts[i][2].shape[0])
    out: list[Any] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        logits = pair_function(
            torch.stack([image_tokens[i] for i in rows]),
            pad_rows([texts[i][0] for i in rows]),
            pad_rows([texts[i][2] for i in rows]),
        ).double()
        for j, i in enumerate(rows):
            out[i] = logits[j]
    return out


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


@torch.no_grad()
def score_pairs(model: nn.Module, images: Any, texts: Any, *, batch_size: int = 64) -> PairScores:
    """ITM match probability and ITC cosine of every (image, text) pair, `[n_images, n_texts]` each.

    `images`: preprocessed `[N, 3, H, W]` (or one `[3, H, W]`, or a list of them); `texts`: the
    tokenizer's output. The model runs in eval mode under no_grad (its mode is restored). The
    arithmetic is the evaluation scorers' (`nas.evaluation.model_scorers`), batch for batch: images
    encoded in batches of `batch_size`, texts by `encode_text_rows`, and the pairs (image-major) by
    `itm_pair_logits`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, (list, tuple)):
        images = torch.stack(list(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a tensor [N, 3, H, W] (preprocess(image) stacked), got {type(images).__name__}"
        )
    if images.dim() == 3:
        images = images.unsqueeze(0)
    input_ids, attention_mask = _text_inputs(texts)
    if input_ids.dim() == 1:
        input_ids, attention_mask = input_ids.unsqueeze(0), attention_mask.unsqueeze(0)
    for api in ("encode_image", "encode_text", "itm_logits"):
        if not hasattr(model, api):
            raise TypeError(f"{type(model).__name__} lacks `{api}`: scoring needs the ALBEF evaluation API")
    device, dtype = _device_dtype(model)
    itm_tokens_of, pair_function = itm_functions(model)

    was_training = model.training
    model.eval()
    try:
        image_itm, image_feat = [], []
        for start in range(0, len(images), batch_size):
            tok, feat = model.encode_image(images[start : start + batch_size].to(device=device, dtype=dtype))
            image_itm.extend(tok if itm_tokens_of is None else itm_tokens_of(tok))
            image_feat.append(feat)
        texts_rows = encode_text_rows(model, input_ids, attention_mask, batch_size)
        n_images, n_texts = len(image_itm), len(texts_rows)
        rows = [i for i in range(n_images) for _ in range(n_texts)]
        cols = [j for _ in range(n_images) for j in range(n_texts)]
        logits = itm_pair_logits(
            pair_function, [image_itm[i] for i in rows], [texts_rows[j] for j in cols], batch_size
        )
        itm = torch.softmax(torch.stack(logits), dim=-1)[:, 1]
        image_f = torch.cat(image_feat).double()
        text_f = torch.stack([row[1] for row in texts_rows]).double()
        itc = (image_f[rows] * text_f[cols]).sum(-1)
    finally:
        model.train(was_training)
    shape = (n_images, n_texts)
    return PairScores(itm.view(shape).cpu(), itc.view(shape).cpu())
