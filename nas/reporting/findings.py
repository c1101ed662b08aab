"""The study's findings: each claim of the paper as an effect, an interval and a verdict.

Inputs are the evaluate stage's per-case outcomes, `runs/evaluate/<variant>/cases/<stage>/seed<k>.json`:

    {"<benchmark>": {"metric": "<headline>", "unit": "fraction", "case_ids": [...], "outcomes": [...]}, ...}

for stage in `untrained`, `pretrain_stage2`, `finetune` and pretraining seed offset k (`study.seeds`).
The outcomes' mean is the benchmark's headline as a fraction; case_ids are the same, in the same order,
for every model, and seed k of every variant shares the pretraining seed, so two models are paired by
seed and by case. Intervals come from `nas.evaluation.stats` (read its caveats on 3 seeds):

- one benchmark: `paired_difference` (two-level bootstrap over seeds and cases, both models resampled
  with the same indices) for a difference of two models; `seed_case_bootstrap` minus the chance level
  for a model against chance;
- pooled over the fine-grained benchmarks (the mean over benchmarks of the per-benchmark difference,
  every benchmark weighted equally whatever its case count): the WIDER of two intervals, (1) Student t
  (`t_interval_over_seeds`) on each seed's pooled figure and (2) a joint bootstrap that draws seeds once
  and cases within each benchmark (`pooled_bootstrap`). Pooling six benchmarks averages the case noise
  away, so what is left is mostly seed-to-seed variation, where a bootstrap over 3 seeds is too narrow
  and t with df 2 is honest (stats.py, module docstring); but t holds the cases fixed, and where seeds
  barely differ it alone would be too narrow for new cases. The hull covers both; with one seed only the
  bootstrap is left.

Every verdict is `stats.verdict` of the whole interval: "reproduced" (entirely on the claimed side of 0),
"opposite" (entirely on the other side) or "inconclusive"; a claim whose models were not evaluated is
"not run", which is a row, not an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.evaluation.stats import (
    Interval,
    above,
    paired_difference,
    seed_case_bootstrap,
    t_interval_over_seeds,
    verdict,
)

FINE_GRAINED = ("coco_order", "sugarcrepe", "valse", "vg_attribution", "vg_relation", "winoground")
RETRIEVAL = ("retrieval_i2t_r1", "retrieval_t2i_r1")
BENCHMARKS = FINE_GRAINED + RETRIEVAL
CASE_STAGES = ("untrained", "pretrain_stage2", "finetune")
STAGE_NAMES = {"untrained": "untrained", "pretrain_stage2": "pretrained", "finetune": "fine-tuned"}
TRAINED = "finetune"  # the claims compare fine-tuned models
VARIANTS = ("albef", "vd", "nas")  # the paper's ablation: ALBEF, +VD, +VD+NVA (= NAS)

# Chance of each fine-grained headline (fraction) where the evaluate metrics do not state it:
# /work/shared/spec/BENCHMARKS.md §0.3 (summary table) — ARO VG-Relation / VG-Attribution 50 %,
# COCO-Order 20 % (1 of 5 options), Winoground group 16.67 % (§2.3: 4 of 24 orderings), VALSE acc_r 50 %
# (§3.4), SugarCrepe 50 %. Retrieval chance depends on the gallery, so it only comes from the metrics.
DEFAULT_CHANCE = {
    "vg_relation": 0.5,
    "vg_attribution": 0.5,
    "coco_order": 0.2,
    "winoground": 1.0 / 6.0,
    "valse": 0.5,
    "sugarcrepe": 0.5,
}
CHANCE_SOURCE = "BENCHMARKS.md §0.3"

REPRODUCED, OPPOSITE, INCONCLUSIVE, NOT_RUN = "reproduced", "opposite", "inconclusive", "not run"
VERDICT_CODES = {REPRODUCED: 1, INCONCLUSIVE: 0, OPPOSITE: -1}
VERDICT_MARKS = {REPRODUCED: "✓", OPPOSITE: "✗", INCONCLUSIVE: "~", NOT_RUN: "—"}


@dataclass(frozen=True)
class FindingsConfig:
    """How the findings are judged: the `study` params section's `level`, `resamples`, `bootstrap_seed`
    and `seeds` (the replicate offsets to use; None: every seed found)."""

    level: float = 0.95
    resamples: int = 2000
    bootstrap_seed: int = 0
    seeds: tuple[int, ...] | None = None

    @classmethod
    def from_study(cls, study: Mapping[str, Any] | None) -> FindingsConfig:
        """From the `study` params section (its other keys, e.g. `stage1_of`, are not used here)."""
        study = study or {}
        seeds = study.get("seeds")
        return cls(
            level=float(study.get("level", cls.level)),
            resamples=int(study.get("resamples", cls.resamples)),
            bootstrap_seed=int(study.get("bootstrap_seed", cls.bootstrap_seed)),
            seeds=None if seeds is None else tuple(int(s) for s in seeds),
        )

    @property
    def percent(self) -> str:
        return f"{100 * self.level:g} %"


# ---- per-case outcomes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcomes:
    """One benchmark of one model (variant x stage): per-case outcomes [seeds, cases] as fractions."""

    benchmark: str
    metric: str
    seeds: tuple[int, ...]
    case_ids: list[Any]
    scores: np.ndarray
    source: str  # the folder it was read from, for messages

    @property
    def n_cases(self) -> int:
        return int(self.scores.shape[1])

    def rows(self, seeds: Sequence[int]) -> np.ndarray:
        """The [len(seeds), cases] rows of the given seed offsets (each must be present)."""
        return self.scores[[self.seeds.index(s) for s in seeds]]


# {variant: {stage: {benchmark: Outcomes}}}
Cases = dict[str, dict[str, dict[str, Outcomes]]]

_SEED_FILE = re.compile(r"seed(\d+)\.json")


def _read_seed_file(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected an object keyed by benchmark")
    for name, block in payload.items():
        missing = {"metric", "case_ids", "outcomes"} - set(block)
        if missing:
            raise ValueError(f"{path}: {name} lacks {sorted(missing)}")
        if block.get("unit", "fraction") != "fraction":
            raise ValueError(f"{path}: {name} outcomes must be fractions, got unit {block['unit']!r}")
        if len(block["case_ids"]) != len(block["outcomes"]) or not block["outcomes"]:
            raise ValueError(
                f"{path}: {name} has {len(block['case_ids'])} case_ids and {len(block['outcomes'])} outcomes"
            )
        values = np.asarray(block["outcomes"], dtype=np.float64)
        if values.ndim != 1 or not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(f"{path}: {name} outcomes must be finite numbers in [0, 1]")
    return payload


def _stack(per_seed: dict[int, dict[str, Any]], folder: Path) -> dict[str, Outcomes]:
    """Stack one model's seed files into an Outcomes per benchmark; every seed must score the same
    benchmarks on the same cases."""
    seeds = tuple(sorted(per_seed))
    names = set(per_seed[seeds[0]])
    for k in seeds[1:]:
        if set(per_seed[k]) != names:
            raise ValueError(
                f"{folder}: seed{k}.json has benchmarks {sorted(per_seed[k])}, "
                f"seed{seeds[0]}.json has {sorted(names)}"
            )
    out = {}
    for name in sorted(names):
        first = per_seed[seeds[0]][name]
        for k in seeds[1:]:
            block = per_seed[k][name]
            if block["case_ids"] != first["case_ids"] or block["metric"] != first["metric"]:
                raise ValueError(
                    f"{folder}: {name} of seed{k}.json has other case_ids or metric than seed{seeds[0]}.json"
                )
        scores = np.asarray([per_seed[k][name]["outcomes"] for k in seeds], dtype=np.float64)
        out[name] = Outcomes(name, str(first["metric"]), seeds, list(first["case_ids"]), scores, str(folder))
    return out


def load_cases(evaluate_runs: Path, seeds: Iterable[int] | None = None) -> Cases:
    """{variant: {stage: {benchmark: Outcomes}}} from `<evaluate_runs>/<variant>/cases/<stage>/seed<k>.json`
    (only the seed offsets in `seeds`, when given). A variant or stage without files is simply absent."""
    wanted = None if seeds is None else set(seeds)
    out: Cases = {}
    if not Path(evaluate_runs).is_dir():
        return out
    for variant_dir in sorted(p for p in Path(evaluate_runs).iterdir() if (p / "cases").is_dir()):
        for stage_dir in sorted(p for p in (variant_dir / "cases").iterdir() if p.is_dir()):
            per_seed = {}
            for path in stage_dir.glob("seed*.json"):
                match = _SEED_FILE.fullmatch(path.name)
                if match and (wanted is None or int(match.group(1)) in wanted):
                    per_seed[int(match.group(1))] = _read_seed_file(path)
            if per_seed:
                out.setdefault(variant_dir.name, {})[stage_dir.name] = _stack(per_seed, stage_dir)
    return out


def _get(cases: Cases, variant: str, stage: str, benchmark: str) -> Outcomes | None:
    return cases.get(variant, {}).get(stage, {}).get(benchmark)


# ---- chance levels ----------------------------------------------------------------------------------


def _as_fraction(value: float, unit: str) -> float:
    return float(value) / 100.0 if unit == "percent" else float(value)


def chance_levels(evaluations: Mapping[str, Any], cases: Cases) -> dict[str, tuple[float, str]]:
    """{benchmark: (chance as a fraction, where it comes from)} for every benchmark with outcomes or a
    default. The evaluate metrics (`chance` of a fine-grained block, keyed by the headline the cases name;
    `retrieval.chance`) win; else `DEFAULT_CHANCE` (BENCHMARKS.md §0.3)."""
    metric_of = {
        name: outcomes.metric
        for stages in cases.values()
        for benchmarks in stages.values()
        for name, outcomes in benchmarks.items()
    }
    out: dict[str, tuple[float, str]] = {}
    for variant, result in evaluations.items():
        for block in (result.get("models") or {}).values():
            for replicate in block.get("replicates") or []:
                where = f"metrics/evaluate/{variant}.json"
                retrieval = replicate.get("retrieval") or {}
                for key, value in (retrieval.get("chance") or {}).items():
                    out.setdefault(f"retrieval_{key}", (_as_fraction(value, "percent"), where))
                for name, scorers in (replicate.get("fine_grained") or {}).items():
                    for scored in scorers.values():
                        chance = scored.get("chance") or {}
                        metric = metric_of.get(name)
                        value = chance.get(metric) if metric in chance else None
                        if value is None and len(chance) == 1:
                            value = next(iter(chance.values()))
                        if value is not None:
                            out.setdefault(name, (_as_fraction(value, scored.get("unit", "percent")), where))
    for name, value in DEFAULT_CHANCE.items():
        out.setdefault(name, (value, CHANCE_SOURCE))
    return out


# ---- findings ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One row: `comparison` on `benchmark` ("pooled" for the fine-grained mean), judged by its interval.

    The interval is in fractions; effect/low/high give it in points (x 100). `interval` is None when the
    claim was not run (`note` says why)."""

    key: str
    claim: str
    comparison: str
    benchmark: str
    expected: str = "positive"
    interval: Interval | None = None
    n_cases: int = 0
    method: str = ""
    verdict: str = NOT_RUN
    note: str = ""

    @property
    def effect(self) -> float | None:
        return None if self.interval is None else 100.0 * self.interval.estimate

    @property
    def low(self) -> float | None:
        return None if self.interval is None else 100.0 * self.interval.low

    @property
    def high(self) -> float | None:
        return None if self.interval is None else 100.0 * self.interval.high

    @property
    def n_seeds(self) -> int:
        return 0 if self.interval is None else self.interval.n_seeds

    @property
    def verdict_code(self) -> int | None:
        return VERDICT_CODES.get(self.verdict)

    def to_json(self) -> dict[str, Any]:
        def pts(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "claim": self.claim,
            "comparison": self.comparison,
            "benchmark": self.benchmark,
            "expected": self.expected,
            "effect": pts(self.effect),
            "low": pts(self.low),
            "high": pts(self.high),
            "verdict": self.verdict,
            "verdict_code": self.verdict_code,
            "n_seeds": self.n_seeds,
            "n_cases": self.n_cases,
            "method": self.method if self.interval is not None else self.note,
        }


