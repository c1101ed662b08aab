"""Every fine-grained probe benchmark under a list of pair scorers, through the official-format
loaders (ARO, Winoground, VALSE, SugarCrepe; BENCHMARKS.md). Recipe-agnostic: ALBEF/NAS (ITM, ITC),
MUG (caption likelihood) and UTA (student-teacher cosine) all come through here.

The probe folder's manifest says what is scored: the synthetic probes (`nas.data.probes.write_probes`,
`data.source: synthetic`) or the real, downloaded benchmark folders
(`nas.evaluation.benchmark_folders.write_benchmark_manifest`, `data.source: files`); both are read by
`nas.data.probes.probe_benchmarks` and scored by the same loaders and metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nas.evaluation.encoding_cache import shared_encodings
from nas.evaluation.scorers import PairScorer

# Benchmark options that depend on the scorer, e.g. VALSE's caption/foil precision needs a match
# threshold that only a probability has: (scorer, benchmark name) -> extra config keys.
ConfigFor = Callable[[PairScorer, str], dict[str, Any]]


def run_probe_suite(
    scorers: Sequence[PairScorer],
    probes_root: str | Path,
    benchmarks: Sequence[str] = (),
    scores_dir: str | Path | None = None,
    config_for: ConfigFor | None = None,
    *,
    outcomes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """{benchmark: {scorer.name: result}}; per-pair scores go to `scores_dir/<benchmark>.<scorer>.jsonl`
    (the metrics can be recomputed from those files) and are dropped from the returned results, as
    are the per-case outcomes (`evaluate_benchmark`'s "outcomes"): pass a dict as `outcomes` to
    receive them, `{benchmark: {scorer.name: {"metric", "unit", "case_ids", "outcomes"}}}`."""
    from nas.data.probes import probe_benchmarks

    suite = probe_benchmarks(probes_root)
    names = list(benchmarks) or sorted(suite)
    unknown = [n for n in names if n not in suite]
    if unknown:
        raise ValueError(f"benchmarks {unknown} are not among the probes {sorted(suite)} in {probes_root}")
    if scores_dir is not None:
        Path(scores_dir).mkdir(parents=True, exist_ok=True)
    from nas.progress import progress

    results: dict[str, dict[str, Any]] = {}
    pairs = [(scorer, name) for scorer in scorers for name in names]
    # One model's scorers share one cache of encodings for the whole suite: each distinct image and
    # text is encoded once, and each distinct pair scored once, across benchmarks and scorers.
    with shared_encodings(scorers):
        for scorer, name in progress(pairs, desc="fine-grained probes (benchmark x scorer)"):
            _score_one(scorer, name, suite[name], scores_dir, config_for, results, outcomes)
    return results


def _score_one(
    scorer: PairScorer,
    name: str,
    spec: dict[str, Any],
    scores_dir: str | Path | None,
    config_for: ConfigFor | None,
    results: dict[str, dict[str, Any]],
    outcomes: dict[str, dict[str, Any]] | None,
) -> None:
    from nas.evaluation.benchmarks import evaluate_benchmark

    config = {**spec["config"], **(config_for(scorer, name) if config_for else {})}
    result = evaluate_benchmark(
        name,
        spec["root"],
        scorer,
        config,
        score_file=None if scores_dir is None else Path(scores_dir) / f"{name}.{scorer.name}.jsonl",
        **spec["load_options"],
    )
    result.pop("scores", None)  # kept in the score file, not in the metrics JSON
    per_case = result.pop("outcomes", None)  # one value per case: not for the metrics JSON either
    if outcomes is not None and per_case is not None:
        outcomes.setdefault(name, {})[scorer.name] = per_case
    results.setdefault(name, {})[scorer.name] = result
