"""NAS (Wang et al., AAAI 2025): ALBEF whose ITM sees visual-dictionary tokens and, from stage 2 on, one
token-level negative image per pair (spec NAS_METHOD.md §3, §4, §6).

What changes against ALBEF (nas.models.albef), ITM only:
- the ITM image tokens are `[V_cls ; VD tokens]` (ITC keeps the raw [CLS], MLM the raw ViT tokens, §3);
  the VD runs once per training step on the batch's own images, so its EMA codebook update happens once
  per step; the in-batch hard negatives index those tokens;
- with `nva_enabled` (stage 2, fine-tuning) an NVA block of B negatives `(T, I_NVA)`, label 0, sits right
  after the positives: rows are positives, NVA, text + negative image, negative text + image (§4.8).
  In pretraining the NVA row is detached (`nva.detach`, §4.6): its gradient reaches only the fusion
  encoder and the ITM head.

NVA draws from its own `torch.Generator`, re-seeded every step from (the run's seed, the model's
training-step counter, rank). The run's seed reaches the model through `seed_random_streams` (the engine
calls it with `train.seed`, so pretraining seeds and fine-tuning replicates draw different negatives);
`nva_seed` pins it instead. The counter is a buffer: a checkpoint restores it, a resumed run draws exactly
the negatives the uninterrupted run would have drawn, and stage 2 and fine-tuning continue stage 1's count;
each rank draws its own negatives.

Stage switches are sub-config fields, one source of truth each: `vd.frozen` (stage 2 and fine-tuning:
codebook frozen, neck still trains) and `nva.detach` (pretraining true, fine-tuning false).
Sources: [A] = github.com/Gavin001201/NAS_ALBEF, [P] = the paper, [D] = this project's decision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from nas.distributed import all_gather_cat, all_reduce_sum, rank
from nas.models.albef import ALBEF, ALBEF_BASE, ALBEFConfig, ITMContext
from nas.models.nva import NVAConfig, NVAOutput, negative_visual_augmentation
from nas.models.registry import register_model
from nas.models.visual_dictionary import VDOutput, VisualDictionary, VisualDictionaryConfig
from nas.objectives.itm import NO_MATCH, ITMBlock


@dataclass
class NASConfig(ALBEFConfig):
    """ALBEF's fields plus the visual dictionary and NVA. Defaults: the tiny profile, stage 1 (NVA off)."""

    vd: VisualDictionaryConfig = field(default_factory=VisualDictionaryConfig)
    nva: NVAConfig = field(default_factory=NVAConfig)
    nva_enabled: bool = False  # stage 2 and fine-tuning only (spec §4.7, §6)
    # [D] seed of NVA's generator (spec §4.9: [A] used the global RNG; we draw from an explicit generator).
    # None: the run's seed (`train.seed`, which includes a fine-tuning replicate's offset), given by the
    # engine through `seed_random_streams`; an int pins the NVA stream whatever the run's seed.
    nva_seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vd.dim != self.vision.embed_dim:
            raise ValueError(
                f"vd.dim ({self.vd.dim}) must equal vision.embed_dim ({self.vision.embed_dim}): the "
                "dictionary discretises the ViT's patch tokens"
            )
        if self.nva_seed is not None and self.nva_seed < 0:
            raise ValueError(f"nva_seed must be >= 0 or null, got {self.nva_seed}")
        if not self.nva_enabled:
            return
        if self.itm_weight <= 0:
            raise ValueError("nva_enabled needs itm_weight > 0: NVA negatives are ITM rows")
        if self.text.hidden_size != self.vision.embed_dim:
            raise ValueError(
                f"nva_enabled needs text.hidden_size ({self.text.hidden_size}) == vision.embed_dim "
                f"({self.vision.embed_dim}): NVA scores patches against the text [CLS] (spec §4.1)"
            )
        num_patches = self.vision.grid_size**2
        if num_patches < self.nva.top_k:
            raise ValueError(f"nva.top_k ({self.nva.top_k}) exceeds the {num_patches} patches of an image")
        if self.vd.num_codes < self.nva.num_candidates + 1:
            raise ValueError(
                f"nva.num_candidates ({self.nva.num_candidates}) needs vd.num_codes >= "
                f"{self.nva.num_candidates + 1}, got {self.vd.num_codes}"
            )


def nva_step_seed(seed: int, step: int, rank_: int) -> int:
    """A 64-bit seed for NVA's generator from (seed, training step, rank): numpy's SeedSequence hash of
    the three (O'Neill's seed_seq mixing), so neighbouring steps and ranks get unrelated streams."""
    import numpy as np

    return int(np.random.SeedSequence([seed, step, rank_]).generate_state(1, dtype=np.uint64)[0])


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put `modules` in eval mode for the block, then restore each one's own mode."""
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.train(False)
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


