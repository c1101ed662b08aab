"""The UTA section of reports/results.md (MUG_UTA.md §2) and its masking figure.

`section(metrics_dir, reports_dir)` reads `metrics/uta/{teacher,evaluate,finetune}.json` and
`metrics/uta/figure.json` (written by nas.recipes.uta) and returns markdown: the findings (each
claim's effect, 95 % interval over seeds and cases, verdict; nas/reporting/recipe_findings.py),
zero-shot attribute accuracy of the students through the frozen teacher text tower next to the
teacher's own, the untrained student and chance, with intervals; the masking ablation (held-out
1 - cos, alignment, zero-shot, linear probes); linear probes beside the untrained student, chance and
the majority rate; contrastive fine-tuning (or that it was cut), with each seed's convergence; and a
figure with one row per masking scheme: the per-position cosine heatmap on held-out images, the
probability that each position is visible, and example masks. The fine-grained probe rows go into
the shared tables from `metrics/fine_grained/uta.json` (nas/reporting/results.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.evaluation.scene_attributes import KIND
from nas.evaluation.seeds import fmt_mean_std, mean_std
from nas.reporting.atomic import save_figure
from nas.reporting.recipe_findings import FindingsConfig, interval_cell
from nas.reporting.recipe_findings import section as findings_section

ARM_LABELS = {
    "none": "no masking",
    "random": "random",
    "blockwise": "block-wise",
    "reversed_blockwise": "reversed block-wise (UTA)",
}
FIGURE = "uta_masking.png"


def _label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"  # a run shorter than log_every_steps logs no step


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _students(evaluation: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, label, block) of the untrained student (when scored) and every arm's students."""
    out = []
    if "untrained" in evaluation:
        out.append(("untrained", "student, untrained (same seeds)", evaluation["untrained"]))
    return out + [(arm, f"student, {_label(arm)}", block) for arm, block in evaluation["arms"].items()]


def zero_shot_table(evaluation: dict[str, Any]) -> list[str]:
    """Zero-shot accuracy per attribute: mean [95 % interval over seeds and cases] where stored."""
    teacher = evaluation["teacher"]["zero_shot"]
    attributes = list(teacher)
    intervals = evaluation.get("zero_shot_intervals", {})
    learned = evaluation.get("teacher_learned", {})
    heads = [a + ("" if learned.get(a, True) else " †") for a in attributes]

    def cells(key: str, stats: dict[str, Any] | None) -> list[str]:
        out = []
        for a in attributes:
            if a in intervals.get(key, {}):
                out.append(interval_cell(intervals[key][a]))
            elif stats is not None:
                out.append(fmt_mean_std(stats["zero_shot"][a]["accuracy"]))
            else:
                out.append("n/a")
        return out

    lines = [
        "| model | seeds (aligned) | " + " | ".join(heads) + " | mean |",
        "|---|---:|" + "---:|" * (len(attributes) + 1),
        "| chance | | " + " | ".join(f"{teacher[a]['chance']:.1f}" for a in attributes) + " | |",
    ]
    teacher_cells = (
        cells("teacher", None)
        if "teacher" in intervals
        else [f"{teacher[a]['accuracy']:.1f}" for a in attributes]
    )
    mean = sum(teacher[a]["accuracy"] for a in attributes) / len(attributes)
    lines.append("| teacher (frozen CLIP) | | " + " | ".join(teacher_cells) + f" | {mean:.1f} |")
    for key, label, block in _students(evaluation):
        stats = block["mean_std"]
        aligned = block.get("aligned_seeds")
        seeds = f"{len(block['seeds'])}" + ("" if aligned is None else f" ({len(aligned)})")
        lines.append(
            f"| {label} | {seeds} | "
            + " | ".join(cells(key, stats))
            + f" | {fmt_mean_std(stats['zero_shot_mean'])} |"
        )
    tuned = evaluation.get("finetuned")
    if tuned and tuned.get("mean_std"):
        kept = tuned.get("converged_seeds", tuned["seeds"])
        lines.append(
            f"| student + text tower, contrastively fine-tuned (converged seeds) | {len(kept)} | "
            + " | ".join(cells("finetuned", tuned["mean_std"]))
            + f" | {fmt_mean_std(tuned['mean_std']['zero_shot_mean'])} |"
        )
    return lines


