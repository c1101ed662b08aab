"""MUG's `mug:` params section, typed, and its paper card for `nas audit` (MUG_UTA.md §1).

The section drives the stages `mug_vocabulary`, `mug_pretrain` and `mug_evaluate` (nas/recipes/mug):
one model spec, the ablation arms as data (model overrides per arm), the seeds, one TrainConfig for
every run (equal steps across arms), loader and image-transform overrides, and the evaluation knobs.
dvc.yaml sweeps `mug_pretrain` over arms x seeds (`matrix:`), so a new arm or seed is a params edit.

The card is in the format of nas/config/card.py. Sources: [P] the MUG paper (Zhao et al.,
TMLR 2024) as MUG_UTA.md §1 holds it; [B] MAE (He et al., 2022), whose values stand in for MUG's
Table 10, which "mainly follow[s]" MAE but is not in the spec's sources; [D] this project's
decisions. Paths are read from `mug_view(run_config)`: the section with every default filled in,
`mug.model.overrides` being the model as the registry builds it (arm overrides included for a run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from nas.config.base import ConfigError, from_dict, merge, to_dict
from nas.config.card import CardEntry, Equals, NotNull, check_card
from nas.config.stages import ModelSpec
from nas.config.train import TrainConfig
from nas.evaluation.captioning import GenerationConfig
from nas.evaluation.linear_probe import LinearProbeConfig
from nas.reporting.recipe_findings import FindingsConfig

# ---- the params section ---------------------------------------------------------------------------


def _default_arms() -> dict[str, dict[str, Any]]:
    # MUG_UTA.md §1: MAE only (cap_weight 0) / caption only (recon_weight 0) / MUG, equal steps.
    return {"mae_only": {"cap_weight": 0.0}, "caption_only": {"recon_weight": 0.0}, "mug": {}}


@dataclass
class MUGEvaluateConfig:
    """`mug.evaluate`: what `mug_evaluate` measures on every arm x seed (and the untrained model)."""

    heldout: Literal["val", "test"] = "val"  # split of the held-out masked-patch MSE and caption CE
    mask_seed: int = 0  # one fixed masking draw for the held-out MSE, the same for every run
    batch_size: int = 100
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    # Features of the frozen, unmasked encoder: `probe_feature` for the attributes about what is in
    # the image (count, colour, shape, size), `spatial_probe_feature` for those about where (relation,
    # hpos, vpos; scene_attributes.SPATIAL_ATTRIBUTES): mean pooling discards position by construction.
    probe_feature: Literal["mean", "cls", "grid"] = "mean"
    spatial_probe_feature: Literal["mean", "cls", "grid"] = "grid"
    probe_grid: int = 2  # "grid": patch tokens average-pooled to probe_grid x probe_grid cells
    probe_train_images: int | None = None  # the first N training images fit the probes (None: all)
    untrained: bool = True  # score the untrained model of every seed: same architecture, probes, seeds
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    caption_images: int | None = None  # test images captioned (None: all)
    beam_seeds: int | None = None  # beam-search captions for the first N seeds only (None: every seed)
    benchmarks: tuple[str, ...] = ()  # fine-grained probes to score; empty = all
    figure_arm: str = "mug"  # the arm (first seed) whose samples the report shows
    figure_images: int = 4
    findings: FindingsConfig = field(default_factory=FindingsConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.caption_images is not None and self.caption_images < 1:
            raise ValueError(f"caption_images must be >= 1 or null, got {self.caption_images}")
        if self.beam_seeds is not None and self.beam_seeds < 0:
            raise ValueError(f"beam_seeds must be >= 0 or null, got {self.beam_seeds}")
        if self.figure_images < 0:
            raise ValueError(f"figure_images must be >= 0, got {self.figure_images}")
        if self.probe_grid < 1:
            raise ValueError(f"probe_grid must be >= 1, got {self.probe_grid}")
        if self.probe_train_images is not None and self.probe_train_images < 2:
            raise ValueError(f"probe_train_images must be >= 2 or null, got {self.probe_train_images}")


@dataclass
class MUGSection:
    """The `mug:` section of params.yaml (see the module docstring)."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec(name="mug_tiny"))
    train_file: str | None = None  # pairs under data.root; None: data.train_file (paper: CC3M [P])
    transform: dict[str, Any] = field(default_factory=dict)  # over data.transform (MAE [B]: crop, flip)
    loader: dict[str, Any] = field(default_factory=dict)  # over the `loader` section
    train: TrainConfig = field(default_factory=TrainConfig)
    arms: dict[str, dict[str, Any]] = field(default_factory=_default_arms)
    seeds: tuple[int, ...] = (0, 1, 2)
    # An empty or whitespace-only training caption: stop with an error naming it, or skip it and
    # count it in the run record.
    empty_captions: Literal["error", "skip"] = "error"
    # Intra-op threads of both MUG stages (None: torch's default, one per core). The tiny models gain
    # little from a second thread and slow down several-fold when the cores are shared (measured).
    torch_threads: int | None = None
    evaluate: MUGEvaluateConfig = field(default_factory=MUGEvaluateConfig)

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("arms must name at least one ablation arm")
        for name, overrides in self.arms.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"arms: {name!r} must be letters, digits and '_' (it names folders)")
            if not isinstance(overrides, dict):
                raise ValueError(f"arms.{name}: expected a mapping of model overrides, got {overrides!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or null, got {self.torch_threads}")
        if self.evaluate.figure_arm not in self.arms:
            raise ValueError(
                f"evaluate.figure_arm {self.evaluate.figure_arm!r} is not among arms {sorted(self.arms)}"
            )

    def arm_model(self, arm: str) -> ModelSpec:
        """The model spec of one arm: `model.overrides` merged with the arm's overrides."""
        return ModelSpec(self.model.name, merge(self.model.overrides, self.arms[arm]))


