"""Embed images and texts in batches (a run's model is reloaded by `nas.engine.run.load_run`)."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def embed_images(model, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.encode_image` over preprocessed `images` [N, 3, H, W] in batches."""
    device = next(model.parameters()).device
    tokens, feats = [], []
    for start in range(0, len(images), batch_size):
        tok, feat = model.encode_image(images[start : start + batch_size].to(device))
        tokens.append(tok)
        feats.append(feat)
    return torch.cat(tokens), torch.cat(feats)


@torch.no_grad()
def embed_texts(model, texts: list[str], tokenizer, max_length: int, batch_size: int) -> dict[str, Any]:
    device = next(model.parameters()).device
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    tokens, feats = [], []
    for start in range(0, len(texts), batch_size):
        tok, feat = model.encode_text(ids[start : start + batch_size], mask[start : start + batch_size])
        tokens.append(tok)
        feats.append(feat)
    return {"tokens": torch.cat(tokens), "feat": torch.cat(feats), "attention_mask": mask}
