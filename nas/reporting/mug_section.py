"""The MUG section of reports/results.md (MUG_UTA.md §1) and its sample figure.

`section(metrics_dir, reports_dir)` reads `metrics/mug/{pretrain,evaluate}.json` (written by
nas.recipes.mug) and returns markdown: the findings (each claim's effect, 95 % interval over seeds
and cases, verdict; nas/reporting/recipe_findings.py), the linear probes per scene attribute of every
arm beside the untrained encoder, chance and the majority rate, with intervals; whether the caption
branch uses the image (held-out caption cross-entropy given the own vs a shuffled image); caption
exact match per attribute; held-out losses against initialisation and the trivial baselines; sample
captions. It copies the figure `mug_evaluate` drew (test images, masked view, reconstruction,
caption) into `reports_dir/figures`. The fine-grained probe rows go into the shared tables from
`metrics/fine_grained/mug.json` (nas/reporting/results.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nas.evaluation.scene_attributes import ATTRIBUTES, KIND
from nas.evaluation.seeds import fmt_mean_std
from nas.reporting.atomic import copy_file, save_figure
from nas.reporting.recipe_findings import FindingsConfig, interval_cell
from nas.reporting.recipe_findings import section as findings_section

ARM_LABELS = {
    "mae_only": "MAE only (cap_weight 0)",
    "caption_only": "caption only (recon_weight 0)",
    "mug": "MUG",
    "untrained": "untrained encoder (same seeds)",
}
MATCH_COLUMNS = ("count", "colour", "shape", "size", "objects", "relation", "all", "caption")
UNTRAINED = "— (not trained)"


def _label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def _trains(block: dict[str, Any], weight: str) -> bool:
    """Does this arm train the branch of `weight` ("recon_weight" / "cap_weight")? An ablated
    branch keeps its random initialisation, so its captions or reconstructions mean nothing."""
    return block.get("model_overrides", {}).get(weight, 1.0) != 0


def _ms(stats: dict[str, Any] | None, digits: int = 1) -> str:
    return "n/a" if stats is None else fmt_mean_std(stats, digits)


def _models(evaluation: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, block) of the untrained baseline (when scored) and every arm."""
    out = [("untrained", evaluation["untrained"])] if "untrained" in evaluation else []
    return out + list(evaluation["arms"].items())


def _first_probes(evaluation: dict[str, Any]) -> dict[str, Any]:
    name, block = _models(evaluation)[0]
    return block["per_seed"][0]["probes"]


def probe_table(evaluation: dict[str, Any]) -> list[str]:
    """Probe accuracy per attribute: mean [95 % interval over seeds and cases] (mean ± std over seeds
    where no interval was stored), every model, then chance, the majority rate and the test rows."""
    attributes = [a for a in ATTRIBUTES if a in _first_probes(evaluation)]
    info = evaluation.get("attributes", {})
    intervals = evaluation.get("probe_intervals", {})
    learned = evaluation.get("learned_attributes", {})

    def head(a: str) -> str:
        kind = info.get(a, {}).get("kind", KIND.get(a, ""))
        feature = info.get(a, {}).get("feature")
        mark = "" if learned.get(a, True) else " †"
        return f"{a} ({kind}{', ' + feature if feature else ''}){mark}"

    lines = [
        "| model | seeds | " + " | ".join(head(a) for a in attributes) + " |",
        "|---|---:|" + "---:|" * len(attributes),
    ]
    for name, block in _models(evaluation):
        cells = []
        for a in attributes:
            if a in intervals.get(name, {}):
                cells.append(interval_cell(intervals[name][a]))
            else:
                stats = block["summary"]["probes"].get(a, {}).get("accuracy")
                cells.append(_ms(stats) if isinstance(stats, dict) else "skipped")
        lines.append(f"| {_label(name)} | {len(block['seeds'])} | " + " | ".join(cells) + " |")
    first = _first_probes(evaluation)

    def row(label: str, key: str, digits: int = 1) -> str:
        values = [first[a].get(key) for a in attributes]
        shown = [
            "—" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v)) for v in values
        ]
        return f"| {label} | | " + " | ".join(shown) + " |"

    lines += [
        row("chance (1 / classes)", "chance"),
        row("majority class", "majority"),
        row("test rows", "n_test"),
    ]
    return lines


