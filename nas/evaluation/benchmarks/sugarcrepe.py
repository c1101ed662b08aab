"""SugarCrepe: loader of the 7 official JSONs (shipped) and the official scoring.

BENCHMARKS.md §4. Each file is one JSON object `"<idx>" -> {"filename", "caption",
"negative_caption"}`; keys are strings and not contiguous (`swap_obj.json` lacks "108"), so the
loader iterates over the items. Images are COCO val2017 (`<root>/val2017/<filename>` by default).

Per file (official `main_eval.py`): accuracy = % of records with s(image, caption) >
s(image, negative_caption), strict (a tie is wrong). Categories Replace / Swap / Add are pooled
over their files (micro), which reproduces the published category numbers; the plain mean of the
7 files is reported separately and labelled as such [D], and so is the accuracy over every record
of every file pooled (`pooled`, [D]), the mean of the per-record outcomes (`sugarcrepe_outcomes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    resource_path,
)

FILE_CATEGORIES = {
    "replace_obj": "Replace",
    "replace_att": "Replace",
    "replace_rel": "Replace",
    "swap_obj": "Swap",
    "swap_att": "Swap",
    "add_obj": "Add",
    "add_att": "Add",
}
SUGARCREPE_FILES = tuple(FILE_CATEGORIES)
IMAGES_HINT = (
    "SugarCrepe images are COCO val2017: download http://images.cocodataset.org/zips/val2017.zip and "
    "unzip it in the root so that <root>/val2017/000000xxxxxx.jpg exists (BENCHMARKS.md §4)."
)


@dataclass
class SugarCrepeConfig:
    """SugarCrepe files and image layout (BENCHMARKS.md §4)."""

    annotation_dir: str | None = None  # None = the copy shipped in nas/resources/benchmarks/sugarcrepe
    files: tuple[str, ...] = SUGARCREPE_FILES
    image_dir: str = "val2017"  # relative to the root

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("files must not be empty")
        if len(set(self.files)) != len(self.files):
            raise ValueError(f"files must be distinct, got {self.files}")


def load_sugarcrepe(
    root: Path | None, config: SugarCrepeConfig | None = None, *, check_images: bool = True
) -> list[BenchmarkCase]:
    config = config or SugarCrepeConfig()
    if root is None and check_images:
        raise ValueError(
            "SugarCrepe: an image root is needed to score images (root=None only for score files)"
        )
    folder = Path(config.annotation_dir) if config.annotation_dir else resource_path("sugarcrepe")
    hint = "The 7 SugarCrepe JSONs ship under nas/resources/benchmarks/sugarcrepe/ (https://github.com/RAIVNLab/sugar-crepe)."
    cases = []
    for stem in config.files:
        path = folder / f"{stem}.json"
        records = read_json(path, hint)
        if not isinstance(records, dict):
            raise BenchmarkDataError(f"{path}: expected a JSON object {{idx: record}}")
        for key, record in records.items():  # never range(len(...)): keys have gaps
            where = f"{path}, record {key!r}"
            cases.append(
                BenchmarkCase(
                    case_id=f"{stem}/{key}",
                    images=(
                        ImageRef(
                            Path(root or ".") / config.image_dir / field_of(record, "filename", str, where)
                        ),
                    ),
                    texts=(
                        field_of(record, "caption", str, where),
                        field_of(record, "negative_caption", str, where),
                    ),
                    meta={"file": stem},
                )
            )
    check_unique_ids(cases, "sugarcrepe")
    if check_images:
        check_images_exist(cases, "sugarcrepe", IMAGES_HINT)
    return cases


def positive_wins(case_scores: np.ndarray) -> bool:
    """One record, scores `[[s(caption), s(negative caption)]]`: right iff the caption scores strictly
    higher (a tie is wrong, as in the official `main_eval.py`)."""
    positive, negative = case_scores[0]
    return bool(positive > negative)


def sugarcrepe_outcomes(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: SugarCrepeConfig
) -> list[float]:
    """Per record over all files, in case order: 1.0 if `positive_wins`, else 0.0; their mean is
    `pooled.accuracy` as a fraction (`mean_of_files` weights files, not records)."""
    return [float(positive_wins(scores[case.case_id])) for case in cases]


def sugarcrepe_metrics(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: SugarCrepeConfig
) -> dict[str, Any]:
    tallies: dict[str, list[int]] = {stem: [0, 0, 0] for stem in config.files}  # n, correct, ties
    for case in cases:
        positive, negative = scores[case.case_id][0]
        tally = tallies[case.meta["file"]]
        tally[0] += 1
        tally[1] += int(positive_wins(scores[case.case_id]))
        tally[2] += int(positive == negative)
    files = {
        stem: {"accuracy": percent(correct, n), "n": n, "n_ties": ties}
        for stem, (n, correct, ties) in tallies.items()
        if n
    }
    pooled: dict[str, list[int]] = {}
    for stem in files:
        category = pooled.setdefault(FILE_CATEGORIES.get(stem, stem), [0, 0])
        category[0] += tallies[stem][0]
        category[1] += tallies[stem][1]
    n_all = sum(tally[0] for tally in tallies.values())
    return {
        "files": files,
        "categories": {name: {"accuracy": percent(c, n), "n": n} for name, (n, c) in pooled.items()},
        "mean_of_files": mean(row["accuracy"] for row in files.values()),
        # [D] every record of every file pooled (micro): the figure the per-case outcomes average to.
        "pooled": {"accuracy": percent(sum(t[1] for t in tallies.values()), n_all), "n": n_all},
    }