def ablation_table(evaluation: dict[str, Any]) -> list[str]:
    threshold = evaluation.get("alignment_threshold")
    lines = [
        "| student | seeds | held-out 1 − cos (full view) | 1 − cos (own masking) | CLS 1 − cos | aligned seeds "
        "| spatial std of cos | zero-shot mean | probe mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _key, label, block in _students(evaluation):
        stats = block["mean_std"]
        probe_means = [
            sum(v["accuracy"] for v in run["probes"].values() if "accuracy" in v)
            / max(1, sum("accuracy" in v for v in run["probes"].values()))
            for run in block["per_seed"]
        ]
        aligned = block.get("aligned_seeds")
        aligned_cell = (
            "—" if aligned is None or threshold is None else f"{len(aligned)} / {len(block['seeds'])}"
        )
        lines.append(
            f"| {label.removeprefix('student, ')} | {len(block['seeds'])} | {fmt_mean_std(stats['heldout_1mcos'], 3)} | "
            f"{fmt_mean_std(stats['heldout_1mcos_masked'], 3)} | {fmt_mean_std(stats['heldout_1mcos_cls'], 3)} | "
            f"{aligned_cell} | {fmt_mean_std(stats['position_cos_std'], 4)} | "
            f"{fmt_mean_std(stats['zero_shot_mean'])} | {fmt_mean_std(mean_std(probe_means))} |"
        )
    return lines


def probe_table(evaluation: dict[str, Any]) -> list[str]:
    teacher = evaluation["teacher"]["probes"]
    attributes = [a for a in teacher if "accuracy" in teacher[a]]
    info = evaluation.get("attributes", {})

    def head(a: str) -> str:
        kind = info.get(a, {}).get("kind", KIND.get(a, ""))
        feature = info.get(a, {}).get("feature")
        return f"{a} ({kind}{', ' + feature if feature else ''})"

    lines = [
        "| features | " + " | ".join(head(a) for a in attributes) + " |",
        "|---|" + "---:|" * len(attributes),
        "| chance | " + " | ".join(f"{teacher[a]['chance']:.1f}" for a in attributes) + " |",
        "| majority class | " + " | ".join(f"{teacher[a]['majority']:.1f}" for a in attributes) + " |",
        "| teacher | " + " | ".join(f"{teacher[a]['accuracy']:.1f}" for a in attributes) + " |",
    ]
    for _key, label, block in _students(evaluation):
        probes = block["mean_std"]["probes"]
        lines.append(
            f"| {label} | "
            + " | ".join(
                fmt_mean_std(probes[a]["accuracy"])
                if isinstance(probes.get(a, {}).get("accuracy"), dict)
                else "n/a"
                for a in attributes
            )
            + " |"
        )
    lines.append("| test rows | " + " | ".join(str(teacher[a].get("n_test", "")) for a in attributes) + " |")
    return lines


def finetune_lines(finetune: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    if not finetune.get("enabled", evaluation.get("finetune_enabled", True)):
        return [
            "",
            "Contrastive fine-tuning (MUG_UTA.md §2, item 5, optional): **cut on this profile** "
            "(`uta.finetune.enabled: false`). At the fixed temperature 0.01 and batch 64 the loss rose above "
            "chance (ln 64 = 4.16) in 2 of 3 seeds (issue 13), so no claim rests on it here; the paper profile "
            "runs it, and `uta_evaluate` then leaves a diverged seed out of the fine-tuned means, by name.",
        ]
    runs = finetune.get("runs") or {}
    if not runs:
        return []
    parts = []
    for seed, run in runs.items():
        chance = run.get("chance_loss")
        state = "" if "converged" not in run else (" converged" if run["converged"] else " **diverged**")
        last = run.get("last_logged_loss", run.get("final_epoch_loss"))
        parts.append(
            f"seed {seed}: {_loss(run.get('first_logged_loss'))} → {_loss(last)}"
            + ("" if chance is None else f" (chance {chance:.2f})")
            + state
        )
    return [
        "",
        "Contrastive fine-tuning (fixed temperature, LAMB, layer decay) loss, first → last logged step: "
        + "; ".join(parts)
        + ". A seed converges when its last loss is below chance, ln(batch), and below its first.",
    ]


def section(metrics_dir: Path, reports_dir: Path) -> list[str]:
    """Markdown lines of the UTA section; [] when `uta_evaluate` has not run."""
    uta = Path(metrics_dir) / "uta"
    evaluation = _read(uta / "evaluate.json")
    if evaluation is None:
        return []
    teacher = _read(uta / "teacher.json") or {}
    finetune = _read(uta / "finetune.json") or {}
    figure = _read(uta / "figure.json")
    main_seeds = max(len(block["seeds"]) for block in evaluation["arms"].values())
    cfg = FindingsConfig.from_settings(evaluation.get("findings_settings"), margin=5.0)
    percent = f"{100 * cfg.level:g} %"
    threshold = evaluation.get("alignment_threshold")
    lines = [
        "## UTA: unmasked token alignment to a frozen CLIP teacher (MUG_UTA.md §2)",
        "",
        f"Teacher: {teacher.get('source', 'tiny CLIP trained by `uta_teacher`')}; students: every masking "
        f"scheme at equal steps, up to {main_seeds} seeds, beside the untrained student of the same seeds. "
        f"Zero-shot: single-object scenes of the {evaluation['split']} split (n = {evaluation['zero_shot_images']}), "
        "classes = prompt ensembles through the frozen teacher text tower; cells: accuracy in percent, mean "
        f"[{percent} interval over seeds and scenes]; † = the teacher is not above chance there (the claims "
        "do not judge it)."
        + (
            f" A student is *aligned* when its held-out CLS 1 − cos is at most {threshold}; only aligned seeds "
            "enter the student-vs-teacher claim."
            if threshold is not None
            else ""
        ),
    ]
    lines += findings_section(evaluation.get("findings"), cfg)
    lines += [
        "",
        "### Zero-shot attribute accuracy (%): student through the teacher's text tower vs the teacher",
        "",
        *zero_shot_table(evaluation),
        "",
        "### Masking ablation",
        "",
        f"Held-out 1 − cos of an untrained student: {evaluation['heldout_1mcos_initial']:.3f}. "
        "Spatial std: standard deviation over grid positions of the mean held-out cosine (lower = more uniform).",
        "",
        *ablation_table(evaluation),
        *(
            [
                "",
                "Not trained on this profile (context arms, `uta.context_seeds`): "
                + ", ".join(_label(a) for a in evaluation["context_arms"])
                + "; the figure shows their masks.",
            ]
            if evaluation.get("context_arms")
            else []
        ),
        "",
        "### Linear probes on frozen features (%)",
        "",
        "Every label is a function of the rendered image (nas/evaluation/scene_attributes.py). (caption) = "
        "stated in every caption, (pixel) = stated in none; attributes about where (relation, position) are "
        "probed on patch tokens pooled to a grid, the others on the CLS token (the teacher: its projected CLS "
        "and projected patch tokens). Mean ± std over seeds.",
        "",
        *probe_table(evaluation),
    ]
    lines += finetune_lines(finetune, evaluation)
    if figure is not None and figure.get("heatmaps"):
        draw_figure(figure, Path(reports_dir) / "figures" / FIGURE)
        lines += [
            "",
            f"![UTA masking schemes: per-position cosine, P(visible), example masks](figures/{FIGURE})",
        ]
    return lines + [""]


def _all_visible(figure: dict[str, Any], arm: str) -> bool:
    """True when the arm masks nothing: every example mask keeps every patch and P(visible) is 1."""
    height, width = figure["grid"]
    masks = figure["example_masks"].get(arm) or []
    visibility = [value for row in figure["visibility"][arm] for value in row]
    return all(len(set(mask)) == height * width for mask in masks) and min(visibility, default=0.0) >= 1.0


def _patch_grid(ax: Any, height: int, width: int) -> None:
    """Thin lines between patches, so an all-white (or all-black) grid still reads as a grid."""
    ax.set_xticks([x - 0.5 for x in range(1, width)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, height)], minor=True)
    ax.grid(which="minor", color="0.6", linewidth=0.4)
    ax.tick_params(which="both", length=0)


def masking_figure(figure: dict[str, Any]) -> Any:
    """The masking figure as a matplotlib Figure: one row per scheme with the per-position cosine heatmap
    (held-out, full view), P(visible) and example masks (white = visible). A scheme that masks nothing
    ("no masking") gets its heatmap and one all-visible grid, captioned as such, instead of a row of
    identical white panels."""
    import numpy as np
    from matplotlib.figure import Figure

    # Every scheme's masks; the cosine heatmap where the scheme's students were trained.
    arms = list(dict.fromkeys([*figure["heatmaps"], *figure.get("visibility", {})]))
    height, width = figure["grid"]
    examples = max(len(masks) for masks in figure["example_masks"].values()) if arms else 0
    columns = 2 + examples
    fig = Figure(figsize=(2.2 * columns, 2.2 * len(arms) + 0.6), layout="constrained")
    axes = fig.subplots(len(arms), columns, squeeze=False)
    heat = np.array([figure["heatmaps"][arm] for arm in arms if arm in figure["heatmaps"]])
    low, high = (float(heat.min()), float(heat.max())) if heat.size else (0.0, 1.0)
    for row, arm in enumerate(arms):
        ax = axes[row][0]
        if arm in figure["heatmaps"]:
            image = ax.imshow(np.array(figure["heatmaps"][arm]), vmin=low, vmax=high, cmap="viridis")
            ax.set_title(f"{_label(arm)}\ncos per position", fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.046)
        else:
            ax.text(0.5, 0.5, "not trained\n(context arm)", ha="center", va="center", fontsize=8)
            ax.set_title(f"{_label(arm)}", fontsize=8)
        if _all_visible(figure, arm):
            ax = axes[row][1]
            ax.imshow(np.ones((height, width)), vmin=0.0, vmax=1.0, cmap="gray")
            _patch_grid(ax, height, width)
            ax.set_title("every patch visible\n(no mask; P(visible) = 1)", fontsize=8)
            for ax in axes[row][2:]:
                ax.set_axis_off()
        else:
            ax = axes[row][1]
            image = ax.imshow(np.array(figure["visibility"][arm]), vmin=0.0, vmax=1.0, cmap="gray")
            ax.set_title("P(visible)", fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.046)
            masks = figure["example_masks"][arm]
            for k in range(examples):
                ax = axes[row][2 + k]
                if k >= len(masks):
                    ax.set_axis_off()
                    continue
                grid = np.zeros(height * width)
                grid[masks[k]] = 1.0
                ax.imshow(grid.reshape(height, width), vmin=0.0, vmax=1.0, cmap="gray")
                _patch_grid(ax, height, width)
                ax.set_title(f"mask {k + 1} (white = visible)", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        "Masking schemes at equal steps: held-out cosine to the teacher per position (trained schemes), "
        "P(visible), example masks\n(no masking shows its one all-visible grid: every patch is visible in every step)",
        fontsize=9,
    )
    return fig


def draw_figure(figure: dict[str, Any], path: Path) -> None:
    """`masking_figure` written to `path` (PNG, atomically)."""
    save_figure(masking_figure(figure), path, dpi=100)