@dataclass(frozen=True)
class Claim:
    """A claim of the paper: variant `a` beats variant `b` (fine-tuned) on `benchmarks`."""

    key: str
    text: str
    a: str
    b: str
    benchmarks: tuple[str, ...]
    pooled: bool = False
    expected: str = "positive"


CLAIMS = (
    Claim(
        "nas_vs_albef", "NAS beats ALBEF on fine-grained probes", "nas", "albef", FINE_GRAINED, pooled=True
    ),
    Claim("nas_vs_vd", "NVA adds to VD", "nas", "vd", FINE_GRAINED, pooled=True),
    # The paper's component ablation: +VD alone over ALBEF. Row keys are `<key>.<benchmark>`, so the
    # fine-grained and the retrieval rows of VD - ALBEF share the key prefix without colliding.
    Claim("vd_vs_albef", "The VD helps fine-grained probes", "vd", "albef", FINE_GRAINED, pooled=True),
    Claim("vd_vs_albef", "The VD helps retrieval", "vd", "albef", RETRIEVAL),
)
SANITY_CHECKS = ("trained_vs_untrained", "trained_vs_chance")
SANITY_TEXT = {
    "trained_vs_untrained": "Training helps: fine-tuned beats untrained",
    "trained_vs_chance": "Fine-tuned is above chance",
}


