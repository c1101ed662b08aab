"""One entry point per use: run a scorer on a benchmark, or re-score a file of saved scores.

Both return the same result dict:
    {"benchmark", "scorer", "unit": "percent", "chance", "metrics", "n_cases", "config", "root",
     "scores": {case_id: [[...]]},   # scores[image][text] per test case
     "outcomes": {"metric", "unit": "fraction", "case_ids", "outcomes"}}

`outcomes` are the per-case results behind one figure of the metrics (`BenchmarkDefinition.headline`,
a dotted path into `metrics`), in case order, each in [0, 1], computed by the benchmark's own
per-case rule (the function its metric counts with), so that their mean is that figure as a
fraction: what paired statistics over models need (two models' arrays are paired by position, as
the case order of a benchmark is fixed by its files). `outcomes` is None where no per-case mean
equals the figure (an Order score file whose seeds hold different numbers of cases).

Names: vg_relation, vg_attribution, coco_order, flickr30k_order, winoground, valse, sugarcrepe.
`root` is the folder with the user's files: images, and the annotations that are not shipped
(ARO, Winoground). VALSE and SugarCrepe read their shipped annotations unless the config names
another `annotation_dir` (the same loaders read the synthetic probes).

Rescoring needs no root for Winoground (the overall figures need only the four scores of each
example; the tag breakdowns need `examples.jsonl`) nor for COCO-/Flickr30k-Order (a harness file
holds each case's seed and options). Next to a harness score file, `evaluate_benchmark` also writes
the benchmark's official format where it has one (Winoground: `<name>.official.jsonl`), which the
official statistics script reads. The command-line front door is `nas score` (rescore.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nas.config.base import from_dict, to_dict
from nas.evaluation.benchmarks import aro, aro_order, score_files, sugarcrepe, valse, winoground
from nas.evaluation.benchmarks.common import (
    PAIRS_PER_CALL,
    BenchmarkCase,
    ImageRef,
    ScoreFileError,
    check_scores_match,
    score_cases,
)

if TYPE_CHECKING:  # annotation only: rescoring a file must not import torch
    from nas.evaluation.scorers import PairScorer

ScoreFormat = Literal["harness", "winoground", "fge"]
SCORE_FORMATS: tuple[ScoreFormat, ...] = ("harness", "winoground", "fge")


Outcomes = Callable[[Sequence[BenchmarkCase], Mapping[str, np.ndarray], Any], list[float] | None]


@dataclass(frozen=True)
class BenchmarkDefinition:
    name: str
    config_type: type
    load: Callable[..., list[BenchmarkCase]]  # load(root, config, *, check_images, **options)
    metrics: Callable[[Sequence[BenchmarkCase], Mapping[str, np.ndarray], Any], dict[str, Any]]
    chance: Mapping[str, float]  # percent
    # Per-case outcomes in [0, 1] (case order) whose mean is the figure at `headline` (a dotted path
    # into the metrics, in percent) as a fraction.
    outcomes: Outcomes
    headline: str
    formats: tuple[ScoreFormat, ...] = ("harness",)
    # The official format written beside every harness score file (`official_score_path`).
    official_format: ScoreFormat | None = None
    # Rescoring works without the annotations (root None): the score file says all the metric needs.
    rescore_without_root: bool = False


BENCHMARKS: dict[str, BenchmarkDefinition] = {
    definition.name: definition
    for definition in (
        BenchmarkDefinition(
            "vg_relation",
            aro.AroConfig,
            aro.load_vg_relation,
            aro.vg_relation_metrics,
            {"macro": 50.0},
            outcomes=aro.vg_outcomes,
            headline="micro_all",
        ),
        BenchmarkDefinition(
            "vg_attribution",
            aro.AroConfig,
            aro.load_vg_attribution,
            aro.vg_attribution_metrics,
            {"macro": 50.0},
            outcomes=aro.vg_outcomes,
            headline="micro_all",
        ),
        BenchmarkDefinition(
            "coco_order",
            aro_order.OrderConfig,
            aro_order.load_coco_order,
            aro_order.order_metrics,
            {"precision_at_1": 20.0},
            outcomes=aro_order.order_outcomes,
            headline="precision_at_1",
            rescore_without_root=True,
        ),
        BenchmarkDefinition(
            "flickr30k_order",
            aro_order.OrderConfig,
            aro_order.load_flickr30k_order,
            aro_order.order_metrics,
            {"precision_at_1": 20.0},
            outcomes=aro_order.order_outcomes,
            headline="precision_at_1",
            rescore_without_root=True,
        ),
        BenchmarkDefinition(
            "winoground",
            winoground.WinogroundConfig,
            winoground.load_winoground,
            winoground.winoground_metrics,
            {"text": 25.0, "image": 25.0, "group": 100.0 / 6.0},  # 6, 6 and 4 of the 24 orderings
            outcomes=winoground.group_outcomes,
            headline="group",
            formats=("harness", "winoground"),
            official_format="winoground",
            rescore_without_root=True,
        ),
        BenchmarkDefinition(
            "valse",
            valse.ValseConfig,
            valse.load_valse,
            valse.valse_metrics,
            {"acc_r": 50.0, "auroc": 50.0},
            outcomes=valse.pairwise_outcomes,
            headline="micro.acc_r",
            formats=("harness", "fge"),
        ),
        BenchmarkDefinition(
            "sugarcrepe",
            sugarcrepe.SugarCrepeConfig,
            sugarcrepe.load_sugarcrepe,
            sugarcrepe.sugarcrepe_metrics,
            {"accuracy": 50.0},
            outcomes=sugarcrepe.sugarcrepe_outcomes,
            headline="pooled.accuracy",
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


def metric_value(metrics: Mapping[str, Any], path: str) -> float:
    """The figure at a dotted `path` of a benchmark's metrics (e.g. "micro.acc_r")."""
    value: Any = metrics
    for key in path.split("."):
        value = value[key]
    return float(value)


