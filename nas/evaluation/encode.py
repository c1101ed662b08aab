"""Load a trained checkpoint for evaluation and embed images/texts in batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nas.config import from_dict


def load_trained_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a stage trained (from its recorded config) and load its weights."""
    from nas.config.stages import ModelSpec
    from nas.engine.checkpoint import read_checkpoint
    from nas.models.registry import create_model

    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {run_dir} is not the output of a training stage")
    cfg = json.loads(config_file.read_text())
    spec = from_dict(ModelSpec, cfg["model"], f"{config_file}:model")
    model = create_model(spec.name, **spec.overrides)
    state = read_checkpoint(run_dir / "checkpoint.pt")
    if "model" not in state:
        raise KeyError(f"{run_dir / 'checkpoint.pt'} holds no 'model' entry (it has {sorted(state)})")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


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