@dataclass
class Findings:
    """The claims table, the sanity checks (pooled and per benchmark) and the models' headlines."""

    claims: list[Finding]
    sanity_pooled: list[Finding]
    sanity: list[Finding]
    # {benchmark: {(variant, stage): headline interval}} and the sample std over seeds of the same
    headlines: dict[str, dict[tuple[str, str], Interval]] = field(default_factory=dict)
    headline_std: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    chance: dict[str, tuple[float, str]] = field(default_factory=dict)
    config: FindingsConfig = field(default_factory=FindingsConfig)
    n_cases: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[Finding]:
        return [*self.claims, *self.sanity_pooled, *self.sanity]

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {row.key: row.to_json() for row in self.rows()}


def _not_run(key: str, claim: str, comparison: str, benchmark: str, why: str) -> Finding:
    return Finding(key, claim, comparison, benchmark, note=f"not run: {why}")


def _judged(key, claim, comparison, benchmark, interval: Interval, n_cases: int, method: str) -> Finding:
    return Finding(
        key,
        claim,
        comparison,
        benchmark,
        interval=interval,
        n_cases=n_cases,
        method=method,
        verdict=verdict(interval, expected="positive"),
    )


def _missing(cases: Cases, variant: str, stage: str, benchmark: str) -> str:
    if variant not in cases:
        return f"no per-case outcomes of {variant}"
    if stage not in cases[variant]:
        return f"no {STAGE_NAMES.get(stage, stage)} outcomes of {variant}"
    return f"{variant} ({STAGE_NAMES.get(stage, stage)}) has no {benchmark} outcomes"


