"""The UTA section of reports/results.md (MUG_UTA.md §2) and its masking figure.

`section(metrics_dir, reports_dir)` reads `metrics/uta/{teacher,evaluate,finetune}.json` and
`metrics/uta/figure.json` (written by experiments/uta.py) and returns markdown: zero-shot attribute
accuracy of the students through the frozen teacher text tower next to the teacher's own, the
masking ablation (held-out 1 - cos, zero-shot, linear probes; mean ± std over seeds), and a figure
with one row per masking scheme: the per-position cosine heatmap on held-out images, the
probability that each position is visible, and example masks. The fine-grained probe rows go into
the shared tables from `metrics/fine_grained/uta.json` (nas/reporting/results.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.evaluation.seeds import fmt_mean_std, mean_std
from nas.reporting.atomic import save_figure

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


def zero_shot_table(evaluation: dict[str, Any]) -> list[str]:
    teacher = evaluation["teacher"]["zero_shot"]
    attributes = list(teacher)
    lines = [
        "| model | seeds | " + " | ".join(attributes) + " | mean |",
        "|---|---:|" + "---:|" * (len(attributes) + 1),
        "| chance | | " + " | ".join(f"{teacher[a]['chance']:.1f}" for a in attributes) + " | |",
        "| teacher (frozen CLIP) | | "
        + " | ".join(f"{teacher[a]['accuracy']:.1f}" for a in attributes)
        + f" | {sum(teacher[a]['accuracy'] for a in attributes) / len(attributes):.1f} |",
    ]
    blocks = [(f"student, {_label(arm)}", block) for arm, block in evaluation["arms"].items()]
    if "finetuned" in evaluation:
        blocks.append(("student + text tower, contrastively fine-tuned", evaluation["finetuned"]))
    for name, block in blocks:
        stats = block["mean_std"]
        cells = [fmt_mean_std(stats["zero_shot"][a]["accuracy"]) for a in attributes]
        lines.append(
            f"| {name} | {len(block['seeds'])} | "
            + " | ".join(cells)
            + f" | {fmt_mean_std(stats['zero_shot_mean'])} |"
        )
    return lines


def ablation_table(evaluation: dict[str, Any]) -> list[str]:
    lines = [
        "| masking | held-out 1 − cos (full view) | 1 − cos (own masking) | CLS 1 − cos | spatial std of cos "
        "| zero-shot mean | probe mean |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, block in evaluation["arms"].items():
        stats = block["mean_std"]
        probe_means = [
            sum(v["accuracy"] for v in run["probes"].values()) / len(run["probes"])
            for run in block["per_seed"]
        ]
        lines.append(
            f"| {_label(arm)} | {fmt_mean_std(stats['heldout_1mcos'], 3)} | "
            f"{fmt_mean_std(stats['heldout_1mcos_masked'], 3)} | {fmt_mean_std(stats['heldout_1mcos_cls'], 3)} | "
            f"{fmt_mean_std(stats['position_cos_std'], 4)} | {fmt_mean_std(stats['zero_shot_mean'])} | "
            f"{fmt_mean_std(mean_std(probe_means))} |"
        )
    return lines


def probe_table(evaluation: dict[str, Any]) -> list[str]:
    teacher = evaluation["teacher"]["probes"]
    attributes = list(teacher)
    lines = [
        "| features | " + " | ".join(attributes) + " |",
        "|---|" + "---:|" * len(attributes),
        "| chance | " + " | ".join(f"{teacher[a]['chance']:.1f}" for a in attributes) + " |",
        "| majority class | " + " | ".join(f"{teacher[a]['majority']:.1f}" for a in attributes) + " |",
        "| teacher (projected CLS) | "
        + " | ".join(f"{teacher[a]['accuracy']:.1f}" for a in attributes)
        + " |",
    ]
    for arm, block in evaluation["arms"].items():
        probes = block["mean_std"]["probes"]
        lines.append(
            f"| student CLS, {_label(arm)} | "
            + " | ".join(fmt_mean_std(probes[a]["accuracy"]) for a in attributes)
            + " |"
        )
    return lines


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

    arms = list(figure["heatmaps"])
    height, width = figure["grid"]
    examples = max(len(masks) for masks in figure["example_masks"].values()) if arms else 0
    columns = 2 + examples
    fig = Figure(figsize=(2.2 * columns, 2.2 * len(arms) + 0.6), layout="constrained")
    axes = fig.subplots(len(arms), columns, squeeze=False)
    heat = np.array([figure["heatmaps"][arm] for arm in arms])
    low, high = float(heat.min()), float(heat.max())
    for row, arm in enumerate(arms):
        ax = axes[row][0]
        image = ax.imshow(np.array(figure["heatmaps"][arm]), vmin=low, vmax=high, cmap="viridis")
        ax.set_title(f"{_label(arm)}\ncos per position", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
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
        "Masking schemes at equal steps: held-out cosine to the teacher per position, P(visible), example "
        "masks\n(no masking shows its one all-visible grid: every patch is visible in every step)",
        fontsize=9,
    )
    return fig


def draw_figure(figure: dict[str, Any], path: Path) -> None:
    """`masking_figure` written to `path` (PNG, atomically)."""
    save_figure(masking_figure(figure), path, dpi=100)


def section(metrics_dir: Path, reports_dir: Path) -> list[str]:
    """Markdown lines of the UTA section; [] when `uta_evaluate` has not run."""
    uta = Path(metrics_dir) / "uta"
    evaluation = _read(uta / "evaluate.json")
    if evaluation is None:
        return []
    teacher = _read(uta / "teacher.json") or {}
    finetune = _read(uta / "finetune.json") or {}
    figure = _read(uta / "figure.json")
    main_seeds = len(next(iter(evaluation["arms"].values()))["seeds"])
    lines = [
        "## UTA: unmasked token alignment to a frozen CLIP teacher (MUG_UTA.md §2)",
        "",
        f"Teacher: {teacher.get('source', 'tiny CLIP trained by `uta_teacher`')}; students: every masking "
        f"scheme at equal steps, {main_seeds} seeds (mean ± std). Zero-shot: single-object scenes of the "
        f"{evaluation['split']} split (n = {evaluation['zero_shot_images']}), classes = prompt ensembles through "
        "the frozen teacher text tower.",
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
        "",
        "### Linear probes on frozen features (%)",
        "",
        *probe_table(evaluation),
    ]
    if finetune.get("enabled") and finetune.get("runs"):
        losses = ", ".join(
            f"seed {seed}: {_loss(run.get('first_logged_loss'))} → {_loss(run.get('final_epoch_loss'))}"
            for seed, run in finetune["runs"].items()
        )
        lines += [
            "",
            f"Contrastive fine-tuning (fixed temperature, LAMB, layer decay) loss, first logged step → last epoch mean: {losses}.",
        ]
    if figure is not None and figure.get("heatmaps"):
        draw_figure(figure, Path(reports_dir) / "figures" / FIGURE)
        lines += [
            "",
            f"![UTA masking schemes: per-position cosine, P(visible), example masks](figures/{FIGURE})",
        ]
    return lines + [""]
