"""The harness's own per-example score file (BENCHMARKS.md §0.3 [D]: "store raw per-option scores
for every run"), so a run can be re-scored under another tie or averaging rule without the model.

JSONL. Line 1 is a header:
    {"format": "nas-benchmark-scores", "version": 1, "benchmark": "<name>", "scorer": "<name>",
     "layout": "scores[image][text]"}
then one line per test case, in loader order:
    {"id": "<case id>", "scores": [[...], ...], "texts": ["<option 0>", ...]}
`texts` are the options the scores belong to; reading back checks them against the loaded cases
(Order options depend on the seed and on the spaCy/NLTK versions).

Scores are finite numbers: the writer refuses NaN and ±Infinity, and so does the reader (Python's
json would accept the non-standard tokens). Every fault of a file is a ScoreFileError with the
file and line (invalid UTF-8 or JSON, a duplicate id, a malformed matrix, other options, ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.evaluation.benchmarks.common import (
    BenchmarkCase,
    Line,
    ScoreError,
    ScoreFileError,
    iter_jsonl,
    parse_json_line,
    score_file_lines,
)

FORMAT = "nas-benchmark-scores"
VERSION = 1
LAYOUT = "scores[image][text]"


@dataclass(frozen=True)
class ScoreEntry:
    """One test case of a harness score file: its id, score matrix, options and line number."""

    case_id: str
    scores: np.ndarray
    texts: tuple[str, ...] | None
    line: int


def write_scores(
    path: Path,
    *,
    benchmark: str,
    scorer: str,
    cases: Sequence[BenchmarkCase],
    scores: Mapping[str, np.ndarray],
) -> None:
    """Refuses a non-finite score (JSON has no NaN/Infinity, and the reader refuses them)."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "benchmark": benchmark,
        "scorer": scorer,
        "layout": LAYOUT,
    }
    for case in cases:
        if not np.isfinite(np.asarray(scores[case.case_id], dtype=np.float64)).all():
            raise ScoreError(
                f"{benchmark}: scorer {scorer!r} gave case {case.case_id!r} a non-finite score "
                f"{np.asarray(scores[case.case_id]).tolist()}; a score file holds finite numbers only"
            )
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(header) + "\n")
        for case in cases:
            line = {
                "id": case.case_id,
                "scores": np.asarray(scores[case.case_id]).tolist(),
                "texts": list(case.texts),
            }
            handle.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")


def first_entry(path: Path) -> tuple[Line, Any]:
    """Where the first non-blank line of a score file is, and its parsed content (format
    detection); errors name the line."""
    for where, text in score_file_lines(path):
        return where, parse_json_line(text, where)
    raise ScoreFileError(path, None, "the file is empty (no score lines)")


def is_header(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("format") == FORMAT


def read_header(path: Path) -> dict[str, Any]:
    lines = iter(score_file_lines(path))
    first = next(lines, None)
    if first is None or first[0].number != 1:
        raise ScoreFileError(path, 1, f"line 1 is not a {FORMAT!r} header (it is blank)")
    where, text = first
    header = parse_json_line(text, where)
    if not is_header(header):
        raise where.error(f"line 1 is not a {FORMAT!r} header")
    if header.get("version") != VERSION or header.get("layout") != LAYOUT:
        raise where.error(
            f"unsupported version/layout {header.get('version')!r}/{header.get('layout')!r} "
            f"(this harness reads version {VERSION}, layout {LAYOUT!r})"
        )
    return header


def read_entries(path: Path) -> tuple[dict[str, Any], list[ScoreEntry]]:
    """The header and every test case line, each checked on its own: a string `id` seen once, a
    2-D matrix of finite numbers, `texts` (if present) a list of strings, one per column."""
    header = read_header(path)
    entries: list[ScoreEntry] = []
    seen: set[str] = set()
    for where, entry in iter_jsonl(path, first_line=2):  # line 1 is the header
        case_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(case_id, str):
            raise where.error("missing string 'id'")
        if case_id in seen:
            raise where.error(f"duplicate id {case_id!r}")
        seen.add(case_id)
        try:
            values = np.asarray(entry.get("scores"), dtype=np.float64)
        except (TypeError, ValueError):
            raise where.error(f"'scores' of {case_id!r} is not a matrix of numbers") from None
        raw = entry.get("scores")
        if values.ndim != 2 or values.size == 0 or _has_bool(raw):
            raise where.error(f"'scores' of {case_id!r} must be a non-empty 2-D matrix of numbers")
        if not np.isfinite(values).all():  # only reachable through a parser that lets them in
            raise where.error(f"'scores' of {case_id!r} holds a non-finite number")
        texts = entry.get("texts")
        if texts is not None:
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise where.error(f"'texts' of {case_id!r} must be a list of strings")
            if len(texts) != values.shape[1]:
                raise where.error(f"{case_id!r} has {len(texts)} texts but {values.shape[1]} score columns")
            texts = tuple(texts)
        entries.append(ScoreEntry(case_id, values, texts, where.number))
    if not entries:
        raise ScoreFileError(path, None, "no test case after the header")
    return header, entries


def _has_bool(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def read_scores(path: Path, cases: Sequence[BenchmarkCase]) -> dict[str, np.ndarray]:
    """`{case_id: scores}`; a line whose `texts` differ from the loaded case's options is an error."""
    _, entries = read_entries(path)
    options = {case.case_id: case.texts for case in cases}
    out: dict[str, np.ndarray] = {}
    for entry in entries:
        loaded = options.get(entry.case_id)
        if entry.texts is not None and loaded is not None and entry.texts != loaded:
            raise ScoreFileError(
                path,
                entry.line,
                f"the options of {entry.case_id!r} differ from the loaded ones (file "
                f"{list(entry.texts)!r}, loaded {list(loaded)!r}); another seed, file or text tool?",
            )
        out[entry.case_id] = entry.scores
    return out
