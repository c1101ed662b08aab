"""Collect the pipeline's metric files and render `reports/results.md` and its figures.

Inputs are only the JSON files the stages write under `metrics/` (DVC tracks them), so the report
can be rebuilt without touching a model.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config.report import ReportConfig  # the `report` params section, re-exported
from nas.evaluation.seeds import fmt_mean_std, mean_std
from nas.reporting.atomic import copy_file, save_figure, write_text

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: importing this module stays cheap
    from matplotlib.figure import Figure


def read_json_dir(folder: Path) -> dict[str, dict[str, Any]]:
    """`{stem: parsed json}` for every *.json in folder (empty if the folder is absent)."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return out


def read_replicates(folder: Path, seeds: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """`{variant: run}` of a training stage's metrics folder, whose DVC matrix entries wrote one
    `<variant>/seed<k>.json` per pretraining replicate: `run` is the first replicate's summary (its curves
    stand for the stage in the loss plots) with `seeds` and every replicate under `replicates`.

    `seeds`: the offsets to gather (`study.seeds`, in that order): a listed seed whose file is missing is an
    error naming the file; the files of seeds no longer listed are left out (DVC keeps an old entry's outs).
    None: every seed file present, in offset order."""
    if not folder.is_dir():
        return {}
    out = {}
    for variant_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if seeds is None:
            files = sorted(variant_dir.glob("seed*.json"), key=lambda p: int(p.stem.removeprefix("seed")))
        else:
            files = [variant_dir / f"seed{k}.json" for k in seeds]
            missing = [str(path) for path in files if not path.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{', '.join(missing)}: missing; study.seeds lists it (run dvc repro)"
                )
        if not files:
            continue
        replicates = {}
        for path in files:
            try:
                replicates[path.stem.removeprefix("seed")] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        first = next(iter(replicates.values()))
        out[variant_dir.name] = {**first, "seeds": [int(k) for k in replicates], "replicates": replicates}
    return out


def collect(metrics_dir: Path, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Every stage's metrics under `metrics_dir`; the training stages' replicates `seeds` (`study.seeds`;
    None: every one present)."""
    return {
        "data": json.loads((metrics_dir / "data.json").read_text())
        if (metrics_dir / "data.json").is_file()
        else {},
        "stage1": read_replicates(metrics_dir / "pretrain_stage1", seeds),
        "stage2": read_replicates(metrics_dir / "pretrain_stage2", seeds),
        "finetune": read_replicates(metrics_dir / "finetune", seeds),
        "evaluate": read_json_dir(metrics_dir / "evaluate"),
        "build_vd": read_replicates(metrics_dir / "build_vd", seeds),
        "recipes": read_json_dir(metrics_dir / "fine_grained"),  # MUG, UTA: rows of the same tables
    }


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _cell(values: list[float]) -> str:
    """One table cell over replicates: "m ± s" (sample std), or the value for one replicate."""
    return fmt_mean_std(mean_std(values)) if len(values) > 1 else _fmt(values[0])


# The companion recipes' report sections (MUG_UTA.md): `section(metrics_dir, reports_dir) -> lines`.
RECIPE_SECTIONS = ("nas.reporting.mug_section", "nas.reporting.uta_section")

# How a stage's models are named in the tables.
STAGE_LABELS = {"untrained": "untrained", "pretrain_stage2": "pretrained", "finetune": "fine-tuned"}


def model_rows(evaluations: dict[str, dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(row label, replicate results) for every evaluated model: variant x checkpoint stage."""
    rows = []
    for variant, result in evaluations.items():
        for stage_name, block in (result.get("models") or {}).items():
            rows.append((f"{variant} ({STAGE_LABELS.get(stage_name, stage_name)})", block["replicates"]))
    return rows


def retrieval_table(evaluations: dict[str, dict[str, Any]]) -> list[str]:
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
    lines = [
        "| model | scorer | seeds | images | texts | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 "
        "| t2i R@10 | chance R@1 (i2t / t2i) | R@1 / chance (i2t / t2i) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, replicates in model_rows(evaluations):
        first = replicates[0]["retrieval"]
        c = first["chance"]
        for part in (None, "reranked"):
            scored = [r["retrieval"] if part is None else r["retrieval"].get(part) for r in replicates]
            if not all(scored):
                continue
            values = {k: [m["metrics"][k] for m in scored] for k in keys}
            r1 = (mean_std(values["i2t_r1"])["mean"], mean_std(values["t2i_r1"])["mean"])
            ratio = " / ".join(
                f"{v / ch:.1f}x" if ch else "nan" for v, ch in zip(r1, (c["i2t_r1"], c["t2i_r1"]))
            )
            lines.append(
                f"| {label} | {scored[0]['scorer']} | {len(scored)} | {first['n_images']} | {first['n_texts']} | "
                + " | ".join(_cell(values[k]) for k in keys)
                + f" | {c['i2t_r1']:.2f} / {c['t2i_r1']:.2f} | {ratio} |"
            )
    return lines


# Reference numbers on the REAL benchmarks (NAS_METHOD.md §8, BENCHMARKS.md §1.7/§2.4/§3.5): ALBEF-4M
# with ITM-probability scoring, recomputed from FGE's released per-example score files
# (github.com/e-bug/fine-grained-evals). They frame the probes; they are not comparable to them.
REFERENCES: dict[str, str] = {
    "winoground": "ALBEF-4M (ITM prob.): text 29.25 / image 15.50 / group 11.00",
    "valse": "ALBEF-4M (ITM prob.): acc_r mean of 11 instruments 67.8 (micro 69.1)",
    "vg_relation": "CLIP ViT-B/32: 59.9; NegCLIP: 80.2 (ARO issue #33 re-runs)",
    "vg_attribution": "CLIP ViT-B/32: 63.2; NegCLIP: 70.5 (ARO issue #33 re-runs)",
    "coco_order": "CLIP ViT-B/32: 47.4; NegCLIP: 86.8 (ARO issue #33 re-runs)",
}


def fine_grained_rows(results: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(row label, per-replicate probe-suite results) for the pipeline's models and the recipes
    (MUG, UTA) that score the same probes (`metrics/fine_grained/<recipe>.json`)."""
    rows = [(label, [r["fine_grained"] for r in reps]) for label, reps in model_rows(results["evaluate"])]
    for recipe, payload in sorted(results.get("recipes", {}).items()):
        for row, block in (payload.get("rows") or {}).items():
            if not block.get("per_seed"):
                raise ValueError(f"metrics/fine_grained/{recipe}.json: row {row!r} has no per_seed results")
            rows.append((row, block["per_seed"]))
    return rows


def fine_grained_tables(rows: list[tuple[str, list[dict[str, Any]]]]) -> list[str]:
    """One table per benchmark: rows = model x scorer, columns = headline figures (mean ± std over
    replicates) + the chance level."""
    from nas.evaluation.benchmarks.runner import headline_figures as headline

    by_benchmark: dict[str, list[tuple[str, str, list[dict[str, Any]]]]] = {}
    for label, per_seed in rows:
        for name in per_seed[0]:
            for scorer in per_seed[0][name]:
                replicates = [seed[name][scorer] for seed in per_seed]
                by_benchmark.setdefault(name, []).append((label, scorer, replicates))
    lines: list[str] = []
    for name, table in sorted(by_benchmark.items()):
        first = table[0][2][0]
        figures = list(headline(name, first["metrics"]))
        chance = first.get("chance", {})
        lines += [f"### {name} ({first['n_cases']} probe cases)", ""]
        lines.append("| model | scorer | seeds | " + " | ".join(figures) + " |")
        lines.append("|---|---|---:|" + "---:|" * len(figures))
        for label, scorer, replicates in table:
            values = [headline(name, r["metrics"]) for r in replicates]
            cells = [_cell([v[f] for v in values]) if all(f in v for v in values) else "" for f in figures]
            lines.append(f"| {label} | {scorer} | {len(replicates)} | " + " | ".join(cells) + " |")
        if chance:
            lines.append(
                "| chance | — | | "
                + " | ".join(_fmt(chance[k]) if k in chance else "" for k in _chance_keys(figures, chance))
                + " |"
            )
        if name in REFERENCES:
            lines += ["", f"Reference on the real benchmark: {REFERENCES[name]}."]
        lines.append("")
    return lines


def _chance_keys(figures: list[str], chance: dict[str, float]) -> list[str]:
    """Align chance levels with the figure columns (one chance value repeats when there is one)."""
    if len(chance) == 1:
        only = next(iter(chance))
        return [only if "sd" not in f else "" for f in figures]
    return [next((k for k in chance if k.lower() in f.lower()), "") for f in figures]


def dictionary_table(results: dict[str, Any]) -> list[str]:
    """Dictionary health before pretraining (build_vd, on training images), after it (EMA counts
    of stage 2), and on the test images at evaluation."""
    rows = []
    for variant, built in results["build_vd"].items():
        if not built.get("vd"):
            continue
        after = results["stage2"].get(variant, {}).get("dictionary_health", {})
        test = results["evaluate"].get(variant, {}).get("dictionary", {})
        for when, health in (
            ("after build_vd (" + str(built.get("init")) + ")", built),
            ("after pretraining (EMA counts)", after),
            ("test images", test),
        ):
            if health:
                rows.append(
                    f"| {variant} | {when} | {health.get('num_codes', '')} | {health.get('codes_in_use', '')} "
                    f"| {health.get('perplexity', float('nan')):.1f} | {health.get('dead_codes', '')} |"
                )
    if not rows:
        return []
    return ["| variant | when | codes | in use | perplexity | dead |", "|---|---|---:|---:|---:|---:|", *rows]


def shared_note(run: dict[str, Any]) -> str:
    """The cell for a stage a variant shares with another (`{"shared_with": source}`, study.stage1_of)."""
    return f"shares {run['shared_with']}'s run (`study.stage1_of`)"


def replicate_summaries(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A pretraining stage's per-seed summaries (each with `final` and `epochs`): its `replicates` by seed
    offset when it has them, else the run itself (one replicate, the top-level fields)."""
    replicates = run.get("replicates")
    if replicates:
        return [replicates[k] for k in sorted(replicates, key=int)]
    return [run]


def _cell3(values: list[float]) -> str:
    return fmt_mean_std(mean_std(values), digits=3)


_NOT_TERMS = frozenset({"epoch", "lr", "alpha", "steps", "images_seen", "images_skipped", "seconds", "total"})


def training_table(stage1: dict[str, Any], stage2: dict[str, Any]) -> list[str]:
    """Per variant and pretraining stage: epochs and steps of one replicate, the final (last-epoch mean)
    loss terms as mean ± std over the replicates (pretraining seeds), caption counts and seconds summed
    over the replicates."""
    lines = [
        "| variant | stage | seeds | epochs | steps | final loss terms (last epoch mean; mean ± std over seeds) "
        "| captions cut (words / tokens), [UNK]-only | seconds (all seeds) |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    for name, runs in (("stage 1", stage1), ("stage 2", stage2)):
        for variant, run in runs.items():
            if run.get("shared_with"):
                lines.append(f"| {variant} | {name} | | | | {shared_note(run)} | | |")
                continue
            summaries = replicate_summaries(run)
            epochs = summaries[0].get("epochs", [])
            finals = [summary.get("final", {}) for summary in summaries]
            terms = ", ".join(
                f"{k} {_cell3([f[k] for f in finals])}"
                for k, v in finals[0].items()
                if k not in _NOT_TERMS
                and not k.startswith(DIAGNOSTIC_PREFIX)
                and isinstance(v, (int, float))
                and all(isinstance(f.get(k), (int, float)) for f in finals)
            )
            every_epoch = [e for summary in summaries for e in summary.get("epochs", [])]
            counts = [
                sum(int(e.get(f"{DIAGNOSTIC_PREFIX}{key}", 0)) for e in every_epoch)
                for key in ("truncated_words", "truncated_tokens", "unk_only")
            ]
            lines.append(
                f"| {variant} | {name} | {len(summaries)} | {len(epochs)} | {sum(e.get('steps', 0) for e in epochs)} "
                f"| {terms} | {counts[0]} / {counts[1]}, {counts[2]} "
                f"| {sum(e.get('seconds', 0.0) for e in every_epoch):.0f} |"
            )
    return lines


def itm_table(
    stage1: dict[str, Any], stage2: dict[str, Any], *, nva_variants: Collection[str] | None = None
) -> list[str]:
    """ITM learned? Per variant and pretraining stage: the final ITM term (last-epoch mean, mean ± std
    over seeds) beside the label-prior entropy H(1/rows) of that stage's row mix (`itm_prior`) and their
    ratio: near 1 the head has learnt only the row mix. Stage 2 of an NVA variant has 4 rows per positive,
    every other stage 3; with `nva_variants` unknown (None) stage 2 shows both priors."""
    lines = [
        "| variant | stage | seeds | final ITM (nats) | rows per positive | prior H(1/rows) (nats) | ITM / prior |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    variants = [v for v in variant_colours(set(stage1) | set(stage2))]
    for index, (name, runs) in enumerate((("stage 1", stage1), ("stage 2", stage2))):
        for variant in variants:
            if variant not in runs or runs[variant].get("shared_with"):
                if variant in runs:
                    lines.append(f"| {variant} | {name} | | {shared_note(runs[variant])} | | | |")
                elif index == 0 and variant in stage2:
                    lines.append(
                        f"| {variant} | {name} | | no run of its own (stage 2 starts from a shared stage 1) "
                        "| | | |"
                    )
                continue
            values = [s.get("final", {}).get("itm") for s in replicate_summaries(runs[variant])]
            values = [float(v) for v in values if isinstance(v, (int, float))]
            if not values:
                continue
            if index == 0:
                rows = [ROWS_WITHOUT_NVA]
            elif nva_variants is None:
                rows = [ROWS_WITHOUT_NVA, ROWS_WITH_NVA]
            else:
                rows = [ROWS_WITH_NVA if variant in nva_variants else ROWS_WITHOUT_NVA]
            mean = mean_std(values)["mean"]
            mix = " or ".join(f"{r}" + (" (NVA)" if r == ROWS_WITH_NVA else "") for r in rows) + (
                " (NVA not known)" if len(rows) > 1 else ""
            )
            lines.append(
                f"| {variant} | {name} | {len(values)} | {_cell3(values)} | {mix} | "
                + " / ".join(f"{itm_prior(r):.4f}" for r in rows)
                + " | "
                + " / ".join(f"{mean / itm_prior(r):.3f}" for r in rows)
                + " |"
            )
    return lines


# ---- loss curves ----------------------------------------------------------------------------------------

# Logged per-step columns that are not loss terms: the schedule, image counts, and the caption diagnostics
# (`captions_*`: counts of truncated or unknown-only captions, a data check, not a loss).
NOT_LOSSES = frozenset({"step", "lr", "alpha", "images", "skipped"})
DIAGNOSTIC_PREFIX = "captions_"
LOSS_ORDER = ("itc", "itm", "mlm", "total")
LOSS_TITLES = {
    "itc": "ITC: image-text contrastive",
    "itm": "ITM: image-text matching",
    "mlm": "MLM: masked language modelling",
    "total": "total = ITC + ITM + MLM",
}
# Each logged term is its weight times a cross-entropy in nats (`itc_weight`, `itm_weight`, `mlm_weight`
# of the model config; the tiny profile sets mlm_weight 0.1), and `total` is their sum.
LOSS_YLABELS = {
    "itc": "ITC term (nats, × itc_weight)",
    "itm": "ITM term (nats, × itm_weight)",
    "mlm": "MLM term (nats, × mlm_weight)",
    "total": "total loss (nats)",
}
# One colour per variant, the same in every panel and both stages (matplotlib's tab10 cycle); the
# paper's ablation order first, any other variant after them in name order.
VARIANT_ORDER = ("albef", "vd", "nas")
PALETTE = tuple(f"C{i}" for i in range(10))
STAGE_NAMES = ("stage 1", "stage 2")
# ITM rows per positive in each stage: stage 1 has 3B rows (the positive, text + hard-negative image,
# hard-negative text + image; NAS_METHOD.md §2); NVA adds a 4th row per pair in stage 2 (§4.6).
ROWS_WITHOUT_NVA, ROWS_WITH_NVA = 3, 4
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}


def label_entropy(positive_fraction: float) -> float:
    """H(p) in nats of a binary label that is positive with probability p."""
    p = positive_fraction
    if not 0.0 < p < 1.0:
        raise ValueError(f"positive fraction must be in (0, 1), got {p}")
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def itm_prior(rows_per_positive: int) -> float:
    """ITM cross-entropy (nats) of a head that only knows the label prior: 1 positive in
    `rows_per_positive` rows gives H(1/n). 3 rows (ALBEF, stage 1): H(1/3) = 0.6365; 4 rows (NVA on):
    H(1/4) = 0.5623. An ITM loss on this line has learnt nothing beyond the row mix."""
    return label_entropy(1.0 / rows_per_positive)


def variant_colours(variants: Collection[str]) -> dict[str, str]:
    """A fixed colour per variant: albef, vd, nas first (in that order), then the others by name."""
    ordered = [v for v in VARIANT_ORDER if v in variants] + sorted(set(variants) - set(VARIANT_ORDER))
    return {variant: PALETTE[i % len(PALETTE)] for i, variant in enumerate(ordered)}


def loss_terms(*stages: dict[str, Any]) -> list[str]:
    """The loss columns logged by any run of `stages`: itc, itm, mlm, total first, then any other."""
    found = {
        k
        for runs in stages
        for run in runs.values()
        for row in run.get("steps", [])
        for k in row
        if k not in NOT_LOSSES and not k.startswith(DIAGNOSTIC_PREFIX)
    }
    return [t for t in LOSS_ORDER if t in found] + sorted(found - set(LOSS_ORDER))


def _stage_rows(
    stage: int, variants: Collection[str], nva_variants: Collection[str] | None
) -> list[tuple[int, str]]:
    """(ITM rows per positive, who) for the prior lines of one stage. NVA runs in stage 2 only (§4.7);
    with `nva_variants` unknown (None), stage 2 shows both row sets."""
    if stage == 0:
        return [(ROWS_WITHOUT_NVA, "every variant")]
    if nva_variants is None:
        return [(ROWS_WITHOUT_NVA, "without NVA"), (ROWS_WITH_NVA, "with NVA")]
    with_nva = sorted(v for v in variants if v in nva_variants)
    without = sorted(v for v in variants if v not in nva_variants)
    out = []
    if without:
        out.append((ROWS_WITHOUT_NVA, ", ".join(without)))
    if with_nva:
        out.append((ROWS_WITH_NVA, ", ".join(with_nva)))
    return out


def loss_curve_plot(
    stage1: dict[str, Any], stage2: dict[str, Any], *, nva_variants: Collection[str] | None = None
) -> Figure:
    """Per-step pretraining losses (one panel per loss term, y in nats; x = training step, stage 2
    continuing stage 1's count and shaded). One colour per variant in every panel and stage; one
    figure-level legend. The ITM panel carries each stage's label-prior entropy (`itm_prior`) as a
    dashed line (drawn for itm_weight 1, the default): NAS's stage-2 ITM drop is the switch from 3 rows
    per positive to NVA's 4. `nva_variants`: the variants that run NVA in stage 2 (None: not known, both prior lines shown)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    variants = set(stage1) | set(stage2)
    colours = variant_colours(variants)
    terms = loss_terms(stage1, stage2)
    columns = 2 if len(terms) == 4 else min(max(len(terms), 1), 3)
    rows = max(math.ceil(len(terms) / columns), 1)
    figure = Figure(figsize=(5.2 * columns, 3.6 * rows + 1.0), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[len(terms) :]:
        axis.set_axis_off()

    # Stage 2's steps restart at 1: shift them by stage 1's last logged step (per variant), so the two
    # stages read as one run. `bounds[i]` = (first, last) x of stage i over all variants.
    curves: dict[tuple[str, int], list[dict[str, Any]]] = {}
    bounds: list[list[float]] = [[math.inf, -math.inf], [math.inf, -math.inf]]
    for variant in variants:
        offset = 0.0
        for index, runs in enumerate((stage1, stage2)):
            steps = runs.get(variant, {}).get("steps", [])
            shifted = [{**row, "x": offset + row["step"]} for row in steps]
            curves[(variant, index)] = shifted
            if shifted:
                bounds[index][0] = min(bounds[index][0], offset)
                bounds[index][1] = max(bounds[index][1], shifted[-1]["x"])
                offset = shifted[-1]["x"]

    # Variants whose logged steps of a stage are identical (vd and nas share stage 1 by construction):
    # the earlier one is drawn wide and pale under the later one, and the legend says so.
    twins = [_twins(runs, list(colours)) for runs in (stage1, stage2)]
    for axis, term in zip(axes, terms):
        for variant in colours:
            for index in (0, 1):
                points = [(row["x"], row[term]) for row in curves.get((variant, index), []) if term in row]
                if not points:
                    continue
                under = variant in twins[index].values()
                xs, ys = zip(*points)
                axis.plot(
                    xs,
                    ys,
                    "-",
                    color=colours[variant],
                    linewidth=4.0 if under else 1.4,
                    alpha=0.45 if under else 1.0,
                    marker=None if under else ".",
                    markersize=3,
                    gid=f"{variant}/{STAGE_NAMES[index]}",
                )
        if math.isfinite(bounds[1][0]) and bounds[1][1] > bounds[1][0]:
            axis.axvspan(bounds[1][0], bounds[1][1], color="0.93", zorder=0)
            axis.axvline(bounds[1][0], color="0.6", linewidth=0.8, linestyle=":")
        if term == "itm":
            _draw_itm_priors(axis, bounds, variants, nva_variants)
        axis.set_title(LOSS_TITLES.get(term, term), fontsize=10)
        axis.set_ylabel(LOSS_YLABELS.get(term, f"{term} (as logged)"))
        axis.set_xlabel("training step (stage 2 continues the count)")
        axis.grid(True, linewidth=0.3, alpha=0.5)

    def legend_label(variant: str) -> str:
        same = [f"{STAGE_NAMES[i]} identical to {twins[i][variant]}" for i in (0, 1) if variant in twins[i]]
        return f"{variant} ({'; '.join(same)})" if same else variant

    handles = [Line2D([], [], color=colours[v], linewidth=2, label=legend_label(v)) for v in colours]
    handles.append(Patch(facecolor="0.93", edgecolor="0.6", label="stage 2 (shaded; stage 1 before it)"))
    if "itm" in terms:
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                linestyle="--",
                linewidth=1,
                label="ITM label prior H(1/rows), per stage",
            )
        )
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=9)
    figure.suptitle(
        "Pretraining loss terms at each logged step (weight × cross-entropy, as the trainer logs them)",
        fontsize=11,
    )
    return figure


def _twins(runs: dict[str, Any], order: list[str]) -> dict[str, str]:
    """{variant: the earlier variant in `order` whose logged steps in `runs` are the same}."""
    out: dict[str, str] = {}
    for i, variant in enumerate(order):
        steps = runs.get(variant, {}).get("steps")
        if steps:
            for earlier in order[:i]:
                if earlier not in out and runs.get(earlier, {}).get("steps") == steps:
                    out[variant] = earlier
                    break
    return out


# Where each prior line's label sits (axes fractions): away from the curves, which hug the 3-row line,
# with an arrow to its line. Keys: (stage index, rows per positive).
_PRIOR_LABEL_AT = {(0, 3): (0.36, 0.62), (1, 3): (0.58, 0.86), (1, 4): (0.36, 0.16)}


def _draw_itm_priors(
    axis: Any, bounds: list[list[float]], variants: Collection[str], nva_variants: Collection[str] | None
) -> None:
    """Each stage's ITM label-prior entropy as a dashed segment over that stage (gid "itm_prior"), with a
    label: the stage, H(1/rows) in nats, the row mix and the variants it applies to."""
    for index, (first, last) in enumerate(bounds):
        if not math.isfinite(first) or last <= first:
            continue
        for rows, who in _stage_rows(index, variants, nva_variants):
            level = itm_prior(rows)
            axis.hlines(
                level,
                first,
                last,
                colors="black",
                linestyles="--",
                linewidth=1.1,
                zorder=3,
                gid="itm_prior",
                label=f"{STAGE_NAMES[index]}: H(1/{rows})",
            )
            mix = (
                "1 positive in 3 rows" if rows == ROWS_WITHOUT_NVA else "1 positive in 4 rows (NVA row added)"
            )
            axis.annotate(
                f"{STAGE_NAMES[index]} prior: H(1/{rows}) = {level:.4f} nats\n{mix}; {who}",
                xy=(first + (0.45 if index == 0 else 0.5) * (last - first), level),
                xytext=_PRIOR_LABEL_AT.get((index, rows), (0.5, 0.5)),
                textcoords="axes fraction",
                fontsize=7.5,
                ha="center",
                va="center",
                bbox=_LABEL_BOX,
                arrowprops={"arrowstyle": "->", "color": "0.3", "linewidth": 0.8, "shrinkA": 2, "shrinkB": 1},
            )


def loss_curve_figure(
    stage1: dict[str, Any], stage2: dict[str, Any], path: Path, *, nva_variants: Collection[str] | None = None
) -> Path:
    """`loss_curve_plot` written to `path` (PNG, atomically)."""
    return save_figure(loss_curve_plot(stage1, stage2, nva_variants=nva_variants), path, dpi=110)


# The caption of an NVA figure drawn before the figures carried their own title (nas.reporting.nva_figure).
_NVA_FIGURE_FALLBACK = (
    "What NVA changes",
    "Each row: a test image, its visual-dictionary code map over the patch grid, and the patches one NVA "
    "draw replaced (all patches sharing the anchor's code move to one nearby code; every other token is "
    "bitwise unchanged).",
)


def nva_figure_caption(path: Path) -> tuple[str, str]:
    """(heading, caption) of an NVA figure: what the figure says it shows (the title `nva_figure` writes
    into the PNG: "What NVA changes (...)" or "VD codes (no NVA in this variant)"), else the old text."""
    from nas.reporting.nva_figure import figure_caption

    return figure_caption(path) or _NVA_FIGURE_FALLBACK


# The recipes' audited runs: MUG's full arm (first seed) and UTA's students (one recorded config).
RECIPE_AUDIT_RUNS = {
    "mug": Path("mug_pretrain/mug/seed0"),
    "uta": Path("uta_pretrain/reversed_blockwise/seed0"),
}


def audited_runs(runs_dir: Path, variants: list[str]) -> dict[str, Path]:
    """{name: run folder} of what the report audits: each variant's first fine-tuning replicate and
    the recipes' runs that exist."""
    runs = {}
    for variant in variants:
        replicates = sorted((runs_dir / "finetune" / variant).glob("seed*/config.json"))
        if replicates:
            runs[variant] = replicates[0].parent
    for name, relative in RECIPE_AUDIT_RUNS.items():
        if (runs_dir / relative / "config.json").is_file():
            runs[name] = runs_dir / relative
    return runs


def audit_section(runs_dir: Path, variants: list[str]) -> list[str]:
    """`nas audit` of every audited run (its recorded config, against its recipe's paper card),
    written beside the report; results.md lists the verdict counts and links the tables."""
    from nas.reporting.audit import audit, load_run_config, render

    lines = []
    for name, run in audited_runs(runs_dir, variants).items():
        config = load_run_config(run)
        text, code = render(config, title=f"Audit of {name} ({run.as_posix()})")
        write_text(runs_dir.parent / "reports" / "audits" / f"{name}.md", text + "\n")
        verdicts: dict[str, int] = {}
        for row in audit(config):
            verdicts[row.verdict] = verdicts.get(row.verdict, 0) + 1
        summary = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
        lines.append(
            f"- [{name}](audits/{name}.md): {summary} (exit code {code}: "
            f"{'every departure from the paper explained' if code == 0 else 'departs from the paper; this profile is tiny on purpose'})"
        )
    return lines


def write_curves_csv(stages: dict[str, dict[str, Any]], path: Path) -> None:
    """Per-step losses of every training stage and variant, one row per logged step (DVC plot)."""
    import csv
    import io

    rows, keys = [], ["variant", "stage", "step"]
    for stage, runs in stages.items():
        for variant, run in sorted(runs.items()):
            for row in run.get("steps", []):
                rows.append({"variant": variant, "stage": stage, **row})
                keys += [k for k in row if k not in keys]
    table = io.StringIO(newline="")  # csv's own "\r\n" line ends, as a file opened with newline=""
    writer = csv.DictWriter(table, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, table.getvalue())


def write_findings(findings: Any, path: Path) -> Path:
    """metrics/findings.json: `{key: {claim, effect, low, high (points), verdict, verdict_code, n_seeds,
    n_cases, method, ...}}` for every claim and sanity row (`verdict_code` 1 / 0 / -1, null when not run,
    so `dvc metrics diff` shows a changed verdict as a number)."""
    return write_text(path, json.dumps(findings.to_json(), indent=2, ensure_ascii=False) + "\n")


def write_report(
    metrics_dir: Path,
    reports_dir: Path,
    cfg: ReportConfig,
    *,
    runs_dir: Path | None = None,
    findings_path: Path | None = None,
    study: Any = None,
    nva_variants: Collection[str] | None = None,
) -> Path:
    """reports/results.md (and its figures) from `metrics_dir`; the findings from the per-case outcomes
    under `runs_dir/evaluate` (default: `metrics_dir`'s sibling `runs/`), judged as `study` says
    (`nas.reporting.findings.FindingsConfig`, default: 95 %, 2000 resamples), written to `findings_path`
    too when given. `nva_variants`: the variants that run NVA in stage 2 (None: not known)."""
    from nas.reporting.findings import (
        FindingsConfig,
        compute_findings,
        details_section,
        findings_section,
        load_cases,
    )

    study = study or FindingsConfig()
    results = collect(metrics_dir, study.seeds)
    runs_dir = Path(runs_dir) if runs_dir is not None else metrics_dir.parent / "runs"
    findings = compute_findings(load_cases(runs_dir / "evaluate", study.seeds), results["evaluate"], study)
    if findings_path is not None:
        write_findings(findings, Path(findings_path))
    figures = reports_dir / "figures"
    loss_curve_figure(
        results["stage1"], results["stage2"], figures / "loss_curves.png", nva_variants=nva_variants
    )
    write_curves_csv(
        {
            "pretrain_stage1": results["stage1"],
            "pretrain_stage2": results["stage2"],
            "finetune": results["finetune"],
        },
        reports_dir / "loss_curves.csv",
    )
    from nas.reporting.summary import write_loss_plots, write_summary

    write_loss_plots(
        {
            "pretrain_stage1": results["stage1"],
            "pretrain_stage2": results["stage2"],
            "finetune": results["finetune"],
        },
        reports_dir / "plots",
    )
    if findings_path is not None:  # the headline numbers sit beside the findings (metrics/summary.json)
        write_summary(
            Path(findings_path), metrics_dir / "evaluate", Path(findings_path).with_name("summary.json")
        )
    data = results["data"]
    lines = [f"# {cfg.title}", "", *findings_section(findings)]
    lines += ["Generated by `dvc repro` (stage `report`); do not edit by hand.", ""]
    itm = itm_table(results["stage1"], results["stage2"], nva_variants=nva_variants)
    if len(itm) > 2:
        lines += [
            "## ITM learned?",
            "",
            "Final ITM term (last-epoch mean, mean ± std over pretraining seeds; itm_weight × cross-entropy) "
            "beside the cross-entropy of a head that knows only the row mix, H(1/rows): 1 positive in 3 rows "
            "(ALBEF, VD, stage 1), in 4 with NVA's extra negative (NAS, stage 2). A ratio near 1: the ITM head "
            "has learnt nothing beyond the row mix.",
            "",
            *itm,
            "",
        ]
    lines += details_section(findings)
    if data:
        lines += [
            "## Data",
            "",
            f"Synthetic compositional scenes: {data.get('train_images')} train images "
            f"({data.get('train_captions')} captions), {data.get('test_images')} test images "
            f"({data.get('test_captions')} captions, {data.get('test_heldout_images')} with held-out "
            "colour-shape pairs). Data sha256 `" + str(data.get("sha256", ""))[:16] + "`.",
            "",
        ]
    if results["evaluate"]:
        lines += [
            "## Zero-shot retrieval on the test split",
            "",
            "R@K in percent. Chance = a scorer that ranks uniformly at random.",
            "",
        ]
        lines += retrieval_table(results["evaluate"]) + [""]
        grained = fine_grained_tables(fine_grained_rows(results))
        if grained:
            lines += [
                "## Fine-grained probes (official formats, synthetic test scenes)",
                "",
                "Percent. Each row names the pair scorer that produced it; `seeds` is the number of "
                "replicates behind a mean ± sample std: one per pretraining seed (`study.seeds`), each "
                "fine-tuned model from its own seed's pretrained one.",
                "",
            ] + grained
    for module in RECIPE_SECTIONS:  # MUG, UTA: their own tables and figures ([] when not run)
        lines += importlib.import_module(module).section(metrics_dir, reports_dir)
    health = dictionary_table(results)
    if health:
        lines += ["## Visual dictionary health", ""] + health + [""]
    lines += ["## Training", ""] + training_table(results["stage1"], results["stage2"]) + [""]
    passed = [v for v, r in results["finetune"].items() if r.get("pass_through")]
    if passed:
        lines += [f"Fine-tuning is a pass-through for: {', '.join(passed)} (not implemented yet).", ""]
    lines += ["![loss curves](figures/loss_curves.png)", ""]
    for variant, result in results["evaluate"].items():
        source = Path(result.get("nva_figure") or "")
        if source.is_file():
            copy_file(source, figures / f"nva_{variant}.png")
            title, caption = nva_figure_caption(source)
            lines += [
                f"### {title}: {variant}",
                "",
                caption,
                "",
                f"![{title}: {variant}](figures/nva_{variant}.png)",
                "",
            ]
    reports_dir.mkdir(parents=True, exist_ok=True)
    audits = audit_section(metrics_dir.parent / "runs", sorted(results["evaluate"]))
    if audits:
        lines += [
            "## Hyperparameter audit against the paper card",
            "",
            "`nas audit runs/finetune/<variant>/seed0` (MUG: `runs/mug_pretrain/mug/seed0`, UTA: "
            "`runs/uta_pretrain`) compares each run's recorded config with its recipe's paper card "
            "(match / deviation / known difference with the first author's code).",
            "",
            *audits,
            "",
        ]
    return write_text(reports_dir / "results.md", "\n".join(lines))