def _pair(a: Outcomes, b: Outcomes) -> tuple[int, ...]:
    """The seeds both models have; their case_ids must agree (the contract pairs cases by position)."""
    if a.case_ids != b.case_ids:
        raise ValueError(
            f"{a.benchmark}: case_ids of {a.source} and {b.source} differ; cases are paired by position"
        )
    return tuple(s for s in a.seeds if s in b.seeds)


def _shift(interval: Interval, by: float, method: str) -> Interval:
    return Interval(
        interval.estimate - by,
        interval.low - by,
        interval.high - by,
        interval.n_seeds,
        interval.n_cases,
        method,
    )


def difference(
    key: str,
    claim: str,
    comparison: str,
    a: tuple[str, str],
    b: tuple[str, str] | float,
    benchmark: str,
    cases: Cases,
    cfg: FindingsConfig,
) -> Finding:
    """`a` - `b` on one benchmark: a model (variant, stage) minus another model or a chance level."""
    first = _get(cases, *a, benchmark)
    if first is None:
        return _not_run(key, claim, comparison, benchmark, _missing(cases, *a, benchmark))
    kwargs = {"level": cfg.level, "resamples": cfg.resamples, "seed": cfg.bootstrap_seed}
    if not isinstance(b, tuple):
        interval = seed_case_bootstrap(first.scores, **kwargs)
        method = f"{interval.method}, minus chance {100 * b:.2f}"
        return _judged(key, claim, comparison, benchmark, _shift(interval, b, method), first.n_cases, method)
    second = _get(cases, *b, benchmark)
    if second is None:
        return _not_run(key, claim, comparison, benchmark, _missing(cases, *b, benchmark))
    seeds = _pair(first, second)
    if not seeds:
        return _not_run(key, claim, comparison, benchmark, f"{a[0]} and {b[0]} share no seed")
    interval = paired_difference(first.rows(seeds), second.rows(seeds), **kwargs)
    return _judged(key, claim, comparison, benchmark, interval, first.n_cases, interval.method)


