"""Tiny UTA models and data shared by the tests (CPU, well under a second each)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from nas.models.clip_teacher import ClipTeacher, TinyClipConfig, build_open_clip
from nas.models.registry import create_model

TEACHER = dict(
    embed_dim=16,
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_head_width=16,
    context_length=8,
    text_width=32,
    text_layers=1,
    text_heads=2,
    vocab_size=64,
)
STUDENT = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, teacher_dim=16)


def tiny_teacher(seed: int = 0, **overrides) -> ClipTeacher:
    torch.manual_seed(seed)
    return ClipTeacher(build_open_clip(TinyClipConfig(**{**TEACHER, **overrides}).open_clip_config()))


def tiny_student(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_model("uta_tiny", **{**STUDENT, **overrides})


def toy_items(n: int = 12, size: int = 32, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    ids = torch.randint(1, 63, (n, 8), generator=g)
    return [{"image": images[i], "image_id": i, "input_ids": ids[i]} for i in range(n)]


def collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "image_id": torch.tensor([item["image_id"] for item in items]),
        "input_ids": torch.stack([item["input_ids"] for item in items]),
        "num_skipped": 0,
    }


def toy_loader(n: int = 12, batch_size: int = 4) -> DataLoader:
    return DataLoader(toy_items(n), batch_size=batch_size, shuffle=True, collate_fn=collate, drop_last=True)
