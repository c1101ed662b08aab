"""Winoground: loader of the raw hub files, official scoring and the official score-file format.

BENCHMARKS.md §2. Input layout [D]: `<root>/examples.jsonl` and `<root>/images/ex_<id>_img_<k>.png`
(the extracted `data/images.zip`). The dataset is gated and may not be redistributed: nothing of
it ships with the project.

Scores of one example form `S[k][j]` = s(caption j, image k). With s(cj, ik) as in the official
`statistics/compute_statistics.py`, all comparisons strict (a tie makes a condition false):
- text:  s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1)  (per image, the right caption wins)
- image: s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0)  (per caption, the right image wins)
- group: text and image.
Breakdowns select examples by exact equality of one field, as the official script does.

The overall figures need only the four scores of each example: a score file is rescored without
the gated `examples.jsonl` (`cases_from_scores`); only the breakdowns need it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.evaluation.benchmarks.common import (
    BenchmarkCase,
    BenchmarkDataError,
    ImageRef,
    ScoreError,
    ScoreFileError,
    check_images_exist,
    check_unique_ids,
    field_of,
    iter_jsonl,
    labelled_score,
    percent,
    require_file,
    require_root,
    verify_checksum,
)

HINT = (
    "Winoground is gated and may not be redistributed: accept the licence at "
    "https://huggingface.co/datasets/facebook/winoground, download data/examples.jsonl and "
    "data/images.zip, and unzip the images so that <root>/images/ex_<id>_img_<k>.png exists."
)
STRING_FIELDS = ("caption_0", "caption_1", "image_0", "image_1", "tag", "secondary_tag", "collapsed_tag")
BREAKDOWN_CHOICES = ("collapsed_tag", "num_main_preds", "secondary_tag", "tag")
LABEL_PATTERN = re.compile(r"^(\d+)_c([01])_i([01])$")


@dataclass
class WinogroundConfig:
    """Winoground file layout and breakdowns (BENCHMARKS.md §2.1-§2.3)."""

    examples_file: str = "examples.jsonl"
    image_dir: str = "images"
    # Fields whose exact values define the breakdown subsets (the official script uses these three).
    breakdown_fields: tuple[str, ...] = ("collapsed_tag", "num_main_preds", "secondary_tag")

    def __post_init__(self) -> None:
        unknown = [f for f in self.breakdown_fields if f not in BREAKDOWN_CHOICES]
        if unknown:
            raise ValueError(f"breakdown_fields: {unknown} not in {list(BREAKDOWN_CHOICES)}")


def load_winoground(
    root: Path | None, config: WinogroundConfig | None = None, *, check_images: bool = True
) -> list[BenchmarkCase]:
    config = config or WinogroundConfig()
    root = require_root(root, "winoground")
    path = require_file(root / config.examples_file, HINT)
    verify_checksum(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BenchmarkDataError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    cases = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # the official file has no newline after its last line; tolerate either
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkDataError(f"{where}: not valid JSON: {exc.msg}") from exc
        example_id = field_of(record, "id", int, where)
        values = {key: field_of(record, key, str, where) for key in STRING_FIELDS}
        values["num_main_preds"] = field_of(record, "num_main_preds", int, where)
        images = tuple(ImageRef(root / config.image_dir / f"{values[f'image_{k}']}.png") for k in (0, 1))
        cases.append(
            BenchmarkCase(
                case_id=str(example_id),
                images=images,
                texts=(values["caption_0"], values["caption_1"]),
                meta={key: values[key] for key in BREAKDOWN_CHOICES},
            )
        )
    check_unique_ids(cases, "winoground")
    if check_images:
        check_images_exist(cases, "winoground", HINT)
    return cases


def conditions(scores: np.ndarray) -> tuple[bool, bool, bool]:
    """(text, image, group) for one example; `scores[k][j]` = s(caption j, image k)."""
    s = scores
    text = s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]
    image = s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1]
    return bool(text), bool(image), bool(text and image)


def group_outcomes(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: WinogroundConfig
) -> list[float]:
    """Per example, in case order: 1.0 if its group condition holds (`conditions`), else 0.0; their
    mean is the `group` score as a fraction."""
    return [float(conditions(scores[case.case_id])[2]) for case in cases]


def _summary(outcomes: Sequence[tuple[bool, bool, bool]]) -> dict[str, Any]:
    n = len(outcomes)
    return {
        "text": percent(sum(o[0] for o in outcomes), n),
        "image": percent(sum(o[1] for o in outcomes), n),
        "group": percent(sum(o[2] for o in outcomes), n),
        "n": n,
    }


def winoground_metrics(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: WinogroundConfig
) -> dict[str, Any]:
    """text / image / group over the cases, and the breakdowns by the fields of
    `config.breakdown_fields`; `breakdowns` is None for cases without annotations
    (`cases_from_scores`: a score file rescored without `examples.jsonl`)."""
    outcomes = {case.case_id: conditions(scores[case.case_id]) for case in cases}
    result = _summary(list(outcomes.values()))
    annotated = all(field_name in case.meta for case in cases for field_name in config.breakdown_fields)
    breakdowns: dict[str, dict[str, Any]] | None = {} if annotated else None
    for field_name in config.breakdown_fields if annotated else ():
        values = sorted({case.meta[field_name] for case in cases}, key=str)
        breakdowns[field_name] = {
            str(value): _summary([outcomes[c.case_id] for c in cases if c.meta[field_name] == value])
            for value in values
        }
    result["breakdowns"] = breakdowns
    return result


def cases_from_scores(
    scores: Mapping[str, np.ndarray], texts: Mapping[str, Sequence[str]] | None = None
) -> list[BenchmarkCase]:
    """Test cases for rescoring without `examples.jsonl`: one per example id of a score file
    (numeric order), with the official image names and no tags, so no breakdown. `texts`: the
    captions, where the score file holds them (the harness format does)."""
    cases = []
    for example in sorted(scores, key=lambda key: (len(key), key)):
        if not example.isdigit():
            raise ScoreError(f"winoground: example id {example!r} is not a non-negative integer")
        captions = tuple(texts[example]) if texts and example in texts else ("caption_0", "caption_1")
        cases.append(
            BenchmarkCase(
                case_id=example,
                images=tuple(ImageRef(Path(f"ex_{example}_img_{k}.png")) for k in (0, 1)),
                texts=captions,
            )
        )
    return cases


# ---------------------------------------------------------------------------------------------
# Official score file: one line per pair, {"label": "<id>_c<j>_i<k>", "score": x} (§2.2)


def write_official_scores(
    path: Path, cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray]
) -> None:
    """Four lines per example, `<id>_c<j>_i<k>` with caption j and image k (`scores[k][j]`)."""
    for case in cases:
        if not np.isfinite(np.asarray(scores[case.case_id], dtype=np.float64)).all():
            raise ScoreError(f"winoground: example {case.case_id!r} has a non-finite score")
    with open(path, "w", encoding="utf-8") as handle:
        for case in cases:
            for j in (0, 1):
                for k in (0, 1):
                    label = f"{case.case_id}_c{j}_i{k}"
                    handle.write(
                        json.dumps({"label": label, "score": float(scores[case.case_id][k, j])}) + "\n"
                    )


def read_official_scores(path: Path) -> dict[str, np.ndarray]:
    """`{str(id): S}` with S[k][j] = score of label `<id>_c<j>_i<k>`; every id needs its 4 labels.
    Errors (ScoreFileError) name the file and line."""
    found: dict[str, dict[tuple[int, int], float]] = {}
    first_line: dict[str, int] = {}
    for where, entry in iter_jsonl(path):
        match, score = labelled_score(entry, LABEL_PATTERN, "'<id>_c<j>_i<k>'", where)
        label = entry["label"]
        example = str(int(match.group(1)))
        key = (int(match.group(3)), int(match.group(2)))  # (image k, caption j)
        first_line.setdefault(example, where.number)
        if key in found.setdefault(example, {}):
            raise where.error(f"duplicate label {label}")
        found[example][key] = score
    if not found:
        raise ScoreFileError(path, None, "no score lines")
    out = {}
    for example, entries in found.items():
        if len(entries) != 4:
            absent = [f"{example}_c{j}_i{k}" for k in (0, 1) for j in (0, 1) if (k, j) not in entries]
            raise ScoreFileError(path, first_line[example], f"example {example} lacks labels {absent}")
        out[example] = np.array([[entries[(k, j)] for j in (0, 1)] for k in (0, 1)])
    return out
