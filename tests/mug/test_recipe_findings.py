"""The recipes' findings (nas/reporting/recipe_findings.py) and MUG's claims on them (nas/recipes/mug/findings.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nas.config.params import load_params, resolve
from nas.evaluation.linear_probe import pooled_features, probe_by_feature
from nas.reporting.recipe_findings import (
    NOT_JUDGED,
    FindingsConfig,
    as_cases,
    difference,
    not_judged,
    pooled_difference,
    table,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = FindingsConfig(resamples=200)


def _outcomes(rate: float, seeds: int = 3, cases: int = 600, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((seeds, cases)) < rate).astype(float)


def test_verdicts_follow_the_whole_interval():
    high, low = _outcomes(0.9), _outcomes(0.6, seed=1)
    row = difference("k", "c", "a − b", "colour", high, low, FAST)
    assert row.verdict == "reproduced" and row.low > 0 and row.unit == "pts" and 25 < row.estimate < 35
    assert difference("k", "c", "b − a", "colour", low, high, FAST).verdict == "opposite"
    same = difference("k", "c", "a − a'", "colour", _outcomes(0.7), _outcomes(0.7, seed=2), FAST)
    assert same.verdict == "inconclusive" and same.low < 0 < same.high
    # non-inferiority: 1 point worse, tight interval, margin 5 -> reproduced; margin 0 -> not
    a, b = np.full((3, 1000), 0.0), np.full((3, 1000), 0.0)
    a[:, :690], b[:, :700] = 1.0, 1.0
    assert difference("k", "c", "a − b", "x", a, b, FAST, threshold=-5.0).verdict == "reproduced"
    assert difference("k", "c", "a − b", "x", a, b, FAST, threshold=0.0).verdict == "opposite"


def test_chance_levels_units_and_single_models():
    row = difference("k", "c", "a − chance", "x", _outcomes(0.5), 0.2, FAST)
    assert row.verdict == "reproduced" and row.estimate == pytest.approx(30, abs=3)
    ce = difference(
        "k", "c", "shuffled − own", "full", np.full((2, 50), 1.2), np.full((2, 50), 1.0), FAST, unit="nats"
    )
    assert ce.unit == "nats" and ce.estimate == pytest.approx(0.2) and ce.verdict == "reproduced"
    teacher = as_cases([[1.0, 0.0, 1.0]], seeds=3)
    assert teacher.shape == (3, 3) and (teacher == teacher[0]).all()


def test_pooled_uses_the_wider_interval_and_one_seed_falls_back_to_the_bootstrap():
    pairs = [(_outcomes(0.8, seed=k), _outcomes(0.7, seed=10 + k)) for k in range(2)]
    row = pooled_difference("k", "c", "a − b", pairs, FAST)
    assert row.attribute == "pooled" and "wider of Student t" in row.method and row.n_cases == 1200
    one = pooled_difference("k", "c", "a − b", [(a[:1], b[:1]) for a, b in pairs], FAST)
    assert "Student t" not in one.method and one.n_seeds == 1


def test_not_judged_rows_and_the_table():
    row = not_judged("k", "claim", "a − b", "shape", "teacher not above chance")
    assert row.verdict == NOT_JUDGED and row.verdict_code is None and row.estimate is None
    judged = difference("k2", "claim", "a − b", "colour", _outcomes(0.9), _outcomes(0.5), FAST)
    lines = table([row, judged.to_json()], FAST)
    assert "not judged (teacher not above chance)" in lines[2] and "**reproduced**" in lines[3]
    assert judged.to_json()["verdict_code"] == 1


def test_grid_features_keep_position_and_mean_does_not():
    tokens = torch.zeros(2, 1 + 16, 3)
    tokens[0, 1 + 0] = 1.0  # top-left patch lit
    tokens[1, 1 + 15] = 1.0  # bottom-right patch lit
    grid = pooled_features(tokens, "grid", 2)
    assert grid.shape == (2, 12)
    assert grid[0, :3].sum() > 0 and grid[0, 9:].sum() == 0 and grid[1, 9:].sum() > 0
    assert torch.equal(pooled_features(tokens, "mean")[0], pooled_features(tokens, "mean")[1])
    assert pooled_features(tokens, "cls").shape == (2, 3)
    with pytest.raises(ValueError, match="grid"):
        pooled_features(tokens, "grid", 5)


def test_probe_by_feature_probes_each_attribute_on_its_feature_and_skips_what_it_cannot_fit():
    rng = np.random.default_rng(0)
    side = ["left", "right"] * 30
    where = np.array([[1.0, 0.0] if s == "left" else [0.0, 1.0] for s in side]) + 0.01 * rng.normal(
        size=(60, 2)
    )
    feats = {"mean": np.ones((60, 2)) + 0.01 * rng.normal(size=(60, 2)), "grid": where}
    labels = {"hpos": side, "colour": ["red"] * 60}
    out = probe_by_feature(feats, labels, feats, labels, {"hpos": "grid", "colour": "mean"}, outcomes=True)
    assert out["hpos"]["feature"] == "grid" and out["hpos"]["accuracy"] == 100.0
    assert len(out["hpos"]["_correct"]) == 60 and out["hpos"]["_rows"][:2] == [0, 1]
    assert "skipped" in out["colour"] and out["colour"]["feature"] == "mean"


def _mug_section():
    from nas.recipes.mug.card import read_section

    return read_section(resolve(load_params(ROOT / "params.yaml")))


def _run(rates: dict[str, float], seed: int) -> dict:
    n = {"count": 800, "colour": 500, "shape": 500, "size": 800, "relation": 300, "hpos": 500, "vpos": 500}
    rng = np.random.default_rng(seed)
    return {
        "probes": {a: {"correct": (rng.random(n[a]) < rates.get(a, 0.2)).astype(float)} for a in n},
        "caption_ce": {
            "ce": np.full(40, 1.0),
            "ce_shuffled": np.full(40, 1.1),
            "ce_full": np.full(40, 0.9),
            "ce_full_shuffled": np.full(40, 1.1),
        },
    }


def test_mug_claims_judge_only_what_the_full_model_learned():
    from nas.recipes.mug.findings import mug_findings

    section = _mug_section()
    good = {"count": 0.8, "colour": 0.95, "size": 0.7, "relation": 0.5, "hpos": 0.7, "vpos": 0.7}
    worse = {**good, "colour": 0.85, "hpos": 0.6}
    cases = {
        "mug": [_run(good, k) for k in range(3)],
        "mae_only": [_run(worse, 10 + k) for k in range(3)],
        "caption_only": [_run(worse, 20 + k) for k in range(3)],
        "untrained": [_run({}, 30 + k) for k in range(3)],
    }
    levels = {
        "count": 33.3,
        "colour": 16.7,
        "shape": 20.0,
        "size": 41.0,
        "relation": 29.0,
        "hpos": 44.0,
        "vpos": 45.0,
    }
    rows, learned = mug_findings(cases, levels, section)
    by_key = {row.key: row for row in rows}
    assert learned["colour"] and not learned["shape"]  # shape at chance: tests nothing
    assert by_key["mug_vs_mae.shape"].verdict == NOT_JUDGED
    assert by_key["mug_vs_mae.colour"].verdict == "reproduced"
    assert by_key["mug_vs_caption_only.hpos"].verdict == "reproduced"  # non-inferiority
    assert by_key["mug_vs_caption_only.pooled"].threshold == -section.evaluate.findings.margin
    assert by_key["uses_image.mug.full"].estimate == pytest.approx(0.2)
    assert "uses_image.mae_only.full" not in by_key  # MAE only trains no caption branch
    assert by_key["mug_vs_untrained.pooled"].verdict == "reproduced"
    # an arm that did not run leaves its claim not judged instead of failing
    rows, _ = mug_findings({"mug": cases["mug"]}, levels, section)
    assert {r.key: r.verdict for r in rows}["mug_vs_mae.pooled"] == NOT_JUDGED