def pooled_difference(
    key: str,
    claim: str,
    comparison: str,
    a: tuple[str, str],
    b: tuple[str, str] | Mapping[str, float],
    cases: Cases,
    cfg: FindingsConfig,
    benchmarks: Sequence[str] = FINE_GRAINED,
) -> Finding:
    """`a` - `b` pooled over `benchmarks` (those both sides have): the mean over benchmarks of the
    per-benchmark difference (b: a model, or {benchmark: chance}), on the seeds both sides share. Interval:
    the hull of Student t over seeds of the per-seed pooled figures (`t_interval_over_seeds`) and
    `pooled_bootstrap`; with one seed, the bootstrap alone."""
    label = "pooled"
    present = [n for n in benchmarks if _get(cases, *a, n) is not None]
    if isinstance(b, tuple):
        present = [n for n in present if _get(cases, *b, n) is not None]
    else:
        present = [n for n in present if n in b]
    if not present:
        models = [a, b] if isinstance(b, tuple) else [a]
        why = next(
            (_missing(cases, *m, "") for m in models if m[0] not in cases or m[1] not in cases[m[0]]),
            "no fine-grained benchmark scored by both",
        )
        return _not_run(key, claim, comparison, label, why)
    per_benchmark: list[np.ndarray] = []  # [S, N_b] differences on the common seeds
    seeds: tuple[int, ...] | None = None
    for name in present:
        first = _get(cases, *a, name)
        assert first is not None
        seeds = first.seeds if seeds is None else tuple(s for s in seeds if s in first.seeds)
        if isinstance(b, tuple):
            second = _get(cases, *b, name)
            assert second is not None
            seeds = tuple(s for s in _pair(first, second) if s in seeds)
    assert seeds is not None
    if not seeds:
        return _not_run(key, claim, comparison, label, "the models share no seed on every benchmark")
    for name in present:
        first = _get(cases, *a, name)
        assert first is not None
        if isinstance(b, tuple):
            second = _get(cases, *b, name)
            assert second is not None
            per_benchmark.append(first.rows(seeds) - second.rows(seeds))
        else:
            per_benchmark.append(first.rows(seeds) - b[name])
    n_cases = sum(d.shape[1] for d in per_benchmark)
    over = f"{len(present)} fine-grained benchmarks" + (
        "" if len(present) == len(benchmarks) else f" ({', '.join(present)})"
    )
    boot = pooled_bootstrap(per_benchmark, level=cfg.level, resamples=cfg.resamples, seed=cfg.bootstrap_seed)
    if len(seeds) < 2:
        return _judged(key, claim, comparison, label, boot, n_cases, f"{boot.method}; mean over {over}")
    per_seed = np.mean([d.mean(axis=1) for d in per_benchmark], axis=0)  # [S]
    t = t_interval_over_seeds(per_seed, level=cfg.level)
    interval = Interval(boot.estimate, min(t.low, boot.low), max(t.high, boot.high), len(seeds), n_cases, "")
    method = (
        f"wider of Student t over {len(seeds)} seeds (df={len(seeds) - 1}) of per-seed pooled means "
        f"[{100 * t.low:+.1f}, {100 * t.high:+.1f}] and {boot.method} "
        f"[{100 * boot.low:+.1f}, {100 * boot.high:+.1f}]; mean over {over}"
    )
    return _judged(key, claim, comparison, label, interval, n_cases, method)


