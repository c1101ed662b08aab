"""UTA's student: an EVA-02-style ViT (timm's `Eva`: 2-D RoPE + learned absolute positions, SwiGLU
MLP with sub-LN, q/v bias, final LN) that runs on the visible tokens only, and one Linear head from
its width to the teacher's CLIP space (MUG_UTA.md §2, architecture [C]).

Token dropping keeps position information attached to the kept indices: a kept patch gets its own
absolute position embedding before the gather, and RoPE is gathered with the same indices (timm's
`apply_keep_indices_nlc`, the path timm's own patch dropout uses). No [MASK] token enters the encoder,
so a visible token's output does not depend on the pixels of any dropped patch (tested).

`UTAPretrainer` is the engine's model for the `uta_pretrain` stage: it draws the visible set, runs
the frozen teacher (no gradients, always eval) and returns `{"uta": 1 - cos}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import apply_keep_indices_nlc
from timm.models.eva import Eva
from torch import nn

from nas.models.block_masking import MaskingConfig, sample_visible
from nas.models.clip_teacher import ClipTeacher, check_grid
from nas.models.registry import register_model
from nas.objectives.uta import alignment_loss, gather_tokens, resample_token_grid


@dataclass
class UTAStudentConfig:
    """The student ViT and its head. Defaults: the tiny CPU profile (`uta_tiny`)."""

    image_size: int = 64  # UTA [P]: 224
    patch_size: int = 8  # UTA [P]: 14 (pretraining card); B/16 in its model name
    embed_dim: int = 64  # EVA-02 B: 768
    depth: int = 3  # EVA-02 B: 12
    num_heads: int = 4  # EVA-02 B: 12
    mlp_ratio: float = 4 * 2 / 3  # EVA-02: SwiGLU hidden 4d * 2/3 (timm eva02_* configs)
    teacher_dim: int = 64  # the head's output width = the teacher's CLIP space; UTA-B [C]: 1024
    # The grid RoPE frequencies are defined on (EVA-02 B/16 CLIP: 16 x 16, timm); None = own grid.
    rope_ref_grid: int | None = None
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        check_grid(self.image_size, self.patch_size, "uta.student.model")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be a multiple of num_heads={self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError(
                f"head width {self.embed_dim // self.num_heads} must be a multiple of 4 (2-D RoPE splits it "
                "over 2 axes x sin/cos); change embed_dim or num_heads"
            )
        if self.depth < 1 or self.teacher_dim < 1:
            raise ValueError(f"depth and teacher_dim must be >= 1, got {self.depth}, {self.teacher_dim}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


# EVA-02 B/16 (timm `eva02_base_patch16_clip_224`) with UTA-B's 1024-d head [C].
UTA_BASE: dict[str, Any] = {
    "image_size": 224,
    "patch_size": 16,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "teacher_dim": 1024,
    "rope_ref_grid": 16,
}


class UTAStudent(nn.Module):
    """timm `Eva` trunk (no classifier) + the shared Linear head to the teacher's width."""

    def __init__(self, cfg: UTAStudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ref = None if cfg.rope_ref_grid is None else (cfg.rope_ref_grid, cfg.rope_ref_grid)
        self.vit = Eva(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_classes=0,
            global_pool="token",
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            qkv_bias=True,  # q and v biases (EvaAttention: k has none)
            qkv_fused=False,
            mlp_ratio=cfg.mlp_ratio,
            swiglu_mlp=True,
            scale_mlp=True,  # sub-LN inside the SwiGLU MLP
            use_rot_pos_emb=True,
            use_abs_pos_emb=True,
            ref_feat_shape=ref,
            drop_path_rate=cfg.drop_path_rate,
        )
        self.head = nn.Linear(cfg.embed_dim, cfg.teacher_dim)
        self.grid = tuple(self.vit.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{name}" for name in self.vit.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping (for layer-wise lr decay), with this module's name prefix."""
        return {
            "stem": r"^vit\.(?:cls_token|pos_embed|patch_embed)",
            "blocks": [(r"^vit\.blocks\.(\d+)", None), (r"^vit\.norm", (99999,))],
        }

    def forward_features(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm tokens [B, 1 + K, embed_dim] (CLS first) of the visible patches `keep` [B, K]
        (all N patches, in grid order, when None)."""
        vit = self.vit
        x = vit.patch_embed(images)  # [B, N, D]: each patch from its own pixels only
        pos = vit.pos_embed  # [1, 1 + N, D]: CLS position first
        x = x + pos[:, 1:]
        rope = vit.rope.get_embed()  # [N, rope_dim]
        if keep is not None:
            if keep.ndim != 2 or keep.shape[0] != x.shape[0]:
                raise ValueError(f"keep must be [B, K] with B={x.shape[0]}, got {tuple(keep.shape)}")
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            rope = apply_keep_indices_nlc(x, rope, keep).unsqueeze(1)  # [B, 1, K, rope_dim]
        cls = (vit.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = vit.norm_pre(vit.pos_drop(torch.cat([cls, x], dim=1)))
        for block in vit.blocks:
            x = block(x, rope=rope)
        return vit.norm(x)

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Projected tokens [B, 1 + K, teacher_dim]: what the loss compares with the teacher."""
        return self.head(self.forward_features(images, keep))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The zero-shot image embedding: the projected CLS token of the full image, L2-normalised."""
        return F.normalize(self.head(self.forward_features(images)[:, 0]), dim=-1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen features for linear probes: the final-norm CLS token, [B, embed_dim]."""
        return self.forward_features(images)[:, 0]


register_model(
    "uta_tiny",
    config=UTAStudentConfig,
    build=UTAStudent,
    family="uta",
    doc="EVA-02-style ViT, 64 px, patch 8 (8 x 8 grid), width 64, depth 3: the CPU profile's student.",
)
register_model(
    "uta_base",
    config=UTAStudentConfig,
    base=UTA_BASE,
    build=UTAStudent,
    family="uta",
    doc="EVA-02 B/16 (224 px, width 768, depth 12, 12 heads) with UTA-B's 1024-d head [C].",
)


class UTAPretrainer(nn.Module):
    """Engine model of `uta_pretrain`: `model(batch) -> {"uta": 1 - cos}`.

    The teacher is a frozen submodule (no parameter requires grad, so the optimizer never sees it;
    it stays in eval mode whatever `train()` is called with). Masks are drawn from the torch global
    RNG, which the engine checkpoints, so a resumed run draws the same masks.
    """

    def __init__(
        self,
        student: UTAStudent,
        teacher: ClipTeacher,
        masking: MaskingConfig,
        token_cache: dict[int, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if student.cfg.teacher_dim != teacher.embed_dim:
            raise ValueError(
                f"uta.student.model.overrides.teacher_dim={student.cfg.teacher_dim} does not match the "
                f"teacher's embedding width {teacher.embed_dim}"
            )
        self.student = student
        self.teacher = teacher.freeze()
        self.masking = masking
        # image id -> teacher tokens. Only for data whose image of an id never changes (no
        # augmentation): the frozen teacher then gives the same tokens every epoch, so they are
        # computed once per image (and shared by every run given the same dict). None: online.
        self.token_cache = token_cache

    @torch.no_grad()
    def teacher_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher CLS + patch tokens on the student's grid, [B, 1 + N_student, teacher_dim]."""
        if images.shape[-1] != self.teacher.image_size or images.shape[-2] != self.teacher.image_size:
            size = (self.teacher.image_size, self.teacher.image_size)
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        tokens = self.teacher.image_tokens(images)
        return resample_token_grid(tokens, self.teacher.grid, self.student.grid)

    def draw_visible(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return sample_visible(batch_size, self.student.grid, self.masking, device=device)

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """Teacher tokens of the batch's images: computed, or taken from the token cache by image id."""
        images = batch["image"]
        if self.token_cache is None:
            return self.teacher_tokens(images)
        ids = [int(i) for i in batch["image_id"]]
        first_row = {image_id: row for row, image_id in reversed(list(enumerate(ids)))}
        missing = [image_id for image_id in first_row if image_id not in self.token_cache]
        if missing:
            fresh = self.teacher_tokens(images[[first_row[image_id] for image_id in missing]])
            self.token_cache.update(zip(missing, fresh))
        return torch.stack([self.token_cache[image_id] for image_id in ids])

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        keep = self.draw_visible(images.shape[0], images.device)
        targets = gather_tokens(self.targets(batch), keep)
        return {"uta": alignment_loss(self.student(images, keep), targets)}


class UTAContrastive(nn.Module):
    """Engine model of the optional `uta_finetune` stage: CLIP-style contrastive fine-tuning of the
    student and the teacher's text tower, temperature fixed (MUG_UTA.md §2: 0.01), loss open_clip's
    symmetric `ClipLoss`. The teacher's vision tower and its learned temperature stay frozen."""

    def __init__(self, student: UTAStudent, text: ClipTeacher, temperature: float) -> None:
        super().__init__()
        import ignite.distributed as idist
        from open_clip.loss import ClipLoss

        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if student.cfg.teacher_dim != text.embed_dim:
            raise ValueError(
                f"the student's head width {student.cfg.teacher_dim} differs from the text tower's {text.embed_dim}"
            )
        self.student = student
        self.text = text.unfreeze_text()
        self.register_buffer("logit_scale", torch.tensor(1.0 / temperature), persistent=False)
        self.loss = ClipLoss(gather_with_grad=True, rank=idist.get_rank(), world_size=idist.get_world_size())

    def no_weight_decay(self) -> set[str]:
        return {f"student.{name}" for name in self.student.no_weight_decay()} | {
            "text.clip.positional_embedding"
        }

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer-wise lr decay over the student's blocks (timm/BEiT grouping); the head and the text
        tower are not matched, so timm gives them the top group's full learning rate."""
        return {
            "stem": r"^student\.vit\.(?:cls_token|pos_embed|patch_embed)",
            "blocks": [(r"^student\.vit\.blocks\.(\d+)", None), (r"^student\.vit\.norm", (99999,))],
        }

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = self.student.encode_image(batch["image"])
        text = self.text.encode_text(batch["input_ids"])
        return {"clip": self.loss(image, text, self.logit_scale)}
