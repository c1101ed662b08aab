"""Uncertainty for the study's findings: intervals over pretraining seeds and probe cases.

Each variant (e.g. "albef", "vd", "nas") is pretrained with S seeds and every trained model is scored on
the same N probe cases, so a variant's results form an [S, N] array of per-case scores (0/1 or a float
in [0, 1]), and two variants' arrays are paired: row s of both comes from the same seed, column j is the
same case. A headline figure is the mean of that array; its uncertainty has two sources, which seeds
happened to be drawn and which cases, so the bootstraps here resample both (a two-level bootstrap).

Caveats, kept here because they decide how much to trust an interval:
- With S == 3 the seed level of a bootstrap has only 10 distinct resamples, and a percentile bootstrap
  over 3 units underestimates between-seed spread; where seed-to-seed variation dominates, prefer
  `t_interval_over_seeds` on the per-seed means (Student t with S - 1 degrees of freedom is exact for
  normal per-seed figures, and wide, as it should be with 3 seeds).
- Seeds and cases are crossed, not nested. Resampling both levels counts the per-(seed, case) noise more
  than once (Owen 2007, "The pigeonhole bootstrap"), so when that noise dominates -- e.g. 0/1 scores
  with no real seed effect -- the two-level interval is conservative (wider than nominal), not too narrow.
  Simulated 95 % coverage of `paired_difference` under no effect (3 seeds x 1000 cases, 400 data sets):
  0.995 with pure per-(seed, case) 0/1 noise; 0.96 when each case has its own difficulty per variant;
  0.90 with a seed-level effect of sd 0.03 per variant (the S == 3 seed level is too narrow there).

Everything is numpy-only and deterministic for a given `seed`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Bound on resamples x cases per chunk of the bootstrap (counts matrix of float64: 4M entries = 32 MB).
_CHUNK_ELEMENTS = 4_000_000
_MIN_RESAMPLES = 100
_EXPECTED = ("positive", "negative")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a `level` interval, in the units of the input (fractions, not percent).

    estimate: mean over seeds of the per-seed mean over cases (for rectangular input, the plain mean).
    n_cases is 0 for intervals computed from per-seed figures alone.
    """

    estimate: float
    low: float
    high: float
    n_seeds: int
    n_cases: int
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# validation


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:  # also rejects NaN
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return level


def _check_resamples(resamples: int) -> int:
    if isinstance(resamples, bool) or int(resamples) != resamples:
        raise ValueError(f"resamples must be an integer, got {resamples!r}")
    if resamples < _MIN_RESAMPLES:
        # Fewer resamples make the 2.5 % / 97.5 % percentiles rest on a handful of draws.
        raise ValueError(f"resamples must be >= {_MIN_RESAMPLES}, got {resamples}")
    return int(resamples)


