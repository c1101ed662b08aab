from __future__ import annotations

import numpy as np
import pytest

from nas.evaluation import stats
from nas.evaluation.stats import (
    Interval,
    above,
    paired_difference,
    seed_case_bootstrap,
    t_interval_over_seeds,
    verdict,
)

S, N = 3, 1000


def _bernoulli(rng: np.random.Generator, p: np.ndarray, n_seeds: int = S) -> np.ndarray:
    """[n_seeds, len(p)] 0/1 scores, case j solved with probability p[j] by every seed independently."""
    return (rng.random((n_seeds, p.size)) < p).astype(np.float64)


def _iv(low: float, high: float) -> Interval:
    return Interval(estimate=(low + high) / 2, low=low, high=high, n_seeds=3, n_cases=10, method="test")


# ---------------------------------------------------------------------------------------------- by hand


@pytest.mark.parametrize("value", [0.0, 1.0, 0.7])
def test_constant_scores_give_zero_width_interval_at_the_constant(value):
    iv = seed_case_bootstrap(np.full((S, 50), value), resamples=200)
    # 0.7 is not exact in binary, so the resampled sums may differ in the last bit.
    assert iv.estimate == pytest.approx(value, abs=1e-12)
    assert iv.low == pytest.approx(value, abs=1e-12) and iv.high == pytest.approx(value, abs=1e-12)
    assert (iv.n_seeds, iv.n_cases) == (S, 50)


def test_estimate_is_the_plain_mean_and_interval_contains_it():
    scores = np.random.default_rng(1).random((S, 200))
    iv = seed_case_bootstrap(scores, resamples=500)
    assert iv.estimate == pytest.approx(scores.mean(), rel=1e-12)
    assert iv.low < iv.estimate < iv.high
    assert "seeds and cases" in iv.method and "500 resamples" in iv.method


def test_single_seed_equals_plain_case_bootstrap():
    x = np.random.default_rng(2).random((1, 300))
    iv = seed_case_bootstrap(x, resamples=400, seed=7)
    # Reference: the textbook case bootstrap, same generator and seed.
    idx = np.random.default_rng(7).integers(0, 300, size=(400, 300))
    low, high = np.quantile(x[0][idx].mean(axis=1), [0.025, 0.975])
    assert iv.low == pytest.approx(low, rel=1e-12) and iv.high == pytest.approx(high, rel=1e-12)
    assert "cases (1 seed)" in iv.method


def test_deterministic_per_seed_and_independent_of_chunking(monkeypatch):
    x = np.random.default_rng(3).random((S, 100))
    first = seed_case_bootstrap(x, resamples=300, seed=5)
    assert seed_case_bootstrap(x, resamples=300, seed=5) == first
    assert seed_case_bootstrap(x, resamples=300, seed=6) != first
    # Chunks of 7 resamples (700 / 100 cases) must give the same answer as one chunk.
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 700)
    assert seed_case_bootstrap(x, resamples=300, seed=5) == first


def test_wider_level_gives_wider_interval():
    x = np.random.default_rng(4).random((S, 200))
    narrow = seed_case_bootstrap(x, level=0.5, resamples=500)
    wide = seed_case_bootstrap(x, level=0.99, resamples=500)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_to_dict_round_trips():
    iv = seed_case_bootstrap(np.ones((2, 5)), resamples=100)
    d = iv.to_dict()
    assert set(d) == {"estimate", "low", "high", "n_seeds", "n_cases", "method"}
    assert Interval(**d) == iv


# ------------------------------------------------------------------------------------ paired difference


def test_planted_effect_is_found():
    rng = np.random.default_rng(10)
    p = rng.uniform(0.2, 0.8, N)
    a, b = _bernoulli(rng, p + 0.05), _bernoulli(rng, p - 0.05)  # true difference 0.10
    iv = paired_difference(a, b)
    assert iv.estimate == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert iv.low > 0 and iv.low < 0.10 < iv.high
    assert verdict(iv, expected="positive") == "reproduced"
    assert verdict(iv, expected="negative") == "opposite"
    assert "paired" in iv.method