def pooled_bootstrap(
    per_benchmark: Sequence[np.ndarray], *, level: float, resamples: int, seed: int
) -> Interval:
    """Percentile bootstrap of the mean over benchmarks of per-case values [S seeds, N_b cases] per
    benchmark: each resample draws S seeds once (shared by every benchmark) and N_b cases within each
    benchmark (shared by the drawn seeds), as `nas.evaluation.stats.seed_case_bootstrap` does for one
    benchmark; every benchmark weighs the same whatever its case count. With S == 1, cases only."""
    arrays = [np.asarray(d, dtype=np.float64) for d in per_benchmark]
    n_seeds = arrays[0].shape[0]
    if any(d.ndim != 2 or d.shape[0] != n_seeds or d.shape[1] == 0 for d in arrays):
        raise ValueError(f"per-benchmark arrays must be [{n_seeds}, cases], got {[d.shape for d in arrays]}")
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else None
    per_seed = np.zeros((resamples, n_seeds))  # each resample's per-seed pooled means
    for d in arrays:
        n = d.shape[1]
        chunk = max(1, 4_000_000 // n)
        for start in range(0, resamples, chunk):
            r = min(chunk, resamples - start)
            flat = (rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]).ravel()
            counts = np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)
            per_seed[start : start + r] += counts @ d.T / n
    per_seed /= len(arrays)
    if seed_idx is None:
        means = per_seed[:, 0]
    else:
        means = np.take_along_axis(per_seed, seed_idx, axis=1).mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    over = "seeds and cases within each benchmark" if n_seeds > 1 else "cases within each benchmark (1 seed)"
    return Interval(
        estimate=float(np.mean([d.mean(axis=1).mean() for d in arrays])),
        low=float(low),
        high=float(high),
        n_seeds=n_seeds,
        n_cases=int(sum(d.shape[1] for d in arrays)),
        method=f"bootstrap over {over} ({resamples} resamples, percentile)",
    )


def _ordered(variants: Iterable[str]) -> list[str]:
    """The paper's variants first (albef, vd, nas: always, so a missing one shows as not run), then others."""
    return [*VARIANTS, *sorted(set(variants) - set(VARIANTS))]


