"""One entry point per use: run a scorer on a benchmark, or re-score a file of saved scores.

Both return the same result dict:
    {"benchmark", "scorer", "unit": "percent", "chance", "metrics", "n_cases", "config", "root",
     "scores": {case_id: [[...]]}}   # scores[image][text] per test case

Names: vg_relation, vg_attribution, coco_order, flickr30k_order, winoground, valse, sugarcrepe.
`root` is the folder with the user's files: images, and the annotations that are not shipped
(ARO, Winoground). VALSE and SugarCrepe read their shipped annotations unless the config names
another `annotation_dir` (the same loaders read the synthetic probes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nas.config.base import from_dict, to_dict
from nas.evaluation.benchmarks import aro, aro_order, score_files, sugarcrepe, valse, winoground
from nas.evaluation.benchmarks.common import BenchmarkCase, ScoreError, check_scores_match, score_cases
from nas.evaluation.scorers import PairScorer

ScoreFormat = Literal["harness", "winoground", "fge"]


@dataclass(frozen=True)
class BenchmarkDefinition:
    name: str
    config_type: type
    load: Callable[..., list[BenchmarkCase]]  # load(root, config, *, check_images, **options)
    metrics: Callable[[Sequence[BenchmarkCase], Mapping[str, np.ndarray], Any], dict[str, Any]]
    chance: Mapping[str, float]  # percent
    formats: tuple[ScoreFormat, ...] = ("harness",)


BENCHMARKS: dict[str, BenchmarkDefinition] = {
    definition.name: definition
    for definition in (
        BenchmarkDefinition(
            "vg_relation", aro.AroConfig, aro.load_vg_relation, aro.vg_relation_metrics, {"macro": 50.0}
        ),
        BenchmarkDefinition(
            "vg_attribution",
            aro.AroConfig,
            aro.load_vg_attribution,
            aro.vg_attribution_metrics,
            {"macro": 50.0},
        ),
        BenchmarkDefinition(
            "coco_order",
            aro_order.OrderConfig,
            aro_order.load_coco_order,
            aro_order.order_metrics,
            {"precision_at_1": 20.0},
        ),
        BenchmarkDefinition(
            "flickr30k_order",
            aro_order.OrderConfig,
            aro_order.load_flickr30k_order,
            aro_order.order_metrics,
            {"precision_at_1": 20.0},
        ),
        BenchmarkDefinition(
            "winoground",
            winoground.WinogroundConfig,
            winoground.load_winoground,
            winoground.winoground_metrics,
            {"text": 25.0, "image": 25.0, "group": 100.0 / 6.0},  # 6, 6 and 4 of the 24 orderings
            ("harness", "winoground"),
        ),
        BenchmarkDefinition(
            "valse",
            valse.ValseConfig,
            valse.load_valse,
            valse.valse_metrics,
            {"acc_r": 50.0, "auroc": 50.0},
            ("harness", "fge"),
        ),
        BenchmarkDefinition(
            "sugarcrepe",
            sugarcrepe.SugarCrepeConfig,
            sugarcrepe.load_sugarcrepe,
            sugarcrepe.sugarcrepe_metrics,
            {"accuracy": 50.0},
        ),
    )
}


def _definition(name: str) -> BenchmarkDefinition:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def _config(definition: BenchmarkDefinition, config: Any) -> Any:
    if config is None:
        return definition.config_type()
    if isinstance(config, definition.config_type):
        return config
    if isinstance(config, dict):
        return from_dict(definition.config_type, config, f"benchmarks.{definition.name}")
    raise TypeError(
        f"{definition.name}: config must be a {definition.config_type.__name__} or a dict, got {config!r}"
    )


def _result(
    definition: BenchmarkDefinition,
    scorer_name: str,
    config: Any,
    root: Path | None,
    cases: Sequence[BenchmarkCase],
    scores: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    return {
        "benchmark": definition.name,
        "scorer": scorer_name,
        "unit": "percent",
        "chance": dict(definition.chance),
        "metrics": definition.metrics(cases, scores, config),
        "n_cases": len(cases),
        "config": to_dict(config) if dataclasses.is_dataclass(config) else config,
        "root": None if root is None else str(root),
        "scores": {case.case_id: scores[case.case_id].tolist() for case in cases},
    }


def write_score_file(
    path: Path,
    name: str,
    cases: Sequence[BenchmarkCase],
    scores: Mapping[str, np.ndarray],
    scorer_name: str,
    file_format: ScoreFormat = "harness",
) -> None:
    """Write per-option scores: the harness format, or a benchmark's native one."""
    definition = _definition(name)
    if file_format not in definition.formats:
        raise ValueError(f"{name}: score file format {file_format!r} not in {definition.formats}")
    if file_format == "winoground":
        winoground.write_official_scores(path, cases, scores)
    elif file_format == "fge":
        valse.write_fge_scores(path, cases, scores)
    else:
        score_files.write_scores(path, benchmark=name, scorer=scorer_name, cases=cases, scores=scores)