def read_section(resolved: dict[str, Any]) -> MUGSection:
    if "mug" not in resolved:
        raise ConfigError("params has no section 'mug'")
    return from_dict(MUGSection, resolved["mug"], "mug")


def effective_model(spec: ModelSpec) -> dict[str, Any]:
    """The MUGConfig `create_model(spec.name, **spec.overrides)` builds, as a dict (the registry's own
    resolution: the variant's base dict, the overrides on top, typed; nothing is built)."""
    from nas.models.registry import list_models, model_entry

    models = list_models("mug")
    if spec.name not in models:
        raise ConfigError(f"mug.model.name: {spec.name!r} is not a MUG model ({models})")
    return to_dict(model_entry(spec.name).resolve(spec.overrides, "mug.model.overrides"))


def check_section(name: str, section: MUGSection, sections: Any) -> None:
    """The schema check of the `mug` section (nas.config.schema `Section(check=...)`): the model with
    every arm's overrides against its registered config; `mug.loader` and `mug.transform` over their
    sections."""
    from nas.config.data import DataConfig
    from nas.config.schema import model_config
    from nas.data.loader import LoaderConfig
    from nas.data.transforms import TransformConfig

    model_config(section.model.name, section.model.overrides, family="mug", path=f"{name}.model")
    for arm, overrides in section.arms.items():
        model_config(
            section.model.name,
            merge(section.model.overrides, overrides),
            family="mug",
            path=f"{name}.model",
            overrides_path=f"{name}.arms.{arm}",
        )
    loader = to_dict(sections.get("loader") or LoaderConfig())
    from_dict(LoaderConfig, merge(loader, section.loader), f"{name}.loader")
    transform = to_dict((sections.get("data") or DataConfig()).transform)
    from_dict(TransformConfig, merge(transform, section.transform), f"{name}.transform")


def effective_sections(resolved: dict[str, Any]) -> dict[str, Any]:
    """`data`, the MUG loader and transform (overrides applied) and the section itself, typed."""
    from nas.config.data import DataConfig
    from nas.data.loader import LoaderConfig
    from nas.data.transforms import TransformConfig

    data = from_dict(DataConfig, resolved.get("data", {}), "data")
    section = read_section(resolved)
    loader = from_dict(LoaderConfig, merge(resolved.get("loader", {}), section.loader), "mug.loader")
    transform = from_dict(TransformConfig, merge(to_dict(data.transform), section.transform), "mug.transform")
    return {"data": data, "section": section, "loader": loader, "transform": transform}


def mug_view(run_config: dict[str, Any]) -> dict[str, Any]:
    """The run config as the card reads it: the `mug` section with defaults, its effective loader,
    transform and model (for a run of one arm, `mug.model` already carries that arm's overrides)."""
    typed = effective_sections(run_config)
    section = typed["section"]
    view = dict(run_config)
    view["data"] = to_dict(typed["data"])
    view["mug"] = to_dict(section) | {
        "loader": to_dict(typed["loader"]),
        "transform": to_dict(typed["transform"]),
        "model": {"name": section.model.name, "overrides": effective_model(section.model)},
    }
    return view


# ---- the card -------------------------------------------------------------------------------------

M = "mug.model.overrides"
T = "mug.train"