def compute_findings(
    cases: Cases, evaluations: Mapping[str, Any] | None = None, cfg: FindingsConfig | None = None
) -> Findings:
    """Every claim of `CLAIMS`, the sanity checks of every variant and each model's headline intervals."""
    cfg = cfg or FindingsConfig()
    chance = chance_levels(evaluations or {}, cases)
    claims: list[Finding] = []
    for claim in CLAIMS:
        comparison = f"{claim.a} − {claim.b}"
        a, b = (claim.a, TRAINED), (claim.b, TRAINED)
        if claim.pooled:
            claims.append(pooled_difference(f"{claim.key}.pooled", claim.text, comparison, a, b, cases, cfg))
        for name in claim.benchmarks:
            claims.append(difference(f"{claim.key}.{name}", claim.text, comparison, a, b, name, cases, cfg))

    sanity_pooled, sanity = [], []
    fine_chance = {n: chance[n][0] for n in FINE_GRAINED if n in chance}
    for variant in _ordered(cases):
        trained = (variant, TRAINED)
        for check in SANITY_CHECKS:
            key = f"sanity.{variant}.{check}"
            text = f"{SANITY_TEXT[check]} ({variant})"
            if check == "trained_vs_untrained":
                comparison, other = f"{variant}: fine-tuned − untrained", (variant, "untrained")
                sanity_pooled.append(
                    pooled_difference(f"{key}.pooled", text, comparison, trained, other, cases, cfg)
                )
                for name in BENCHMARKS:
                    sanity.append(
                        difference(f"{key}.{name}", text, comparison, trained, other, name, cases, cfg)
                    )
            else:
                comparison = f"{variant}: fine-tuned − chance"
                sanity_pooled.append(
                    pooled_difference(f"{key}.pooled", text, comparison, trained, fine_chance, cases, cfg)
                )
                for name in BENCHMARKS:
                    if name in chance:
                        row = difference(
                            f"{key}.{name}", text, comparison, trained, chance[name][0], name, cases, cfg
                        )
                    else:
                        row = _not_run(f"{key}.{name}", text, comparison, name, "no chance level for it")
                    sanity.append(row)

    headlines: dict[str, dict[tuple[str, str], Interval]] = {}
    stds: dict[str, dict[tuple[str, str], float]] = {}
    n_cases: dict[str, int] = {}
    metrics: dict[str, str] = {}
    for variant in _ordered(cases):
        for stage in CASE_STAGES:
            for name, outcomes in cases.get(variant, {}).get(stage, {}).items():
                headlines.setdefault(name, {})[(variant, stage)] = seed_case_bootstrap(
                    outcomes.scores, level=cfg.level, resamples=cfg.resamples, seed=cfg.bootstrap_seed
                )
                per_seed = outcomes.scores.mean(axis=1)
                stds.setdefault(name, {})[(variant, stage)] = (
                    float(per_seed.std(ddof=1)) if per_seed.size > 1 else math.nan
                )
                n_cases.setdefault(name, outcomes.n_cases)
                metrics.setdefault(name, outcomes.metric)
    return Findings(claims, sanity_pooled, sanity, headlines, stds, chance, cfg, n_cases, metrics)


# ---- rendering --------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1, sign: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _interval_cell(row: Finding) -> str:
    return "—" if row.interval is None else f"[{_num(row.low)}, {_num(row.high)}]"


def legend(cfg: FindingsConfig) -> str:
    return (
        f"**reproduced** = the whole {cfg.percent} interval lies on the claimed side of 0; **opposite** = "
        "it lies wholly on the other side; **inconclusive at this scale** = it includes 0 (these small runs "
        "cannot tell); **not run** = a model of the comparison was not evaluated. Effects are points "
        "(headline fraction × 100) of the fine-tuned models, paired by pretraining seed and probe case. "
        f"Intervals (`nas.evaluation.stats`): one benchmark, a paired two-level percentile bootstrap over "
        f"seeds and cases ({cfg.resamples} resamples); pooled (mean over the six fine-grained benchmarks, equal "
        "weights), the wider of a Student t interval over seeds of the per-seed pooled means and a bootstrap "
        "drawing seeds once and cases within each benchmark. 3 seeds give wide intervals: "
        "an inconclusive row is not evidence against the claim."
    )


def findings_table(findings: Findings) -> list[str]:
    """The claims and the pooled sanity checks, one row each."""
    lines = [
        f"| claim | comparison | benchmark | effect (pts) | {findings.config.percent} interval | seeds | cases "
        "| verdict | method |",
        "|---|---|---|---:|---|---:|---:|---|---|",
    ]
    for row in [*findings.claims, *findings.sanity_pooled]:
        shown = f"**{row.verdict}**" if row.verdict == REPRODUCED else row.verdict
        lines.append(
            f"| {row.claim} | {row.comparison} | {row.benchmark} | {_num(row.effect)} | {_interval_cell(row)} "
            f"| {row.n_seeds or '—'} | {row.n_cases or '—'} | {shown} | {row.method or row.note} |"
        )
    return lines


