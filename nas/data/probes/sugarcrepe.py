"""SugarCrepe probes (BENCHMARKS.md §4), read by nas.evaluation.benchmarks.sugarcrepe: a positive and a
negative caption per image, in the seven replace / swap / add files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nas.data.nta import all_edits
from nas.data.probes.common import (
    _article,
    _pick,
    _provenance,
    _require,
    _require_distinct,
    _require_supply,
    _rng,
    _scene_name,
    _shuffled,
    _Source,
    _write_keyed_files,
)

SUGARCREPE_FILES = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")


def _with_mention(record: dict[str, Any], words: list[str], roles: list[str]) -> dict[str, Any]:
    return {"text": " ".join(words), "words": words, "roles": roles, "template": record.get("template")}


def _sugarcrepe_item(
    source: _Source, name: str, scene: dict[str, Any], rng: np.random.Generator
) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """(positive record, negative record, kind) for one scene, or None if it does not apply."""
    objects = scene["objects"]
    caption = _pick(scene["captions"], rng)
    words, roles = list(caption["words"]), list(caption["roles"])
    edits = {
        "replace_obj": "replace_shape",
        "replace_att": "replace_colour",
        "replace_rel": "replace_relation",
        "swap_obj": "swap_shapes",
        "swap_att": "swap_colours",
    }
    if name in edits:
        negatives = all_edits(caption, edits[name], source.nta)
        return (caption, _pick(negatives, rng), edits[name]) if negatives else None
    if name == "add_obj":
        # "... and a small green cross" where the scene has no cross: the added object is absent.
        absent = [s for s in source.synthetic.shapes if s not in {o["shape"] for o in objects}]
        shape = _pick(absent, rng)
        size, colour = _pick(list(source.synthetic.sizes), rng), _pick(list(source.synthetic.colours), rng)
        added = [_article(size), size, colour, shape]
        negative = _with_mention(
            caption, [*words, "and", *added], [*roles, "conj", "det", "size", "colour", "shape"]
        )
        return caption, negative, "add_object"
    # add_att: the positive drops one mention's colour; the negative puts a wrong colour there.
    colour_positions = [k for k, r in enumerate(roles) if r == "colour"]
    position = _pick(colour_positions, rng)
    wrong = _pick([c for c in source.synthetic.colours if c != words[position]], rng)
    positive = _with_mention(
        caption, words[:position] + words[position + 1 :], roles[:position] + roles[position + 1 :]
    )
    negative = _with_mention(caption, words[:position] + [wrong] + words[position + 1 :], roles)
    return positive, negative, "add_colour"


def _sugarcrepe_records(source: _Source, seed: int, name: str, count: int) -> list[tuple[str, dict, dict]]:
    rng = _rng(seed, f"sugarcrepe/{name}")
    out = []
    for scene in _shuffled(source.scenes, rng):
        if len(out) >= count:
            break
        item = _sugarcrepe_item(source, name, scene, rng)
        if item is None:
            continue
        positive, negative, kind = item
        _require(source, scene, scene["objects"], positive, "true")
        _require(source, scene, scene["objects"], negative, "false")
        record = {
            "filename": f"{_scene_name(scene)}.png",
            "caption": positive["text"],
            "negative_caption": negative["text"],
        }
        out.append((str(len(out)), record, _provenance(scene, kind)))
    _require_supply(source, f"sugarcrepe/{name}", "sugarcrepe_per_file", count, len(out))
    _require_distinct(f"sugarcrepe/{name}", [origin for _, _, origin in out])
    return out


def _write_sugarcrepe(
    source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict
) -> None:
    _write_keyed_files("sugarcrepe", plan["sugarcrepe"], source, out, "val2017", specs, provenance)