CARD: tuple[CardEntry, ...] = (
    CardEntry(
        "objective",
        "objective",
        "recon_weight · recon_loss + cap_weight · cap_loss, both weights 1",
        "[P] Algorithm 1; [D] weights 1 (MUG_UTA.md §1)",
        ((f"{M}.recon_weight", Equals(1.0)), (f"{M}.cap_weight", Equals(1.0))),
        kind="switch",  # the MAE-only and caption-only arms switch one branch off
    ),
    CardEntry(
        "text_branch",
        "text branch",
        "label, txt = txt[:, 1:], txt[:, :-1]; causal self-attention, then cross-attention to the "
        "masked-view latent; cross-entropy",
        "[P] Algorithm 1",
        (),
        note="structure, not a param: nas/models/mug.py (MUG.forward feeds the masked-view latent to "
        "both branches; tested in tests/mug)",
    ),
    CardEntry(
        "pretraining_data",
        "pretraining data",
        "CC3M (LAION-400M for scaling)",
        "[P]",
        (("data.source", Equals("files")), ("mug.train_file", NotNull("a CC3M pair list"))),
    ),
    CardEntry(
        "epochs",
        "pretraining epochs",
        "400",
        "[P]",
        ((f"{T}.epochs", Equals(400)), (f"{T}.max_steps_per_epoch", Equals(None))),
    ),
    CardEntry(
        "image_encoder",
        "image encoder",
        "ViT-B/16",
        "[B] MAE stand-in",
        (
            (f"{M}.vision.model_name", Equals("vit_base_patch16_224")),
            (f"{M}.vision.patch_size", Equals(16)),
            (f"{M}.vision.embed_dim", Equals(768)),
            (f"{M}.vision.depth", Equals(12)),
            (f"{M}.vision.num_heads", Equals(12)),
        ),
        kind="base",
    ),
    CardEntry(
        "masking",
        "masking and targets",
        "random masking, ratio 0.75; normalised-pixel targets",
        "[B] MAE stand-in",
        ((f"{M}.mask_ratio", Equals(0.75)), (f"{M}.norm_pix_loss", Equals(True))),
        kind="base",
    ),
    CardEntry(
        "mae_decoder",
        "MAE decoder",
        "8 blocks x 512, 16 heads",
        "[B] MAE stand-in",
        (
            (f"{M}.decoder.depth", Equals(8)),
            (f"{M}.decoder.embed_dim", Equals(512)),
            (f"{M}.decoder.num_heads", Equals(16)),
        ),
        kind="base",
    ),
    CardEntry(
        "caption_decoder",
        "caption decoder",
        "CoCa-shaped: 2 unimodal + 2 multimodal blocks x 512; CLIP BPE, 77 tokens, full vocabulary",
        "[D] MUG_UTA.md §1",
        (
            (f"{M}.caption.width", Equals(512)),
            (f"{M}.caption.unimodal_layers", Equals(2)),
            (f"{M}.caption.multimodal_layers", Equals(2)),
            (f"{M}.caption.context_length", Equals(77)),
            (f"{M}.caption.vocab", Equals("full")),
        ),
        kind="decision",
    ),
    CardEntry(
        "optimizer",
        "optimizer",
        "AdamW, β (0.9, 0.95), weight decay 0.05",
        "[P] AdamW; [B] MAE stand-in for β and decay",
        ((f"{T}.optim.betas", Equals([0.9, 0.95])), (f"{T}.optim.weight_decay", Equals(0.05))),
        kind="base",
        note="AdamW itself is fixed in nas/engine/optim.py",
    ),
    CardEntry(
        "batch_lr",
        "batch and learning rate",
        "batch 4096; base lr 1.5e-4 x batch / 256 = 2.4e-3; cosine decay to 0",
        "[B] MAE stand-in",
        (
            ("mug.loader.batch_size_per_gpu", Equals(512)),
            (f"{T}.launch.nproc_per_node", Equals(8)),
            (f"{T}.schedule.lr", Equals(2.4e-3)),
            (f"{T}.schedule.min_lr", Equals(0.0)),
        ),
        kind="base",
        note="4096 = 512 per process x 8 processes",
    ),
    CardEntry(
        "warmup",
        "warm-up",
        "40 epochs",
        "[B] MAE stand-in",
        (),
        note="the harness warms up in steps: 40 x (pairs / 4096) steps, which depends on how many CC3M "
        "pairs the download yields; profiles/paper/params.yaml states the count it assumes",
    ),
    CardEntry(
        "augmentation",
        "pretraining augmentation",
        "RandomResizedCrop 224, scale (0.2, 1), horizontal flip",
        "[B] MAE stand-in",
        (
            ("mug.transform.image_size", Equals(224)),
            (f"{M}.vision.img_size", Equals(224)),
            ("mug.transform.crop_scale", Equals([0.2, 1.0])),
            ("mug.transform.hflip", Equals(True)),
            ("mug.transform.randaugment", Equals(False)),
        ),
        kind="base",
    ),
    CardEntry(
        "transfer",
        "transfer evaluation",
        "ImageNet-1k fine-tuning, linear probing (LARS), ADE20K segmentation",
        "[P]",
        (),
        note="not reproduced: the harness probes frozen features per synthetic scene attribute "
        "(scikit-learn logistic regression), captions, and the fine-grained probes",
    ),
)

check_card(CARD)