def _null_coverage(make_pair, reps: int = 200) -> float:
    hits = 0
    for r in range(reps):
        a, b = make_pair(np.random.default_rng(1000 + r))
        iv = paired_difference(a, b, resamples=500, seed=r)
        hits += iv.low <= 0.0 <= iv.high
    return hits / reps


def test_no_effect_coverage_with_per_case_difficulty():
    # Null: each case has its own difficulty for a and for b, drawn independently from the same
    # distribution (so a and b agree on average but not case by case), seeds add 0/1 noise.
    def make_pair(rng):
        return _bernoulli(rng, rng.beta(0.3, 0.3, N)), _bernoulli(rng, rng.beta(0.3, 0.3, N))

    # Why 0.88..0.99 and not 0.95 +/- a little: 200 repetitions alone give a binomial sd of 0.015 at
    # 0.95 (+/- 2.6 sd is 0.91..0.99), 500 resamples make each percentile endpoint noisy, and the
    # two-level bootstrap is not exact here (3 seeds at the top level; crossed seeds x cases counts the
    # per-(seed, case) noise more than once). Simulated with 400 repetitions: 0.96.
    assert 0.88 <= _null_coverage(make_pair) <= 0.99


def test_no_effect_coverage_is_conservative_with_pure_case_noise():
    # Null: a and b drawn independently per (seed, case) with the same per-case probability, so the
    # difference is pure noise with no case or seed structure. Resampling seeds AND cases counts that
    # noise about 7/3 times over (3 seeds), so the interval is conservative: ~0.997 expected, 0.995
    # simulated with 400 repetitions. Asserted: it is never too narrow.
    def make_pair(rng):
        p = rng.uniform(0.2, 0.9, N)
        return _bernoulli(rng, p), _bernoulli(rng, p)

    assert _null_coverage(make_pair) >= 0.95


def test_pairing_narrows_the_interval():
    rng = np.random.default_rng(20)
    p = rng.beta(0.3, 0.3, N)  # strong per-case effect: most cases always or never solved
    a = _bernoulli(rng, p)
    flips = rng.random(a.shape) < 0.02
    b = np.where(flips, 1.0 - a, a)  # b = a with ~2 % of scores flipped
    paired = paired_difference(a, b, seed=0)
    # Unpaired: two independent bootstraps, differenced resample by resample.
    diff = stats._bootstrap_means(a, 2000, 1) - stats._bootstrap_means(b, 2000, 2)
    un_low, un_high = np.quantile(diff, [0.025, 0.975])
    assert (paired.high - paired.low) < 0.25 * (un_high - un_low)
    assert paired.low <= paired.estimate <= paired.high


def test_paired_difference_of_identical_arrays_is_zero():
    a = np.random.default_rng(21).random((S, 100))
    iv = paired_difference(a, a.copy(), resamples=100)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------- t interval


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706205), (2, 4.302653), (10, 2.228139), (30, 2.042272)])
def test_t_quantile_known_values(df, expected):
    assert stats._t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


def test_t_quantile_other_levels():
    assert stats._t_quantile(0.995, 2) == pytest.approx(9.924843, abs=1e-6)
    assert stats._t_quantile(0.95, 5) == pytest.approx(2.015048, abs=1e-6)
    assert stats._t_quantile(0.975, 100_000) == pytest.approx(1.959988, abs=1e-5)  # -> normal


def test_t_interval_three_values_by_hand():
    # mean 0.2, sd (ddof 1) 0.1, se 0.1 / sqrt(3) = 0.0577350; half width 4.302653 * se = 0.2484138
    iv = t_interval_over_seeds([0.1, 0.2, 0.3])
    assert iv.estimate == pytest.approx(0.2)
    assert iv.low == pytest.approx(0.2 - 0.2484138, abs=1e-6)
    assert iv.high == pytest.approx(0.2 + 0.2484138, abs=1e-6)
    assert (iv.n_seeds, iv.n_cases) == (3, 0) and "df=2" in iv.method


