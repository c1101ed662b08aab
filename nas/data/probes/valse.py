"""VALSE probes (BENCHMARKS.md §3.2), read by nas.evaluation.benchmarks.valse: a caption and a foil
one word (or quantifier phrase) apart, in the five instrument files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.data.nta import all_edits
from nas.data.probes.common import (
    ProbeError,
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

VALSE_INSTRUMENTS = ("existence", "counting-small-quant", "plurals", "relations", "attributes")


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _changed(before: Sequence[str], after: Sequence[str]) -> tuple[str, str]:
    """The words that differ between two captions of equal length (VALSE's classes / classes_foil)."""
    if len(before) != len(after):
        raise ProbeError(f"expected a same-length foil: {before!r} vs {after!r}")
    changed = [k for k, (a, b) in enumerate(zip(before, after)) if a != b]
    return " ".join(before[k] for k in changed), " ".join(after[k] for k in changed)


def _claim(holds: bool, want: bool, scene: dict[str, Any], text: str) -> None:
    if holds != want:
        raise ProbeError(f"scene {_scene_name(scene)}: {text!r} should be {'true' if want else 'false'}")


def _valse_item(
    source: _Source, instrument: str, scene: dict[str, Any], rng: np.random.Generator
) -> dict | None:
    """{caption, foil, classes, classes_foil, kind} for one scene, or None if it does not apply."""
    objects = scene["objects"]
    shapes_present = [o["shape"] for o in objects]
    if instrument == "existence":
        # Both directions, as VALSE ("there are no people" / "there are people").
        if rng.random() < 0.5:
            shape, present = _pick(shapes_present, rng), True
        else:
            shape, present = (
                _pick([s for s in source.synthetic.shapes if s not in shapes_present], rng),
                False,
            )
        some, none = f"there is {_article(shape)} {shape}", f"there is no {shape}"
        caption, foil = (some, none) if present else (none, some)
        _claim(shape in shapes_present, present, scene, caption)
        count = shapes_present.count(shape)
        return {
            "caption": caption,
            "foil": foil,
            "classes": count,
            "classes_foil": [1 - count],
            "kind": "existence",
        }
    if instrument == "counting-small-quant":
        if len(objects) < 2:  # "there is 1 shape" would change more than the number
            return None
        wrong = _pick([n for n in range(2, source.synthetic.max_objects + 2) if n != len(objects)], rng)
        caption, foil = f"there are {len(objects)} shapes", f"there are {wrong} shapes"
        _claim(len(objects) == wrong, False, scene, foil)
        return {
            "caption": caption,
            "foil": foil,
            "classes": len(objects),
            "classes_foil": wrong,
            "kind": "counting",
        }
    if instrument == "plurals":
        # Colours are distinct in a scene: exactly one object has a given colour and shape.
        o = _pick(objects, rng)
        matching = sum(p["colour"] == o["colour"] and p["shape"] == o["shape"] for p in objects)
        caption = f"there is exactly one {o['colour']} {o['shape']}"
        foil = f"there are a number of {o['colour']} {_plural(o['shape'])}"
        _claim(matching == 1, True, scene, caption)
        return {
            "caption": caption,
            "foil": foil,
            "classes": "exactly one",
            "classes_foil": "a number of",
            "kind": "plurals",
        }
    edit = {"relations": "replace_relation", "attributes": "replace_colour"}[instrument]
    caption = _pick(scene["captions"], rng)
    edits = all_edits(caption, edit, source.nta)
    if not edits:
        return None
    foil = _pick(edits, rng)
    _require(source, scene, objects, caption, "true")
    _require(source, scene, objects, foil, "false")
    classes, classes_foil = _changed(caption["words"], foil["words"])
    return {
        "caption": caption["text"],
        "foil": foil["text"],
        "classes": classes,
        "classes_foil": classes_foil,
        "kind": edit,
    }


def _valse_records(source: _Source, seed: int, instrument: str, count: int) -> list[tuple[str, dict, dict]]:
    """(sample id, record, provenance) in the official schema, valid by the official filter."""
    rng = _rng(seed, f"valse/{instrument}")
    phenomenon = {"counting-small-quant": "counting"}.get(instrument, instrument)
    out = []
    for scene in _shuffled(source.scenes, rng):
        if len(out) >= count:
            break
        item = _valse_item(source, instrument, scene, rng)
        if item is None:
            continue
        record = {
            "dataset": "synthetic",
            "original_split": source.split,
            "dataset_idx": int(scene["index"]),
            "linguistic_phenomena": phenomenon,
            "image_file": f"{_scene_name(scene)}.png",
            "caption": item["caption"],
            "foil": item["foil"],
            "classes": item["classes"],
            "classes_foil": item["classes_foil"],
            # Ground truth stands in for the three annotators: all chose the caption, so the
            # official filter (mturk.caption >= 2) keeps every probe.
            "mturk": {"foil": 0, "caption": 3, "other": 0},
        }
        out.append((f"{instrument}_synthetic_{scene['index']}", record, _provenance(scene, item["kind"])))
    _require_supply(source, f"valse/{instrument}", "valse_per_instrument", count, len(out))
    _require_distinct(f"valse/{instrument}", [origin for _, _, origin in out])
    return out


def _write_valse(source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict) -> None:
    _write_keyed_files("valse", plan["valse"], source, out, "images", specs, provenance)
