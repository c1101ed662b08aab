"""ARO VG-Relation / VG-Attribution probes (BENCHMARKS.md §1.2), read by
nas.evaluation.benchmarks.aro: a true caption and a false one (subject and object swapped; the two
colours swapped) per scene. The box is the whole image."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from nas.data.nta import all_edits, parse_caption
from nas.data.probes.common import (
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
    _write_json,
)

Case = tuple[dict[str, Any], dict[str, Any]]  # (record in the official format, provenance)


def _vg_cases(source: _Source, seed: int, count: int, benchmark: str) -> list[Case]:
    """VG-R: false caption = subject and object swapped; VG-A: the two colours swapped."""
    rng = _rng(seed, benchmark)
    edit = "swap_relation_args" if benchmark == "vg_relation" else "swap_colours"
    cases: list[Case] = []
    for scene in _shuffled(source.scenes, rng):
        if len(cases) >= count:
            break
        clause = _relation_clause(scene, rng)
        negatives = all_edits(clause, edit, source.nta) if clause else []
        if not negatives:
            continue
        negative = _pick(negatives, rng)
        _require(source, scene, scene["objects"], clause, "true")
        _require(source, scene, scene["objects"], negative, "false")
        size = source.synthetic.image_size
        record: dict[str, Any] = {
            "image_path": f"{_scene_name(scene)}.png",
            "bbox_x": 0,
            "bbox_y": 0,
            "bbox_w": size,
            "bbox_h": size,
        }
        if benchmark == "vg_relation":
            record["relation_name"] = clause["relation"]
        else:  # ordered as in the true caption, like ARO's "white_black"
            mentions = parse_caption(clause["words"], clause["roles"])[0].mentions
            record["attributes"] = [clause["words"][m.attributes["colour"]] for m in mentions]
        record["true_caption"] = clause["text"]
        record["false_caption"] = negative["text"]
        cases.append((record, _provenance(scene, edit)))
    _require_supply(source, benchmark, benchmark, count, len(cases))
    _require_distinct(benchmark, [origin for _, origin in cases])
    return cases


def _group_of(record: dict[str, Any]) -> str:
    # the loaders' grouping keys: relation_name, or the ordered attribute pair "<a0>_<a1>"
    return record["relation_name"] if "relation_name" in record else "_".join(record["attributes"])


def _write_aro(source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict) -> None:
    for benchmark, file_name in (
        ("vg_relation", "visual_genome_relation.json"),
        ("vg_attribution", "visual_genome_attribution.json"),
    ):
        if benchmark not in plan:
            continue
        cases = plan[benchmark]
        for _record, origin in cases:
            _copy_scene_image(source, origin, out / "aro" / "images")
        _write_json(out / "aro" / file_name, [record for record, _ in cases])
        specs[benchmark] = {
            "root": "aro",
            # ~1,000 cases over 30 ordered colour pairs (~33 each): the official >= 25 filter of
            # VG-A would drop the smaller groups and their cases, so the probes keep them all [D].
            "config": {} if benchmark == "vg_relation" else {"attribution_min_count": 0},
            "cases": len(cases),
            "groups": dict(sorted(Counter(_group_of(record) for record, _ in cases).items())),
        }
        provenance[benchmark] = {str(k): origin for k, (_, origin) in enumerate(cases)}