def ablation_table(evaluation: dict[str, Any]) -> list[str]:
    """One line per arm: greedy caption exact match and the held-out losses (mean ± std over seeds)."""
    lines = [
        "| arm | seeds | greedy caption: all attributes | held-out MSE | held-out caption CE |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, block in _models(evaluation):
        s = block["summary"]
        greedy = s.get("captions", {}).get("greedy", {}).get("all", {}).get("accuracy")
        captions = _ms(greedy) if _trains(block, "cap_weight") and greedy else UNTRAINED
        if arm == "untrained" and greedy:
            captions = _ms(greedy)
        mse = _ms(s["heldout"]["recon_mse"], 3) if _trains(block, "recon_weight") else UNTRAINED
        ce = _ms(s["heldout"]["caption_ce"], 3) if _trains(block, "cap_weight") else UNTRAINED
        if arm == "untrained":
            mse, ce = _ms(s["heldout"]["recon_mse"], 3), _ms(s["heldout"]["caption_ce"], 3)
        lines.append(f"| {_label(arm)} | {len(block['seeds'])} | {captions} | {mse} | {ce} |")
    return lines


def image_use_table(evaluation: dict[str, Any]) -> list[str]:
    """Held-out caption CE given the own image vs a shuffled one (masked view and full image)."""
    lines = [
        "| arm | masked view: own image | shuffled image | full image: own image | shuffled image |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, block in _models(evaluation):
        if arm != "untrained" and not _trains(block, "cap_weight"):
            continue
        h = block["summary"]["heldout"]
        if "caption_ce_shuffled_image" not in h:
            continue
        lines.append(
            f"| {_label(arm)} | {_ms(h['caption_ce'], 3)} | {_ms(h['caption_ce_shuffled_image'], 3)} | "
            f"{_ms(h['caption_ce_full_image'], 3)} | {_ms(h['caption_ce_full_image_shuffled'], 3)} |"
        )
    return lines


def caption_table(evaluation: dict[str, Any]) -> list[str]:
    lines = [
        "| model | decoding | seeds | " + " | ".join(MATCH_COLUMNS) + " |",
        "|---|---|---:|" + "---:|" * len(MATCH_COLUMNS),
    ]
    for arm, block in _models(evaluation):
        if arm != "untrained" and not _trains(block, "cap_weight"):
            continue  # its caption decoder never trained
        for method in ("greedy", "beam"):
            match = block["summary"].get("captions", {}).get(method)
            if not match:
                continue
            seeds = next(
                iter(v["accuracy"]["n"] for v in match.values() if isinstance(v, dict) and "accuracy" in v),
                "",
            )
            cells = " | ".join(_ms(match[k]["accuracy"]) if k in match else "n/a" for k in MATCH_COLUMNS)
            lines.append(f"| {_label(arm)} | {method} | {seeds} | {cells} |")
    return lines


def loss_table(evaluation: dict[str, Any]) -> list[str]:
    base = evaluation["baselines"]
    lines = [
        "| arm | masked-patch MSE: init | trained | patch-mean baseline | caption CE (masked view): init | "
        "trained | full image | unigram baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, block in evaluation["arms"].items():
        s, init = block["summary"]["heldout"], block["summary"]["initial"]
        lines.append(
            f"| {_label(arm)} | {_ms(init['recon_mse'], 3)} | {_ms(s['recon_mse'], 3)} | "
            f"{_ms(s['recon_mse_patch_mean_baseline'], 3)} | {_ms(init['caption_ce'], 3)} | "
            f"{_ms(s['caption_ce'], 3)} | {_ms(s['caption_ce_full_image'], 3)} | {base['caption_ce_unigram']:.3f} |"
        )
    return lines


def samples_table(evaluation: dict[str, Any], arms: Sequence[str]) -> list[str]:
    arms = [a for a in arms if _trains(evaluation["arms"][a], "cap_weight")]
    lines = ["| image | ground truth (first) | " + " | ".join(f"{_label(a)} (greedy)" for a in arms) + " |"]
    lines.append("|---|---|" + "---|" * len(arms))
    for sample in evaluation.get("samples", []):
        cells = " | ".join(sample.get(f"{a}/greedy", "") for a in arms)
        lines.append(f"| `{sample['image']}` | {sample['truth'][0]} | {cells} |")
    return lines


def section(metrics_dir: Path, reports_dir: Path) -> list[str]:
    """Markdown lines of the MUG section; [] when `mug_evaluate` has not run."""
    metrics_dir, reports_dir = Path(metrics_dir), Path(reports_dir)
    eval_file = metrics_dir / "mug" / "evaluate.json"
    if not eval_file.is_file():
        return []
    evaluation = json.loads(eval_file.read_text())
    pretrain_file = metrics_dir / "mug" / "pretrain.json"
    pretrain = json.loads(pretrain_file.read_text()) if pretrain_file.is_file() else {}
    arms = list(evaluation["arms"])
    seeds = next(iter(evaluation["arms"].values()))["seeds"]
    cfg = FindingsConfig.from_settings(evaluation.get("findings_settings"), margin=2.0)
    percent = f"{100 * cfg.level:g} %"
    lines = [
        "## MUG: masked image reconstruction + captioning (MUG_UTA.md §1)",
        "",
        f"Arms {', '.join(_label(a) for a in arms)}; equal steps; seeds {seeds}; beside them the untrained "
        "encoder of the same seeds (same architecture, same probes). Linear probes: logistic regression on "
        "frozen, unmasked encoder features; every label is a function of the rendered image "
        "(nas/evaluation/scene_attributes.py: the main object is the unique largest one, the relation is "
        "that of a two-object scene's pair, tested over the generator). (caption) = attributes every "
        "caption states in words, (pixel) = attributes no caption states (absolute position). Attributes "
        "about *where* (relation, position) are probed on patch tokens pooled to a grid, the others on "
        f"mean-pooled tokens. Cells: test accuracy in percent, mean over seeds [{percent} interval over seeds "
        "and test scenes]; † = the full model is not above chance there (the claims do not judge it).",
    ]
    captions = pretrain.get("captions")
    if captions:
        lines += [
            "",
            f"Training captions: {captions['pairs']} pairs, {captions['truncated']} cut to the context, "
            f"{captions['empty_skipped']} empty ones skipped; decoder vocabulary {pretrain.get('vocabulary_size')} "
            "slots (the CLIP BPE ids of the training captions, SOT, EOT, UNK).",
        ]
    lines += findings_section(evaluation.get("findings"), cfg)
    lines += ["", "### Linear probes per scene attribute", "", *probe_table(evaluation)]
    lines += ["", "### Captions and held-out losses", "", *ablation_table(evaluation)]
    image_use = image_use_table(evaluation)
    if len(image_use) > 2:
        lines += [
            "",
            "### Does the caption branch use the image?",
            "",
            "Held-out caption cross-entropy (nats per token) of each caption given its own image and given "
            "another scene's image (a fixed derangement); mean ± std over seeds:",
            "",
            *image_use,
        ]
    lines += [
        "",
        "### Caption exact match per attribute (test images, % of scenes)",
        "",
        *caption_table(evaluation),
    ]
    lines += [
        "",
        "### Held-out losses against initialisation and trivial baselines",
        "",
        *loss_table(evaluation),
    ]
    lines += ["", "### Sample captions (first seed)", "", *samples_table(evaluation, arms)]
    figure = evaluation.get("figure")
    if figure:
        source = metrics_dir.parent / figure
        if source.is_file():
            copy_file(source, reports_dir / "figures" / "mug_samples.png")
            lines += [
                "",
                "Test images, the masked view the encoder sees, the MAE reconstruction (visible patches pasted "
                "back) and the greedy caption from the unmasked image:",
                "",
                "![MUG samples](figures/mug_samples.png)",
            ]
    lines.append("")
    return lines


# ---- the sample figure ------------------------------------------------------------------------------


def _to_display(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * s + m).clamp(0, 1)


@torch.no_grad()
def sample_figure(
    model: Any,
    images: torch.Tensor,
    captions: Sequence[str],
    truths: Sequence[str],
    path: Path,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    mask_seed: int = 0,
) -> Path:
    """A grid: image | masked view | reconstruction | greedy caption, one row per image. With
    normalised-pixel targets the prediction of a masked patch is un-normalised with that patch's own
    mean and variance (as MAE's visualisation does)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas.models.masking import random_masking
    from nas.objectives.mug import MAE_NORM_EPS, patchify, unpatchify

    model.eval()
    generator = torch.Generator().manual_seed(mask_seed)
    view = random_masking(len(images), model.num_patches, model.cfg.mask_ratio, generator=generator)
    pred = model.reconstruct(model.encode(images, view), view)
    patches = patchify(images, model.patch_size)
    if model.cfg.norm_pix_loss:
        pred = pred * (patches.var(-1, keepdim=True) + MAE_NORM_EPS).sqrt() + patches.mean(-1, keepdim=True)
    hidden = view.mask.unsqueeze(-1)
    masked = unpatchify(patches * (1 - hidden), model.patch_size)
    recon = unpatchify(patches * (1 - hidden) + pred * hidden, model.patch_size)
    panels = [_to_display(x, mean, std) for x in (images, masked, recon)]
    rows = len(images)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.3 * rows), squeeze=False)
    for r in range(rows):
        for c, (title, panel) in enumerate(zip(("image", "masked view", "reconstruction"), panels)):
            axes[r][c].imshow(panel[r].permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[r][c].set_title(title, fontsize=8)
            axes[r][c].axis("off")
        axes[r][3].axis("off")
        axes[r][3].text(0, 0.6, f"generated: {captions[r]}", fontsize=8, wrap=True, va="center")
        axes[r][3].text(0, 0.25, f"truth: {truths[r]}", fontsize=8, wrap=True, va="center", color="grey")
    fig.tight_layout()
    path = save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path