class NAS(ALBEF):
    """ALBEF + visual dictionary (ITM tokens) + NVA (extra ITM negatives). See the module docstring.

    Call `set_total_steps(T)` (stage-1 steps per rank) before training with an unfrozen dictionary.
    `gather` / `reduce_sum`: the collectives of ITC's queue and the VD's EMA update (tests inject fakes).
    """

    cfg: NASConfig

    def __init__(
        self,
        cfg: NASConfig,
        *,
        gather: Callable[[torch.Tensor], torch.Tensor] = all_gather_cat,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] = all_reduce_sum,
    ):
        super().__init__(cfg, gather=gather)
        # Created after ALBEF's momentum copies: the VD has no momentum copy [A].
        self.vd = VisualDictionary(cfg.vd, reduce_sum=reduce_sum)
        # The seed of NVA's streams: not a buffer, since it belongs to the run, not to the weights
        # (a fine-tuning replicate loads the pretrained weights and must draw its own negatives).
        self.stream_seed = 0 if cfg.nva_seed is None else cfg.nva_seed

    def seed_random_streams(self, seed: int) -> None:
        """The run's seed for NVA's draws (called by the engine with `train.seed`); `nva_seed`, when set,
        takes precedence."""
        self.stream_seed = seed if self.cfg.nva_seed is None else self.cfg.nva_seed

    # ---- stage controls ----------------------------------------------------------------------------

    def set_total_steps(self, total_steps: int) -> None:
        """T of the VD's γ ramp: stage-1 steps per rank (spec §3)."""
        self.vd.set_total_steps(total_steps)

    def freeze_dictionary(self, frozen: bool = True) -> None:
        """Freeze the codebook (stage 2, fine-tuning); the neck keeps training. Same as `vd.frozen` in the
        config, for a model built before the stage decided."""
        self.vd.freeze(frozen)

    # ---- ITM image tokens (the ALBEF hooks) ----------------------------------------------------------

    def itm_image_encoding(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, VDOutput]:
        """The training step's one VD forward: in training mode (codebook not frozen) it takes the step's
        EMA update; its output also feeds NVA."""
        output = self.vd(image_tokens)
        return output.tokens, output

    def itm_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Scoring path (`itm_logits`, evaluation): `[V_cls ; VD tokens]` with the VD in eval mode, so
        scoring never moves the codebook, whatever mode the model is in (spec §3)."""
        with eval_mode(self.vd):
            return self.vd(image_tokens).tokens

    def extra_itm_blocks(self, context: ITMContext) -> list[ITMBlock]:
        """With NVA on: one negative image per pair, `(T, I_NVA)` label 0 (spec §4.6)."""
        if not self.cfg.nva_enabled:
            return []
        if not isinstance(context.itm_image_state, VDOutput):
            raise TypeError(
                "NAS.extra_itm_blocks needs this step's VD output as ITMContext.itm_image_state, got "
                f"{type(context.itm_image_state).__name__}"
            )
        negative = self.negative_images(
            context.itm_image_state, context.image_tokens, context.text_tokens[:, 0]
        )
        text_tokens = context.text_tokens
        if self.cfg.nva.detach:  # pretraining: no gradient into the text encoder from this row [A]
            text_tokens = text_tokens.detach()
        return [ITMBlock(negative.tokens, text_tokens, context.attention_mask, NO_MATCH)]

    def negative_images(
        self,
        vd_output: VDOutput,
        image_tokens: torch.Tensor,
        text_cls: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> NVAOutput:
        """NVA negatives of a batch (spec §4) from its VD output, raw ViT tokens and text [CLS]; drawn from
        `generator`, or by default from this step's generator (`nva_generator`)."""
        if generator is None:
            generator = self.nva_generator(image_tokens.device)
        return negative_visual_augmentation(
            self.vd, vd_output, image_tokens, text_cls, self.cfg.nva, generator
        )

    def nva_generator(self, device: torch.device) -> torch.Generator:
        """This step's NVA generator on `device`: seeded with (stream_seed, training_steps, rank)."""
        seed = nva_step_seed(self.stream_seed, int(self.training_steps), rank())
        return torch.Generator(device=device).manual_seed(seed)

    # ---- training --------------------------------------------------------------------------------------

    # ---- dictionary health ---------------------------------------------------------------------------

    @torch.no_grad()
    def assign_codes(self, images: torch.Tensor) -> torch.Tensor:
        """VD codes [B, L] of `images` [B, 3, H, W] (ViT and VD in eval mode; nothing is updated)."""
        with eval_mode(self.visual_encoder, self.vd):
            tokens = self.visual_encoder.forward_features(images)
            return self.vd.squared_distances(self.vd.features(tokens[:, 1:])).argmin(dim=-1)

    @torch.no_grad()
    def dictionary_health(self, images: torch.Tensor | None = None) -> dict[str, float | int]:
        """Codes in use, perplexity, dead codes (see `VisualDictionary.health`): from the assignments of
        `images` when given, else from the EMA counts N_j."""
        if images is not None:
            return self.vd.health(codes=self.assign_codes(images))
        if not self.vd.ema_counts.sum() > 0:
            raise ValueError(
                "dictionary_health: the EMA counts are all zero (a random init before its first step); "
                "pass images= to measure the assignments instead"
            )
        return self.vd.health(counts=self.vd.ema_counts)


# ---- registered variants (create_model("nas_tiny", **overrides)) ---------------------------------------

# The paper's model: ALBEF-base plus a 2,048-code dictionary at the ViT-B width (spec §3).
NAS_BASE = {
    **ALBEF_BASE,
    "vd": {
        "num_codes": 2048,  # [A] num_tokens
        "dim": 768,  # ViT-B/16 width
        # [D] 1,024 images x 256 patches = 128 features per code for the k-means initialisation.
        "kmeans_sample_images": 1024,
    },
}


register_model(
    "nas_tiny",
    config=NASConfig,
    build=NAS,
    family="nas",
    doc="CPU-sized NAS: albef_tiny (ViT 192 × 4 at 64 px / patch 8: an 8 × 8 grid) + a 64-code dictionary.",
)
register_model(
    "nas_base",
    config=NASConfig,
    base=NAS_BASE,
    build=NAS,
    family="nas",
    doc="NAS as in the paper: albef_base + a 2,048-code dictionary at width 768.",
)
