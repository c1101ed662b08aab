"""UTA's claims with intervals: alignment and convergence guards, untrained baseline, not-judged rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nas.config.params import load_params, resolve
from nas.reporting.recipe_findings import NOT_JUDGED

ROOT = Path(__file__).resolve().parents[2]


def _ctx(*overrides):
    from nas.recipes.uta.data import read_context

    return read_context(
        resolve(
            load_params(ROOT / "params.yaml"), None, ["uta.evaluation.findings.resamples=200", *overrides]
        )
    )


def _zs(rates: dict[str, float], seed: int, cls: float = 0.05) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "zero_shot": {a: {"correct": (rng.random(2000) < r).astype(float)} for a, r in rates.items()},
        "probes": {},
        "cls_1mcos": np.full(2000, cls),
    }


TEACHER = {"colour": 1.0, "shape": 0.2, "size": 0.85}
CHANCE = {"colour": 100 / 6, "shape": 20.0, "size": 50.0}


def test_student_vs_teacher_uses_aligned_seeds_and_skips_what_the_teacher_did_not_learn():
    from nas.recipes.uta.findings import uta_findings

    ctx = _ctx()
    main = ctx.section.main_arm
    cases = {
        "teacher": [_zs(TEACHER, 0)],
        main: [
            _zs({"colour": 1.0, "shape": 0.2, "size": 0.84}, k, cls)
            for k, cls in enumerate((0.05, 0.3, 0.06))
        ],
        "none": [_zs({"colour": 1.0, "shape": 0.2, "size": 0.6}, 10 + k) for k in range(3)],
        "untrained": [_zs({"colour": 0.17, "shape": 0.2, "size": 0.5}, 20 + k, 1.0) for k in range(3)],
    }
    seeds = {"teacher": [0], main: [0, 1, 2], "none": [0, 1, 2], "untrained": [0, 1, 2]}
    aligned = {main: [0, 2], "none": [0, 1, 2]}
    rows, learned = uta_findings(cases, seeds, aligned, CHANCE, ctx)
    by_key = {row.key: row for row in rows}
    assert learned == {"colour": True, "shape": False, "size": True}
    row = by_key["student_vs_teacher.size"]
    assert row.n_seeds == 2 and "2/3 seeds aligned" in row.comparison  # the unaligned seed is left out
    assert row.verdict == "reproduced" and row.threshold == -ctx.section.evaluation.findings.margin
    assert by_key["student_vs_teacher.shape"].verdict == NOT_JUDGED
    assert by_key["reversed_vs_none.size"].verdict == "reproduced"
    assert by_key["student_vs_untrained.pooled"].verdict == "reproduced"
    assert by_key[f"aligned.{main}"].n_seeds == 3 and by_key["aligned.none"].verdict == "reproduced"

    rows, _ = uta_findings(cases, seeds, {main: [], "none": [0, 1, 2]}, CHANCE, ctx)
    first = {r.key: r for r in rows}["student_vs_teacher.pooled"]
    assert first.verdict == NOT_JUDGED and "no aligned seed" in first.method


def test_convergence_guard_flags_a_diverging_finetune():
    from nas.recipes.uta.train import convergence

    chance = math.log(64)
    diverged = convergence({"first_logged_loss": 5.22, "last_logged_loss": 6.51}, 64)
    assert diverged == {"chance_loss": pytest.approx(chance), "converged": False}
    assert not convergence({"first_logged_loss": 4.6, "last_logged_loss": 4.3}, 64)[
        "converged"
    ]  # above chance
    assert convergence({"first_logged_loss": 4.2, "last_logged_loss": 3.1}, 64)["converged"]
    assert not convergence({"first_logged_loss": None, "final_epoch_loss": 3.0}, 64)["converged"]


def test_measure_student_reports_alignment_and_per_case_outcomes():
    import torch
    from uta_fixtures import tiny_student, tiny_teacher

    from nas.evaluation.zero_shot import build_classifier
    from nas.models.uta import UTAPretrainer
    from nas.recipes.uta.data import HeldOut
    from nas.recipes.uta.evaluate import measure_student

    ctx = _ctx()
    torch.manual_seed(0)
    classifier = build_classifier(
        lambda texts: torch.nn.functional.normalize(torch.randn(len(texts), 16), dim=-1)
    )
    student, teacher = tiny_student(), tiny_teacher()
    images = torch.randn(12, 3, 32, 32)
    labels = {
        "count": ["1", "2", "3"] * 4,
        "colour": ["red", "blue", None] * 4,
        "shape": ["circle", "square", None] * 4,
        "size": ["small", "large", "mixed"] * 4,
        "relation": [None, "left of", None, None, "above", None] * 2,
        "hpos": ["left", "right", None] * 4,
        "vpos": ["top", "bottom", None] * 4,
    }
    data = HeldOut(images, labels, [0, 3, 6, 9], images, labels)
    teacher_tokens = UTAPretrainer(student, teacher, ctx.section.masking).teacher_tokens(images)
    result, cases = measure_student(student, ctx, ctx.section.main_arm, data, classifier, teacher_tokens)
    assert result["aligned"] == (result["heldout_1mcos_cls"] <= ctx.section.evaluation.alignment_threshold)
    assert not any(k.startswith("_") for v in result["zero_shot"].values() for k in v)
    assert len(cases["zero_shot"]["colour"]["correct"]) == 4 and cases["cls_1mcos"].shape == (12,)
    assert result["probes"]["relation"].get("skipped") or result["probes"]["relation"]["feature"] == "grid"
