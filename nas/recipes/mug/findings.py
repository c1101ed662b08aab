"""MUG's claims (MUG_UTA.md §1) in miniature, judged with intervals over seeds and cases
(nas/reporting/recipe_findings.py)."""

from __future__ import annotations

from typing import Any

from nas.recipes.mug.card import MUGSection, effective_model

FULL, MAE, CAPTION = "mug", "mae_only", "caption_only"  # the arms the paper's claims name
UNTRAINED = "untrained"
ARM_NAMES = {MAE: "MAE-only", CAPTION: "caption-only", FULL: "MUG"}


def _probe_cases(cases: dict[str, list[dict[str, Any]]], model: str, attribute: str):
    """[S, N] probe outcomes of `model` on `attribute` (None when a seed skipped it)."""
    from nas.reporting.recipe_findings import as_cases

    runs = cases.get(model) or []
    rows = [run["probes"].get(attribute) for run in runs]
    if not rows or any(r is None for r in rows):
        return None
    return as_cases([r["correct"] for r in rows])


def probe_intervals(
    cases: dict[str, list[dict[str, Any]]], attributes, settings
) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {attribute: seed x case bootstrap interval of the probe accuracy (fractions)}}."""
    from nas.evaluation.stats import seed_case_bootstrap

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model in cases:
        for attribute in attributes:
            x = _probe_cases(cases, model, attribute)
            if x is not None:
                out.setdefault(model, {})[attribute] = seed_case_bootstrap(x, **settings.kwargs).to_dict()
    return out


def mug_findings(
    cases: dict[str, list[dict[str, Any]]],
    levels: dict[str, float],
    section: MUGSection,
) -> tuple[list[Any], dict[str, bool]]:
    """The claims of MUG_UTA.md §1 in miniature, judged with intervals (recipe_findings), and which
    attributes the full model learned (its probe accuracy above `levels[attribute]` percent, the
    better of chance and the majority-class rate, by its whole interval):

    - MUG beats MAE-only on caption-described attributes (per attribute and pooled);
    - MUG matches or beats caption-only on pixel-only attributes (non-inferiority, margin
      mug.evaluate.findings.margin points);
    - every arm that trains a caption branch uses the image: held-out caption CE given a shuffled image
      minus CE given the right one > 0 (masked view and full image);
    - sanity: MUG beats its untrained self (pooled over the learned attributes)."""
    from nas.evaluation.scene_attributes import CAPTION_ATTRIBUTES, PIXEL_ATTRIBUTES
    from nas.reporting.recipe_findings import (
        above_level,
        as_cases,
        difference,
        not_judged,
        pooled_difference,
    )

    cfg = settings = section.evaluate.findings
    learned: dict[str, bool] = {}
    for attribute, level in levels.items():
        x = _probe_cases(cases, FULL, attribute)
        learned[attribute] = x is not None and above_level(x, level / 100.0, settings)[0]
    rows: list[Any] = []
    claims = (
        ("mug_vs_mae", "MUG beats MAE-only on caption-described attributes", MAE, CAPTION_ATTRIBUTES, 0.0),
        (
            "mug_vs_caption_only",
            "MUG matches or beats caption-only on pixel-only attributes",
            CAPTION,
            PIXEL_ATTRIBUTES,
            -cfg.margin,
        ),
    )
    for key, claim, other, attributes, threshold in claims:
        comparison = f"MUG − {ARM_NAMES.get(other, other)}"
        if FULL not in cases or other not in cases:
            rows.append(not_judged(f"{key}.pooled", claim, comparison, "pooled", "arm not run"))
            continue
        pairs = []
        for attribute in attributes:
            a, b = _probe_cases(cases, FULL, attribute), _probe_cases(cases, other, attribute)
            rkey = f"{key}.{attribute}"
            if a is None or b is None:
                rows.append(not_judged(rkey, claim, comparison, attribute, "no probe (too few labels)"))
            elif not learned.get(attribute, False):  # no probe could fit it, or not above chance
                rows.append(not_judged(rkey, claim, comparison, attribute, "MUG not above chance"))
            else:
                rows.append(
                    difference(rkey, claim, comparison, attribute, a, b, settings, threshold=threshold)
                )
                pairs.append((a, b))
        if pairs:
            rows.append(
                pooled_difference(f"{key}.pooled", claim, comparison, pairs, settings, threshold=threshold)
            )
        else:
            rows.append(not_judged(f"{key}.pooled", claim, comparison, "pooled", "no attribute learned"))
    for arm, runs in cases.items():
        if arm == UNTRAINED or effective_model(section.arm_model(arm))["cap_weight"] == 0:
            continue
        claim = "The caption branch uses the image"
        for view, right, shuffled in (
            ("masked view", "ce", "ce_shuffled"),
            ("full image", "ce_full", "ce_full_shuffled"),
        ):
            a = as_cases([run["caption_ce"][shuffled] for run in runs])
            b = as_cases([run["caption_ce"][right] for run in runs])
            rows.append(
                difference(
                    f"uses_image.{arm}.{view.split()[0]}",
                    claim,
                    f"{arm}: CE(shuffled image) − CE(own image)",
                    view,
                    a,
                    b,
                    settings,
                    unit="nats",
                )
            )
    if FULL in cases and UNTRAINED in cases:
        pairs = [
            (_probe_cases(cases, FULL, a), _probe_cases(cases, UNTRAINED, a))
            for a in levels
            if learned[a] and _probe_cases(cases, UNTRAINED, a) is not None
        ]
        claim, comparison = "Training helps: MUG beats the untrained encoder", "MUG − untrained"
        if pairs:
            rows.append(pooled_difference("mug_vs_untrained.pooled", claim, comparison, pairs, settings))
        else:
            rows.append(
                not_judged("mug_vs_untrained.pooled", claim, comparison, "pooled", "no attribute learned")
            )
    return rows, learned