def headline_node(name: str, metrics: Mapping[str, Any]) -> Any:
    """What stands at benchmark `name`'s headline path in `metrics`: its figure, or the summary cell
    ({"mean", ...}) of an aggregated result; None where the benchmark or the path is absent."""
    definition = BENCHMARKS.get(name)
    if definition is None:
        return None
    node: Any = metrics
    for key in definition.headline.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def headline_figures(name: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The figures a benchmark's paper reports, in percent (the report's tables and `nas score` show them)."""
    if name in ("vg_relation", "vg_attribution"):
        return {"macro acc": metrics["macro"], "micro acc": metrics["micro"]}
    if name in ("coco_order", "flickr30k_order"):
        out = {"P@1 (mean over seeds)": metrics["precision_at_1"]}
        if metrics.get("sd") is not None:
            out["sd over seeds"] = metrics["sd"]
        return out
    if name == "winoground":
        return {"text": metrics["text"], "image": metrics["image"], "group": metrics["group"]}
    if name == "valse":
        out = {
            "acc_r (macro)": metrics["macro"]["acc_r"],
            "acc_r (micro)": metrics["micro"]["acc_r"],
            "AUROC (macro)": metrics["macro"]["auroc"],
        }
        if "min_p_c_p_f" in metrics["macro"]:
            out["min(p_c, p_f) (macro)"] = metrics["macro"]["min_p_c_p_f"]
        return out
    if name == "sugarcrepe":
        return {
            "mean of files": metrics["mean_of_files"],
            **{f"{k} (pooled)": v["accuracy"] for k, v in metrics["categories"].items()},
        }
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def case_outcomes(
    definition: BenchmarkDefinition,
    config: Any,
    cases: Sequence[BenchmarkCase],
    scores: Mapping[str, np.ndarray],
    metrics: Mapping[str, Any],
) -> dict[str, Any] | None:
    """`{"metric", "unit": "fraction", "case_ids", "outcomes"}` of the benchmark's per-case rule (see
    the module docstring), checked against the figure it averages to; None where it has none."""
    outcomes = definition.outcomes(cases, scores, config)
    if outcomes is None:
        return None
    values = [float(v) for v in outcomes]
    if len(values) != len(cases) or not all(0.0 <= v <= 1.0 for v in values):
        raise RuntimeError(f"{definition.name}: per-case outcomes must be one value in [0, 1] per case")
    figure = metric_value(metrics, definition.headline)
    if not math.isclose(100.0 * math.fsum(values) / len(values), figure, rel_tol=1e-9, abs_tol=1e-9):
        raise RuntimeError(
            f"{definition.name}: the per-case outcomes average to {100.0 * math.fsum(values) / len(values)}"
            f" %, but {definition.headline} is {figure} %"
        )
    return {
        "metric": definition.headline,
        "unit": "fraction",
        "case_ids": [case.case_id for case in cases],
        "outcomes": values,
    }


def _result(
    definition: BenchmarkDefinition,
    scorer_name: str,
    config: Any,
    root: Path | None,
    cases: Sequence[BenchmarkCase],
    scores: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    metrics = definition.metrics(cases, scores, config)
    return {
        "benchmark": definition.name,
        "scorer": scorer_name,
        "unit": "percent",
        "chance": dict(definition.chance),
        "metrics": metrics,
        "n_cases": len(cases),
        "config": to_dict(config) if dataclasses.is_dataclass(config) else config,
        "root": None if root is None else str(root),
        "scores": {case.case_id: scores[case.case_id].tolist() for case in cases},
        "outcomes": case_outcomes(definition, config, cases, scores, metrics),
    }


def official_score_path(score_file: str | Path) -> Path:
    """Where the official-format copy of a harness score file goes: `x.jsonl` -> `x.official.jsonl`."""
    path = Path(score_file)
    return path.with_name(f"{path.stem}.official{path.suffix or '.jsonl'}")


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
    batch_size: int = PAIRS_PER_CALL,
    score_file: str | Path | None = None,
    score_file_format: ScoreFormat = "harness",
    official_score_file: bool = True,
    **load_options: Any,
) -> dict[str, Any]:
    """Load `name` from `root`, score every case with `scorer`, and compute the official metrics.

    `config`: the benchmark's config dataclass or a dict of its keys. `batch_size`: pairs per
    `scorer.score` call (`score_cases`; the scorer batches its own forward passes). `load_options` go to the
    loader (Order: `tagger=`, `tokenizer=`). With `score_file`, the raw per-option scores are
    also written there; for a harness-format file of a benchmark with an official score format
    (Winoground), the same scores also go to `official_score_path(score_file)` unless
    `official_score_file` is False.
    """
    definition = _definition(name)
    config = _config(definition, config)
    root_path = None if root is None else Path(root)
    cases = definition.load(root_path, config, check_images=True, **load_options)
    scores = score_cases(cases, scorer, benchmark=name, batch_size=batch_size)
    if score_file is not None:
        write_score_file(Path(score_file), name, cases, scores, scorer.name, score_file_format)
        official = definition.official_format
        if official_score_file and score_file_format == "harness" and official is not None:
            write_score_file(official_score_path(score_file), name, cases, scores, scorer.name, official)
    return _result(definition, scorer.name, config, root_path, cases, scores)


def detect_format(path: str | Path) -> ScoreFormat:
    """The format of a score file, from its first line: the harness header, an official
    Winoground label (`<id>_c<j>_i<k>`) or an FGE VALSE label (`<n>_c` / `<n>_f`)."""
    path = Path(path)
    where, entry = score_files.first_entry(path)
    if score_files.is_header(entry):
        return "harness"
    label = entry.get("label") if isinstance(entry, dict) else None
    if isinstance(label, str) and winoground.LABEL_PATTERN.match(label):
        return "winoground"
    if isinstance(label, str) and valse.FGE_LABEL_PATTERN.match(label):
        return "fge"
    raise where.error(
        "cannot tell the score-file format from this line: expected a harness header "
        f'{{"format": "{score_files.FORMAT}", ...}} or a {{"label", "score"}} line of the '
        "official Winoground ('<id>_c<j>_i<k>') or FGE VALSE ('<n>_c' / '<n>_f') format"
    )


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
    "score"}`), "fge" (FGE's VALSE files); "auto" infers it from the first line
    (`detect_format`). The file must cover exactly the loaded cases. With `root` None, Winoground
    and the Order sets are rescored from the file alone (`definition.rescore_without_root`):
    Winoground's overall figures without breakdowns, Order's Precision@1 over the seeds the file
    holds. The scorer name is the header's, else `scorer_name`, else the file's stem. Besides the
    keys of `evaluate_benchmark`'s result, the result has `score_file`: its path and format.
    Every fault of the file itself is a ScoreFileError naming the file and, where there is one,
    the line.
    """
    definition = _definition(name)
    config = _config(definition, config)
    path = Path(path)
    if file_format not in ("auto", *SCORE_FORMATS):
        raise ValueError(f"file_format must be 'auto' or one of {list(SCORE_FORMATS)}, got {file_format!r}")
    inferred = file_format == "auto"
    if inferred:
        file_format = detect_format(path)
    if file_format not in definition.formats:
        how = "inferred from its first line" if inferred else "as requested"
        raise ScoreFileError(
            path,
            None,
            f"{name} does not read the {file_format!r} score format ({how}); "
            f"its formats: {list(definition.formats)}",
        )
    root_path = None if root is None else Path(root)
    if root_path is None and definition.rescore_without_root:
        cases, raw, header_scorer, config = _rescore_from_file_alone(name, path, file_format, config)
        scorer_name = header_scorer or scorer_name
    else:
        cases = definition.load(root_path, config, check_images=False, **load_options)
        if file_format == "harness":
            header = score_files.read_header(path)
            _check_header_benchmark(path, header, name)
            scorer_name = header.get("scorer") or scorer_name
            raw = score_files.read_scores(path, cases)
        elif file_format == "winoground":
            raw = winoground.read_official_scores(path)
        else:
            raw = valse.read_fge_scores(path, cases)
    scores = check_scores_match(cases, raw, benchmark=name, source=str(path))
    result = _result(definition, scorer_name or path.stem, config, root_path, cases, scores)
    result["score_file"] = {"path": str(path), "format": file_format}
    return result


