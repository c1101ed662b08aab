"""Findings of the companion recipes (MUG, UTA): each claim as an effect, an interval and a verdict.

The same rules as the NAS study (nas/reporting/findings.py, whose pooled bootstrap is reused): a
model's results are per-case outcomes [S seeds, N cases] (a probe's or a zero-shot classifier's 0/1
per test image, a caption's cross-entropy), two models scored on the same seeds and cases are paired,
and intervals come from `nas.evaluation.stats`:

- one attribute: `paired_difference` (two-level bootstrap over seeds and cases, both sides resampled
  with the same indices); a single model (the frozen teacher) is the same row for every seed;
- pooled over attributes (the mean over attributes of the per-attribute difference, each attribute
  weighted equally whatever its case count): the wider of Student t over seeds of the per-seed pooled
  figures (`t_interval_over_seeds`, 2+ seeds) and `findings.pooled_bootstrap` (seeds drawn once, cases
  within each attribute);
- verdict (`stats.verdict`): "reproduced" when the whole interval lies on the claimed side of the
  threshold, "opposite" when it lies wholly on the other side, "inconclusive" otherwise. A "matches or
  beats" claim is a non-inferiority claim: its threshold is minus a stated margin.

A claim is judged only on attributes where its reference model (MUG: the full model; UTA: the teacher)
is above chance by its own interval (`stats.above`): an attribute nobody learned tests nothing, so its
row says "not judged" instead of a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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

REPRODUCED, OPPOSITE, INCONCLUSIVE = "reproduced", "opposite", "inconclusive"
NOT_JUDGED = "not judged"
VERDICT_CODES = {REPRODUCED: 1, INCONCLUSIVE: 0, OPPOSITE: -1}


@dataclass(frozen=True)
class FindingsConfig:
    """How a recipe's claims are judged (`mug.evaluate.findings`, `uta.evaluation.findings`): interval
    level, bootstrap resamples and seed, and the margin in points of its non-inferiority claims [D]
    ("matches or beats", "approaches": the interval of the difference must lie above -margin)."""

    level: float = 0.95
    resamples: int = 2000
    bootstrap_seed: int = 0
    margin: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100, got {self.resamples}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"level": self.level, "resamples": self.resamples, "seed": self.bootstrap_seed}

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None, *, margin: float) -> FindingsConfig:
        """From the `findings_settings` an evaluation recorded (defaults where a key is absent)."""
        settings = settings or {}
        return cls(
            level=settings.get("level", 0.95),
            resamples=settings.get("resamples", 2000),
            margin=settings.get("margin", margin),
        )


Settings = FindingsConfig


@dataclass(frozen=True)
class Row:
    """One judged (or not judged) comparison. Numbers are in `unit` ("pts": percentage points, the
    fractions x 100; "nats": per-token cross-entropy; "1−cos": cosine distance)."""

    key: str
    claim: str
    comparison: str
    attribute: str
    expected: str
    threshold: float
    unit: str
    estimate: float | None
    low: float | None
    high: float | None
    n_seeds: int
    n_cases: int
    verdict: str
    method: str

    @property
    def verdict_code(self) -> int | None:
        return VERDICT_CODES.get(self.verdict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("estimate", "low", "high"):
            if out[name] is not None:
                out[name] = round(out[name], 4)
        return out | {"verdict_code": self.verdict_code}


def as_cases(per_seed: Sequence[Sequence[float]], seeds: int | None = None) -> np.ndarray:
    """[S, N] from per-seed outcome lists; a single row is repeated to `seeds` rows (a model trained
    once, paired with every seed of the other side)."""
    arr = np.asarray([np.asarray(row, dtype=np.float64) for row in per_seed])
    if arr.ndim != 2:
        raise ValueError(f"per-seed outcomes must have one length, got shape {arr.shape}")
    if seeds is not None and arr.shape[0] == 1 and seeds > 1:
        arr = np.repeat(arr, seeds, axis=0)
    return arr


def _scaled(interval: Interval, scale: float, shift: float = 0.0) -> tuple[float, float, float]:
    return (
        scale * (interval.estimate - shift),
        scale * (interval.low - shift),
        scale * (interval.high - shift),
    )


def _row(
    key: str,
    claim: str,
    comparison: str,
    attribute: str,
    interval: Interval | None,
    *,
    expected: str,
    threshold: float,
    unit: str,
    scale: float,
    method: str,
    shift: float = 0.0,
    note: str = "",
) -> Row:
    if interval is None:
        return Row(
            key,
            claim,
            comparison,
            attribute,
            expected,
            threshold,
            unit,
            None,
            None,
            None,
            0,
            0,
            NOT_JUDGED,
            note,
        )
    estimate, low, high = _scaled(interval, scale, shift)
    judged = Interval(estimate, low, high, interval.n_seeds, interval.n_cases, interval.method)
    return Row(
        key,
        claim,
        comparison,
        attribute,
        expected,
        threshold,
        unit,
        estimate,
        low,
        high,
        interval.n_seeds,
        interval.n_cases,
        verdict(judged, expected=expected, threshold=threshold),
        method,
    )


def difference(
    key: str,
    claim: str,
    comparison: str,
    attribute: str,
    a: np.ndarray,
    b: np.ndarray | float,
    settings: Settings,
    *,
    expected: str = "positive",
    threshold: float = 0.0,
    unit: str = "pts",
) -> Row:
    """mean(a) - mean(b) on one attribute: `b` another model's [S, N] outcomes (paired) or a level."""
    scale = 100.0 if unit == "pts" else 1.0
    if isinstance(b, np.ndarray):
        interval = paired_difference(a, b, **settings.kwargs)
        shift = 0.0
    else:
        interval = seed_case_bootstrap(a, **settings.kwargs)
        shift = float(b)
    method = interval.method + (f", minus {scale * shift:.2f}" if shift else "")
    return _row(
        key,
        claim,
        comparison,
        attribute,
        interval,
        expected=expected,
        threshold=threshold,
        unit=unit,
        scale=scale,
        method=method,
        shift=shift,
    )


