"""Fine-grained zero-shot benchmarks: ARO (VG-Relation, VG-Attribution, COCO-/Flickr30k-Order),
Winoground, VALSE and SugarCrepe, read in their official formats and scored by their official
rules (spec: BENCHMARKS.md). A model enters only through a `PairScorer` (nas.evaluation.scorers).

    result = evaluate_benchmark("valse", "/data/valse", scorer, {"match_threshold": 0.5})
    again = score_from_file("valse", None, "runs/valse_scores.jsonl")

On the command line: `nas score BENCHMARK SCORE_FILE` (rescore.py).
"""

from __future__ import annotations

from nas.evaluation.benchmarks.aro import AroConfig, load_excluded_relations
from nas.evaluation.benchmarks.aro_order import OrderConfig
from nas.evaluation.benchmarks.common import (
    BenchmarkCase,
    BenchmarkDataError,
    ChecksumError,
    ImageRef,
    MissingBenchmarkFileError,
    ScoreError,
    ScoreFileError,
    resource_path,
)
from nas.evaluation.benchmarks.runner import (
    BENCHMARKS,
    detect_format,
    evaluate_benchmark,
    official_score_path,
    score_from_file,
    write_score_file,
)
from nas.evaluation.benchmarks.sugarcrepe import SugarCrepeConfig
from nas.evaluation.benchmarks.text import MissingTextToolError, pre_caption
from nas.evaluation.benchmarks.valse import ValseConfig
from nas.evaluation.benchmarks.winoground import WinogroundConfig

__all__ = [
    "BENCHMARKS",
    "AroConfig",
    "BenchmarkCase",
    "BenchmarkDataError",
    "ChecksumError",
    "ImageRef",
    "MissingBenchmarkFileError",
    "MissingTextToolError",
    "OrderConfig",
    "ScoreError",
    "ScoreFileError",
    "SugarCrepeConfig",
    "ValseConfig",
    "WinogroundConfig",
    "detect_format",
    "evaluate_benchmark",
    "load_excluded_relations",
    "official_score_path",
    "pre_caption",
    "resource_path",
    "score_from_file",
    "write_score_file",
]