def _as_scores(scores, name: str) -> np.ndarray:
    """[S, N] float64 array, finite and non-empty; a 1-D array is refused rather than guessed at."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [seeds, cases], got shape {arr.shape}"
            + (" (for a single seed pass x.reshape(1, -1))" if arr.ndim == 1 else "")
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty, shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s), shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------------------------------
# bootstraps


def _bootstrap_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` two-level bootstrap resamples of x [S, N].

    Each resample draws N case indices with replacement (shared by every drawn seed, so a case's
    difficulty moves all seeds together, as it does in the data) and S seed indices with replacement,
    and takes the mean over the drawn seeds and cases. Rather than gathering an [R, S, N] array, the
    case draw is turned into counts [R, N], so the per-seed means of every resample are one matrix
    product counts @ x.T / N; the seed draw then averages S of those columns.

    Random stream: all seed indices [R, S] first (only if S > 1; they are small), then the case indices
    chunk by chunk. numpy's integer stream does not depend on how it is chunked, so the result does not
    depend on the chunk size, and with S == 1 this is exactly the plain case bootstrap
    `x[0][rng.integers(0, N, (R, N))].mean(1)`.
    """
    n_seeds, n_cases = x.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n_cases)
    seed_idx = rng.integers(0, n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else None
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        case_idx = rng.integers(0, n_cases, size=(r, n_cases))
        # Row-offset bincount: counts[i, j] = how often case j was drawn in resample i.
        flat = (case_idx + n_cases * np.arange(r)[:, None]).ravel()
        counts = np.bincount(flat, minlength=r * n_cases).reshape(r, n_cases).astype(np.float64)
        per_seed = counts @ x.T / n_cases  # [r, S]: each seed's mean over this resample's cases
        if seed_idx is None:
            out[start : start + r] = per_seed[:, 0]
        else:
            drawn = np.take_along_axis(per_seed, seed_idx[start : start + r], axis=1)
            out[start : start + r] = drawn.mean(axis=1)
    return out


def _percentile(means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _method(kind: str, n_seeds: int, resamples: int) -> str:
    over = "seeds and cases" if n_seeds > 1 else "cases (1 seed)"
    return f"{kind} over {over} ({resamples} resamples, percentile)"


def seed_case_bootstrap(scores, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Two-level percentile bootstrap interval for the mean of per-case scores [S seeds, N cases].

    The estimate is the mean over seeds of each seed's mean over cases. Each resample redraws S seeds
    and N cases with replacement (the same cases for every drawn seed); the interval is the central
    `level` range of the resampled means. With S == 1 it is a bootstrap over cases only.
    """
    level = _check_level(level)
    resamples = _check_resamples(resamples)
    x = _as_scores(scores, "scores")
    means = _bootstrap_means(x, resamples, seed)
    low, high = _percentile(means, level)
    return Interval(
        estimate=float(x.mean(axis=1).mean()),
        low=low,
        high=high,
        n_seeds=x.shape[0],
        n_cases=x.shape[1],
        method=_method("bootstrap", x.shape[0], resamples),
    )


def paired_difference(a, b, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Interval for mean(a) - mean(b), two variants scored on the same seeds (rows) and cases (columns).

    Both arrays are resampled with the SAME seed and case indices, which is what makes it paired: what
    the variants share (a hard case, a lucky seed) cancels in the difference instead of widening the
    interval. Because the mean is linear, that is exactly the two-level bootstrap of a - b.
    """
    level = _check_level(level)
    resamples = _check_resamples(resamples)
    xa = _as_scores(a, "a")
    xb = _as_scores(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(
            f"a and b must have the same shape [seeds, cases], got a {xa.shape} and b {xb.shape}"
        )
    means = _bootstrap_means(xa - xb, resamples, seed)
    low, high = _percentile(means, level)
    return Interval(
        estimate=float(xa.mean(axis=1).mean() - xb.mean(axis=1).mean()),
        low=low,
        high=high,
        n_seeds=xa.shape[0],
        n_cases=xa.shape[1],
        method=_method("paired bootstrap", xa.shape[0], resamples),
    )


# --------------------------------------------------------------------------------------------------
# Student t over seeds


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast only on this side; use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    """Student t CDF: for t >= 0, 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def _t_quantile(p: float, df: float) -> float:
    """Inverse Student t CDF for p in (0.5, 1), by bisection on the CDF (monotone, so this cannot fail)."""
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:  # bracket: the quantile is finite for p < 1
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval_over_seeds(per_seed_values, *, level: float = 0.95) -> Interval:
    """Student t interval for the mean of per-seed figures (one number per pretraining seed).

    mean +/- t_{(1+level)/2, S-1} * sd / sqrt(S), sd with ddof 1. This treats seeds as the only source
    of variation (cases fixed), so n_cases is 0. With S == 3 the t quantile is 4.30, not 1.96: three
    seeds support only a wide interval, and this says so.
    """
    level = _check_level(level)
    values = np.asarray(per_seed_values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"per_seed_values must be 1-D (one figure per seed), got shape {values.shape}")
    if values.size < 2:
        raise ValueError(f"per_seed_values needs at least 2 seeds for a t interval, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"per_seed_values has non-finite value(s): {values.tolist()}")
    n = int(values.size)
    mean = float(values.mean())
    half = _t_quantile((1.0 + level) / 2.0, n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
    return Interval(
        estimate=mean,
        low=mean - half,
        high=mean + half,
        n_seeds=n,
        n_cases=0,
        method=f"Student t over {n} seeds (df={n - 1})",
    )


# --------------------------------------------------------------------------------------------------
# reading an interval


def verdict(interval: Interval, *, expected: str = "positive", threshold: float = 0.0) -> str:
    """Judge a claimed effect by its whole interval: "reproduced", "opposite" or "inconclusive".

    expected "positive": reproduced when low > threshold, opposite when high < threshold.
    expected "negative": reproduced when high < threshold, opposite when low > threshold.
    An interval touching the threshold is inconclusive: the data do not rule the threshold out.
    """
    if expected not in _EXPECTED:
        raise ValueError(f"expected must be one of {_EXPECTED}, got {expected!r}")
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    above_t = interval.low > threshold
    below_t = interval.high < threshold
    if expected == "positive":
        return "reproduced" if above_t else "opposite" if below_t else "inconclusive"
    return "reproduced" if below_t else "opposite" if above_t else "inconclusive"


def above(interval_a: Interval, reference: float) -> bool:
    """True when the whole interval lies above `reference` (low > reference).

    A trained figure is only called above chance where its interval says so, not its point estimate.
    """
    return interval_a.low > float(reference)
