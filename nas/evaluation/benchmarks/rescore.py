"""Rescoring a per-example score file: the library side of `nas score BENCHMARK SCORE_FILE`.

    payload = rescore("winoground", "runs/evaluate/nas/scores/finetune/seed0/winoground.itm_probability.jsonl")
    print("\n".join(summary_lines(payload)))

`rescore` reads the file (format inferred from its first line unless given), finds the
annotations the benchmark needs (`--annotations`; VALSE and SugarCrepe default to the shipped
copies, Winoground and the Order sets need none; or a probe folder's manifest, as the evaluate
stage reads it) and returns the official figures: the report's headline figures (the same function,
`nas.evaluation.benchmarks.runner.headline_figures`, picks them for the report) and the full metrics,
computed by the same code and tie rules as `evaluate_benchmark`. Every fault of the score file is a ScoreFileError
naming the file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.evaluation.benchmarks.common import (
    BenchmarkDataError,
    ChecksumError,
    MissingBenchmarkFileError,
    ScoreError,
    resource_path,
)
from nas.evaluation.benchmarks.runner import BENCHMARKS, SCORE_FORMATS, headline_figures, score_from_file
from nas.evaluation.benchmarks.text import MissingTextToolError

# What --annotations means per benchmark, and what happens without it (also `nas score --help`).
ANNOTATIONS: dict[str, str] = {
    "vg_relation": "required: visual_genome_relation.json or its folder (not shipped; BENCHMARKS.md §1.1)",
    "vg_attribution": "required: visual_genome_attribution.json or its folder (not shipped)",
    "coco_order": "optional: coco_karpathy_test.json or its folder; rebuilds the options (spaCy, NLTK) "
    "and checks them against the file's. Without: Precision@1 over the seeds in the file",
    "flickr30k_order": "optional: flickr30k_test.json or its folder (as coco_order)",
    "winoground": "optional: examples.jsonl or its folder (gated), for the tag breakdowns. "
    "Without: text / image / group over the examples in the file",
    "valse": "default: the 11 shipped JSONs; or a folder of VALSE JSONs, or one JSON",
    "sugarcrepe": "default: the 7 shipped JSONs; or a folder of SugarCrepe JSONs, or one JSON",
}
FORMATS: dict[str, str] = {
    "harness": 'the harness\'s per-option file: a header line {"format": "nas-benchmark-scores", ...}, '
    "then one line per case; written by the evaluate stage as "
    "runs/evaluate/<variant>/scores/<stage>/<run>/<benchmark>.<scorer>.jsonl",
    "winoground": 'official Winoground: {"label": "<id>_c<j>_i<k>", "score": x}, 4 lines per example '
    "(statistics/model_scores/*.jsonl, FGE's Winoground outputs, and the evaluate stage's "
    "winoground.<scorer>.official.jsonl)",
    "fge": 'FGE\'s per-pair VALSE file (github.com/e-bug/fine-grained-evals): {"label": "<n>_c" | '
    '"<n>_f", "score", "instrument", "piece", "type", "id"}, n = running id over the 11 files',
}
# (file key of the benchmark's config, when --annotations names a file rather than a folder)
_ANNOTATION_FILE_KEY = {
    "vg_relation": "relation_file",
    "vg_attribution": "attribution_file",
    "coco_order": "coco_file",
    "flickr30k_order": "flickr_file",
    "winoground": "examples_file",
}
# Errors the command reports in one line (exit status 2): bad files, bad options, missing inputs.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ScoreError,
    BenchmarkDataError,
    ChecksumError,
    MissingBenchmarkFileError,
    MissingTextToolError,
    ValueError,
    OSError,
)


def help_epilog(width: int = 96) -> str:
    """The benchmark x format table of `nas score --help`."""
    import textwrap

    def wrapped(text: str, indent: str, first: str | None = None) -> list[str]:
        return textwrap.wrap(
            text,
            width,
            initial_indent=indent if first is None else first,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        )

    column = max(map(len, BENCHMARKS))
    lines = ["benchmarks (the score formats each reads) and what --annotations is for each:"]
    for name, definition in BENCHMARKS.items():
        lines.append(f"  {name:<{column}}  formats: {', '.join(definition.formats)}")
        lines += wrapped(f"annotations {ANNOTATIONS[name]}", " " * (column + 4))
    lines += ["", "formats (--format; default: inferred from the score file's first line):"]
    for name in SCORE_FORMATS:
        lines += wrapped(FORMATS[name], " " * (column + 4), f"  {name:<{column}}  ")
    lines.append("")
    lines += wrapped(
        "Ties follow each benchmark's official rule (BENCHMARKS.md §0.3): a tie is wrong everywhere "
        "except ARO Order, where a tie with the original counts as right. A bad score file or option "
        "exits with status 2 and one line naming the file and line.",
        "",
    )
    return "\n".join(lines)


def resolve_annotations(name: str, annotations: str | Path | None) -> tuple[Path | None, dict[str, Any]]:
    """(root, config keys) for `--annotations`: a folder, or one annotation file in it."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    if annotations is None:
        if name in ("vg_relation", "vg_attribution"):
            raise ValueError(f"{name}: --annotations is {ANNOTATIONS[name]}")
        return None, {}
    path = Path(annotations)
    if not path.exists():
        raise MissingBenchmarkFileError(f"{name}: annotations {path} not found ({ANNOTATIONS[name]})")
    if name in ("valse", "sugarcrepe"):
        if path.is_dir():
            return None, {"annotation_dir": str(path)}
        return None, {"annotation_dir": str(path.parent), "files": [path.stem]}
    if path.is_dir():
        return path, {}
    return path.parent, {_ANNOTATION_FILE_KEY[name]: path.name}


