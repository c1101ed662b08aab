"""ALBEF (Li et al., NeurIPS 2021): the base model NAS builds on (NAS_METHOD §2).

One forward pass in training mode does what ALBEF's does:
1. update the momentum model, `θ_m ← m·θ_m + (1 − m)·θ`;
2. ITC between the [CLS] projections, against batch + queue, with momentum-distilled targets; the
   momentum features of all ranks then enter the queues;
3. ITM on the fused [CLS] over B positives and 2B in-batch hard negatives;
4. MLM through text + fusion encoder on a masked copy of the text, head on masked positions only,
   distilled with the momentum model's logits.

It returns the weighted loss terms `{"itc", "itm", "mlm"}`; the engine sums them.

Extension points for NAS (§3–4), which change ITM only: `itm_image_tokens` (the visual dictionary
replaces the patch tokens ITM sees; `itm_image_encoding` is its training-step form, which may also hand
state to the next hook) and `extra_itm_blocks` (NVA adds a block of negatives).

Text-augmented fine-tuning (NTA, §5): a batch that carries `neg_input_ids` / `neg_attention_mask` (one
hard-negative caption per pair, nas.data.finetune_data) adds those captions (a) to ITC as extra negative
texts on the image→text side (2B texts + queue; text→image unchanged) and (b) to ITM as a block
`(T_nta, I)` of label 0, after the other rows.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nas.distributed import all_gather_cat
from nas.models.registry import register_model
from nas.models.scoring import score_pairs
from nas.models.text import TextConfig, TextEncoder
from nas.models.vision import VisionConfig, build_vision_encoder, resize_position_embeddings
from nas.objectives.itc import (
    TEMP_INIT,
    TEMP_MAX,
    TEMP_MIN,
    ContrastiveLoss,
    itc_with_negative_texts,
)
from nas.objectives.itm import (
    MATCH,
    NO_MATCH,
    HardNegativeSchedule,
    ITMBlock,
    concat_blocks,
    hard_negative_blocks,
    itm_loss,
    sample_negatives,
)
from nas.objectives.mlm import IGNORE_INDEX, MASK_PROBABILITY, mask_tokens, mlm_loss

_BATCH_KEYS = ("image", "input_ids", "attention_mask", "image_id")
_NTA_KEYS = ("neg_input_ids", "neg_attention_mask")  # NTA fine-tuning batches (nas.data.finetune_data)


@dataclass
class ALBEFConfig:
    """ALBEF. Defaults: the tiny CPU profile; paper values in comments ([P] paper, [B] ALBEF)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256  # ITC projection width [B]
    temp: float = TEMP_INIT  # initial ITC temperature, 0.07 [B]
    queue_size: int = 1024  # paper: 65,536 [P]
    momentum: float = 0.995  # momentum-model coefficient [P]
    mlm_probability: float = MASK_PROBABILITY  # 0.15 [B]
    itc_weight: float = 1.0  # total loss L_itc + L_itm + L_mlm [B]
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    distill: bool = True  # momentum distillation in ITC and MLM (α > 0) [B]
    # [D] NAS_METHOD §6: [A] left the queue update commented out in pretraining; false reproduces that.
    queue_update: bool = True
    # ITC positives: every sample with the same image_id (ALBEF's retrieval fine-tuning) instead of
    # only the diagonal (ALBEF pretraining, where pairs are unique).
    itc_match_image_ids: bool = False
    # [D] ITM's in-batch negatives: uniform first, then ALBEF's hard ones (nas.objectives.itm). Default: ALBEF.
    itm_negatives: HardNegativeSchedule = field(default_factory=HardNegativeSchedule)

    def __post_init__(self) -> None:
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if self.queue_size <= 0:
            raise ValueError(f"queue_size must be positive, got {self.queue_size}")
        if not TEMP_MIN <= self.temp <= TEMP_MAX:
            raise ValueError(f"temp must be in [{TEMP_MIN}, {TEMP_MAX}], got {self.temp}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {self.mlm_probability}")
        for name in ("itc_weight", "itm_weight", "mlm_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.text.num_fusion_layers == 0 and (self.itm_weight > 0 or self.mlm_weight > 0):
            raise ValueError("text.num_fusion_layers must be >= 1 when ITM or MLM is on")


class ITMContext(NamedTuple):
    """What `extra_itm_blocks` may use to build extra negatives (NVA needs all of it, §4)."""

    image_tokens: torch.Tensor  # [B, 1 + L, D] raw ViT output (with gradient)
    itm_image_tokens: torch.Tensor  # [B, 1 + L, D] what `itm_image_tokens` returned
    text_tokens: torch.Tensor  # [B, T, H] text-encoder output ([CLS] = T_cls, unprojected)
    attention_mask: torch.Tensor  # [B, T]
    image_ids: torch.Tensor  # [B]
    generator: torch.Generator | None
    # What `itm_image_encoding` computed besides the tokens (NAS: the VD output, so the VD runs once).
    itm_image_state: Any = None


class ALBEF(nn.Module):
    """Image encoder, text + fusion encoder, ITC/ITM/MLM heads, their momentum copies and the queues."""

    def __init__(self, cfg: ALBEFConfig, *, gather: Callable[[torch.Tensor], torch.Tensor] = all_gather_cat):
        super().__init__()
        self.cfg = cfg
        vision_width, text_width = cfg.vision.embed_dim, cfg.text.hidden_size
        self.visual_encoder = build_vision_encoder(cfg.vision)
        self.text_encoder = TextEncoder(cfg.text, image_width=vision_width)
        self.vision_proj = nn.Linear(vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(text_width, cfg.embed_dim)
        self.itm_head = nn.Linear(text_width, 2)
        self.itc = ContrastiveLoss(
            cfg.embed_dim, cfg.queue_size, temp=cfg.temp, match_ids=cfg.itc_match_image_ids, gather=gather
        )
        # The momentum model: copies (after pretrained weights are loaded) that take no gradient.
        # They are submodules, so state_dict and checkpoints hold them.
        self.visual_encoder_m = _frozen_copy(self.visual_encoder)
        self.text_encoder_m = _frozen_copy(self.text_encoder)
        self.vision_proj_m = _frozen_copy(self.vision_proj)
        self.text_proj_m = _frozen_copy(self.text_proj)
        # Training steps taken, over every stage (it travels with the weights): drives the ITM negative
        # schedule and seeds NAS's NVA draws.
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.long))

    # ---- evaluation API ------------------------------------------------------------------------

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(image_tokens [B, 1 + L, D], image_feat [B, E] L2-normalised)`."""
        tokens = self.visual_encoder.forward_features(image)
        return tokens, F.normalize(self.vision_proj(tokens[:, 0]), dim=-1)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(text_tokens [B, T, H], text_feat [B, E] L2-normalised)`."""
        tokens = self.text_encoder.encode(input_ids, attention_mask)
        return tokens, F.normalize(self.text_proj(tokens[:, 0]), dim=-1)

    def itm_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """The image tokens ITM uses. Identity here; NAS returns `[V_cls ; VD tokens]` (§3)."""
        return image_tokens

    def itm_image_encoding(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The training step's ITM image tokens and whatever `extra_itm_blocks` needs from the same
        computation (passed on as `ITMContext.itm_image_state`; NAS: the VD output). Default:
        `(itm_image_tokens(image_tokens), None)`."""
        return self.itm_image_tokens(image_tokens), None

    def fused_itm_logits(
        self, itm_image_tokens: torch.Tensor, text_tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """`[B, 2]` ITM logits of row-aligned pairs whose image tokens already passed `itm_image_tokens`."""
        fused = self.text_encoder.fuse(text_tokens, attention_mask, itm_image_tokens)
        return self.itm_head(fused[:, 0])

    def itm_logits(
        self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """`[B, 2]` ITM logits (column 1 = match) of row-aligned pairs, from `encode_image` /
        `encode_text` outputs. Applies `itm_image_tokens`, so NAS scores with its VD tokens."""
        return self.fused_itm_logits(self.itm_image_tokens(image_tokens), text_tokens, attention_mask)

    def score(self, images: torch.Tensor, texts: Mapping[str, torch.Tensor], *, batch_size: int = 64):
        """ITM match probability and ITC cosine of every (image, text) pair: `PairScores(itm, itc)`,
        float64 `[n_images, n_texts]` each, in eval mode under no_grad, exactly the evaluation scorers'
        values. `images`: preprocessed `[N, 3, H, W]`; `texts`: the tokenizer's output
        (`nas.create_model_and_transforms`). See `nas.models.scoring.score_pairs`."""
        return score_pairs(self, images, texts, batch_size=batch_size)

    # ---- training --------------------------------------------------------------------------------

    def forward(
        self, batch: Mapping[str, Any], *, alpha: float, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Weighted loss terms. `alpha`: distillation weight α (in training, the step input the stage's
        `distillation` section gives the engine: nas.config.distillation); `generator`: for MLM masking
        and ITM negative sampling (torch's global RNG when None). Terms with weight 0 are left out."""
        image, input_ids, attention_mask, image_ids = _unpack(batch)
        negative_text = _unpack_negative_text(batch, input_ids.shape[0])
        cfg = self.cfg
        alpha = float(alpha) if cfg.distill else 0.0
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")

        image_tokens, image_feat = self.encode_image(image)
        text_tokens, text_feat = self.encode_text(input_ids, attention_mask)
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            image_tokens_m = self.visual_encoder_m.forward_features(image)
            image_feat_m = F.normalize(self.vision_proj_m(image_tokens_m[:, 0]), dim=-1)
            text_tokens_m = self.text_encoder_m.encode(input_ids, attention_mask)
            text_feat_m = F.normalize(self.text_proj_m(text_tokens_m[:, 0]), dim=-1)
            negative_feat_m = None
            if negative_text is not None:
                negative_tokens_m = self.text_encoder_m.encode(*negative_text)
                negative_feat_m = F.normalize(self.text_proj_m(negative_tokens_m[:, 0]), dim=-1)

        ids = image_ids if cfg.itc_match_image_ids else None
        # ITC always runs: ITM samples its hard negatives from these similarities.
        if negative_feat_m is None:
            itc = self.itc(image_feat, text_feat, image_feat_m, text_feat_m, alpha=alpha, ids=ids)
        else:
            itc = itc_with_negative_texts(
                self.itc,
                image_feat,
                text_feat,
                image_feat_m,
                text_feat_m,
                negative_feat_m,
                alpha=alpha,
                ids=ids,
            )
        if self.training and cfg.queue_update:
            self.itc.enqueue(image_feat_m, text_feat_m, ids)

        losses: dict[str, torch.Tensor] = {}
        if cfg.itc_weight > 0:
            losses["itc"] = cfg.itc_weight * itc.loss
        if cfg.itm_weight > 0:
            batch_size = image.shape[0]
            negatives = sample_negatives(
                itc.sim_i2t[:, :batch_size].detach(),
                itc.sim_t2i[:, :batch_size].detach(),
                image_ids,
                generator,
                hard_fraction=cfg.itm_negatives.hard_fraction(int(self.training_steps)),
            )
            loss = self._itm_loss(
                image_tokens, text_tokens, attention_mask, image_ids, negatives, generator, negative_text
            )
            losses["itm"] = cfg.itm_weight * loss
        if cfg.mlm_weight > 0:
            loss = self._mlm_loss(image_tokens, image_tokens_m, input_ids, attention_mask, alpha, generator)
            losses["mlm"] = cfg.mlm_weight * loss
        if self.training:
            # After the step: this step's draws used the count of steps taken before it.
            self.training_steps += 1
        return losses

    def _itm_loss(
        self,
        image_tokens: torch.Tensor,
        text_tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        image_ids: torch.Tensor,
        negatives: tuple[torch.Tensor, torch.Tensor],
        generator: torch.Generator | None,
        negative_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # Computed once per step; the in-batch negatives index these tokens, they are not recomputed.
        itm_tokens, itm_state = self.itm_image_encoding(image_tokens)
        context = ITMContext(
            image_tokens, itm_tokens, text_tokens, attention_mask, image_ids, generator, itm_state
        )
        # Row order as in [A]: positives, method-specific negatives (NVA), then ALBEF's hard negatives.
        blocks = [
            ITMBlock(itm_tokens, text_tokens, attention_mask, MATCH),
            *self.extra_itm_blocks(context),
            *hard_negative_blocks(itm_tokens, text_tokens, attention_mask, *negatives),
        ]
        blocks += self.negative_text_blocks(itm_tokens, negative_text)
        images, texts, masks, labels = concat_blocks(blocks)
        return itm_loss(self.fused_itm_logits(images, texts, masks), labels)

    def negative_text_blocks(
        self, itm_image_tokens: torch.Tensor, negative_text: tuple[torch.Tensor, torch.Tensor] | None
    ) -> list[ITMBlock]:
        """NTA fine-tuning: `(T_nta, I)` label 0, each image with its own pair's hard-negative caption,
        encoded by the online text encoder (gradient reaches it). Empty without negative texts."""
        if negative_text is None:
            return []
        negative_ids, negative_mask = negative_text
        negative_tokens = self.text_encoder.encode(negative_ids, negative_mask)
        return [ITMBlock(itm_image_tokens, negative_tokens, negative_mask, NO_MATCH)]

    def extra_itm_blocks(self, context: ITMContext) -> list[ITMBlock]:
        """Extra ITM rows (NAS: the NVA negatives, §4). None for plain ALBEF."""
        return []

    def _mlm_loss(
        self,
        image_tokens: torch.Tensor,
        image_tokens_m: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        alpha: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        masked_ids, labels = mask_tokens(
            input_ids,
            vocab_size=self.cfg.text.vocab_size,
            mask_probability=self.cfg.mlm_probability,
            generator=generator,
        )
        selected = labels != IGNORE_INDEX
        # MLM sees the raw ViT tokens, not the ITM tokens (§3).
        hidden = self.text_encoder(masked_ids, attention_mask, image_tokens)[selected]
        logits = self.text_encoder.mlm_logits(hidden)
        momentum_logits = None
        if alpha > 0:
            with torch.no_grad():
                hidden_m = self.text_encoder_m(masked_ids, attention_mask, image_tokens_m)[selected]
                momentum_logits = self.text_encoder_m.mlm_logits(hidden_m)
        return mlm_loss(logits, labels[selected], momentum_logits, alpha)

    # ---- momentum model --------------------------------------------------------------------------

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs; the momentum one follows the online one by EMA."""
        return [
            (self.visual_encoder, self.visual_encoder_m),
            (self.vision_proj, self.vision_proj_m),
            (self.text_encoder, self.text_encoder_m),
            (self.text_proj, self.text_proj_m),
        ]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """`θ_m ← θ_m + (1 − m)(θ − θ_m)` (= m·θ_m + (1 − m)·θ) for every momentum parameter."""
        weight = 1.0 - self.cfg.momentum
        for online, momentum in self.momentum_pairs():
            for param, param_m in zip(online.parameters(), momentum.parameters(), strict=True):
                param_m.lerp_(param, weight)

    # ---- resolution --------------------------------------------------------------------------------

    def set_image_size(self, img_size: int) -> None:
        """Resample both image encoders' position embeddings for `img_size` (e.g. 384 px fine-tuning)."""
        for encoder in (self.visual_encoder, self.visual_encoder_m):
            resize_position_embeddings(encoder, img_size)
        self.cfg = dataclasses.replace(
            self.cfg, vision=dataclasses.replace(self.cfg.vision, img_size=img_size)
        )


def _unpack_negative_text(
    batch: Mapping[str, Any], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(neg_input_ids, neg_attention_mask)` of an NTA batch, None for a plain one; half of them is an error."""
    present = [k for k in _NTA_KEYS if k in batch]
    if not present:
        return None
    if len(present) != len(_NTA_KEYS):
        raise KeyError(f"an NTA batch needs both {list(_NTA_KEYS)}; it has only {present}")
    ids, mask = batch["neg_input_ids"], batch["neg_attention_mask"]
    if ids.dim() != 2 or mask.shape != ids.shape or ids.shape[0] != batch_size:
        raise ValueError(
            f"batch['neg_input_ids'] must be [B={batch_size}, T] and neg_attention_mask the same shape; got "
            f"{tuple(ids.shape)} and {tuple(mask.shape)}"
        )
    return ids, mask


def _frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    copied.requires_grad_(False)
    return copied


def _unpack(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    missing = [k for k in _BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"ALBEF batch lacks {missing}; it has {sorted(batch)}")
    image, input_ids, attention_mask, image_ids = (batch[k] for k in _BATCH_KEYS)
    if image.dim() != 4:
        raise ValueError(f"batch['image'] must be [B, 3, H, W], got shape {tuple(image.shape)}")
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"batch['input_ids'] must be [B, T] and attention_mask the same shape; got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    sizes = {image.shape[0], input_ids.shape[0], image_ids.shape[0]}
    if len(sizes) != 1 or image_ids.dim() != 1:
        raise ValueError(
            f"batch sizes differ: image {image.shape[0]}, input_ids {input_ids.shape[0]}, "
            f"image_id {tuple(image_ids.shape)}"
        )
    return image, input_ids, attention_mask, image_ids


# ---- registered variants (create_model("albef_tiny", **overrides)) -----------------------------------

# The paper's model: DeiT-B/16 at 256 px and BERT-base split 6 + 6, queue 65,536 (§1, §2).
# Pretrained weights are local paths the user provides: vision.pretrained, text.pretrained.
ALBEF_BASE = {
    "vision": {
        "model_name": "deit_base_patch16_224",
        "img_size": 256,
        "patch_size": 16,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
    },
    "text": {
        "hidden_size": 768,
        "num_heads": 12,
        "intermediate_size": 3072,
        "num_text_layers": 6,
        "num_fusion_layers": 6,
        "dropout": 0.1,
    },
    "queue_size": 65536,
}


register_model(
    "albef_tiny",
    config=ALBEFConfig,
    build=ALBEF,
    family="nas",
    doc="CPU-sized ALBEF (~10M parameters): ViT 192 × 4 at 64 px / patch 8, BERT 192 with 2 + 2 layers.",
)
register_model(
    "albef_base",
    config=ALBEFConfig,
    base=ALBEF_BASE,
    build=ALBEF,
    family="nas",
    doc="ALBEF as in the paper (ViT-B/16 from DeiT-base, BERT-base 6 + 6, embed 256, queue 65,536).",
)
