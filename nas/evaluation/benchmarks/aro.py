"""ARO VG-Relation and VG-Attribution: official-format loader and official scoring.

BENCHMARKS.md §1.1-§1.3, §1.6. Each record gives one test case: the image cropped to its box and
the caption options `[false_caption, true_caption]` (false first). Correct iff
s(true) > s(false): a tie is wrong (the official argmax picks index 0 on a tie).

- VG-Relation (notebook protocol, default): accuracy per `relation_name`, drop the 157 names of
  `vgr_excluded_relations.json`, unweighted mean of the rest; no count filter.
- VG-Attribution: accuracy per ordered pair "<a0>_<a1>", drop pairs with fewer than 25 cases
  (25 is kept), unweighted mean of the rest.
Both also report the micro accuracy over the kept cases, over all cases, and the per-group table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.evaluation.benchmarks.common import (
    BenchmarkCase,
    BenchmarkDataError,
    ImageRef,
    check_images_exist,
    check_unique_ids,
    field_of,
    mean,
    percent,
    read_json,
    require_root,
    resource_path,
)

RELATION_HINT = (
    "The ARO VG JSONs are not redistributed: the official loader downloads "
    "visual_genome_relation.json from Google Drive id 1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3 "
    "(e.g. `gdown 1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3`) into the root (BENCHMARKS.md §1.1)."
)
ATTRIBUTION_HINT = (
    "The ARO VG JSONs are not redistributed: the official loader downloads "
    "visual_genome_attribution.json from Google Drive id 13tWvOrNOLHxl3Rm9cR3geAdHx2qR3-Tw "
    "into the root (BENCHMARKS.md §1.1)."
)
IMAGES_HINT = (
    "ARO VG images: vgr_vga_images.zip (about 1 GB, a subset of GQA) from Google Drive id "
    "1qaPlrwhGNMrR3a11iopZUT_GPP_LrgP9, unzipped in the root so that <root>/images/<id>.jpg exists."
)
EXCLUDED_RELATIONS_FILE = "vgr_excluded_relations.json"


@dataclass
class AroConfig:
    """ARO VG-R / VG-A knobs. Defaults = the official notebook protocol (BENCHMARKS.md §1.6)."""

    relation_file: str = "visual_genome_relation.json"
    attribution_file: str = "visual_genome_attribution.json"
    image_dir: str = "images"  # the official loader reads <root>/images/<image_path>
    # [D] notebook protocol drops the 157 listed relations; False = every relation counts.
    exclude_relations: bool = True
    # [D] the notebook applies no count filter; the paper text says rare relations were removed.
    relation_min_count: int = 0
    # Official VG-A scoring drops ordered attribute pairs with fewer than 25 cases (§1.6).
    attribution_min_count: int = 25

    def __post_init__(self) -> None:
        for name in ("relation_min_count", "attribution_min_count"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def load_excluded_relations() -> tuple[str, ...]:
    """The 157 relation names the official VG-R notebook drops (shipped, SHA256-checked)."""
    path = resource_path("aro", EXCLUDED_RELATIONS_FILE)
    names = read_json(path, "It ships with the project under nas/resources/benchmarks/aro/.")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise BenchmarkDataError(f"{path}: expected a JSON list of strings")
    return tuple(names)


def _load_vg(
    root: Path | None,
    file_name: str,
    hint: str,
    group_of: Callable[[Any, str], str],
    config: AroConfig,
    check_images: bool,
    benchmark: str,
) -> list[BenchmarkCase]:
    root = require_root(root, benchmark)
    path = root / file_name
    records = read_json(path, hint)
    if not isinstance(records, list):
        raise BenchmarkDataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    cases = []
    for index, record in enumerate(records):
        where = f"{path}, record {index}"
        x, y, w, h = (field_of(record, f"bbox_{k}", (int, float), where) for k in "xywh")
        if w <= 0 or h <= 0:
            raise BenchmarkDataError(f"{where}: bbox_w and bbox_h must be > 0, got {w} x {h}")
        image_name = field_of(record, "image_path", str, where)
        cases.append(
            BenchmarkCase(
                case_id=str(index),
                images=(ImageRef(root / config.image_dir / image_name, (x, y, x + w, y + h)),),
                texts=(
                    field_of(record, "false_caption", str, where),
                    field_of(record, "true_caption", str, where),
                ),
                meta={"group": group_of(record, where)},
            )
        )
    check_unique_ids(cases, benchmark)
    if check_images:
        check_images_exist(cases, benchmark, IMAGES_HINT)
    return cases


def _relation_name(record: Any, where: str) -> str:
    return field_of(record, "relation_name", str, where)


def _attribute_pair(record: Any, where: str) -> str:
    attributes = field_of(record, "attributes", list, where)
    if len(attributes) != 2 or not all(isinstance(a, str) for a in attributes):
        raise BenchmarkDataError(f"{where}: 'attributes' should be a list of 2 strings, got {attributes!r}")
    return f"{attributes[0]}_{attributes[1]}"  # ordered: "white_black" != "black_white"


def load_vg_relation(
    root: Path | None, config: AroConfig | None = None, *, check_images: bool = True
) -> list[BenchmarkCase]:
    config = config or AroConfig()
    return _load_vg(
        root, config.relation_file, RELATION_HINT, _relation_name, config, check_images, "vg_relation"
    )


def load_vg_attribution(
    root: Path | None, config: AroConfig | None = None, *, check_images: bool = True
) -> list[BenchmarkCase]:
    config = config or AroConfig()
    return _load_vg(
        root,
        config.attribution_file,
        ATTRIBUTION_HINT,
        _attribute_pair,
        config,
        check_images,
        "vg_attribution",
    )


def case_correct(case_scores: np.ndarray) -> bool:
    """One VG case, scores `[[s(false caption), s(true caption)]]`: right iff the true caption scores
    strictly higher (a tie is wrong: the official argmax picks index 0, the false caption)."""
    false_score, true_score = case_scores[0]
    return bool(true_score > false_score)


def vg_outcomes(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: AroConfig
) -> list[float]:
    """Per case, in case order: 1.0 if correct (`case_correct`), else 0.0. Their mean is `micro_all`
    (the micro accuracy over all cases) as a fraction; the macro figure weights groups, not cases."""
    return [float(case_correct(scores[case.case_id])) for case in cases]


def grouped_accuracy(
    cases: Sequence[BenchmarkCase],
    scores: Mapping[str, np.ndarray],
    *,
    excluded: frozenset[str],
    min_count: int,
) -> dict[str, Any]:
    """Macro accuracy over the kept groups, plus micro (kept / all) and the per-group table."""
    counts: dict[str, list[int]] = {}
    ties = 0
    for case in cases:
        false_score, true_score = scores[case.case_id][0]
        ties += int(true_score == false_score)
        tally = counts.setdefault(case.meta["group"], [0, 0])
        tally[0] += 1
        tally[1] += int(case_correct(scores[case.case_id]))
    table = []
    for name in sorted(counts):
        count, correct = counts[name]
        dropped = "excluded" if name in excluded else (f"count < {min_count}" if count < min_count else None)
        table.append(
            {
                "group": name,
                "count": count,
                "correct": correct,
                "accuracy": percent(correct, count),
                "kept": dropped is None,
                "dropped_because": dropped,
            }
        )
    kept = [row for row in table if row["kept"]]
    if not kept:
        raise BenchmarkDataError("no group is left after the exclusion list and the count filter")
    kept_cases = sum(row["count"] for row in kept)
    return {
        "macro": mean(row["accuracy"] for row in kept),
        "micro": percent(sum(row["correct"] for row in kept), kept_cases),
        "micro_all": percent(sum(row["correct"] for row in table), len(cases)),
        "n_cases": len(cases),
        "n_cases_kept": kept_cases,
        "n_groups": len(table),
        "n_groups_kept": len(kept),
        "n_ties": ties,
        "groups": table,
    }


def vg_relation_metrics(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: AroConfig
) -> dict[str, Any]:
    excluded = frozenset(load_excluded_relations()) if config.exclude_relations else frozenset()
    return grouped_accuracy(cases, scores, excluded=excluded, min_count=config.relation_min_count)


def vg_attribution_metrics(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: AroConfig
) -> dict[str, Any]:
    return grouped_accuracy(cases, scores, excluded=frozenset(), min_count=config.attribution_min_count)