def _annotation_label(name: str, root: Path | None, config: dict[str, Any]) -> str | None:
    if root is not None:
        return str(root)
    if name in ("valse", "sugarcrepe"):
        if config.get("annotation_dir"):
            return str(config["annotation_dir"])
        shipped = resource_path(name)
        inside = shipped.is_relative_to(Path.cwd())
        return f"shipped ({shipped.relative_to(Path.cwd()) if inside else shipped})"
    return None


def rescore(
    name: str,
    score_file: str | Path,
    *,
    file_format: str = "auto",
    annotations: str | Path | None = None,
    probes: str | Path | None = None,
    overrides: Sequence[str] = (),
    scorer_name: str | None = None,
) -> dict[str, Any]:
    """The official figures of a score file, as a JSON-ready dict (no per-case scores).

    `annotations`: see ANNOTATIONS. `probes`: a probe folder (`data/probes`), whose manifest gives
    the root, config and text tools, exactly as the evaluate stage loads it (for the harness files
    of the pipeline's probes). `overrides`: `KEY=VALUE` items of the benchmark's config (YAML
    values), e.g. `match_threshold=0.5` (VALSE p_c / p_f of an ITM probability) or
    `exclude_relations=false`.
    """
    from nas.config.base import set_dotted
    from nas.config.params import parse_override

    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    load_options: dict[str, Any] = {}
    if probes is not None:
        if annotations is not None:
            raise ValueError("give --annotations or --probes, not both")
        from nas.data.probes import probe_benchmarks

        suite = probe_benchmarks(probes)
        if name not in suite:
            raise ValueError(f"{name} is not among the probes {sorted(suite)} of {probes}")
        root, config = suite[name]["root"], dict(suite[name]["config"])
        load_options = suite[name]["load_options"]
    else:
        root, config = resolve_annotations(name, annotations)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value)
    result = score_from_file(
        name,
        root,
        score_file,
        config,
        file_format=file_format,  # type: ignore[arg-type]
        scorer_name=scorer_name,
        **load_options,
    )
    return {
        "benchmark": name,
        "score_file": result["score_file"]["path"],
        "format": result["score_file"]["format"],
        "scorer": result["scorer"],
        "annotations": _annotation_label(name, None if root is None else Path(root), config),
        "n_cases": result["n_cases"],
        "unit": result["unit"],
        "chance": result["chance"],
        "headline": headline_figures(name, result["metrics"]),
        "metrics": result["metrics"],
        "config": result["config"],
    }


# ---------------------------------------------------------------------------------------------
# Text summary


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _chance_for(figure: str, chance: dict[str, float]) -> float | None:
    if "sd" in figure.split():
        return None
    if len(chance) == 1:
        return next(iter(chance.values()))
    return next((value for key, value in chance.items() if key.lower() in figure.lower()), None)


