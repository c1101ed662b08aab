"""Scoring every (image, text) pair with a model's evaluation API (`encode_image`, `encode_text`,
`itm_logits`): the ITM match probability and the ITC cosine, with the evaluation scorers' arithmetic
(`nas.evaluation.model_scorers`). `ALBEF.score` (and so NAS's) calls `score_pairs`; `nas.inference`
re-exports both names.
"""

from __future__ import annotations

from collections.abc import Mapping
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


@torch.no_grad()
def score_pairs(model: nn.Module, images: Any, texts: Any, *, batch_size: int = 64) -> PairScores:
    """ITM match probability and ITC cosine of every (image, text) pair, `[n_images, n_texts]` each.

    `images`: preprocessed `[N, 3, H, W]` (or one `[3, H, W]`, or a list of them); `texts`: the
    tokenizer's output. The model runs in eval mode under no_grad (its mode is restored). The
    arithmetic is the evaluation scorers' (`nas.evaluation.model_scorers`), batch for batch: images and
    texts encoded in batches of `batch_size`, then the pairs image-major in batches of `batch_size`."""
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
    parameter = next(model.parameters(), None)
    device, dtype = (
        (parameter.device, parameter.dtype) if parameter is not None else (torch.device("cpu"), torch.float32)
    )

    was_training = model.training
    model.eval()
    try:
        image_tokens, image_feat = [], []
        for start in range(0, len(images), batch_size):
            tok, feat = model.encode_image(images[start : start + batch_size].to(device=device, dtype=dtype))
            image_tokens.append(tok)
            image_feat.append(feat)
        text_tokens, text_feat = [], []
        for start in range(0, len(input_ids), batch_size):
            tok, feat = model.encode_text(
                input_ids[start : start + batch_size].to(device),
                attention_mask[start : start + batch_size].to(device),
            )
            text_tokens.append(tok)
            text_feat.append(feat)
        image_tok, image_f = torch.cat(image_tokens), torch.cat(image_feat)
        text_tok, text_f = torch.cat(text_tokens), torch.cat(text_feat)
        mask = attention_mask.to(device)
        n_images, n_texts = len(image_f), len(text_f)
        rows = torch.arange(n_images, device=device).repeat_interleave(n_texts)
        cols = torch.arange(n_texts, device=device).repeat(n_images)
        itm, itc = [], []
        for start in range(0, n_images * n_texts, batch_size):
            r, c = rows[start : start + batch_size], cols[start : start + batch_size]
            logits = model.itm_logits(image_tok[r], text_tok[c], mask[c])
            itm.append(torch.softmax(logits.double(), dim=-1)[:, 1])
            itc.append((image_f[r].double() * text_f[c].double()).sum(-1))
    finally:
        model.train(was_training)
    shape = (n_images, n_texts)
    return PairScores(torch.cat(itm).view(shape).cpu(), torch.cat(itc).view(shape).cpu())
