"""MUG (Zhao et al., TMLR 2024; MUG_UTA.md §1): masked image reconstruction + captioning.

One step (Algorithm 1 [P]; one encoder pass serves both branches [D]):
1. random masking (MAE [B]) -> a timm ViT on the visible patch tokens only (gathered after the patch
   and position embeddings, then timm's own blocks and final norm) -> `latent` [B, 1 + K, D];
2. image branch: MAE decoder (mask tokens, fixed 2-D sin-cos positions, timm blocks) -> pixels of
   every patch -> MSE against normalised pixels on the masked patches;
3. text branch: CoCa-shaped causal decoder [D]: unimodal causal blocks, then blocks that add
   cross-attention to the *masked-view* latent; tied input/output embedding, learned positions;
   teacher-forced cross-entropy.
`loss = recon_weight * recon + cap_weight * caption`. A branch with weight 0 is not run, and its
parameters are frozen (requires_grad False), so the optimizer and DDP never see gradient-less
parameters; its term is omitted from the returned dict (the ablation arms MAE-only / caption-only).

Vocabulary [D]: tokens are open_clip's CLIP BPE ids (49,408). At paper scale the decoder predicts
the full vocabulary. On the CPU profile (`caption.vocab: corpus`) it predicts only the BPE ids that
occur in the training captions (plus SOT/EOT and one UNK slot for anything else): the full 49,408-way
softmax costs ~175 ms per step at batch 32 on 2 cores (measured), the compact one ~2 ms. The id maps
are buffers, filled once by `set_vocabulary` and saved with the weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from nas.models.masking import MaskedView, gather_tokens, random_masking, restore_order
from nas.models.registry import register_model
from nas.models.vision import VisionConfig, build_vision_encoder
from nas.objectives.mug import (
    caption_cross_entropy,
    masked_patch_mse,
    patchify,
    reconstruction_targets,
    teacher_forcing,
)

# open_clip's CLIP BPE (nas.data.bpe_tokenizer): vocabulary size and the two special tokens.
CLIP_VOCAB_SIZE = 49408
CLIP_SOT_ID = 49406
CLIP_EOT_ID = 49407
UNK_SLOT = 0  # the compact vocabulary's slot for BPE ids the training captions never use


@dataclass
class MAEDecoderConfig:
    """MAE's pixel decoder. Paper scale: 8 blocks x 512, 16 heads (MAE [B]; MUG_UTA.md §1)."""

    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 2
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"decoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % 4 or self.embed_dim % self.num_heads:
            raise ValueError(
                f"decoder.embed_dim ({self.embed_dim}) must be divisible by 4 (2-D sin-cos positions) "
                f"and by decoder.num_heads ({self.num_heads})"
            )


@dataclass
class CaptionDecoderConfig:
    """CoCa-shaped caption decoder [D]. Paper scale: 4 blocks x 512 (2 unimodal + 2 multimodal), 77 tokens."""

    width: int = 64
    unimodal_layers: int = 1
    multimodal_layers: int = 1
    num_heads: int = 2
    mlp_ratio: float = 4.0
    context_length: int = 32  # SOT + tokens + EOT; CLIP/MUG paper scale: 77
    vocab: Literal["full", "corpus"] = "corpus"  # see the module docstring; paper scale: full
    corpus_slots: int = 128  # size of the compact vocabulary (UNK + SOT + EOT + corpus ids)

    def __post_init__(self) -> None:
        if self.width < 1 or self.num_heads < 1 or self.width % self.num_heads:
            raise ValueError(f"caption.width ({self.width}) must be a positive multiple of caption.num_heads")
        if self.unimodal_layers < 0 or self.multimodal_layers < 1:
            raise ValueError(
                "caption.multimodal_layers must be >= 1 (the text must see the image) and "
                f"caption.unimodal_layers >= 0, got {self.multimodal_layers}, {self.unimodal_layers}"
            )
        if self.context_length < 3:
            raise ValueError(
                f"caption.context_length must be >= 3 (SOT, a token, EOT), got {self.context_length}"
            )
        if self.vocab == "corpus" and self.corpus_slots < 4:
            raise ValueError(f"caption.corpus_slots must be >= 4, got {self.corpus_slots}")


