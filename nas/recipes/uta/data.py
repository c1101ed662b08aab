"""What the UTA stages read: the typed params (`Context`), the training pairs, the held-out images."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.recipes.uta.card import UTASection, effective_loader, effective_student, read_section


@dataclass
class Context:
    """What every UTA stage reads from the resolved params."""

    raw: dict[str, Any]
    data: Any  # DataConfig
    section: UTASection
    seed: int


def read_context(cfg: dict[str, Any]) -> Context:
    from nas.config import from_dict
    from nas.config.data import DataConfig

    data = from_dict(DataConfig, cfg["data"], "data")
    section = read_section(cfg)
    student = effective_student(section.student.model)
    if student["image_size"] != data.transform.image_size:
        raise ValueError(
            f"uta.student.model.overrides.image_size={student['image_size']} differs from "
            f"data.transform.image_size={data.transform.image_size} (the images the loader produces)"
        )
    return Context(cfg, data, section, int(cfg["seed"]))


def stage_context(cfg: dict[str, Any]) -> Context:
    """`read_context` for a stage: also sets torch's intra-op threads (uta.torch_threads)."""
    ctx = read_context(cfg)
    if ctx.section.torch_threads is not None:
        import torch

        torch.set_num_threads(ctx.section.torch_threads)
    return ctx


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON, written atomically (a later stage never reads half a file)."""
    from nas.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


# ---- training pairs -----------------------------------------------------------------------------------


class MemoizedImages:
    """`CaptionDataset` items whose transformed image is decoded once per image and then kept
    (deterministic transform only: the evaluation resize). Same item layout as CaptionDataset."""

    def __init__(self, pairs: Any) -> None:
        self.pairs = pairs
        self.images: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        image_name, caption = self.pairs.pairs[index]
        image_id = self.pairs.image_ids[image_name]
        if image_id not in self.images:
            item = self.pairs[index]
            if item is None:  # a skipped bad image (counted by the collate)
                return None
            self.images[image_id] = item["image"]
        return {"image": self.images[image_id], "caption": caption, "index": index, "image_id": image_id}


def pair_loader(
    ctx: Context, train_file: str | None, loader_overrides: dict[str, Any], where: str, context: int
):
    """Shuffled (image, BPE caption) batches of `train_file` (default: data.train_file)."""
    from nas.data.bpe_tokenizer import BpeTokenizer, make_bpe_collate
    from nas.data.captions import CaptionDataset
    from nas.data.loader import build_loader
    from nas.data.transforms import build_eval_transform, build_train_transform
    from nas.recipes.stage import preflight_once

    data = ctx.data
    memoize = ctx.section.memoize_images
    transform = (build_eval_transform if memoize else build_train_transform)(data.transform)
    pairs = CaptionDataset(
        data.path(train_file or data.train_file),
        data.images,
        transform,
        skip_bad_images=data.skip_bad_images,
        max_words=data.max_words,
        allow_outside_root=data.allow_outside_root,
    )
    preflight_once(pairs, data)
    dataset = MemoizedImages(pairs) if memoize else pairs
    loader_cfg = effective_loader(ctx.raw, loader_overrides, where)
    return build_loader(dataset, loader_cfg, make_bpe_collate(BpeTokenizer(context)), shuffle=True)


# ---- held-out images ----------------------------------------------------------------------------------


def decode_images(data: Any, paths: list[str]):
    """Images (paths relative to data.root/image_root) with the evaluation transform, [N, 3, S, S]: the
    library's one image stacker (`nas.data.captions.stack_images`, as `build_vd.load_split_images`)."""
    from nas.data.captions import stack_images
    from nas.data.transforms import build_eval_transform

    return stack_images(
        data.images,
        paths,
        build_eval_transform(data.transform),
        data.root,
        allow_outside_root=data.allow_outside_root,
    )


@dataclass
class HeldOut:
    """The evaluation data, decoded once: held-out images and labels, probe-training images."""

    images: Any  # [N, 3, S, S]
    labels: dict[str, list]
    zero_shot_rows: list[int]  # single-object scenes (the prompts name one object)
    probe_images: Any
    probe_labels: dict[str, list]


def held_out(ctx: Context, with_probe_images: bool = True) -> HeldOut:
    from nas.evaluation.scene_attributes import load_split_attributes
    from nas.evaluation.zero_shot import single_object_rows

    ev = ctx.section.evaluation
    paths, labels = load_split_attributes(ctx.data.root, ev.split)
    probe_images, probe_labels = None, {}
    if with_probe_images:
        train_paths, train_labels = load_split_attributes(ctx.data.root, "train")
        limit = ev.probe_train_images or len(train_paths)
        probe_images = decode_images(ctx.data, train_paths[:limit])
        probe_labels = {name: values[:limit] for name, values in train_labels.items()}
    rows = single_object_rows(labels["count"])
    return HeldOut(decode_images(ctx.data, paths), labels, rows, probe_images, probe_labels)
