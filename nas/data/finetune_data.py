"""Data of the text-augmented fine-tuning (NAS_METHOD.md §5): every training pair with one hard-negative
caption from NTA (nas.data.nta).

The annotation file extends ALBEF's format NegCLIP-style: a JSON list of
`{"image": <path>, "caption": str, "neg_caption": str}`, one record per pair.

- Synthetic data: `write_nta_annotations` reads `<split>_scenes.json` (captions with word roles) and
  writes the pairs in the order of `<split>.json`. Each pair's negative is drawn from its own generator
  seeded by (seed, scene index, caption number), so it does not depend on the other pairs. Negatives that
  would name a held-out colour-shape pair (SyntheticConfig.holdout, kept out of training for the
  compositional probes) are not used [D]. Pairs left with no negative are DROPPED and counted.
- Real captions (data.source `files`, e.g. COCO): `write_spacy_nta_annotations` swaps tagged words with
  spaCy (`en_core_web_sm`); a missing spaCy is a clear NTADependencyError. Pairs with no negative (no two
  different nouns, adjectives or verbs) are dropped and counted too.

`NTACaptionDataset` yields CaptionDataset's items plus "neg_caption"; `make_nta_collate` adds
`neg_input_ids` / `neg_attention_mask` to the batch (the keys ALBEF's forward reads, nas.models.albef).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nas.data.captions import ALBEF_MAX_WORDS, AnnotationError, CaptionDataset, load_pairs
from nas.data.loader import collate_pairs
from nas.data.nta import (
    NTAConfig,
    TaggedToken,
    all_edits,
    load_spacy,
    parse_caption,
    spacy_hard_negative,
)
from nas.data.tokenizer import TextCollator, UnkOnlyPolicy, check_unk_policy, pre_caption

if TYPE_CHECKING:
    from transformers import BertTokenizerFast

NEG_CAPTION = "neg_caption"


def _pair_rng(seed: int, scene_index: int, caption_number: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(scene_index, caption_number)))


def names_holdout(words: list[str], roles: list[str], holdout: frozenset[str]) -> bool:
    """Whether a role-tagged caption mentions a "colour shape" pair of `holdout`."""
    for clause in parse_caption(words, roles):
        for mention in clause.mentions:
            colour, shape = mention.attributes.get("colour"), mention.attributes.get("shape")
            if colour is not None and shape is not None and f"{words[colour]} {words[shape]}" in holdout:
                return True
    return False


def synthetic_negative(
    caption: dict[str, Any], rng: np.random.Generator, cfg: NTAConfig, holdout: frozenset[str] = frozenset()
) -> str | None:
    """`nta.hard_negative`'s draw (kind uniform over the applicable kinds, then an edit uniformly) over
    the edits that name no held-out pair; None when none is left."""
    options = []
    for kind in cfg.kinds:
        edits = [
            e for e in all_edits(caption, kind, cfg) if not names_holdout(e["words"], e["roles"], holdout)
        ]
        if edits:
            options.append(edits)
    if not options:
        return None
    edits = options[int(rng.integers(len(options)))]
    return edits[int(rng.integers(len(edits)))]["text"]


def _read_json_list(path: Path, what: str) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what}")
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise AnnotationError(f"{path}: expected a JSON list, got {type(records).__name__}")
    return records


def _write_annotations(out_file: str | Path, records: list[dict[str, str]]) -> None:
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")


def write_nta_annotations(
    data_root: str | Path, split: str, out_file: str | Path, cfg: NTAConfig | None = None, seed: int = 0
) -> dict[str, Any]:
    """Write the NTA annotation file of a synthetic split; returns {"pairs", "written", "dropped",
    "kinds_used"...}. The vocabularies (colours, shapes) and the held-out pairs come from the data set's
    manifest, `cfg` chooses the edit kinds."""
    data_root = Path(data_root)
    manifest_path = data_root / "manifest.json"
    manifest = _read_manifest(manifest_path)
    synthetic = manifest.get("config")
    if not isinstance(synthetic, dict) or not {"colours", "shapes"} <= set(synthetic):
        raise AnnotationError(f"{manifest_path}: 'config' lacks the colours and shapes of the data set")
    cfg = dataclasses.replace(
        cfg or NTAConfig(), colours=tuple(synthetic["colours"]), shapes=tuple(synthetic["shapes"])
    )
    holdout = frozenset(synthetic.get("holdout", ()))
    scenes_path = data_root / f"{split}_scenes.json"
    scenes = _read_json_list(scenes_path, f"the synthetic data set has no {split} scenes file")
    records: list[dict[str, str]] = []
    pairs = dropped = 0
    for number, scene in enumerate(scenes):
        where = f"{scenes_path}, scene {number}"
        if not isinstance(scene, dict) or not {"image", "index", "captions"} <= set(scene):
            raise AnnotationError(f"{where}: expected an object with 'image', 'index' and 'captions'")
        for k, caption in enumerate(scene["captions"]):
            pairs += 1
            try:
                negative = synthetic_negative(caption, _pair_rng(seed, int(scene["index"]), k), cfg, holdout)
            except (KeyError, ValueError) as exc:
                raise AnnotationError(f"{where}, caption {k}: {exc}") from exc
            if negative is None:
                dropped += 1
                continue
            records.append({"image": scene["image"], "caption": caption["text"], NEG_CAPTION: negative})
    if not records:
        raise AnnotationError(f"{scenes_path}: no pair has a hard negative (kinds {list(cfg.kinds)})")
    _write_annotations(out_file, records)
    return {"split": split, "pairs": pairs, "written": len(records), "dropped": dropped, "seed": seed}


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {path.parent} is not a synthetic data set (run the `data` stage first)"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object")
    return data


def write_spacy_nta_annotations(
    annotation_file: str | Path,
    out_file: str | Path,
    cfg: NTAConfig | None = None,
    seed: int = 0,
    nlp: Callable[[str], Iterable[TaggedToken]] | None = None,
) -> dict[str, Any]:
    """The NTA annotation file of real captions (ALBEF format in, NegCLIP-style out), negatives by
    spaCy word swaps; `nlp` None loads `cfg.spacy_model` (NTADependencyError when it is missing)."""
    cfg = cfg or NTAConfig()
    nlp = nlp if nlp is not None else load_spacy(cfg.spacy_model)
    records: list[dict[str, str]] = []
    pairs = load_pairs(annotation_file, max_words=None)
    for number, (image, caption) in enumerate(pairs):
        negative = spacy_hard_negative(caption, nlp, _pair_rng(seed, number, 0), cfg)
        if negative is not None:
            records.append({"image": image, "caption": caption, NEG_CAPTION: negative})
    if not records:
        raise AnnotationError(f"{annotation_file}: no caption has a hard negative")
    _write_annotations(out_file, records)
    return {"pairs": len(pairs), "written": len(records), "dropped": len(pairs) - len(records), "seed": seed}


class NTACaptionDataset(CaptionDataset):
    """CaptionDataset over an NTA annotation file; items also carry "neg_caption" (cleaned like the
    caption). Every record needs one string caption and a non-empty string neg_caption."""

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        transform: Callable[[Any], Any],
        skip_bad_images: bool = False,
        *,
        max_words: int | None = ALBEF_MAX_WORDS,
        allow_outside_root: bool = False,
    ):
        super().__init__(
            annotation_file,
            image_root,
            transform,
            skip_bad_images,
            max_words=max_words,
            allow_outside_root=allow_outside_root,
        )
        records = _read_json_list(self.annotation_file, "NTA annotation file")
        self.negatives: list[str] = []
        for index, record in enumerate(records):
            where = f"{self.annotation_file}, record {index}"
            if not isinstance(record.get("caption"), str):
                raise AnnotationError(
                    f"{where}: an NTA record needs one string 'caption' (its negative's pair)"
                )
            negative = record.get(NEG_CAPTION)
            if not isinstance(negative, str):
                raise AnnotationError(f"{where}: '{NEG_CAPTION}' must be a string, got {negative!r}")
            cleaned = negative if max_words is None else pre_caption(negative, max_words)
            if not cleaned.strip():
                raise AnnotationError(f"{where}: '{NEG_CAPTION}' is empty (after cleaning: {negative!r})")
            self.negatives.append(cleaned)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = super().__getitem__(index)
        if item is not None:
            item[NEG_CAPTION] = self.negatives[index]
        return item


def collate_nta_pairs(
    items: list[dict[str, Any] | None],
    tokenizer: BertTokenizerFast,
    max_length: int,
    unk_only: UnkOnlyPolicy = "count",
) -> dict[str, Any]:
    """`collate_pairs` plus `neg_input_ids` / `neg_attention_mask` long [B, T] and `neg_caption` list[str],
    row-aligned with the pairs (skipped bad images drop their negative too). The counts of the
    batch (num_truncated_tokens, num_unk_only, ...) are those of the positive captions."""
    batch = collate_pairs(items, tokenizer, max_length, unk_only)
    kept = [item for item in items if item is not None]
    missing = [item["index"] for item in kept if NEG_CAPTION not in item]
    if missing:
        raise KeyError(f"items {missing[:5]} carry no '{NEG_CAPTION}': use NTACaptionDataset")
    negatives = [item[NEG_CAPTION] for item in kept]
    text = TextCollator(tokenizer, max_length)(negatives)
    batch.update(
        neg_input_ids=text["input_ids"], neg_attention_mask=text["attention_mask"], neg_caption=negatives
    )
    return batch


def make_nta_collate(
    tokenizer: BertTokenizerFast, max_length: int, *, unk_only: UnkOnlyPolicy = "count"
) -> Callable[[list[Any]], dict[str, Any]]:
    """`collate_nta_pairs` with the tokenizer bound (picklable for worker processes); `unk_only` is
    `data.unk_only_captions`."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    return functools.partial(
        collate_nta_pairs, tokenizer=tokenizer, max_length=max_length, unk_only=check_unk_policy(unk_only)
    )
