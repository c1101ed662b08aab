"""The `train` block of every training section (`pretrain_stage*.train`, `finetune.train`, the MUG and UTA
runs): what the engine (nas/engine) needs to train. Pure data: nothing here imports torch; the engine
re-exports these from the modules that use them (`nas.engine.trainer.TrainConfig`,
`nas.engine.optim.OptimConfig`, `nas.engine.schedules.ScheduleConfig`, `nas.engine.launch.LaunchConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

__all__ = ["LaunchConfig", "OptimConfig", "ScheduleConfig", "TrainConfig"]


@dataclass
class OptimConfig:
    """AdamW hyperparameters (the learning rate itself belongs to the schedule)."""

    weight_decay: float = 0.02  # NAS paper "Experiment setup": 0.02
    betas: tuple[float, float] = (0.9, 0.999)  # torch/timm AdamW defaults, as in ALBEF
    eps: float = 1e-8  # timm `opt_eps` default, as in ALBEF
    # torch >= 2.4 has fused AdamW kernels for CPU and CUDA parameters (one kernel over all tensors
    # instead of ~10 elementwise passes): measured on 2 cores, the optimizer phase of the tiny ALBEF
    # step (10M parameters) goes from 96 to 7.5 ms. Same algorithm; the last bits of an update may
    # differ from the foreach path. auto = fused when every parameter is on one CPU or CUDA device.
    fused_adamw: Literal["auto", "true", "false"] = "auto"
    # "lamb" (UTA's contrastive fine-tuning [P]) and layer-wise lr decay (BEiT-style fine-tuning) come
    # from timm's optimizer factory: groups get an `lr_scale`, which the engine's schedule multiplies in.
    name: Literal["adamw", "lamb"] = "adamw"
    layer_decay: float | None = None

    def __post_init__(self) -> None:
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1] or null, got {self.layer_decay}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule. Defaults are the tiny CPU profile; paper values in the comments."""

    lr: float = 1e-4  # peak; NAS paper "Experiment setup": 1e-4
    min_lr: float = 1e-5  # cosine floor; NAS paper: 1e-5 (fine-tuning in [A]: 1e-6)
    warmup_steps: int = 100  # NAS paper: 1,000 iterations ([A]: 2,000, a staircase; NAS_METHOD.md §6)
    # Where the linear warm-up starts. 0 as the paper's "warm-up" suggests; [A]'s fine-tuning uses a
    # flat warm-up (warmup_start_lr = lr), ALBEF's pretraining starts at 1e-5.
    warmup_start_lr: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.warmup_start_lr <= self.lr:
            raise ValueError(f"warmup_start_lr must be in [0, lr={self.lr}], got {self.warmup_start_lr}")


@dataclass
class LaunchConfig:
    """How many processes, which collective backend, and the DDP option that depends on the model."""

    nproc_per_node: int = 1  # NAS paper "Hardware": 8 GPUs (8 x A800), 64 images each
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with CUDA, else gloo
    # DDP must be told when some parameters get no gradient in a step (e.g. a frozen branch that
    # still requires grad); costs an extra graph traversal per step, so off by default.
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")


@dataclass
class TrainConfig:
    """Everything the engine needs. Defaults are the tiny CPU profile; paper values in the comments.

    What a model needs per step besides its batch (ALBEF's distillation weight α) is not the engine's:
    a recipe hands the engine a `step_inputs` hook (ALBEF's from the stage's `distillation` section,
    nas.config.distillation)."""

    # Keys that left this block: an old params file naming one is refused with this hint.
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "alpha": "ALBEF's distillation weight is the stage's `distillation.alpha` now",
        "alpha_ramp": "the α ramp is the stage's `distillation.ramp` now",
    }

    epochs: int = 1  # NAS paper "Experiment setup": stage 1 29 epochs, stage 2 1 epoch
    max_steps_per_epoch: int | None = None  # None = the whole loader; tiny runs cut epochs short
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    grad_clip_norm: float | None = None  # ALBEF does not clip
    # bf16 = autocast (weights and optimizer stay fp32); auto = bf16 where the device computes it natively
    # (CUDA with bf16, a CPU with AVX-512-BF16 or AMX), fp32 elsewhere: `resolve_precision`. Default auto:
    # 1.6-2x faster steps on such CPUs (README "Performance"). The precision a run resolved to is part of
    # its identity (nas.engine.run), so a run never resumes under the other precision; bf16 and fp32
    # numbers differ, so results are bit-identical only between machines that resolve alike.
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    compile: bool = False  # torch.compile the model (first compile takes ~70 s on CPU)
    checkpoint_every_epochs: int = 1  # ALBEF saves after every epoch
    keep_checkpoints: int = 2  # epoch checkpoints kept while the run trains (a damaged newest falls back)
    # True: once the run completes, last.pt is all that is kept (the epoch checkpoints are deleted; a rerun
    # of the finished run resumes from last.pt, with nothing left to train). The pipeline's stages set it.
    prune_when_done: bool = False
    # What last.pt keeps: "full" (everything: a later stage can take over the optimizer, as NAS stage 2
    # does from stage 1) or "weights" (no optimizer moments: half the bytes; the finished run can be read,
    # scored and initialise another stage's model, but not trained further).
    final_state: Literal["full", "weights"] = "full"
    log_every_steps: int = 10  # TensorBoard scalars
    progress_bar: bool = True
    image_key: str = "image"  # batch entry whose leading dimension counts the images
    seed: int = 42  # ALBEF's default seed; each rank uses seed + rank (ALBEF Pretrain.py)
    # torch.use_deterministic_algorithms for the run (kernels with a deterministic form use it, the
    # few without one warn). Measured on 2 CPU threads: reruns bit-identical, step time within noise
    # (benchmarks/reproducibility.py). False trades that for whatever the backend finds fastest.
    deterministic: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {self.max_steps_per_epoch}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None, got {self.grad_clip_norm}")
        if self.checkpoint_every_epochs < 1:
            raise ValueError(f"checkpoint_every_epochs must be >= 1, got {self.checkpoint_every_epochs}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.log_every_steps < 1:
            raise ValueError(f"log_every_steps must be >= 1, got {self.log_every_steps}")
        if self.final_state not in ("full", "weights"):
            raise ValueError(f"final_state must be 'full' or 'weights', got {self.final_state!r}")