def pooled_difference(
    key: str,
    claim: str,
    comparison: str,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    settings: Settings,
    *,
    expected: str = "positive",
    threshold: float = 0.0,
    unit: str = "pts",
    attribute: str = "pooled",
) -> Row:
    """The mean over attributes of the per-attribute difference a - b ([S, N_i] each, same S)."""
    from nas.reporting.findings import pooled_bootstrap

    scale = 100.0 if unit == "pts" else 1.0
    differences = [np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) for a, b in pairs]
    boot = pooled_bootstrap(differences, **settings.kwargs)
    interval, method = boot, boot.method
    if differences[0].shape[0] >= 2:
        per_seed = np.mean([d.mean(axis=1) for d in differences], axis=0)
        t = t_interval_over_seeds(per_seed, level=settings.level)
        low, high = min(t.low, boot.low), max(t.high, boot.high)
        interval = Interval(boot.estimate, low, high, boot.n_seeds, boot.n_cases, "hull")
        method = f"wider of {t.method} and {boot.method}"
    return _row(
        key,
        claim,
        comparison,
        attribute,
        interval,
        expected=expected,
        threshold=threshold,
        unit=unit,
        scale=scale,
        method=f"{len(differences)} attributes, equal weights; " + method,
    )


def not_judged(key: str, claim: str, comparison: str, attribute: str, why: str, **kwargs: Any) -> Row:
    return _row(
        key,
        claim,
        comparison,
        attribute,
        None,
        expected=kwargs.get("expected", "positive"),
        threshold=kwargs.get("threshold", 0.0),
        unit=kwargs.get("unit", "pts"),
        scale=1.0,
        method="",
        note=why,
    )


def above_level(outcomes: np.ndarray, level: float, settings: Settings) -> tuple[bool, Interval]:
    """Whether the mean of `outcomes` [S, N] is above `level` (a fraction) by its whole interval."""
    interval = seed_case_bootstrap(outcomes, **settings.kwargs)
    return above(interval, level), interval


# ---- rendering --------------------------------------------------------------------------------------


def _num(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:+.1f}" if unit == "pts" else f"{value:+.3f}"


def legend(settings: Settings) -> str:
    percent = f"{100 * settings.level:g} %"
    return (
        f"**reproduced** = the whole {percent} interval lies on the claimed side of the threshold; "
        "**opposite** = wholly on the other side; **inconclusive at this scale** = it contains the "
        "threshold; **not judged** = the reference model is not above chance on that attribute (it "
        'tests nothing). Threshold 0 for "beats"; minus the stated margin for "matches or beats" / '
        '"approaches" (non-inferiority). Intervals (`nas.evaluation.stats`): one attribute, a paired '
        f"two-level percentile bootstrap over seeds and cases ({settings.resamples} resamples); pooled "
        "(mean over the judged attributes, equal weights), the wider of Student t over seeds and a "
        "bootstrap drawing seeds once and cases within each attribute. Effects in points (accuracy) or "
        "nats (cross-entropy)."
    )


def table(rows: Sequence[Row | Mapping[str, Any]], settings: Settings) -> list[str]:
    """Markdown rows (a `Row` or its `to_json()`)."""
    percent = f"{100 * settings.level:g} %"
    lines = [
        f"| claim | comparison | attribute | effect | {percent} interval | threshold | seeds | cases | verdict |",
        "|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        r = row.to_json() if isinstance(row, Row) else dict(row)
        unit = r["unit"]
        interval = "—" if r["low"] is None else f"[{_num(r['low'], unit)}, {_num(r['high'], unit)}]"
        shown = f"**{r['verdict']}**" if r["verdict"] == REPRODUCED else r["verdict"]
        if r["verdict"] == NOT_JUDGED:
            shown += f" ({r['method']})"
        threshold = f"{r['threshold']:+g} {unit}"
        effect = _num(r["estimate"], unit) + ("" if r["estimate"] is None else f" {unit}")
        lines.append(
            f"| {r['claim']} | {r['comparison']} | {r['attribute']} | {effect} | {interval} | {threshold} "
            f"| {r['n_seeds'] or '—'} | {r['n_cases'] or '—'} | {shown} |"
        )
    return lines


def interval_cell(interval: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """ "mean [low, high]" of a stored interval dict (fractions x `scale`)."""
    if not interval:
        return "n/a"
    return (
        f"{scale * interval['estimate']:.{digits}f} "
        f"[{scale * interval['low']:.{digits}f}, {scale * interval['high']:.{digits}f}]"
    )


def section(findings: Sequence[Mapping[str, Any]] | None, settings: Settings) -> list[str]:
    """A recipe report's "### Findings" block (legend, margin, table); nothing without findings."""
    if not findings:
        return []
    return [
        "",
        "### Findings",
        "",
        legend(settings) + f" Non-inferiority margin: {settings.margin:g} points.",
        "",
        *table(findings, settings),
    ]
