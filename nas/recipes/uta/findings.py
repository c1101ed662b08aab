"""UTA's claims (MUG_UTA.md §2) in miniature, judged with intervals (nas.reporting.recipe_findings)."""

from __future__ import annotations

from typing import Any

from nas.recipes.uta.data import Context

TEACHER, UNTRAINED, FINETUNED = "teacher", "untrained", "finetuned"


def _outcomes(runs: list[dict[str, Any]] | None, kind: str, attribute: str):
    """[S, N] outcomes of `kind` ("zero_shot" / "probes") on `attribute` over `runs`, or None."""
    from nas.reporting.recipe_findings import as_cases

    rows = [run[kind].get(attribute) for run in runs or []]
    if not rows or any(r is None for r in rows):
        return None
    return as_cases([r["correct"] for r in rows])


def uta_findings(
    cases: dict[str, list[dict[str, Any]]],
    seeds: dict[str, list[int]],
    aligned: dict[str, list[int]],
    chance: dict[str, float],
    ctx: Context,
) -> tuple[list[Any], dict[str, bool]]:
    """The claims of MUG_UTA.md §2 in miniature, judged with intervals (recipe_findings), and the
    zero-shot attributes the teacher learned (above chance by its interval):

    - the student's zero-shot through the teacher's text tower approaches the teacher's (per attribute
      and pooled; non-inferiority, margin uta.evaluation.findings.margin points), judged on the main
      arm's aligned seeds only (held-out CLS 1 - cos <= alignment_threshold);
    - reversed block-wise beats no masking at equal steps (zero-shot, on the seeds both trained);
    - every student aligns: per-image held-out CLS 1 - cos below the threshold (interval below it);
    - sanity: the student beats its untrained self; fine-tuning (converged seeds) keeps the zero-shot.
    `seeds[model]` lists the seeds of `cases[model]` in order."""
    from nas.reporting.recipe_findings import (
        above_level,
        as_cases,
        difference,
        not_judged,
        pooled_difference,
    )

    section, ev = ctx.section, ctx.section.evaluation
    settings = ev.findings
    main = section.main_arm
    learned: dict[str, bool] = {}
    for attribute, level in chance.items():
        x = _outcomes(cases.get(TEACHER), "zero_shot", attribute)
        learned[attribute] = x is not None and above_level(x, level / 100.0, settings)[0]
    judged = [a for a in chance if learned[a]]

    def pick(model: str, keep: list[int]) -> list[dict[str, Any]]:
        return [run for seed, run in zip(seeds.get(model, []), cases.get(model, [])) if seed in keep]

    def compare(key, claim, comparison, a_runs, b_runs, threshold, b_single=False):
        out, pairs = [], []
        for attribute in chance:
            rkey = f"{key}.{attribute}"
            if not learned[attribute]:
                out.append(
                    not_judged(
                        rkey, claim, comparison, attribute, "teacher not above chance", threshold=threshold
                    )
                )
                continue
            a = _outcomes(a_runs, "zero_shot", attribute)
            b = _outcomes(b_runs, "zero_shot", attribute)
            if a is None or b is None:
                out.append(not_judged(rkey, claim, comparison, attribute, "no outcomes", threshold=threshold))
                continue
            if b_single:
                b = as_cases(b, seeds=a.shape[0])
            out.append(difference(rkey, claim, comparison, attribute, a, b, settings, threshold=threshold))
            pairs.append((a, b))
        if pairs:
            out.append(
                pooled_difference(f"{key}.pooled", claim, comparison, pairs, settings, threshold=threshold)
            )
        else:
            out.append(
                not_judged(
                    f"{key}.pooled", claim, comparison, "pooled", "no attribute judged", threshold=threshold
                )
            )
        return out

    rows: list[Any] = []
    claim = "The student's zero-shot through the teacher's text tower approaches the teacher's"
    ok = aligned.get(main, [])
    comparison = f"student ({main}, {len(ok)}/{len(seeds.get(main, []))} seeds aligned) − teacher"
    if not ok:
        why = f"no aligned seed (held-out CLS 1 − cos > {ev.alignment_threshold})"
        rows.append(
            not_judged(
                "student_vs_teacher.pooled", claim, comparison, "pooled", why, threshold=-settings.margin
            )
        )
    else:
        rows += compare(
            "student_vs_teacher",
            claim,
            comparison,
            pick(main, ok),
            cases.get(TEACHER),
            -settings.margin,
            b_single=True,
        )
    claim = "Reversed block-wise beats no masking at equal steps"
    if main in cases and "none" in cases and main != "none":
        common = [s for s in seeds[main] if s in seeds["none"]]
        rows += compare(
            "reversed_vs_none",
            claim,
            f"{main} − none (zero-shot)",
            pick(main, common),
            pick("none", common),
            0.0,
        )
    else:
        rows.append(not_judged("reversed_vs_none.pooled", claim, "reversed − none", "pooled", "arm not run"))
    claim = f"The student aligns: held-out CLS 1 − cos below {ev.alignment_threshold}"
    for arm in seeds:
        if arm in (TEACHER, UNTRAINED, FINETUNED):
            continue
        x = as_cases([run["cls_1mcos"] for run in cases[arm]])
        rows.append(
            difference(
                f"aligned.{arm}",
                claim,
                f"{arm}: CLS 1 − cos − {ev.alignment_threshold}",
                "held-out images",
                x,
                ev.alignment_threshold,
                settings,
                expected="negative",
                unit="1−cos",
            )
        )
    if UNTRAINED in cases and main in cases and judged:
        common = [s for s in seeds[main] if s in seeds[UNTRAINED]]
        pairs = [
            (
                _outcomes(pick(main, common), "zero_shot", a),
                _outcomes(pick(UNTRAINED, common), "zero_shot", a),
            )
            for a in judged
        ]
        rows.append(
            pooled_difference(
                "student_vs_untrained.pooled",
                "Training helps: the student beats its untrained self",
                f"{main} − untrained (zero-shot)",
                pairs,
                settings,
            )
        )
    if FINETUNED in cases:
        ok = [s for s in aligned.get(FINETUNED, [])]
        claim = "Zero-shot holds after contrastive fine-tuning"
        comparison = f"fine-tuned − pretrained ({len(ok)}/{len(seeds[FINETUNED])} seeds converged)"
        if ok and judged:
            pairs = [
                (_outcomes(pick(FINETUNED, ok), "zero_shot", a), _outcomes(pick(main, ok), "zero_shot", a))
                for a in judged
            ]
            rows.append(
                pooled_difference(
                    "finetuned_vs_student.pooled",
                    claim,
                    comparison,
                    pairs,
                    settings,
                    threshold=-settings.margin,
                )
            )
        else:
            rows.append(
                not_judged("finetuned_vs_student.pooled", claim, comparison, "pooled", "no converged seed")
            )
    return rows, learned


def zero_shot_intervals(cases: dict[str, list[dict[str, Any]]], attributes, settings) -> dict[str, Any]:
    """{model: {attribute: seed x case bootstrap interval of the zero-shot accuracy (fractions)}}."""
    from nas.evaluation.stats import seed_case_bootstrap

    out: dict[str, Any] = {}
    for model, runs in cases.items():
        for attribute in attributes:
            x = _outcomes(runs, "zero_shot", attribute)
            if x is not None:
                out.setdefault(model, {})[attribute] = seed_case_bootstrap(x, **settings.kwargs).to_dict()
    return out