def evaluate_benchmark(
    name: str,
    root: str | Path | None,
    scorer: PairScorer,
    config: Any = None,
    *,
    batch_size: int = 64,
    score_file: str | Path | None = None,
    score_file_format: ScoreFormat = "harness",
    **load_options: Any,
) -> dict[str, Any]:
    """Load `name` from `root`, score every case with `scorer`, and compute the official metrics.

    `config`: the benchmark's config dataclass or a dict of its keys. `load_options` go to the
    loader (Order: `tagger=`, `tokenizer=`). With `score_file`, the raw per-option scores are
    also written there.
    """
    definition = _definition(name)
    config = _config(definition, config)
    root_path = None if root is None else Path(root)
    cases = definition.load(root_path, config, check_images=True, **load_options)
    scores = score_cases(cases, scorer, benchmark=name, batch_size=batch_size)
    if score_file is not None:
        write_score_file(Path(score_file), name, cases, scores, scorer.name, score_file_format)
    return _result(definition, scorer.name, config, root_path, cases, scores)


def score_from_file(
    name: str,
    root: str | Path | None,
    path: str | Path,
    config: Any = None,
    *,
    file_format: ScoreFormat | Literal["auto"] = "auto",
    scorer_name: str | None = None,
    **load_options: Any,
) -> dict[str, Any]:
    """Metrics from a file of precomputed per-option scores; no images are opened.

    Formats: "harness" (score_files.py), "winoground" (official `{"label": "<id>_c<j>_i<k>",
    "score"}`), "fge" (FGE's VALSE files); "auto" picks the harness format when line 1 is its
    header, else the benchmark's native one. The file must cover exactly the loaded cases.
    The scorer name is the header's, else `scorer_name`, else the file's stem.
    """
    definition = _definition(name)
    config = _config(definition, config)
    path = Path(path)
    root_path = None if root is None else Path(root)
    cases = definition.load(root_path, config, check_images=False, **load_options)
    if file_format == "auto":
        try:
            score_files.read_header(path)
            file_format = "harness"
        except ScoreError:
            native = [f for f in definition.formats if f != "harness"]
            file_format = native[0] if native else "harness"
    if file_format not in definition.formats:
        raise ValueError(f"{name}: score file format {file_format!r} not in {definition.formats}")
    if file_format == "harness":
        header = score_files.read_header(path)
        if header.get("benchmark") != name:
            raise ScoreError(f"{path}: scores are for {header.get('benchmark')!r}, not {name!r}")
        scorer_name = header.get("scorer") or scorer_name
        raw = score_files.read_scores(path, cases)
    elif file_format == "winoground":
        raw = winoground.read_official_scores(path)
    else:
        raw = valse.read_fge_scores(path, cases)
    scores = check_scores_match(cases, raw, benchmark=name, source=str(path))
    return _result(definition, scorer_name or path.stem, config, root_path, cases, scores)
