"""UTA's evaluation: the teacher, the untrained students, every run of every arm and the fine-tuned
students on the held-out scenes (zero-shot through the frozen text tower, linear probes, held-out
1 - cos, per-position heatmaps), the fine-grained probes, the figure data; and the stage that writes
them (`uta_evaluate`), which also gathers the training runs' summaries into metrics/uta/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.config.params import input_root, output_root
from nas.recipes.stage import Recorder
from nas.recipes.uta.data import Context, HeldOut, held_out, stage_context, write_json
from nas.recipes.uta.findings import FINETUNED, TEACHER, UNTRAINED, uta_findings, zero_shot_intervals
from nas.recipes.uta.paths import (
    EVAL_RUN,
    FINE_GRAINED,
    FINETUNE_RUN,
    METRICS,
    PRETRAIN_RUN,
    SUMMARY,
    finetune_run,
    student_run,
)
from nas.recipes.uta.train import load_finetuned, load_stage_teacher, load_student


def training_summaries(ctx: Context) -> dict[str, Any]:
    """{"pretrain", "finetune"}: metrics/uta/{pretrain,finetune}.json from the runs' summaries (every
    arm x seed of `uta_pretrain` and of `uta_context`; every seed of `uta_finetune` when it is enabled)."""
    from nas.evaluation.seeds import mean_std

    root, section = output_root(ctx.raw), ctx.section
    trained = input_root(root, PRETRAIN_RUN, "uta_pretrain")
    runs: dict[str, dict[str, Any]] = {}
    for arm in section.trained_arms:
        for seed in section.arm_seeds(arm):
            path = student_run(arm, seed, trained) / SUMMARY
            if not path.is_file():
                stage = "uta_context" if arm in section.context_arms else "uta_pretrain"
                raise FileNotFoundError(f"{path} is missing: run `{stage}` for arm {arm}, seed {seed}")
            runs.setdefault(arm, {})[str(seed)] = json.loads(path.read_text())
    final = {
        arm: mean_std([run["final"]["uta"] for run in by_seed.values()]) for arm, by_seed in runs.items()
    }
    pretrain = {"stage": "uta_pretrain", "final_train_loss": final, "runs": runs}
    ft = section.finetune
    finetune: dict[str, Any] = {
        "stage": "uta_finetune",
        "enabled": ft.enabled,
        "arm": section.main_arm,
        "runs": {},
    }
    if ft.enabled:
        tuned = input_root(root, FINETUNE_RUN, "uta_finetune")
        for seed in section.seeds:
            path = finetune_run(seed, tuned) / SUMMARY
            if path.is_file():
                finetune["runs"][str(seed)] = json.loads(path.read_text())
    return {"pretrain": pretrain, "finetune": finetune}


def build_student(ctx: Context):
    """The student at its random initialisation (the untrained baseline; the reference grid)."""
    from nas.models.registry import create_model

    spec = ctx.section.student.model
    return create_model(spec.name, **spec.overrides)


def batched(fn, images, batch_size: int):
    import torch

    with torch.no_grad():
        return torch.cat([fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def classifier_of(text_model):
    """Zero-shot class embeddings through a CLIP text tower (BPE with the tower's context length)."""
    from nas.data.bpe_tokenizer import BpeTokenizer
    from nas.evaluation.zero_shot import build_classifier

    tokenizer = BpeTokenizer(text_model.context_length)
    text_model.eval()
    return build_classifier(lambda texts: text_model.encode_text(tokenizer.encode(texts).input_ids))


def teacher_zero_shot(teacher, data: HeldOut, batch_size: int, outcomes: bool = False) -> dict[str, Any]:
    from nas.evaluation.zero_shot import zero_shot_accuracy

    embeddings = batched(teacher.encode_image, data.images, batch_size)
    return zero_shot_accuracy(
        embeddings, data.labels, classifier_of(teacher), rows=data.zero_shot_rows, outcomes=outcomes
    )


def probe_features_of(ctx: Context) -> dict[str, str]:
    """The feature each scene attribute is probed on (uta.evaluation.probe_feature / spatial_probe_feature)."""
    from nas.evaluation.scene_attributes import ATTRIBUTES, SPATIAL_ATTRIBUTES

    ev = ctx.section.evaluation
    return {a: ev.spatial_probe_feature if a in SPATIAL_ATTRIBUTES else ev.probe_feature for a in ATTRIBUTES}


def pooled_of(tokens, kinds, grid: int) -> dict[str, Any]:
    from nas.evaluation.linear_probe import pooled_features

    return {kind: pooled_features(tokens, kind, grid).numpy() for kind in kinds}


def probes(tokens_fn, data: HeldOut, ctx: Context, test_tokens=None) -> dict[str, Any]:
    """Linear probes per scene attribute on frozen tokens `tokens_fn(images) -> [B, 1 + N, D]` (CLS
    first), each attribute on its own feature; with per-case outcomes ("_correct")."""
    from nas.evaluation.linear_probe import probe_by_feature

    ev = ctx.section.evaluation
    feature_of = probe_features_of(ctx)
    kinds = sorted(set(feature_of.values()))
    train = pooled_of(batched(tokens_fn, data.probe_images, ev.batch_size), kinds, ev.probe_grid)
    if test_tokens is None:
        test_tokens = batched(tokens_fn, data.images, ev.batch_size)
    test = pooled_of(test_tokens, kinds, ev.probe_grid)
    return probe_by_feature(train, data.probe_labels, test, data.labels, feature_of, ev.probe, outcomes=True)


def _cases_of(zero_shot: dict[str, Any], probe: dict[str, Any]) -> dict[str, Any]:
    return {
        "zero_shot": {a: {"rows": r["_rows"], "correct": r["_correct"]} for a, r in zero_shot.items()},
        "probes": {
            a: {"rows": r["_rows"], "correct": r["_correct"]} for a, r in probe.items() if "_correct" in r
        },
    }


def measure_student(
    student, ctx: Context, arm: str, data: HeldOut, classifier, teacher_tokens
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, per-case outcomes) of one student: zero-shot, linear probes, held-out 1 - cos (full
    view, own masking, CLS, per position) and whether its CLS is aligned (alignment_threshold)."""
    import torch
    import torch.nn.functional as F

    from nas.evaluation.linear_probe import public
    from nas.evaluation.zero_shot import mean_accuracy, zero_shot_accuracy
    from nas.models.block_masking import sample_visible
    from nas.objectives.uta import gather_tokens, token_cosine

    ev = ctx.section.evaluation
    student.eval()
    tokens = batched(student.forward_features, data.images, ev.batch_size)  # one pass, full view
    with torch.no_grad():
        projected = student.head(tokens)
    full = token_cosine(projected, teacher_tokens)  # [N, 1 + P]
    embeddings = F.normalize(projected[:, 0], dim=-1)
    zero_shot = zero_shot_accuracy(
        embeddings, data.labels, classifier, rows=data.zero_shot_rows, outcomes=True
    )
    generator = torch.Generator().manual_seed(ev.mask_seed)
    keep = sample_visible(len(data.images), student.grid, ctx.section.arm_masking(arm), generator=generator)
    with torch.no_grad():
        masked = token_cosine(student(data.images, keep), gather_tokens(teacher_tokens, keep))
    position = full[:, 1:].mean(dim=0)
    probe = probes(student.forward_features, data, ctx, test_tokens=tokens)
    cls = float(1 - full[:, 0].mean())
    result = {
        "zero_shot": public(zero_shot),
        "zero_shot_mean": mean_accuracy(zero_shot),
        "probes": public(probe),
        "heldout_1mcos": float(1 - full.mean()),
        "heldout_1mcos_masked": float(1 - masked.mean()),
        "heldout_1mcos_cls": cls,
        "aligned": cls <= ev.alignment_threshold,
        "position_cos_std": float(position.std()),  # spatial (non-)uniformity of the heatmap
        "_heatmap": position.reshape(student.grid).tolist(),
    }
    cases = _cases_of(zero_shot, probe) | {"cls_1mcos": (1 - full[:, 0]).numpy()}
    return result, cases


def fine_grained_row(scorer_for, seeds, probes_root, benchmarks, scores_dir: Path) -> dict[str, Any]:
    """One row of the shared fine-grained tables: the probe suite under one scorer, per seed."""
    from nas.evaluation.probe_suite import run_probe_suite

    per_seed = [
        run_probe_suite([scorer_for(seed)], probes_root, benchmarks, scores_dir / f"seed{seed}")
        for seed in seeds
    ]
    return {"seeds": list(seeds), "per_seed": per_seed}


def figure_data(ctx: Context, heatmaps: dict[str, list], grid: tuple[int, int]) -> dict[str, Any]:
    """What the report's figure shows: per-position cosine maps, P(visible) maps, example masks."""
    import torch

    from nas.models.block_masking import sample_visible, visibility_frequency

    ev = ctx.section.evaluation
    out: dict[str, Any] = {"grid": list(grid), "heatmaps": heatmaps, "visibility": {}, "example_masks": {}}
    for arm in ctx.section.all_arms:  # every scheme's masks (context arms too); heatmaps for the trained ones
        masking = ctx.section.arm_masking(arm)
        generator = torch.Generator().manual_seed(ev.mask_seed)
        out["visibility"][arm] = visibility_frequency(
            grid, masking, ev.visibility_draws, generator=generator
        ).tolist()
        keep = sample_visible(max(ev.example_masks, 1), grid, masking, generator=generator)[
            : ev.example_masks
        ]
        out["example_masks"][arm] = keep.tolist()
    return out


def evaluate_finetuned(ctx: Context, data: HeldOut) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    """Zero-shot of the fine-tuned students through their fine-tuned text towers: (result, per-seed
    cases, converged seeds). Seeds whose fine-tuning diverged (finetune.json) are scored and listed
    but left out of the mean."""
    from nas.evaluation.linear_probe import public
    from nas.evaluation.seeds import aggregate
    from nas.evaluation.zero_shot import mean_accuracy, zero_shot_accuracy

    runs = training_summaries(ctx)["finetune"].get("runs", {})
    per_seed, cases, converged = [], [], []
    for seed in ctx.section.seeds:
        student, text = load_finetuned(ctx, seed)
        embeddings = batched(student.encode_image, data.images, ctx.section.evaluation.batch_size)
        zs = zero_shot_accuracy(
            embeddings, data.labels, classifier_of(text), rows=data.zero_shot_rows, outcomes=True
        )
        ok = bool(runs.get(str(seed), {}).get("converged", False))
        per_seed.append({"zero_shot": public(zs), "zero_shot_mean": mean_accuracy(zs), "converged": ok})
        cases.append(_cases_of(zs, {}))
        if ok:
            converged.append(seed)
    kept = [run for seed, run in zip(ctx.section.seeds, per_seed) if seed in converged]
    result = {
        "seeds": list(ctx.section.seeds),
        "converged_seeds": converged,
        "diverged_seeds": [s for s in ctx.section.seeds if s not in converged],
        "mean_std": aggregate(kept) if kept else None,
        "per_seed": per_seed,
    }
    return result, cases, converged


def fine_grained_rows(ctx: Context, teacher, finetuned: bool) -> dict[str, Any]:
    """Rows `uta` (main arm, every seed), `uta/teacher`, and `uta/finetuned` when it ran."""
    from nas.data.bpe_tokenizer import BpeTokenizer
    from nas.data.transforms import build_eval_transform
    from nas.evaluation.uta_scorer import teacher_scorer, uta_scorer

    section, ev = ctx.section, ctx.section.evaluation
    transform, tokenizer = build_eval_transform(ctx.data.transform), BpeTokenizer(teacher.context_length)
    root = output_root(ctx.raw)
    scores = root / EVAL_RUN / "scores"
    suite = (ctx.data.probes_root, ev.benchmarks)
    trained = input_root(root, PRETRAIN_RUN, "uta_pretrain")

    def student_scorer(seed: int):
        return uta_scorer(
            load_student(student_run(section.main_arm, seed, trained)), teacher, transform, tokenizer
        )

    rows = {
        "uta": fine_grained_row(student_scorer, section.seeds, *suite, scores / "uta"),
        "uta/teacher": fine_grained_row(
            lambda seed: teacher_scorer(teacher, transform, tokenizer),
            section.seeds[:1],
            *suite,
            scores / "teacher",
        ),
    }
    if finetuned:

        def finetuned_scorer(seed: int):
            student, text = load_finetuned(ctx, seed)
            return uta_scorer(student, text, transform, tokenizer, name="uta_finetuned")

        rows["uta/finetuned"] = fine_grained_row(
            finetuned_scorer, section.seeds, *suite, scores / "finetuned"
        )
    return rows


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return [round(float(v), 5) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def evaluate(cfg: dict[str, Any], record: Recorder) -> None:
    import time

    import torch

    from nas.evaluation.linear_probe import public
    from nas.evaluation.scene_attributes import KIND
    from nas.evaluation.seeds import aggregate
    from nas.models.uta import UTAPretrainer

    clock, seconds = time.perf_counter(), {}
    ctx = stage_context(cfg)
    root = output_root(cfg)
    trained = input_root(root, PRETRAIN_RUN, "uta_pretrain")
    summaries = training_summaries(ctx)  # metrics/uta/{pretrain,finetune}.json from the run folders
    for name in ("pretrain", "finetune"):
        write_json(root / METRICS / f"{name}.json", summaries[name])
    section, ev = ctx.section, ctx.section.evaluation
    teacher = load_stage_teacher(ctx)
    data = held_out(ctx)
    reference = UTAPretrainer(build_student(ctx), teacher, section.masking)  # the teacher on the student grid
    teacher_tokens = batched(reference.teacher_tokens, data.images, ev.batch_size)
    teacher_zs = teacher_zero_shot(teacher, data, ev.batch_size, outcomes=True)
    teacher_probes = probes(teacher.image_tokens, data, ctx)
    cases: dict[str, list[dict[str, Any]]] = {TEACHER: [_cases_of(teacher_zs, teacher_probes)]}
    seeds: dict[str, list[int]] = {TEACHER: [section.seeds[0]]}
    result: dict[str, Any] = {
        "split": ev.split,
        "zero_shot_images": len(data.zero_shot_rows),
        "probe_train_images": len(data.probe_images),
        "probe_test_images": len(data.images),
        "alignment_threshold": ev.alignment_threshold,
        "attributes": {a: {"kind": KIND[a], "feature": f} for a, f in probe_features_of(ctx).items()},
        "teacher": {"zero_shot": public(teacher_zs), "probes": public(teacher_probes)},
    }
    seconds["teacher"] = time.perf_counter() - clock
    classifier = classifier_of(teacher)
    aligned: dict[str, list[int]] = {}
    if ev.untrained:
        clock = time.perf_counter()
        per_seed = []
        for seed in section.seeds:
            torch.manual_seed(seed)  # the student every arm of this seed starts from (manual_seed(seed))
            run, run_cases = measure_student(
                build_student(ctx), ctx, section.main_arm, data, classifier, teacher_tokens
            )
            run.pop("_heatmap")
            per_seed.append(run)
            cases.setdefault(UNTRAINED, []).append(run_cases)
        seeds[UNTRAINED] = list(section.seeds)
        result[UNTRAINED] = {
            "seeds": list(section.seeds),
            "mean_std": aggregate(per_seed),
            "per_seed": per_seed,
        }
        # The spec's "falls from ~1": 1 - cos of the untrained students.
        result["heldout_1mcos_initial"] = sum(r["heldout_1mcos"] for r in per_seed) / len(per_seed)
        seconds[UNTRAINED] = time.perf_counter() - clock
    else:
        torch.manual_seed(section.seeds[0])
        from nas.objectives.uta import token_cosine

        untrained = batched(build_student(ctx).eval(), data.images, ev.batch_size)
        result["heldout_1mcos_initial"] = float(1 - token_cosine(untrained, teacher_tokens).mean())
    result["arms"], heatmaps = {}, {}
    result["context_arms"] = section.untrained_arms  # the context arms not trained: masks only
    for arm in section.trained_arms:
        clock = time.perf_counter()
        arm_seeds = list(section.arm_seeds(arm))
        per_seed = []
        for seed in arm_seeds:
            run, run_cases = measure_student(
                load_student(student_run(arm, seed, trained)),
                ctx,
                arm,
                data,
                classifier,
                teacher_tokens,
            )
            per_seed.append(run)
            cases.setdefault(arm, []).append(run_cases)
        seeds[arm] = arm_seeds
        aligned[arm] = [s for s, run in zip(arm_seeds, per_seed) if run["aligned"]]
        heatmaps[arm] = torch.tensor([run.pop("_heatmap") for run in per_seed]).mean(dim=0).tolist()
        summary = aggregate(per_seed)
        result["arms"][arm] = {
            "seeds": arm_seeds,
            "aligned_seeds": aligned[arm],
            "mean_std": summary,
            "per_seed": per_seed,
        }
        print(
            f"uta_evaluate[{arm}]: zero-shot mean {summary['zero_shot_mean']['mean']:.1f}, held-out 1-cos "
            f"{summary['heldout_1mcos']['mean']:.3f}, CLS 1-cos {summary['heldout_1mcos_cls']['mean']:.3f} "
            f"(aligned seeds {aligned[arm]} of {arm_seeds})"
        )
        record.log_scalar(f"{arm}.zero_shot_mean", summary["zero_shot_mean"]["mean"])
        record.log_scalar(f"{arm}.heldout_1mcos", summary["heldout_1mcos"]["mean"])
        seconds[arm] = time.perf_counter() - clock
    tuned = input_root(root, FINETUNE_RUN, "uta_finetune") if section.finetune.enabled else root
    finetuned = section.finetune.enabled and all(
        (finetune_run(seed, tuned) / "student" / "config.json").is_file() for seed in section.seeds
    )
    result["finetune_enabled"] = section.finetune.enabled
    if finetuned:
        result[FINETUNED], cases[FINETUNED], aligned[FINETUNED] = evaluate_finetuned(ctx, data)
        seeds[FINETUNED] = list(section.seeds)
    clock = time.perf_counter()
    chance = {a: r["chance"] for a, r in teacher_zs.items()}
    findings, learned = uta_findings(cases, seeds, aligned, chance, ctx)
    result["findings"] = [row.to_json() for row in findings]
    result["findings_settings"] = {
        "level": ev.findings.level,
        "resamples": ev.findings.resamples,
        "margin": ev.findings.margin,
    }
    result["teacher_learned"] = learned
    result["zero_shot_intervals"] = zero_shot_intervals(cases, list(chance), ev.findings)
    for name, runs in cases.items():
        for seed, run_cases in zip(seeds[name], runs):
            write_json(root / EVAL_RUN / "cases" / name / f"seed{seed}.json", _jsonable(run_cases))
    for row in findings:
        print(
            f"uta_evaluate finding [{row.key}]: {row.estimate} [{row.low}, {row.high}] {row.unit} -> {row.verdict}"
        )
    seconds["findings"] = time.perf_counter() - clock
    clock = time.perf_counter()
    rows = fine_grained_rows(ctx, teacher, finetuned) if ev.fine_grained else {}
    seconds["fine_grained"] = time.perf_counter() - clock
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    write_json(root / METRICS / "evaluate.json", result)
    write_json(root / METRICS / "figure.json", figure_data(ctx, heatmaps, reference.student.grid))
    write_json(root / FINE_GRAINED, {"recipe": "uta", "rows": rows})
    record.add_artifact(root / METRICS / "evaluate.json", name="evaluate_metrics.json")
