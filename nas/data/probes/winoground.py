"""Winoground probes (BENCHMARKS.md §2.2), read by nas.evaluation.benchmarks.winoground: two images,
two captions with the same words in another order. The second image is the scene with two objects'
colours, shapes or positions exchanged, rendered with the scene's own noise seed."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.data.nta import all_edits, mention_objects
from nas.data.probes.common import (
    ProbeError,
    _copy_scene_image,
    _pick,
    _provenance,
    _relation_clause,
    _require,
    _require_distinct,
    _require_supply,
    _rng,
    _scene_name,
    _shuffled,
    _Source,
    _write_text,
)
from nas.data.synthetic import SyntheticConfig, render_scene

# Winoground kinds: (NTA edit that makes caption 1, tag, collapsed_tag). Winoground files adjective
# swaps under "Relation" (its example 0, "Adjective-Age") and noun / noun-phrase swaps under
# "Object" (BENCHMARKS.md §2.2).
WINOGROUND_KINDS = {
    "colour": ("swap_colours", "Adjective-Color", "Relation"),
    "shape": ("swap_shapes", "Noun", "Object"),
    "position": ("swap_relation_args", "Noun Phrase", "Object"),
}
# Rendered shapes are drawings, which Winoground tags "Symbolic" (its secondary tag for
# non-photographic images).
WINOGROUND_SECONDARY_TAG = "Symbolic"


def _fits(objects: Sequence[dict[str, Any]], cfg: SyntheticConfig) -> bool:
    """Every object inside the image and the boxes apart by min_gap (the generator's rules)."""
    for o in objects:
        x0, y0, x1, y1 = o["bbox"]
        if x0 < 0 or y0 < 0 or x1 >= cfg.image_size or y1 >= cfg.image_size:
            return False
    for a, o in enumerate(objects):
        for p in objects[a + 1 :]:
            ax0, ay0, ax1, ay1 = o["bbox"]
            bx0, by0, bx1, by1 = p["bbox"]
            gap = cfg.min_gap
            if not (ax1 + gap < bx0 or bx1 + gap < ax0 or ay1 + gap < by0 or by1 + gap < ay0):
                return False
    return True


def _counterfactual(
    objects: Sequence[dict[str, Any]], first: int, second: int, kind: str, cfg: SyntheticConfig
) -> list[dict[str, Any]] | None:
    """The scene with the two objects' colours, shapes or positions exchanged (None if the moved
    objects no longer fit)."""
    new = [dict(o) for o in objects]
    a, b = new[first], new[second]
    if kind == "position":
        (a["x"], a["y"]), (b["x"], b["y"]) = (b["x"], b["y"]), (a["x"], a["y"])
        for o in (a, b):
            o["bbox"] = [
                o["x"] - o["radius"],
                o["y"] - o["radius"],
                o["x"] + o["radius"],
                o["y"] + o["radius"],
            ]
        return new if _fits(new, cfg) else None
    a[kind], b[kind] = b[kind], a[kind]  # kind is "colour" or "shape"
    return new


def _winoground_examples(
    source: _Source, seed: int, count: int
) -> list[tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]]:
    """(record, counterfactual objects, provenance); kinds rotate colour -> shape -> position."""
    rng = _rng(seed, "winoground")
    kinds = list(WINOGROUND_KINDS)
    examples: list[tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = []
    for scene in _shuffled(source.scenes, rng):
        if len(examples) >= count:
            break
        clause = _relation_clause(scene, rng)
        if clause is None:
            continue
        objects = scene["objects"]
        first, second = mention_objects(clause["words"], clause["roles"], objects)
        if first is None or second is None:
            raise ProbeError(
                f"scene {_scene_name(scene)}: {clause['text']!r} does not name two of its objects"
            )
        turn = len(examples) % len(kinds)
        for kind in kinds[turn:] + kinds[:turn]:
            edit, tag, collapsed = WINOGROUND_KINDS[kind]
            edits = all_edits(clause, edit, source.nta)
            other = _counterfactual(objects, first, second, kind, source.synthetic)
            if not edits or other is None:
                continue
            caption_1 = _pick(edits, rng)
            if Counter(caption_1["words"]) != Counter(clause["words"]):
                raise ProbeError(
                    f"winoground: {caption_1['text']!r} does not reuse the words of {clause['text']!r}"
                )
            _require(source, scene, objects, clause, "true")
            _require(source, scene, other, caption_1, "true")
            _require(source, scene, other, clause, "false")
            _require(source, scene, objects, caption_1, "false")
            example_id = len(examples)
            record = {
                "id": example_id,
                "image_0": f"ex_{example_id}_img_0",
                "image_1": f"ex_{example_id}_img_1",
                "caption_0": clause["text"],
                "caption_1": caption_1["text"],
                "tag": tag,
                "secondary_tag": WINOGROUND_SECONDARY_TAG,
                "num_main_preds": 1,  # one relation per caption
                "collapsed_tag": collapsed,
            }
            examples.append((record, other, _provenance(scene, kind)))
            break
    _require_supply(source, "winoground", "winoground", count, len(examples))
    _require_distinct("winoground", [origin for _, _, origin in examples])
    return examples


def _write_winoground(
    source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict
) -> None:
    examples = plan["winoground"]
    root = out / "winoground"
    images = root / "images"
    for record, other, origin in examples:
        _copy_scene_image(source, origin, images, f"{record['image_0']}.png")
        # Same noise seed: the second image differs from the first only where the objects changed.
        noise_seed = source.by_name[origin["scene"]]["noise_seed"]
        render_scene(other, source.synthetic, noise_seed).save(
            images / f"{record['image_1']}.png", format="PNG"
        )
    # The official file has no newline after its last line (BENCHMARKS.md §2.1).
    lines = [json.dumps(record) for record, _, _ in examples]
    _write_text(root / "examples.jsonl", "\n".join(lines))
    specs["winoground"] = {
        "root": "winoground",
        "config": {},
        "cases": len(examples),
        "collapsed_tags": dict(sorted(Counter(r["collapsed_tag"] for r, _, _ in examples).items())),
        "kinds": dict(sorted(Counter(o["kind"] for _, _, o in examples).items())),
    }
    provenance["winoground"] = {str(r["id"]): origin for r, _, origin in examples}
