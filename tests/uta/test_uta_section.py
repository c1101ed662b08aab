"""The UTA report section: [] without metrics; tables and the masking figure with them."""

from __future__ import annotations

import json

from nas.evaluation.seeds import aggregate
from nas.reporting.uta_section import FIGURE, section


def _run(zs: float) -> dict:
    probes = {a: {"accuracy": 50.0 + zs, "chance": 25.0, "majority": 30.0} for a in ("colour", "size")}
    zero_shot = {a: {"accuracy": zs, "chance": 20.0, "n": 10, "n_classes": 5} for a in ("colour", "size")}
    return {
        "zero_shot": zero_shot,
        "zero_shot_mean": zs,
        "probes": probes,
        "heldout_1mcos": 0.1,
        "heldout_1mcos_masked": 0.2,
        "heldout_1mcos_cls": 0.3,
        "position_cos_std": 0.01,
    }


def test_no_metrics_no_section(tmp_path):
    assert section(tmp_path / "metrics", tmp_path / "reports") == []


def test_tables_and_figure(tmp_path):
    metrics = tmp_path / "metrics" / "uta"
    metrics.mkdir(parents=True)
    arms = {arm: [_run(60.0), _run(70.0)] for arm in ("none", "reversed_blockwise")}
    evaluation = {
        "split": "test",
        "zero_shot_images": 10,
        "heldout_1mcos_initial": 0.99,
        "teacher": {"zero_shot": _run(80.0)["zero_shot"], "probes": _run(40.0)["probes"]},
        "arms": {
            arm: {"seeds": [0, 1], "mean_std": aggregate(runs), "per_seed": runs}
            for arm, runs in arms.items()
        },
    }
    (metrics / "evaluate.json").write_text(json.dumps(evaluation))
    grid = [[0.9, 0.8], [0.7, 0.6]]
    figure = {
        "grid": [2, 2],
        "heatmaps": {arm: grid for arm in arms},
        "visibility": {arm: grid for arm in arms},
        "example_masks": {arm: [[0, 3], [1, 2]] for arm in arms},
    }
    (metrics / "figure.json").write_text(json.dumps(figure))
    lines = section(tmp_path / "metrics", tmp_path / "reports")
    text = "\n".join(lines)
    assert "| teacher (frozen CLIP) | | 80.0 | 80.0 | 80.0 |" in text
    assert "| student, reversed block-wise (UTA) | 2 | 65.0 ± 7.1 | 65.0 ± 7.1 | 65.0 ± 7.1 |" in text
    assert "| no masking | 0.100 ± 0.000 | 0.200 ± 0.000 | 0.300 ± 0.000 |" in text
    assert "untrained student: 0.990" in text
    assert f"figures/{FIGURE}" in text and (tmp_path / "reports" / "figures" / FIGURE).stat().st_size > 1000
