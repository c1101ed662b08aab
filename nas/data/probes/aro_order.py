"""ARO COCO-Order probes (BENCHMARKS.md §1.2-§1.4), read by nas.evaluation.benchmarks.aro_order: a
Karpathy test JSON of the scenes' own captions, with the Order text tools (tagger, tokenizer) the
synthetic captions need and the names a manifest gives them."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nas.data.probes.common import (
    ProbeError,
    _copy_scene_image,
    _provenance,
    _require_distinct,
    _require_supply,
    _rng,
    _scene_name,
    _shuffled,
    _Source,
    _write_json,
)

# Penn Treebank tags for the word roles of synthetic captions, standing in for spaCy's. The ARO
# Order perturbations only tell nouns and adjectives from the rest (f1 shuffles nouns, then
# adjectives; f2 everything else; BENCHMARKS.md §1.4), so shapes are nouns, sizes and colours
# adjectives, and every relation word (even the "the" of "to the left of") is "other".
ROLE_TAGS = {"det": "DT", "size": "JJ", "colour": "JJ", "shape": "NN", "relation": "IN", "conj": "CC"}

# The Order text tools a manifest's "load_options" may name: the synthetic probes' own (built from the
# probe folder), or the real ones (spaCy, NLTK), which the loader builds itself when none is passed.
SYNTHETIC_TAGGER = "caption_tags.json (order_tagger)"
SYNTHETIC_TOKENIZER = "whitespace_tokenizer"
REAL_TAGGER, REAL_TOKENIZER = "spacy_tagger", "nltk_tokenizer"


def _order_entries(source: _Source, seed: int, count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    rng = _rng(seed, "coco_order")
    entries = [
        (
            {"image": f"val2014/{_scene_name(scene)}.png", "caption": [c["text"] for c in scene["captions"]]},
            _provenance(scene, "order"),
        )
        for scene in _shuffled(source.scenes, rng)[:count]
    ]
    _require_supply(source, "coco_order", "order_images", count, len(entries))
    _require_distinct("coco_order", [origin for _, origin in entries])
    return entries


def _order_cases(entries: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    """Cases per seed: every caption of every entry (OrderConfig.seeds multiplies them)."""
    return sum(len(entry["caption"]) for entry, _ in entries)


def _caption_tags(scenes: Sequence[dict[str, Any]]) -> dict[str, list[list[str]]]:
    tags: dict[str, list[list[str]]] = {}
    for scene in scenes:
        for caption in scene["captions"]:
            tags[caption["text"]] = [[w, ROLE_TAGS[r]] for w, r in zip(caption["words"], caption["roles"])]
    return tags


def whitespace_tokenizer(caption: str) -> list[str]:
    """The Order probes' tokenizer (NLTK's `word_tokenize` on real captions): synthetic captions
    have no punctuation, so their tokens are their words."""
    return caption.split()


def order_tagger(root: str | Path) -> Callable[[str], list[tuple[str, str]]]:
    """The Order probes' tagger (spaCy's on real captions): each caption's Penn tags from its own
    word roles, read from `<root>/caption_tags.json`. Unknown captions raise ValueError."""
    path = Path(root) / "caption_tags.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not an Order probe folder written by write_probes"
        )
    tags = json.loads(path.read_text(encoding="utf-8"))

    def tag(caption: str) -> list[tuple[str, str]]:
        if caption not in tags:
            raise ValueError(
                f"{path}: no tags for caption {caption!r} (the probe tagger knows only its captions)"
            )
        return [(word, pos) for word, pos in tags[caption]]

    return tag


def _write_order(source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict) -> None:
    entries = plan["coco_order"]
    root = out / "coco_order"
    for _entry, origin in entries:
        _copy_scene_image(source, origin, root / "val2014")
    _write_json(root / "coco_karpathy_test.json", [entry for entry, _ in entries])
    _write_json(root / "caption_tags.json", _caption_tags([source.by_name[o["scene"]] for _, o in entries]))
    specs["coco_order"] = {
        "root": "coco_order",
        "config": {},
        "load_options": {"tagger": "caption_tags.json (order_tagger)", "tokenizer": "whitespace_tokenizer"},
        # per seed; OrderConfig.seeds multiplies them
        "cases": _order_cases(entries),
        "entries": len(entries),
    }
    provenance["coco_order"] = {
        f"{e}_{c}": origin for e, (entry, origin) in enumerate(entries) for c in range(len(entry["caption"]))
    }


def _order_options(path: Path, name: str, root: Path, named: dict[str, Any]) -> dict[str, Any]:
    # Unnamed: the synthetic probes' for coco_order (as write_probes has always named them), else the real.
    synthetic = name == "coco_order"
    tagger = named.get("tagger", SYNTHETIC_TAGGER if synthetic else REAL_TAGGER)
    tokenizer = named.get("tokenizer", SYNTHETIC_TOKENIZER if synthetic else REAL_TOKENIZER)
    options: dict[str, Any] = {}
    if tagger == SYNTHETIC_TAGGER:
        options["tagger"] = order_tagger(root)
    elif tagger != REAL_TAGGER:
        raise ProbeError(
            f"{path}: {name}: unknown tagger {tagger!r} ({SYNTHETIC_TAGGER!r} or {REAL_TAGGER!r})"
        )
    if tokenizer == SYNTHETIC_TOKENIZER:
        options["tokenizer"] = whitespace_tokenizer
    elif tokenizer != REAL_TOKENIZER:
        raise ProbeError(
            f"{path}: {name}: unknown tokenizer {tokenizer!r} ({SYNTHETIC_TOKENIZER!r} or {REAL_TOKENIZER!r})"
        )
    return options
