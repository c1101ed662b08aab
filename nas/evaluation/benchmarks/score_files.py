"""The harness's own per-example score file (BENCHMARKS.md §0.3 [D]: "store raw per-option scores
for every run"), so a run can be re-scored under another tie or averaging rule without the model.

JSONL. Line 1 is a header:
    {"format": "nas-benchmark-scores", "version": 1, "benchmark": "<name>", "scorer": "<name>",
     "layout": "scores[image][text]"}
then one line per test case, in loader order:
    {"id": "<case id>", "scores": [[...], ...], "texts": ["<option 0>", ...]}
`texts` are the options the scores belong to; reading back checks them against the loaded cases
(Order options depend on the seed and on the spaCy/NLTK versions).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.evaluation.benchmarks.common import BenchmarkCase, ScoreError, iter_jsonl

FORMAT = "nas-benchmark-scores"
VERSION = 1
LAYOUT = "scores[image][text]"


def write_scores(
    path: Path,
    *,
    benchmark: str,
    scorer: str,
    cases: Sequence[BenchmarkCase],
    scores: Mapping[str, np.ndarray],
) -> None:
    header = {
        "format": FORMAT,
        "version": VERSION,
        "benchmark": benchmark,
        "scorer": scorer,
        "layout": LAYOUT,
    }
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(header) + "\n")
        for case in cases:
            line = {
                "id": case.case_id,
                "scores": np.asarray(scores[case.case_id]).tolist(),
                "texts": list(case.texts),
            }
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")


def read_header(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    try:
        header = json.loads(first)
    except json.JSONDecodeError as exc:
        raise ScoreError(f"{path}, line 1: not valid JSON: {exc.msg}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ScoreError(f"{path}: line 1 is not a {FORMAT!r} header")
    if header.get("version") != VERSION or header.get("layout") != LAYOUT:
        raise ScoreError(
            f"{path}: unsupported version/layout {header.get('version')!r}/{header.get('layout')!r}"
        )
    return header


def read_scores(path: Path, cases: Sequence[BenchmarkCase]) -> dict[str, np.ndarray]:
    """`{case_id: scores}`; a line whose `texts` differ from the loaded case's options is an error."""
    read_header(path)
    options = {case.case_id: case.texts for case in cases}
    out: dict[str, np.ndarray] = {}
    for where, entry in iter_jsonl(path, first_line=2):  # line 1 is the header
        case_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(case_id, str):
            raise ScoreError(f"{where}: missing string 'id'")
        if case_id in out:
            raise ScoreError(f"{where}: duplicate id {case_id!r}")
        try:
            values = np.asarray(entry.get("scores"), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ScoreError(f"{where}: 'scores' of {case_id!r} is not a matrix of numbers") from exc
        if values.ndim != 2 or any(math.isnan(v) for v in values.ravel()):
            raise ScoreError(f"{where}: 'scores' of {case_id!r} must be a 2-D matrix without NaN")
        texts = entry.get("texts")
        if texts is not None and case_id in options and tuple(texts) != options[case_id]:
            raise ScoreError(
                f"{where}: the options of {case_id!r} differ from the loaded ones "
                f"(file {texts!r}, loaded {list(options[case_id])!r}); another seed, file or text tool?"
            )
        out[case_id] = values
    return out