def test_t_interval_equal_values_has_zero_width():
    iv = t_interval_over_seeds([0.5, 0.5, 0.5], level=0.9)
    assert (iv.low, iv.estimate, iv.high) == (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------- verdict, above


def test_verdict_positive_boundaries():
    assert verdict(_iv(0.0, 0.2)) == "inconclusive"  # touches the threshold
    assert verdict(_iv(1e-9, 0.2)) == "reproduced"
    assert verdict(_iv(-0.2, -1e-9)) == "opposite"
    assert verdict(_iv(-0.2, 0.0)) == "inconclusive"
    assert verdict(_iv(-0.1, 0.1)) == "inconclusive"


def test_verdict_negative_boundaries():
    assert verdict(_iv(-0.2, 0.0), expected="negative") == "inconclusive"
    assert verdict(_iv(-0.2, -1e-9), expected="negative") == "reproduced"
    assert verdict(_iv(1e-9, 0.2), expected="negative") == "opposite"
    assert verdict(_iv(0.0, 0.2), expected="negative") == "inconclusive"


def test_verdict_threshold():
    assert verdict(_iv(0.51, 0.6), threshold=0.5) == "reproduced"
    assert verdict(_iv(0.5, 0.6), threshold=0.5) == "inconclusive"
    assert verdict(_iv(0.4, 0.49), threshold=0.5) == "opposite"
    assert verdict(_iv(0.4, 0.49), expected="negative", threshold=0.5) == "reproduced"


def test_verdict_rejects_unknown_direction():
    with pytest.raises(ValueError, match="expected must be one of .*'up'"):
        verdict(_iv(0.1, 0.2), expected="up")
    with pytest.raises(ValueError, match="threshold must be finite"):
        verdict(_iv(0.1, 0.2), threshold=float("nan"))


def test_above_needs_the_whole_interval():
    assert above(_iv(0.26, 0.4), 0.25)
    assert not above(_iv(0.25, 0.4), 0.25)  # touching chance is not above it
    assert not above(_iv(0.1, 0.4), 0.25)  # estimate above chance, interval not


# --------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        (np.array([[0.1, np.nan]]), r"scores has 1 non-finite value\(s\), shape \(1, 2\)"),
        (np.array([[np.inf, 0.0], [0.0, -np.inf]]), r"scores has 2 non-finite"),
        (np.zeros((3, 0)), r"scores is empty, shape \(3, 0\)"),
        (np.zeros((0, 5)), r"scores is empty, shape \(0, 5\)"),
        (np.zeros(5), r"scores must be 2-D .*shape \(5,\).*reshape\(1, -1\)"),
        (np.zeros((2, 3, 4)), r"scores must be 2-D .*shape \(2, 3, 4\)"),
    ],
)
def test_bootstrap_rejects_bad_scores(scores, match):
    with pytest.raises(ValueError, match=match):
        seed_case_bootstrap(scores)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_rejects_bad_level(level):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="level must be in \\(0, 1\\)"):
        seed_case_bootstrap(x, level=level)
    with pytest.raises(ValueError, match="level must be in \\(0, 1\\)"):
        paired_difference(x, x, level=level)
    with pytest.raises(ValueError, match="level must be in \\(0, 1\\)"):
        t_interval_over_seeds([0.1, 0.2], level=level)


def test_rejects_bad_resamples():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="resamples must be >= 100, got 99"):
        seed_case_bootstrap(x, resamples=99)
    with pytest.raises(ValueError, match="resamples must be >= 100, got 10"):
        paired_difference(x, x, resamples=10)
    with pytest.raises(ValueError, match="resamples must be an integer, got 150.5"):
        seed_case_bootstrap(x, resamples=150.5)


def test_paired_rejects_mismatched_or_bad_inputs():
    with pytest.raises(ValueError, match=r"same shape .*a \(3, 10\) and b \(3, 9\)"):
        paired_difference(np.zeros((3, 10)), np.zeros((3, 9)))
    with pytest.raises(ValueError, match=r"b has 1 non-finite"):
        paired_difference(np.zeros((1, 2)), np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"a is empty"):
        paired_difference(np.zeros((0, 2)), np.zeros((0, 2)))


def test_t_interval_rejects_bad_values():
    with pytest.raises(ValueError, match=r"at least 2 seeds .*shape \(1,\)"):
        t_interval_over_seeds([0.5])
    with pytest.raises(ValueError, match=r"must be 1-D .*shape \(2, 2\)"):
        t_interval_over_seeds([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match="non-finite"):
        t_interval_over_seeds([0.1, float("inf"), 0.3])