def _check_header_benchmark(path: Path, header: dict[str, Any], name: str) -> None:
    if header.get("benchmark") != name:
        raise ScoreFileError(path, 1, f"scores are for {header.get('benchmark')!r}, not {name!r}")


def _rescore_from_file_alone(
    name: str, path: Path, file_format: ScoreFormat, config: Any
) -> tuple[list[BenchmarkCase], dict[str, np.ndarray], str | None, Any]:
    """(cases, scores, the header's scorer name, config) built from the score file alone."""
    if file_format == "winoground":
        raw = winoground.read_official_scores(path)
        return winoground.cases_from_scores(raw), raw, None, config
    header, entries = score_files.read_entries(path)
    _check_header_benchmark(path, header, name)
    if name == "winoground":
        for entry in entries:
            if entry.scores.shape != (2, 2) or not entry.case_id.isdigit():
                raise ScoreFileError(
                    path,
                    entry.line,
                    f"a Winoground case has a numeric id and 2 x 2 scores; got id {entry.case_id!r}, "
                    f"shape {entry.scores.shape}",
                )
        raw = {entry.case_id: entry.scores for entry in entries}
        texts = {entry.case_id: entry.texts for entry in entries if entry.texts is not None}
        return winoground.cases_from_scores(raw, texts), raw, header.get("scorer"), config
    # COCO-/Flickr30k-Order: the id names the seed, the file holds the options.
    cases, seeds = [], []
    for entry in entries:
        match = aro_order.CASE_ID.match(entry.case_id)
        if match is None or entry.scores.shape[0] != 1 or entry.scores.shape[1] < 2:
            raise ScoreFileError(
                path,
                entry.line,
                f"an Order case has an id 'seed<s>/<entry>_<caption>' and 1 x (original + perturbations) "
                f"scores; got id {entry.case_id!r}, shape {entry.scores.shape}",
            )
        seed, entry_index, caption_index = (int(group) for group in match.groups())
        if seed not in seeds:
            seeds.append(seed)
        texts = entry.texts or tuple(f"option {j}" for j in range(entry.scores.shape[1]))
        cases.append(
            BenchmarkCase(
                case_id=entry.case_id,
                images=(ImageRef(Path(f"entry_{entry_index}")),),
                texts=texts,
                meta={"seed": seed, "entry": entry_index, "caption_index": caption_index},
            )
        )
    config = dataclasses.replace(config, seeds=tuple(seeds))
    return cases, {entry.case_id: entry.scores for entry in entries}, header.get("scorer"), config