# The defaults are the tiny profile (`mug_tiny`: base {}); a nested override such as `vision: {depth: 2}`
# changes that key of this default encoder only (nas.config.base.from_dict merges over a field's default).


@dataclass
class MUGConfig:
    """The whole model. Defaults: the tiny CPU profile (`mug_tiny`); `MUG_BASE` holds paper scale."""

    # The CPU profile's encoder: 64 px / 16 = a 4 x 4 grid, as the NAS tiny profile (params.yaml
    # model.overrides.vision).
    vision: VisionConfig = field(
        default_factory=lambda: VisionConfig(
            model_name="vit_tiny_patch16_224", img_size=64, patch_size=16, embed_dim=96, depth=4, num_heads=3
        )
    )
    decoder: MAEDecoderConfig = field(default_factory=MAEDecoderConfig)
    caption: CaptionDecoderConfig = field(default_factory=CaptionDecoderConfig)
    mask_ratio: float = 0.75  # MAE [B]
    norm_pix_loss: bool = True  # MAE [B]: normalised-pixel targets
    recon_weight: float = 1.0  # [D] MUG_UTA.md §1
    cap_weight: float = 1.0  # [D]
    init_std: float = 0.02  # MAE/CoCa: truncated normal 0.02 for the decoders' embeddings and linears

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.recon_weight < 0 or self.cap_weight < 0:
            raise ValueError(
                f"recon_weight and cap_weight must be >= 0, got {self.recon_weight}, {self.cap_weight}"
            )
        if self.recon_weight == 0 and self.cap_weight == 0:
            raise ValueError("recon_weight and cap_weight are both 0: nothing to train")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


# Paper scale (MUG_UTA.md §1): ViT-B/16 encoder, MAE decoder 8 x 512, caption decoder 4 x 512, 77 tokens.
MUG_BASE: dict[str, Any] = {
    "vision": {
        "model_name": "vit_base_patch16_224",
        "img_size": 224,
        "patch_size": 16,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
    },
    "decoder": {"embed_dim": 512, "depth": 8, "num_heads": 16},
    "caption": {
        "width": 512,
        "unimodal_layers": 2,
        "multimodal_layers": 2,
        "num_heads": 8,
        "context_length": 77,
        "vocab": "full",
    },
}


# ---- the caption decoder ------------------------------------------------------------------------
# Kept hand-written rather than open_clip's CoCa decoder (open_clip.transformer.Transformer for the
# unimodal layers + MultimodalTransformer), measured by benchmarks/mug_caption_decoder.py
# (benchmarks/results/mug_caption_decoder.json; default profile, batch 32, 1 thread, same masks, arms
# alternating in one process). Both are causal, pre-LN, right-padded, cross-attend to the latent; but
# - open_clip's multimodal layer is a different parameterisation: an MLP after the self-attention AND
#   after the cross-attention, and a LayerNorm on the keys/values per layer: 166,656 caption-decoder
#   parameters against our 133,440 (+25%) at the default profile;
# - it is slower here: the engine's training step 36.4 vs 33.3 ms median under bf16 autocast (paired
#   ratio x1.06), 47.8 vs 44.4 ms in fp32 (x1.08); two earlier runs gave x1.06 and x1.09 each; the
#   caption branch alone x1.21 / x1.28; even one unimodal block holding our weights (outputs
#   identical, max |diff| 0) is x1.07 / x1.07 (nn.MultiheadAttention with a float mask against SDPA's
#   is_causal);
# - as a drop-in it needs repairs: `text_projection` is torch.empty (NaN/garbage: our head is tied),
#   `MultimodalTransformer.init_parameters` raises AttributeError (open_clip 3.3.0 reads
#   `self.transformer`), and the packed `in_proj_weight` is not an nn.Linear, so MUG's init rule misses it.


