"""UTA's `uta:` params section, typed, and its paper card for `nas audit` (MUG_UTA.md §2).

The section drives the UTA stages (`nas.recipes.uta`): the teacher (a tiny CLIP trained here, or an
open_clip EVA-CLIP checkpoint from a local path), the student (model spec, loader overrides, one
TrainConfig for every run: equal steps across arms), the masking and its ablation arms as data, the
seeds, the optional contrastive fine-tuning (its optimizer, LAMB with layer-wise lr decay, in
`uta.finetune.train.optim`), and the evaluation knobs.

The card is in the format of nas/config/card.py. Sources: [P] the UTA paper (Liu et al.,
TMLR 2024) as MUG_UTA.md §2 holds it; [C] UTA's released inference code; [B] the methods it builds on
(BEiT/EVA-02 block-wise masking); [D] this project's decisions. Paths are read from
`uta_view(run_config)`: the section with every default filled in, `uta.student.model.overrides`
being the student as the registry builds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from nas.config.base import ConfigError, from_dict, merge, to_dict
from nas.config.card import CardEntry, Equals, NotNull, check_card
from nas.config.stages import ModelSpec
from nas.config.train import TrainConfig
from nas.evaluation.linear_probe import LinearProbeConfig
from nas.models.block_masking import MaskingConfig
from nas.models.clip_teacher import TinyClipConfig
from nas.reporting.recipe_findings import FindingsConfig

# ---- the params section ---------------------------------------------------------------------------


def _default_arms() -> dict[str, dict[str, Any]]:
    # MUG_UTA.md §2 "What the CPU-scale reproduction must show" 3: none / random / block-wise /
    # reversed block-wise at equal steps; each arm is an overlay of `uta.masking`. The claims compare
    # these two (every seed); random and block-wise are context (`_default_context_arms`).
    return {"none": {"scheme": "none"}, "reversed_blockwise": {"scheme": "reversed_blockwise"}}


def _default_context_arms() -> dict[str, dict[str, Any]]:
    return {"random": {"scheme": "random"}, "blockwise": {"scheme": "blockwise"}}


@dataclass
class TeacherSection:
    """`uta.teacher`: train the tiny CLIP (default) or load an EVA-CLIP checkpoint (paper scale)."""

    open_clip_model: str | None = None  # paper: an open_clip EVA-CLIP config, e.g. "EVA02-E-14"
    checkpoint: str | None = None  # paper: local path of that model's open_clip weights
    model: TinyClipConfig = field(default_factory=TinyClipConfig)  # the tiny CLIP trained when no checkpoint
    loader: dict[str, Any] = field(default_factory=dict)  # over the `loader` section
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if (self.open_clip_model is None) != (self.checkpoint is None):
            raise ValueError(
                "open_clip_model and checkpoint go together: both null (train the tiny CLIP) or both set "
                f"(load an EVA-CLIP), got open_clip_model={self.open_clip_model!r}, checkpoint={self.checkpoint!r}"
            )

    @property
    def pretrained(self) -> bool:
        return self.checkpoint is not None


@dataclass
class StudentSection:
    """`uta.student`: the EVA-02-style ViT and how every arm x seed run trains it."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec(name="uta_tiny"))
    train_file: str | None = None  # images under data.root; None: data.train_file (paper: ImageNet-21K)
    loader: dict[str, Any] = field(default_factory=dict)  # over the `loader` section
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class FinetuneSection:
    """`uta.finetune`: optional contrastive fine-tuning of student + teacher text tower [P]."""

    enabled: bool = True
    train_file: str | None = None  # pairs under data.root; None: data.train_file (paper: DataComp-1B)
    temperature: float = 0.01  # [P]: fixed at 0.01
    loader: dict[str, Any] = field(default_factory=dict)
    # The optimizer is a param like any other: the paper's is LAMB with layer-wise lr decay 0.75 (base),
    # 0.85 (large): `train.optim: {name: lamb, layer_decay: 0.75}` (timm's optimizer factory).
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass
class EvaluationSection:
    """`uta.evaluation`: what `uta_evaluate` measures on the teacher and every run."""

    split: str = "test"  # held-out split: zero-shot, probe test rows, 1 - cos, heatmaps
    batch_size: int = 200
    probe_train_images: int | None = 600  # first N training images fit the probes (None: all)
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    # Probe features: `probe_feature` for count, colour, shape, size; `spatial_probe_feature` for
    # relation, hpos, vpos (linear_probe.pooled_features; "grid" keeps position, pooled to probe_grid^2).
    probe_feature: Literal["mean", "cls", "grid"] = "cls"
    spatial_probe_feature: Literal["mean", "cls", "grid"] = "grid"
    probe_grid: int = 2
    untrained: bool = True  # the untrained student of every seed: zero-shot, probes, 1 - cos (the baseline)
    # A student's zero-shot is compared with the teacher's only once it is aligned: held-out CLS
    # 1 - cos at most this (a run above it is reported as unaligned and left out of that claim).
    alignment_threshold: float = 0.1
    mask_seed: int = 0  # one fixed masking draw for the held-out masked-view 1 - cos
    visibility_draws: int = 2000  # masks drawn for the P(visible) maps (spec §2: 2,000 draws)
    example_masks: int = 3  # example masks per scheme in the figure
    fine_grained: bool = True  # the ARO / Winoground / VALSE / SugarCrepe probes
    benchmarks: tuple[str, ...] = ()  # empty = every probe benchmark
    # Verdicts (nas/reporting/recipe_findings.py); margin: "approaches the teacher" = the interval of
    # student - teacher lies above -margin points ("within a few points", MUG_UTA.md §2).
    findings: FindingsConfig = field(default_factory=lambda: FindingsConfig(margin=5.0))

    def __post_init__(self) -> None:
        if self.probe_grid < 1:
            raise ValueError(f"probe_grid must be >= 1, got {self.probe_grid}")
        if not self.alignment_threshold > 0:
            raise ValueError(f"alignment_threshold must be > 0, got {self.alignment_threshold}")
        if self.split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {self.split!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.probe_train_images is not None and self.probe_train_images < 2:
            raise ValueError(f"probe_train_images must be >= 2 or null, got {self.probe_train_images}")
        if self.visibility_draws < 1 or self.example_masks < 0:
            raise ValueError("visibility_draws must be >= 1 and example_masks >= 0")


@dataclass
class UTASection:
    """The `uta:` section of params.yaml (see the module docstring)."""

    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    # The arms the claims compare: each trains every seed of `seeds` (dvc.yaml `uta_pretrain`).
    arms: dict[str, dict[str, Any]] = field(default_factory=_default_arms)
    main_arm: str = "reversed_blockwise"  # UTA's own masking: the row the fine-grained tables show
    seeds: tuple[int, ...] = (0, 1, 2)
    # Arms shown for context, not judged (overlays of `masking`, as `arms`; a name is in one of the two):
    # each trains the seeds of `context_seeds` (dvc.yaml `uta_context`); empty: none, the figure still
    # shows their masks. Any distinct non-negative integers, not necessarily among `seeds` (no claim
    # pairs a context run with another run; a seed of `seeds` starts it from that seed's initial
    # student). Every trained arm trains the same steps.
    context_arms: dict[str, dict[str, Any]] = field(default_factory=_default_context_arms)
    context_seeds: tuple[int, ...] = ()
    # Intra-op threads of the UTA stages (None: torch's default, one per core). The tiny models gain
    # little from a second thread and slow down several-fold when the cores are shared.
    torch_threads: int | None = None
    # Decode every training image once (evaluation transform, no augmentation) and keep it in
    # memory for all runs: on the CPU profile decoding + RandAugment costs more than a student step.
    # Paper scale: false (ImageNet-21K does not fit in memory; data.transform's augmentation applies).
    memoize_images: bool = True
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("arms must name at least one masking arm")
        for key, arms in (("arms", self.arms), ("context_arms", self.context_arms)):
            for name in arms:
                if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                    raise ValueError(f"{key}: {name!r} must be letters, digits and '_' (it names folders)")
                self._masking(key, name)  # every arm must be a valid masking config
        both = sorted(set(self.arms) & set(self.context_arms))
        if both:
            raise ValueError(
                f"context_arms: {both} also in arms; an arm is compared (uta.arms, every seed) or "
                "context (uta.context_arms, uta.context_seeds), not both"
            )
        if self.main_arm in self.context_arms:
            raise ValueError(
                f"main_arm {self.main_arm!r} must train every seed: it is in context_arms, not arms"
            )
        if self.main_arm not in self.arms:
            raise ValueError(f"main_arm {self.main_arm!r} is not among arms {sorted(self.arms)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        if len(set(self.context_seeds)) != len(self.context_seeds) or any(s < 0 for s in self.context_seeds):
            raise ValueError(
                f"context_seeds must be a list of distinct non-negative integers ([]: no context run), "
                f"got {list(self.context_seeds)}"
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or null, got {self.torch_threads}")

    @property
    def all_arms(self) -> list[str]:
        """Every masking scheme shown (the figure's masks): `arms`, then `context_arms`."""
        return [*self.arms, *self.context_arms]

    def arm_seeds(self, arm: str) -> tuple[int, ...]:
        """The seeds `arm` trains: `seeds` for an arm of `arms`, `context_seeds` for a context arm."""
        return self.context_seeds if arm in self.context_arms else self.seeds

    @property
    def trained_arms(self) -> list[str]:
        """The arms with at least one trained seed: `arms`, then the context arms when `context_seeds`."""
        return [arm for arm in self.all_arms if self.arm_seeds(arm)]

    @property
    def untrained_arms(self) -> list[str]:
        """The context arms shown by their masks only (`context_seeds` empty)."""
        return [arm for arm in self.all_arms if not self.arm_seeds(arm)]

    def arm_masking(self, arm: str) -> MaskingConfig:
        """`masking` with the arm's overlay (of `arms` or `context_arms`), validated (a ratio outside
        (0, 1) names the arm's param)."""
        return self._masking("context_arms" if arm in self.context_arms else "arms", arm)

    def _masking(self, key: str, arm: str) -> MaskingConfig:
        overlay = getattr(self, key)[arm]
        if not isinstance(overlay, dict):
            raise ConfigError(f"uta.{key}.{arm}: expected a mapping of masking keys, got {overlay!r}")
        return from_dict(MaskingConfig, merge(to_dict(self.masking), overlay), f"uta.{key}.{arm}")


def read_section(resolved: dict[str, Any]) -> UTASection:
    if "uta" not in resolved:
        raise ConfigError("params has no section 'uta'")
    return from_dict(UTASection, resolved["uta"], "uta")


def effective_student(spec: ModelSpec) -> dict[str, Any]:
    """The student config `create_model(spec.name, **spec.overrides)` builds, as a dict (the registry's
    own resolution: base dict of the variant, overrides on top, typed; nothing is built)."""
    from nas.models.registry import list_models, model_entry

    students = list_models("uta")
    if spec.name not in students:
        raise ConfigError(f"uta.student.model.name: {spec.name!r} is not a UTA student ({students})")
    return to_dict(model_entry(spec.name).resolve(spec.overrides, "uta.student.model.overrides"))


def check_section(name: str, section: UTASection, sections: Any) -> None:
    """The schema check of the `uta` section (nas.config.schema `Section(check=...)`): the student against
    its registered config, each part's loader over the `loader` section."""
    from nas.data.loader import LoaderConfig

    effective_student(section.student.model)
    loader = to_dict(sections.get("loader") or LoaderConfig())
    for part in ("teacher", "student", "finetune"):
        from_dict(LoaderConfig, merge(loader, getattr(section, part).loader), f"{name}.{part}.loader")


def effective_loader(resolved: dict[str, Any], overrides: dict[str, Any], where: str) -> Any:
    """The `loader` section with a UTA part's overrides on top, typed."""
    from nas.data.loader import LoaderConfig

    return from_dict(LoaderConfig, merge(resolved.get("loader", {}), overrides), where)


def uta_view(run_config: dict[str, Any]) -> dict[str, Any]:
    """The run config as the card reads it: `uta` with defaults, effective loaders and student."""
    from nas.config.data import DataConfig

    section = read_section(run_config)
    view = dict(run_config)
    view["data"] = to_dict(from_dict(DataConfig, run_config.get("data", {}), "data"))
    uta = to_dict(section)
    for part in ("teacher", "student", "finetune"):
        overrides = getattr(section, part).loader
        uta[part]["loader"] = to_dict(effective_loader(run_config, overrides, f"uta.{part}.loader"))
    uta["student"]["model"] = {
        "name": section.student.model.name,
        "overrides": effective_student(section.student.model),
    }
    view["uta"] = uta
    return view


# ---- the card -------------------------------------------------------------------------------------

S = "uta.student"
M = f"{S}.model.overrides"
T = f"{S}.train"
F = "uta.finetune"

CARD: tuple[CardEntry, ...] = (
    CardEntry(
        "idea",
        "objective",
        "unmasked tokens of a ViT aligned to the frozen CLIP vision encoder's tokens; no [MASK] tokens",
        "[P]; [D] loss 1 - cos over CLS + visible patches, fp32, one shared head (MUG_UTA.md §2)",
        (),
        note="structure, not a param: nas/models/uta.py (UTAPretrainer), nas/objectives/uta.py; tested "
        "in tests/uta (hand-checked loss values, dropped pixels never reach a visible token)",
    ),
    CardEntry(
        "pretraining_data",
        "pretraining data",
        "ImageNet-21K images",
        "[P]",
        (("data.source", Equals("files")), (f"{S}.train_file", NotNull("an ImageNet-21K image list"))),
    ),
    CardEntry(
        "resolution",
        "resolution and patch size",
        "224 x 224, patch 14",
        "[P]",
        ((f"{M}.image_size", Equals(224)), (f"{M}.patch_size", Equals(14))),
    ),
    CardEntry(
        "student",
        "student architecture",
        "EVA-02-style ViT-B (768 wide, 12 blocks, 12 heads; SwiGLU with sub-LN, 2-D RoPE + absolute "
        "positions), CLS -> Linear to the 1024-d CLIP space",
        "[C]",
        (
            (f"{S}.model.name", Equals("uta_base")),
            (f"{M}.embed_dim", Equals(768)),
            (f"{M}.depth", Equals(12)),
            (f"{M}.num_heads", Equals(12)),
            (f"{M}.teacher_dim", Equals(1024)),
        ),
    ),
    CardEntry(
        "epochs_batch",
        "epochs, batch",
        "150 epochs, batch 4096",
        "[P]",
        (
            (f"{T}.epochs", Equals(150)),
            (f"{T}.max_steps_per_epoch", Equals(None)),
            (f"{S}.loader.batch_size_per_gpu", Equals(512)),
            (f"{T}.launch.nproc_per_node", Equals(8)),
        ),
        note="4096 = 512 per process x 8 processes [D split]",
    ),
    CardEntry(
        "optimizer",
        "optimizer",
        "AdamW, weight decay 0.05",
        "[P]",
        ((f"{T}.optim.weight_decay", Equals(0.05)),),
        note="AdamW itself is fixed in nas/engine/optim.py; betas are not stated (torch defaults kept)",
    ),
    CardEntry(
        "lr_schedule",
        "lr schedule",
        "linear warm-up to 1.5e-3 over 1 epoch, cosine to 1e-5",
        "[P]",
        (
            (f"{T}.schedule.lr", Equals(1.5e-3)),
            (f"{T}.schedule.min_lr", Equals(1e-5)),
            (f"{T}.schedule.warmup_steps", Equals(3466)),
            (f"{T}.schedule.warmup_start_lr", Equals(0.0)),
        ),
        note="1 epoch = 14,197,122 ImageNet-21K images / 4096 = 3,466 steps (the harness warms up in steps)",
    ),
    CardEntry(
        "masking",
        "masking",
        "reversed block-wise; mask ratio 0.4 (base), 0.5 (large)",
        "[P]",
        (("uta.masking.scheme", Equals("reversed_blockwise")), ("uta.masking.ratio", Equals(0.4))),
    ),
    CardEntry(
        "block_generator",
        "block-wise generator",
        "blocks of >= 16 tokens, aspect ratio in [0.3, 1/0.3], 10 attempts per block",
        "[B] BEiT / EVA-02 MaskingGenerator",
        (("uta.masking.min_patches", Equals(16)), ("uta.masking.min_aspect", Equals(0.3))),
        kind="base",
    ),
    CardEntry(
        "teacher",
        "teacher",
        "a frozen open_clip EVA-CLIP (1024-d; text tower 1024 wide, 24 layers, 16 heads, 77 tokens)",
        "[C] text tower; [D] EVA02-E-14, the open_clip EVA-CLIP with that text tower",
        (
            ("uta.teacher.open_clip_model", Equals("EVA02-E-14")),
            ("uta.teacher.checkpoint", NotNull("a local path to the EVA02-E-14 open_clip weights")),
        ),
        kind="decision",
    ),
    CardEntry(
        "ft_data",
        "contrastive fine-tuning data",
        "DataComp-1B; init from the pretrained ViT and the CLIP text encoder",
        "[P]",
        ((f"{F}.enabled", Equals(True)), (f"{F}.train_file", NotNull("a DataComp-style pair list"))),
        kind="switch",
    ),
    CardEntry(
        "ft_recipe",
        "contrastive fine-tuning recipe",
        "temperature fixed at 0.01; LAMB, peak lr 2e-4 (base); layer decay 0.75 (base); weight decay "
        "0.05; cosine to 0",
        "[P]",
        (
            (f"{F}.temperature", Equals(0.01)),
            (f"{F}.train.schedule.lr", Equals(2e-4)),
            (f"{F}.train.schedule.min_lr", Equals(0.0)),
            (f"{F}.train.optim.name", Equals("lamb")),
            (f"{F}.train.optim.layer_decay", Equals(0.75)),
            (f"{F}.train.optim.weight_decay", Equals(0.05)),
        ),
        note="LAMB and the layer decay come from timm's optimizer factory (create_optimizer_v2)",
    ),
    CardEntry(
        "ft_batch",
        "contrastive fine-tuning batch",
        "49,152 in total",
        "[P]",
        ((f"{F}.loader.batch_size_per_gpu", Equals(6144)), (f"{F}.train.launch.nproc_per_node", Equals(8))),
        note="49,152 = 6,144 per process x 8 processes [D split]",
    ),
    CardEntry(
        "downstream",
        "LLaVA, COCO / LVIS detection, ADE20K segmentation",
        "see MUG_UTA.md §2 (LLaVA stages 1-2, COCO, LVIS, ADE20K UperNet)",
        "[P]",
        (),
        note="not reproduced: the harness evaluates zero-shot attributes, linear probes and the "
        "fine-grained probes on the synthetic set",
    ),
    CardEntry(
        "headline",
        "ImageNet-1k zero-shot top-1",
        "UTA-B/16 77.0, UTA-L/14-336 81.4, UTA-g/14-336 83.9",
        "[C]",
        (),
        note="a result, not a setting; the CPU profile reports zero-shot attribute accuracy instead",
    ),
)

check_card(CARD)