def summary_lines(payload: dict[str, Any]) -> list[str]:
    """A human-readable summary: the headline figures with chance, then the benchmark's tables."""
    name, metrics = payload["benchmark"], payload["metrics"]
    annotations = payload["annotations"] or "none"
    lines = [
        f"{name}: {payload['score_file']}",
        f"  format {payload['format']}, scorer {payload['scorer']}, {payload['n_cases']} cases, "
        f"annotations {annotations}",
    ]
    width = max(map(len, payload["headline"]))
    for figure, value in payload["headline"].items():
        chance = _chance_for(figure, payload["chance"])
        tail = "" if chance is None else f"   (chance {_f(chance)})"
        lines.append(f"  {figure:<{width}}  {_f(value):>6}{tail}")
    lines += _DETAILS.get(name, lambda m: [])(metrics)
    return lines


def _vg_details(metrics: dict[str, Any]) -> list[str]:
    return [
        f"  groups kept {metrics['n_groups_kept']} of {metrics['n_groups']} "
        f"({metrics['n_cases_kept']} of {metrics['n_cases']} cases); micro over all cases "
        f"{_f(metrics['micro_all'])}; ties {metrics['n_ties']} (a tie is wrong); per-group table in --out"
    ]


def _order_details(metrics: dict[str, Any]) -> list[str]:
    lines = [f"  per seed ({metrics['rng_mode']} RNG; a tie with the original counts as right):"]
    for seed, row in metrics["per_seed"].items():
        lines.append(
            f"    seed {seed}: P@1 {_f(row['precision_at_1'])} ({row['n_cases']} cases, {row['n_ties']} ties)"
        )
    return lines


def _winoground_details(metrics: dict[str, Any]) -> list[str]:
    lines = [f"  {metrics['n']} examples; every comparison strict (a tie is wrong)"]
    if metrics.get("breakdowns") is None:
        return [*lines, "  tag breakdowns: need examples.jsonl (--annotations)"]
    for field_name, subsets in metrics["breakdowns"].items():
        for value, row in subsets.items():
            lines.append(
                f"    {field_name} = {value!r}: text {_f(row['text'])}, image {_f(row['image'])}, "
                f"group {_f(row['group'])} (n={row['n']})"
            )
    return lines


def _valse_details(metrics: dict[str, Any]) -> list[str]:
    names = [key for key in metrics["macro"]]
    width = max(len(stem) for stem in [*metrics["instruments"], "macro (paper Avg.)"])
    head = f"    {'instrument':<{width}}  {'n':>5}  " + "  ".join(f"{n:>11}" for n in names)
    lines = ["  per instrument (acc_r strict: a tie is wrong):", head]
    for stem, row in metrics["instruments"].items():
        lines.append(f"    {stem:<{width}}  {row['n']:>5}  " + "  ".join(f"{_f(row[n]):>11}" for n in names))
    lines.append(
        f"    {'macro (paper Avg.)':<{width}}  {'':>5}  "
        + "  ".join(f"{_f(metrics['macro'][n]):>11}" for n in names)
    )
    micro = metrics["micro"]
    lines.append(
        f"    {'micro (FGE)':<{width}}  {micro['n']:>5}  " + "  ".join(f"{_f(micro[n]):>11}" for n in names)
    )
    if metrics.get("match_threshold") is None:
        lines.append(
            "  p_c / p_f / acc / min need a match threshold: --set match_threshold=0.5 for an ITM "
            "probability (the evaluate stage sets it for ITM scorers)"
        )
    return lines


def _sugarcrepe_details(metrics: dict[str, Any]) -> list[str]:
    lines = ["  per file (strict: a tie is wrong):"]
    for stem, row in metrics["files"].items():
        lines.append(f"    {stem:<12} {_f(row['accuracy']):>6}  ({row['n']} cases, {row['n_ties']} ties)")
    return lines


_DETAILS = {
    "vg_relation": _vg_details,
    "vg_attribution": _vg_details,
    "coco_order": _order_details,
    "flickr30k_order": _order_details,
    "winoground": _winoground_details,
    "valse": _valse_details,
    "sugarcrepe": _sugarcrepe_details,
}
