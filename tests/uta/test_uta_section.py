"""The UTA report section: [] without metrics; tables and the masking figure with them."""

from __future__ import annotations

import json

import numpy as np

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
    assert "| no masking | 2 | 0.100 ± 0.000 | 0.200 ± 0.000 | 0.300 ± 0.000 |" in text
    assert "untrained student: 0.990" in text
    assert f"figures/{FIGURE}" in text and (tmp_path / "reports" / "figures" / FIGURE).stat().st_size > 1000


def test_untrained_baseline_findings_context_arms_and_a_cut_finetune(tmp_path):
    from nas.reporting.recipe_findings import FindingsConfig, difference, not_judged

    metrics = tmp_path / "metrics" / "uta"
    metrics.mkdir(parents=True)
    runs = [_run(60.0) | {"aligned": True}, _run(70.0) | {"aligned": False}]
    cfg = FindingsConfig(resamples=200)
    ones, zeros = np.ones((2, 50)), np.zeros((2, 50))
    findings = [
        difference(
            "student_vs_teacher.colour",
            "approaches",
            "student − teacher",
            "colour",
            ones,
            ones,
            cfg,
            threshold=-5.0,
        ),
        not_judged(
            "student_vs_teacher.shape", "approaches", "student − teacher", "shape", "teacher not above chance"
        ),
        difference("reversed_vs_none.colour", "beats", "reversed − none", "colour", ones, zeros, cfg),
    ]
    evaluation = {
        "split": "test",
        "zero_shot_images": 567,
        "heldout_1mcos_initial": 0.99,
        "alignment_threshold": 0.1,
        "teacher": {"zero_shot": _run(80.0)["zero_shot"], "probes": _run(40.0)["probes"]},
        "untrained": {
            "seeds": [0, 1],
            "mean_std": aggregate([_run(20.0), _run(22.0)]),
            "per_seed": [_run(20.0), _run(22.0)],
        },
        "arms": {
            "reversed_blockwise": {
                "seeds": [0, 1],
                "aligned_seeds": [0],
                "mean_std": aggregate(runs),
                "per_seed": runs,
            }
        },
        "context_arms": ["blockwise"],
        "finetune_enabled": False,
        "findings": [row.to_json() for row in findings],
        "findings_settings": {"level": 0.95, "resamples": 200, "margin": 5.0},
        "zero_shot_intervals": {"teacher": {"colour": {"estimate": 0.8, "low": 0.75, "high": 0.85}}},
    }
    (metrics / "evaluate.json").write_text(json.dumps(evaluation))
    (metrics / "finetune.json").write_text(
        json.dumps({"stage": "uta_finetune", "enabled": False, "runs": {}})
    )
    grid = [[0.9, 0.8], [0.7, 0.6]]
    figure = {
        "grid": [2, 2],
        "heatmaps": {"reversed_blockwise": grid},
        "visibility": {"reversed_blockwise": grid, "blockwise": grid},
        "example_masks": {"reversed_blockwise": [[0, 3]], "blockwise": [[1, 2]]},
    }
    (metrics / "figure.json").write_text(json.dumps(figure))
    text = "\n".join(section(tmp_path / "metrics", tmp_path / "reports"))
    assert "| student, untrained (same seeds) | 2 | 21.0 ± 1.4 |" in text
    assert "| student, reversed block-wise (UTA) | 2 (1) |" in text  # seeds (aligned)
    assert "| teacher (frozen CLIP) | | 80.0 [75.0, 85.0] |" in text
    assert "| 1 / 2 |" in text  # aligned seeds in the ablation table
    assert (
        "### Findings" in text
        and "not judged (teacher not above chance)" in text
        and "**reproduced**" in text
    )
    assert "Not trained on this profile (context arms, `uta.context_seeds`): block-wise" in text
    assert "**cut on this profile**" in text
    assert (tmp_path / "reports" / "figures" / FIGURE).stat().st_size > 1000