def sanity_table(findings: Findings) -> list[str]:
    """Per benchmark sanity checks: rows = variant x check, columns = benchmarks; cell = effect
    [interval] and a verdict mark."""
    names = [
        n for n in BENCHMARKS if any(r.benchmark == n and r.interval is not None for r in findings.sanity)
    ]
    if not names:
        return []
    by_key = {row.key: row for row in findings.sanity}
    lines = [
        "| variant | check | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for variant in _ordered(r.key.split(".")[1] for r in findings.sanity):
        for check in SANITY_CHECKS:
            cells = []
            for name in names:
                row = by_key.get(f"sanity.{variant}.{check}.{name}")
                if row is None or row.interval is None:
                    cells.append(VERDICT_MARKS[NOT_RUN])
                else:
                    cells.append(f"{_num(row.effect)} {_interval_cell(row)} {VERDICT_MARKS[row.verdict]}")
            label = "fine-tuned − untrained" if check == "trained_vs_untrained" else "fine-tuned − chance"
            lines.append(f"| {variant} | {label} | " + " | ".join(cells) + " |")
    return lines


def headline_table(findings: Findings) -> list[str]:
    """Every model's headline per benchmark: mean ± std over seeds [interval], * where the interval lies
    above chance; a chance row last."""
    names = [n for n in BENCHMARKS if n in findings.headlines]
    if not names:
        return []
    models = [
        (v, s) for v in _ordered(m[0] for n in names for m in findings.headlines[n]) for s in CASE_STAGES
    ]
    models = [m for m in models if any(m in findings.headlines[n] for n in names)]
    header = [f"{n} ({findings.metrics.get(n, '?')}, {findings.n_cases.get(n, '?')} cases)" for n in names]
    lines = ["| model | seeds | " + " | ".join(header) + " |", "|---|---:|" + "---|" * len(names)]
    for model in models:
        cells, seeds = [], 0
        for name in names:
            interval = findings.headlines[name].get(model)
            if interval is None:
                cells.append("—")
                continue
            seeds = max(seeds, interval.n_seeds)
            std = findings.headline_std[name][model]
            mean = f"{100 * interval.estimate:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")
            chance = findings.chance.get(name)
            star = "*" if chance is not None and above(interval, chance[0]) else ""
            cells.append(f"{mean} [{100 * interval.low:.1f}, {100 * interval.high:.1f}]{star}")
        lines.append(
            f"| {model[0]} ({STAGE_NAMES.get(model[1], model[1])}) | {seeds} | " + " | ".join(cells) + " |"
        )
    chance_cells = [
        f"{100 * findings.chance[n][0]:.1f} ({findings.chance[n][1]})" if n in findings.chance else "—"
        for n in names
    ]
    lines.append("| chance | | " + " | ".join(chance_cells) + " |")
    return lines


def findings_section(findings: Findings) -> list[str]:
    """The FINDINGS block for the top of results.md."""
    lines = ["## Findings", "", legend(findings.config), ""]
    if not findings.headlines:
        lines += [
            "No per-case outcomes under `runs/evaluate/<variant>/cases/`: every claim is not run.",
            "",
        ]
    return lines + findings_table(findings) + [""]


def details_section(findings: Findings) -> list[str]:
    """Sanity checks per benchmark and every model's headline with its interval."""
    lines: list[str] = []
    sanity = sanity_table(findings)
    if sanity:
        lines += [
            "## Sanity checks per benchmark",
            "",
            f"Points; effect [{findings.config.percent} interval] and verdict (✓ reproduced, ✗ opposite, "
            "~ inconclusive, — not run). Fine-tuned − untrained: paired bootstrap over seeds and cases; "
            "fine-tuned − chance: bootstrap of the fine-tuned headline over seeds and cases, minus chance.",
            "",
            *sanity,
            "",
        ]
    headlines = headline_table(findings)
    if headlines:
        lines += [
            "## Headline per benchmark, with intervals",
            "",
            f"Percent: mean ± sample std over pretraining seeds [{findings.config.percent} two-level bootstrap "
            "interval over seeds and cases]; * = the whole interval lies above chance. Headline per benchmark "
            "as the per-case outcomes define it (the column names it); retrieval = per-query R@1.",
            "",
            *headlines,
            "",
        ]
    return lines