class CaptionBlock(nn.Module):
    """Pre-norm block: causal self-attention, optional cross-attention to image tokens, MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, cross: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.cross = cross
        if cross:
            self.norm_x = nn.LayerNorm(width)
            self.q_x = nn.Linear(width, width)
            self.kv_x = nn.Linear(width, 2 * width)
            self.proj_x = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.reshape(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        batch, heads, length, dim = x.shape
        return x.transpose(1, 2).reshape(batch, length, heads * dim)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        # Right padding + a causal mask: a real token never attends to a later (padding) position.
        attended = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), is_causal=True
        )
        x = x + self.proj(self._merge(attended))
        if self.cross:
            q = self._heads(self.q_x(self.norm_x(x)))
            k, v = self.kv_x(image).chunk(2, dim=-1)
            x = x + self.proj_x(
                self._merge(F.scaled_dot_product_attention(q, self._heads(k), self._heads(v)))
            )
        return x + self.mlp(self.norm2(x))


class CaptionDecoder(nn.Module):
    """Token ids [B, T] (its own vocabulary) + image tokens [B, M, D_img] -> logits [B, T, V]."""

    def __init__(self, cfg: CaptionDecoderConfig, image_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.width))
        self.image_proj = nn.Sequential(nn.Linear(image_dim, cfg.width), nn.LayerNorm(cfg.width))
        self.blocks = nn.ModuleList(
            [
                CaptionBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio, cross=False)
                for _ in range(cfg.unimodal_layers)
            ]
            + [
                CaptionBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio, cross=True)
                for _ in range(cfg.multimodal_layers)
            ]
        )
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(
                f"{length} text positions exceed caption.context_length={self.cfg.context_length}"
            )
        x = self.token_embed(tokens) + self.pos_embed[:, :length]
        image = self.image_proj(image_tokens)
        for block in self.blocks:
            x = block(x, image if block.cross else None)
        return self.norm(x) @ self.token_embed.weight.T  # tied input/output embedding [D]


# ---- the MAE decoder ----------------------------------------------------------------------------


class MAEDecoder(nn.Module):
    """Encoder latent [B, 1 + K, D_enc] + `ids_restore` -> predicted pixels of every patch [B, N, p*p*3]."""

    def __init__(self, cfg: MAEDecoderConfig, encoder_dim: int, grid: int, patch_size: int) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, cfg.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(cfg.embed_dim))
        # MAE: fixed 2-D sin-cos positions for the patches, a zero row for [CLS].
        positions = build_sincos2d_pos_embed([grid, grid], dim=cfg.embed_dim)
        self.register_buffer(
            "pos_embed", torch.cat([torch.zeros(1, cfg.embed_dim), positions]).unsqueeze(0), persistent=False
        )
        self.blocks = nn.Sequential(
            *[Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.pred = nn.Linear(cfg.embed_dim, patch_size * patch_size * 3)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)
        patches = restore_order(x[:, 1:], self.mask_token, ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed.to(x.dtype)
        x = self.norm(self.blocks(x))
        return self.pred(x[:, 1:])  # drop [CLS]


# ---- MUG ----------------------------------------------------------------------------------------


class MUG(nn.Module):
    """MUG: see the module docstring. Batch keys: "image" [B,3,H,W], "input_ids" / "attention_mask"
    [B, L] in CLIP BPE ids (nas.data.bpe_tokenizer)."""

    def __init__(self, cfg: MUGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_vision_encoder(cfg.vision)
        vit = self.encoder
        if vit.cls_token is None or vit.num_prefix_tokens != 1 or getattr(vit, "no_embed_class", False):
            raise ValueError(
                f"vision.model_name={cfg.vision.model_name!r}: MUG needs a ViT with one [CLS] token whose "
                "position embedding covers [CLS] (timm's default ViT layout)"
            )
        self.patch_size = cfg.vision.patch_size
        self.num_patches = cfg.vision.grid_size**2
        self.decoder = MAEDecoder(cfg.decoder, cfg.vision.embed_dim, cfg.vision.grid_size, self.patch_size)
        if cfg.caption.vocab == "full":
            vocab_size = CLIP_VOCAB_SIZE
        else:
            vocab_size = cfg.caption.corpus_slots
            self.register_buffer("bpe_to_local", torch.full((CLIP_VOCAB_SIZE,), UNK_SLOT, dtype=torch.long))
            self.register_buffer("local_to_bpe", torch.full((vocab_size,), -1, dtype=torch.long))
        self.vocab_size = vocab_size
        self.text_decoder = CaptionDecoder(cfg.caption, cfg.vision.embed_dim, vocab_size)
        self._init_decoders(cfg.init_std)
        # An ablated branch is frozen: no gradient-less parameters in the optimizer or under DDP.
        if cfg.recon_weight == 0:
            self.decoder.requires_grad_(False)
        if cfg.cap_weight == 0:
            self.text_decoder.requires_grad_(False)

    def _init_decoders(self, std: float) -> None:
        for module in (*self.decoder.modules(), *self.text_decoder.modules()):
            if isinstance(module, (nn.Linear, nn.Embedding)):
                trunc_normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        trunc_normal_(self.decoder.mask_token, std=std)
        trunc_normal_(self.text_decoder.pos_embed, std=std)

    # ---- vocabulary ------------------------------------------------------------------------------

    @property
    def sot_id(self) -> int:
        """SOT in the decoder's vocabulary."""
        return CLIP_SOT_ID if self.cfg.caption.vocab == "full" else int(self.bpe_to_local[CLIP_SOT_ID])

    @property
    def eot_id(self) -> int:
        """EOT in the decoder's vocabulary."""
        return CLIP_EOT_ID if self.cfg.caption.vocab == "full" else int(self.bpe_to_local[CLIP_EOT_ID])

    @property
    def banned_generation_ids(self) -> list[int]:
        """Ids a caption never contains after its first position: SOT, and UNK of the corpus vocabulary."""
        return [self.sot_id] + ([] if self.cfg.caption.vocab == "full" else [UNK_SLOT])

    def set_vocabulary(self, bpe_ids: Iterable[int]) -> int:
        """Corpus vocabulary: slots for SOT, EOT and every id of `bpe_ids` (the training captions'
        tokens); returns how many slots are used. A no-op returning the full size for vocab 'full'."""
        if self.cfg.caption.vocab == "full":
            return self.vocab_size
        ids = sorted({int(i) for i in bpe_ids} | {CLIP_SOT_ID, CLIP_EOT_ID})
        if ids and not 0 <= ids[0] <= ids[-1] < CLIP_VOCAB_SIZE:
            raise ValueError(f"BPE ids must be in [0, {CLIP_VOCAB_SIZE}), got {ids[0]}..{ids[-1]}")
        if len(ids) + 1 > self.vocab_size:
            raise ValueError(
                f"the captions use {len(ids)} distinct BPE ids (with SOT/EOT) but caption.corpus_slots="
                f"{self.vocab_size} holds {self.vocab_size - 1} plus UNK: raise caption.corpus_slots"
            )
        local = torch.arange(1, len(ids) + 1)
        self.bpe_to_local.fill_(UNK_SLOT)
        self.bpe_to_local[torch.tensor(ids)] = local.to(self.bpe_to_local.device)
        self.local_to_bpe.fill_(-1)
        self.local_to_bpe[local] = torch.tensor(ids, device=self.local_to_bpe.device)
        return len(ids) + 1

    @property
    def vocabulary_set(self) -> bool:
        return self.cfg.caption.vocab == "full" or bool((self.local_to_bpe >= 0).any())

    def to_local(self, bpe_ids: torch.Tensor) -> torch.Tensor:
        """CLIP BPE ids -> the decoder's ids (identity for the full vocabulary, UNK for unknown ids)."""
        if self.cfg.caption.vocab == "full":
            return bpe_ids
        if not self.vocabulary_set:
            raise RuntimeError("MUG with caption.vocab='corpus' needs set_vocabulary(...) before use")
        return self.bpe_to_local[bpe_ids]

    def to_bpe(self, local_ids: torch.Tensor) -> torch.Tensor:
        if self.cfg.caption.vocab == "full":
            return local_ids
        return self.local_to_bpe[local_ids]

    def logit_bias(self) -> torch.Tensor | None:
        """-inf on unused slots of the corpus vocabulary (never predicted, never counted); else None."""
        if self.cfg.caption.vocab == "full":
            return None
        unused = self.local_to_bpe < 0
        unused[UNK_SLOT] = False
        return torch.zeros(self.vocab_size, device=unused.device).masked_fill(unused, float("-inf"))

    # ---- the branches ----------------------------------------------------------------------------

    def encode(self, images: torch.Tensor, view: MaskedView | None = None) -> torch.Tensor:
        """[CLS] + the visible patch tokens after the ViT: [B, 1 + K, D] (all N patches if `view` is None).
        With no view this equals timm's `forward_features`."""
        vit = self.encoder
        x = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        if view is not None:
            x = gather_tokens(x, view.ids_keep)
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = vit.norm_pre(torch.cat([cls, x], dim=1))
        return vit.norm(vit.blocks(x))

    def features(self, images: torch.Tensor, pooling: Literal["mean", "cls"] = "mean") -> torch.Tensor:
        """Frozen-encoder features of the unmasked images for linear probes: [B, D]."""
        tokens = self.encode(images)
        return tokens[:, 1:].mean(dim=1) if pooling == "mean" else tokens[:, 0]

    def reconstruct(self, latent: torch.Tensor, view: MaskedView) -> torch.Tensor:
        return self.decoder(latent, view.ids_restore)

    def caption_logits(self, latent: torch.Tensor, local_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, T, V] for decoder-vocabulary ids [B, T], given image tokens."""
        logits = self.text_decoder(local_ids, latent)
        bias = self.logit_bias()
        return logits if bias is None else logits + bias.to(logits.dtype)

    def recon_loss(self, images: torch.Tensor, latent: torch.Tensor, view: MaskedView) -> torch.Tensor:
        target = reconstruction_targets(patchify(images, self.patch_size), self.cfg.norm_pix_loss)
        return masked_patch_mse(self.reconstruct(latent, view), target, view.mask)

    def caption_loss(
        self, latent: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        inputs, labels, label_mask = teacher_forcing(self.to_local(input_ids), attention_mask)
        return caption_cross_entropy(self.caption_logits(latent, inputs), labels, label_mask)

    def mask(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MaskedView:
        return random_masking(
            images.shape[0], self.num_patches, self.cfg.mask_ratio, device=images.device, generator=generator
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The engine contract: {"recon": w_r * L_recon, "caption": w_c * L_cap}, a term per active branch."""
        images = batch["image"]
        view = self.mask(images)
        latent = self.encode(images, view)  # one encoder pass serves both branches
        terms: dict[str, torch.Tensor] = {}
        if self.cfg.recon_weight > 0:
            terms["recon"] = self.cfg.recon_weight * self.recon_loss(images, latent, view)
        if self.cfg.cap_weight > 0:
            terms["caption"] = self.cfg.cap_weight * self.caption_loss(
                latent, batch["input_ids"], batch["attention_mask"]
            )
        return terms


register_model(
    "mug_tiny",
    config=MUGConfig,
    build=MUG,
    family="mug",
    doc="The CPU profile: ViT 96 x 4 on a 4 x 4 grid, decoders 64 wide, corpus vocabulary.",
)
register_model(
    "mug_base",
    config=MUGConfig,
    base=MUG_BASE,
    build=MUG,
    family="mug",
    doc="Paper scale (MUG_UTA.md §1): ViT-B/16, MAE decoder 8 x 512, caption decoder 4 x 512, 77 tokens.",
)
