"""MUG's data: the training captions checked once (census), the training loader, the held-out pairs and
the evaluation inputs every run is scored on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.recipes.mug.card import MUGSection, effective_model


def caption_tokenizer(section: MUGSection):
    """The CLIP BPE tokenizer at the caption decoder's context (every arm shares it)."""
    from nas.data.bpe_tokenizer import BpeTokenizer

    context = section.arm_model(next(iter(section.arms)))
    return BpeTokenizer(effective_model(context)["caption"]["context_length"])


def caption_census(annotation: Path, tokenizer: Any, policy: str, out_dir: Path) -> dict[str, Any]:
    """Read the pairs file, apply the empty-caption policy, tokenize every caption once.

    Returns {"annotation": the file to train on (a filtered copy when captions were skipped),
    "pairs", "empty_skipped", "truncated", "bpe_ids" (sorted distinct ids, SOT/EOT included),
    "targets" (every teacher-forced label id, EOT included: the unigram baseline's data)}.
    """
    from nas.atomic import atomic_write_text
    from nas.data.bpe_tokenizer import EmptyCaptionError

    records = json.loads(annotation.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{annotation}: expected a JSON list of records")
    kept_records, skipped, truncated = [], [], 0
    ids: set[int] = set()
    targets: list[int] = []
    for index, record in enumerate(records):
        captions = record.get("caption") if isinstance(record, dict) else None
        single = isinstance(captions, str)
        captions = [captions] if single else captions
        if not isinstance(captions, list):
            raise ValueError(f"{annotation}, record {index}: 'caption' must be a string or a list of strings")
        good = []
        for k, caption in enumerate(captions):
            where = f"{annotation}, record {index}" + ("" if single else f", caption {k}")
            try:
                encoded = tokenizer.encode([caption])
            except EmptyCaptionError as exc:
                if policy == "error":
                    raise EmptyCaptionError(
                        f"{where}: empty or whitespace-only caption {caption!r} (set mug.empty_captions: "
                        "skip to drop and count such captions)"
                    ) from exc
                skipped.append(where)
                continue
            good.append(caption)
            truncated += int(encoded.truncated[0])
            row = encoded.input_ids[0][encoded.attention_mask[0].bool()].tolist()
            ids.update(row)
            targets.extend(row[1:])
        if good:
            kept_records.append({**record, "caption": good[0] if single else good})
    train_file = annotation
    if skipped:
        train_file = out_dir / f"{annotation.stem}.nonempty.json"
        atomic_write_text(train_file, json.dumps(kept_records) + "\n")
    pairs = sum(1 if isinstance(r["caption"], str) else len(r["caption"]) for r in kept_records)
    return {
        "annotation": str(train_file),
        "pairs": pairs,
        "empty_skipped": len(skipped),
        "empty_skipped_where": skipped[:20],
        "truncated": truncated,
        "bpe_ids": sorted(ids),
        "targets": targets,
    }


def build_train_loader(typed: dict[str, Any], annotation: str, tokenizer: Any):
    from nas.data.bpe_tokenizer import make_bpe_collate
    from nas.data.captions import CaptionDataset
    from nas.data.loader import build_loader
    from nas.data.transforms import build_train_transform
    from nas.recipes.stage import preflight_once

    data = typed["data"]
    dataset = CaptionDataset(
        annotation,
        data.images,
        build_train_transform(typed["transform"]),
        skip_bad_images=data.skip_bad_images,
        allow_outside_root=data.allow_outside_root,
        max_words=None,  # the CLIP tokenizer cleans the text itself; too-long captions are cut and counted
    )
    preflight_once(dataset, data)
    return build_loader(dataset, typed["loader"], make_bpe_collate(tokenizer), shuffle=True)


def heldout_set(typed: dict[str, Any], tokenizer: Any, transform) -> dict[str, Any]:
    """Held-out pairs (distinct images once, every caption) for the MSE and the caption CE."""
    import torch

    from nas.data.captions import load_pairs, stack_images

    data, split = typed["data"], typed["section"].evaluate.heldout
    annotation = data.path(data.val_file if split == "val" else data.test_file)
    pairs = load_pairs(annotation, max_words=None)
    index: dict[str, int] = {}
    rows = [index.setdefault(image, len(index)) for image, _ in pairs]
    encoded = tokenizer.encode([caption for _, caption in pairs])
    return {
        "images": stack_images(
            data.images, list(index), transform, data.root, allow_outside_root=data.allow_outside_root
        ),
        "rows": torch.tensor(rows),
        "input_ids": encoded.input_ids,
        "attention_mask": encoded.attention_mask,
        "file": str(annotation),
    }


def shared_inputs(typed: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """What every run is scored on, loaded once: images, labels, scenes, held-out pairs."""
    from nas.data.captions import stack_images
    from nas.data.transforms import build_eval_transform
    from nas.evaluation.captioning import CaptionVocabulary
    from nas.evaluation.scene_attributes import load_split_attributes
    from nas.jsonfile import read_json_file

    data, ev = typed["data"], typed["section"].evaluate
    transform = build_eval_transform(typed["transform"])
    train_paths, train_labels = load_split_attributes(data.root, "train")
    if ev.probe_train_images is not None:
        train_paths = train_paths[: ev.probe_train_images]
        train_labels = {name: values[: ev.probe_train_images] for name, values in train_labels.items()}
    test_paths, test_labels = load_split_attributes(data.root, "test")
    test_images = stack_images(
        data.root, test_paths, transform, data.root, allow_outside_root=data.allow_outside_root
    )
    scenes = read_json_file(Path(data.root) / "test_scenes.json", expect=list, missing="run the `data` stage")
    count = len(test_paths) if ev.caption_images is None else min(ev.caption_images, len(test_paths))
    return {
        "tokenizer": tokenizer,
        "eval_transform": transform,
        "train_images": stack_images(
            data.root, train_paths, transform, data.root, allow_outside_root=data.allow_outside_root
        ),
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
        "test_paths": test_paths,
        "caption_images": test_images[:count],
        "caption_scenes": scenes[:count],
        "vocab": CaptionVocabulary.from_synthetic(data.synthetic),
        "heldout": heldout_set(typed, tokenizer, transform),
        "probes_root": data.probes_root,
    }
