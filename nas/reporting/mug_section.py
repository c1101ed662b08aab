"""The MUG section of reports/results.md (MUG_UTA.md §1) and its sample figure.

`section(metrics_dir, reports_dir)` reads `metrics/mug/{pretrain,evaluate}.json` (written by
experiments/mug.py) and returns markdown: the ablation table (linear probes per scene attribute with
chance levels, caption exact match, held-out losses, mean ± std over seeds), caption exact match per
attribute, held-out losses against initialisation and the trivial baselines, and sample captions.
It copies the figure `mug_evaluate` drew (test images, masked view, reconstruction, caption) into
`reports_dir/figures`. The fine-grained probe rows go into the shared tables from
`metrics/fine_grained/mug.json` (nas/reporting/results.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nas.evaluation.scene_attributes import ATTRIBUTES, CAPTION_ATTRIBUTES, PIXEL_ATTRIBUTES
from nas.evaluation.seeds import fmt_mean_std
from nas.reporting.atomic import copy_file, save_figure

ARM_LABELS = {
    "mae_only": "MAE only (cap_weight 0)",
    "caption_only": "caption only (recon_weight 0)",
    "mug": "MUG",
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


def ablation_table(evaluation: dict[str, Any]) -> list[str]:
    arms = evaluation["arms"]
    first = next(iter(arms.values()))
    chance = {a: first["per_seed"][0]["probes"][a]["chance"] for a in ATTRIBUTES}
    majority = {a: first["per_seed"][0]["probes"][a]["majority"] for a in ATTRIBUTES}
    header = " | ".join(
        f"{a} {'(caption)' if a in CAPTION_ATTRIBUTES else '(pixel)' if a in PIXEL_ATTRIBUTES else ''}".strip()
        for a in ATTRIBUTES
    )
    lines = [
        f"| arm | seeds | {header} | greedy caption: all attributes | held-out MSE | held-out caption CE |",
        "|---|---:|" + "---:|" * len(ATTRIBUTES) + "---:|---:|---:|",
    ]
    for arm, block in arms.items():
        s = block["summary"]
        probes = " | ".join(_ms(s["probes"][a]["accuracy"]) for a in ATTRIBUTES)
        captions = (
            _ms(s["captions"]["greedy"]["all"]["accuracy"]) if _trains(block, "cap_weight") else UNTRAINED
        )
        mse = _ms(s["heldout"]["recon_mse"], 3) if _trains(block, "recon_weight") else UNTRAINED
        ce = _ms(s["heldout"]["caption_ce"], 3) if _trains(block, "cap_weight") else UNTRAINED
        lines.append(f"| {_label(arm)} | {len(block['seeds'])} | {probes} | {captions} | {mse} | {ce} |")
    lines.append(
        "| chance (1 / classes) | | " + " | ".join(f"{chance[a]:.1f}" for a in ATTRIBUTES) + " | | | |"
    )
    lines.append("| majority class | | " + " | ".join(f"{majority[a]:.1f}" for a in ATTRIBUTES) + " | | | |")
    return lines


def caption_table(evaluation: dict[str, Any]) -> list[str]:
    lines = [
        "| arm | decoding | " + " | ".join(MATCH_COLUMNS) + " |",
        "|---|---|" + "---:|" * len(MATCH_COLUMNS),
    ]
    for arm, block in evaluation["arms"].items():
        if not _trains(block, "cap_weight"):
            continue  # its caption decoder never trained
        for method in ("greedy", "beam"):
            match = block["summary"]["captions"][method]
            cells = " | ".join(_ms(match[k]["accuracy"]) if k in match else "n/a" for k in MATCH_COLUMNS)
            lines.append(f"| {_label(arm)} | {method} | {cells} |")
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
    lines = [
        "## MUG: masked image reconstruction + captioning (MUG_UTA.md §1)",
        "",
        f"Arms {', '.join(_label(a) for a in arms)}; equal steps; seeds {seeds}; mean ± std (sample std) "
        "over seeds. Linear probes: logistic regression on frozen, unmasked encoder features, test "
        "accuracy in percent. (caption) = attributes the captions name, (pixel) = only pixels carry them.",
    ]
    captions = pretrain.get("captions")
    if captions:
        lines += [
            "",
            f"Training captions: {captions['pairs']} pairs, {captions['truncated']} cut to the context, "
            f"{captions['empty_skipped']} empty ones skipped; decoder vocabulary {pretrain.get('vocabulary_size')} "
            "slots (the CLIP BPE ids of the training captions, SOT, EOT, UNK).",
        ]
    lines += ["", "### Ablation", "", *ablation_table(evaluation)]
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
