"""Negative Visual Augmentation (NVA): one token-level hard-negative image per image–text pair (spec
NAS_METHOD.md §4).

Per image, from the VD forward of the positive (nas.models.visual_dictionary):
  1. score every patch against the text's and the image's [CLS];
  2. sample an anchor among the top-3 patches, p = softmax(top-3 scores);
  3. M = every patch assigned to the anchor's code h_a;
  4. sample a replacement code c among the 3 codes nearest to the anchor's neck feature x_a once every
     code whose vector equals d_{h_a} (h_a itself and its exact duplicates) is excluded [D],
     π = softmax(1 / (l2normalize([d_2, d_3, d_4]) + 1e-4)); [A]'s own rule ("drop_nearest": drop the
     nearest of the 4 nearest) is the alternative;
  5. tokens in M become pos_line(x_j + (d_c − x_j).detach()) (no gate), tokens outside M keep the
     positive's gated t_j; then the same position encoding and final LN; [CLS] is the positive's.

Why exclude by vector, not only by index: the sources' random initialisation leaves many codes exactly
zero (spec §3), so h_a can have exact duplicates. A duplicate c ≠ h_a of d_{h_a} would give the replaced
tokens the very code they had and the "negative" would differ from the positive only by losing the gate's
x share. Under "exclude_anchor_code" [D] every candidate therefore has a vector different from d_{h_a}, and
a dictionary with fewer than num_candidates such codes is an error, not a silent fallback (see
`replacement_candidates`).

Everything is vectorised over the batch and drawn from an explicit `torch.Generator` on the tokens' device.
Sources: [A] = github.com/Gavin001201/NAS_ALBEF (models/model_pretrain.py, models/sohonecks.py),
[P] = the paper, [D] = this project's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from nas.finite import check_finite
from nas.models.visual_dictionary import VDOutput, VisualDictionary

# [A]: π = softmax(1 / (l2normalize(distances) + 1e-4)); the offset keeps a zero distance finite.
_CANDIDATE_DISTANCE_OFFSET = 1e-4
# The [B, K, chunk] comparison of `codes_sharing_vector` holds at most this many elements at a time.
_EQUALITY_CHUNK_ELEMENTS = 1 << 24


@dataclass
class NVAConfig:
    """Knobs of NVA. Defaults are [A]'s final form."""

    # [A] dot_l2norm: <v_i, T_cls>/||a_t|| + <v_i, V_cls>/||a_v||; [P]'s summary says cosine similarities.
    score: Literal["dot_l2norm", "cosine"] = "dot_l2norm"
    top_k: int = 3  # anchor drawn among the top-3 patches [A]
    num_candidates: int = 3  # replacement drawn among the 2nd–4th nearest codes [A]
    # [A] final: pos_line(x_j + (d_c − x_j).detach()); [A]'s first stage-2 version: the raw code vector d_c.
    token_form: Literal["straight_through", "raw_code"] = "straight_through"
    # [D] exclude h_a and every code whose vector equals d_{h_a} exactly; "drop_nearest" is [A]'s rule
    # (drop position 0 of the nearest num_candidates + 1), which equals it unless exact distance ties or
    # duplicate code vectors (e.g. all-zero dead codes) occur.
    candidate_rule: Literal["exclude_anchor_code", "drop_nearest"] = "exclude_anchor_code"
    # Pretraining detaches the NVA image tokens [A]; fine-tuning sets False (spec §4 steps 6 and 8).
    detach: bool = True

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")


@dataclass
class NVAOutput:
    """The negative image tokens and what was drawn to make them (for tests and figures)."""

    tokens: torch.Tensor  # [B, 1+L, D] negative image tokens for the fusion encoder
    pre_position: torch.Tensor  # [B, L, D] negative tokens before position encoding and final LN
    anchor: torch.Tensor  # [B] long, anchor patch a
    anchor_code: torch.Tensor  # [B] long, h_a
    replaced: torch.Tensor  # [B, L] bool, M = {j : h_j = h_a}
    code: torch.Tensor  # [B] long, replacement code c
    anchor_candidates: torch.Tensor  # [B, top_k] long, patch indices the anchor was drawn from
    anchor_probs: torch.Tensor  # [B, top_k] their probabilities p
    code_candidates: torch.Tensor  # [B, num_candidates] long, codes c was drawn from (nearest first)
    code_probs: torch.Tensor  # [B, num_candidates] their probabilities π


def patch_scores(
    image_tokens: torch.Tensor, text_cls: torch.Tensor, score: Literal["dot_l2norm", "cosine"]
) -> torch.Tensor:
    """S(i) [B, L] of every patch (spec §4 step 1), in float32 at least, without gradient.

    `image_tokens` [B, 1+L, D] are the raw ViT outputs ([CLS] first); `text_cls` [B, D] the text
    encoder's unprojected [CLS]."""
    with torch.no_grad():
        dtype = torch.promote_types(image_tokens.dtype, torch.float32)
        tokens = image_tokens.to(dtype)
        patches, image_cls = tokens[:, 1:], tokens[:, 0]
        text = text_cls.to(dtype)
        if score == "dot_l2norm":
            to_text = torch.einsum("bld,bd->bl", patches, text)
            to_image = torch.einsum("bld,bd->bl", patches, image_cls)
            # Each similarity vector is L2-normalised across the L patches [A].
            return F.normalize(to_text, dim=1) + F.normalize(to_image, dim=1)
        if score == "cosine":
            return F.cosine_similarity(patches, text[:, None], dim=-1) + F.cosine_similarity(
                patches, image_cls[:, None], dim=-1
            )
        raise ValueError(f"unknown NVA score {score!r}; expected 'dot_l2norm' or 'cosine'")


def codes_sharing_vector(codebook: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[B, K] bool: for each of the B `codes`, every code of `codebook` [K, D] whose vector equals that
    code's vector exactly (elementwise ==, so +0.0 and −0.0 count as equal), the code itself included.

    Compared in chunks of channels so that no more than 2**24 elements are held at once (K = 2048,
    D = 768, B = 64 would otherwise hold 100M); the loop runs over channel chunks, never over the batch."""
    targets = codebook[codes]  # [B, D]
    num_codes, dim = codebook.shape
    same = torch.ones(codes.shape[0], num_codes, dtype=torch.bool, device=codebook.device)
    chunk = max(1, _EQUALITY_CHUNK_ELEMENTS // max(1, codes.shape[0] * num_codes))
    for start in range(0, dim, chunk):
        stop = start + chunk
        same &= (targets[:, None, start:stop] == codebook[None, :, start:stop]).all(dim=-1)
    return same


def replacement_candidates(
    anchor_distances: torch.Tensor,
    anchor_code: torch.Tensor,
    codebook: torch.Tensor,
    num_candidates: int,
    rule: Literal["exclude_anchor_code", "drop_nearest"] = "exclude_anchor_code",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate codes [B, n] (nearest first) and their distances from the anchor feature, given the
    anchor's squared distances to every code [B, K], its code h_a [B] and the codebook [K, D] the negative's
    tokens are built from (spec §4 step 4).

    "exclude_anchor_code" [D]: the n nearest codes once h_a and every code with a vector equal to d_{h_a}
    are excluded, so d_c ≠ d_{h_a} for every candidate c. "drop_nearest" [A]: the n + 1 nearest codes
    less the first, vectors not compared (with ties it can keep h_a or a duplicate of d_{h_a}).

    [D] Too few codes to move to: when fewer than n codes of some row differ from d_{h_a} (a collapsed
    dictionary, e.g. all but 2 of K codes the zero vector with n = 3), this raises a ValueError naming K,
    the number of distinct code vectors and the anchor's code, rather than quietly drawing among fewer
    candidates or among duplicates of d_{h_a}: such a negative is not the method's, and a dictionary that
    cannot supply n other vectors needs attention (re-build it, or lower nva.num_candidates). The check
    costs one device-to-host read of a bool per call, under this rule only.
    """
    if rule == "exclude_anchor_code":
        excluded = codes_sharing_vector(codebook, anchor_code)  # h_a itself and its exact duplicates
        available = (~excluded).sum(dim=1)
        if bool((available < num_candidates).any()):
            _raise_too_few_codes(codebook, anchor_code, available, num_candidates)
        masked = anchor_distances.masked_fill(excluded, float("inf"))
        nearest = masked.topk(num_candidates, dim=1, largest=False)
        return nearest.indices, nearest.values
    if rule == "drop_nearest":
        nearest = anchor_distances.topk(num_candidates + 1, dim=1, largest=False)
        return nearest.indices[:, 1:], nearest.values[:, 1:]
    raise ValueError(f"unknown NVA candidate_rule {rule!r}; expected 'exclude_anchor_code' or 'drop_nearest'")


def _raise_too_few_codes(
    codebook: torch.Tensor, anchor_code: torch.Tensor, available: torch.Tensor, num_candidates: int
) -> None:
    row = int(available.argmin())
    distinct = torch.unique(codebook, dim=0).shape[0]
    raise ValueError(
        f"NVA: candidate_rule 'exclude_anchor_code' needs num_candidates={num_candidates} codes whose vector "
        f"differs from the anchor's code, but the codebook's K={codebook.shape[0]} codes hold only {distinct} "
        f"distinct vectors and the vector of code h_a={int(anchor_code[row])} (image {row} of the batch) "
        f"is shared by {codebook.shape[0] - int(available[row])} codes, leaving {int(available[row])}: "
        "the dictionary has collapsed; re-build it, or lower nva.num_candidates"
    )


def negative_visual_augmentation(
    vd: VisualDictionary,
    vd_output: VDOutput,
    image_tokens: torch.Tensor,
    text_cls: torch.Tensor,
    config: NVAConfig,
    generator: torch.Generator,
) -> NVAOutput:
    """One negative image per pair (spec §4): `vd_output` is `vd(image_tokens)` of the positive,
    `image_tokens` [B, 1+L, D] the raw ViT outputs, `text_cls` [B, D] the text encoder's [CLS]."""
    _check_inputs(vd, vd_output, image_tokens, text_cls, config, generator)
    batch, num_patches = vd_output.codes.shape
    rows = torch.arange(batch, device=vd_output.codes.device)

    with torch.no_grad():
        # Steps 1–2: anchor ~ softmax(top-k scores).
        scores = patch_scores(image_tokens, text_cls, config.score)
        top = scores.topk(config.top_k, dim=1)
        anchor_probs = top.values.softmax(dim=1)
        pick = torch.multinomial(
            check_finite(anchor_probs, "NVA anchor probabilities"), 1, generator=generator
        ).squeeze(1)
        anchor = top.indices[rows, pick]
        # Step 3: M = every patch sharing the anchor's code.
        anchor_code = vd_output.codes[rows, anchor]
        replaced = vd_output.codes == anchor_code[:, None]
        # Step 4: c ~ π over the codes nearest to the anchor's own feature x_a (pre-update distances).
        # [D] Vectors are compared in `vd.codebook` as it is now, the codebook the negative's tokens are
        # built from (after this step's EMA update in an unfrozen training step; stage 2 and fine-tuning
        # freeze it, so there it is also the codebook the distances came from).
        code_candidates, candidate_distances = replacement_candidates(
            vd_output.distances[rows, anchor],
            anchor_code,
            vd.codebook,
            config.num_candidates,
            config.candidate_rule,
        )
        normalised = F.normalize(candidate_distances, dim=1)
        code_probs = (1.0 / (normalised + _CANDIDATE_DISTANCE_OFFSET)).softmax(dim=1)
        code_pick = torch.multinomial(
            check_finite(code_probs, "NVA replacement-code probabilities"), 1, generator=generator
        ).squeeze(1)
        code = code_candidates[rows, code_pick]

    # Step 5. Computed for every token and selected with `where` (static shapes, no host sync); outside M
    # the positive's own tensor is selected, so those tokens are bitwise the positive's.
    with torch.set_grad_enabled(torch.is_grad_enabled() and not config.detach):
        features = vd_output.features
        new_codes = code[:, None].expand(batch, num_patches)
        if config.token_form == "straight_through":
            swapped = vd.pos_line(vd.straight_through(features, new_codes))
        else:  # "raw_code": the code vector itself, no straight-through and no pos_line
            swapped = vd.codebook[new_codes].to(features.dtype)
        pre_position = torch.where(replaced[..., None], swapped, vd_output.pre_position)
        tokens = vd.finish(vd_output.tokens[:, :1], pre_position)

    return NVAOutput(
        tokens=tokens,
        pre_position=pre_position,
        anchor=anchor,
        anchor_code=anchor_code,
        replaced=replaced,
        code=code,
        anchor_candidates=top.indices,
        anchor_probs=anchor_probs,
        code_candidates=code_candidates,
        code_probs=code_probs,
    )


def _check_inputs(
    vd: VisualDictionary,
    vd_output: VDOutput,
    image_tokens: torch.Tensor,
    text_cls: torch.Tensor,
    config: NVAConfig,
    generator: torch.Generator,
) -> None:
    batch, num_patches = vd_output.codes.shape
    num_codes, dim = vd.codebook.shape
    if image_tokens.shape != (batch, 1 + num_patches, dim):
        raise ValueError(
            f"NVA: image tokens {tuple(image_tokens.shape)} do not match the VD output "
            f"(expected {(batch, 1 + num_patches, dim)})"
        )
    if text_cls.shape != (batch, dim):
        raise ValueError(
            f"NVA: text [CLS] must be [B, D] = {(batch, dim)} (text width must equal the ViT width to score "
            f"patches against it), got {tuple(text_cls.shape)}"
        )
    if vd_output.distances.shape != (batch, num_patches, num_codes):
        raise ValueError(
            f"NVA: VD distances {tuple(vd_output.distances.shape)} do not match "
            f"{(batch, num_patches, num_codes)}"
        )
    if num_patches < config.top_k:
        raise ValueError(f"NVA: top_k={config.top_k} needs at least that many patches, got L={num_patches}")
    if num_codes < config.num_candidates + 1:
        raise ValueError(
            f"NVA: {config.num_candidates} replacement candidates besides h_a need K >= "
            f"{config.num_candidates + 1} codes, got K={num_codes}"
        )
    device = image_tokens.device
    if generator.device.type != device.type or (
        device.index is not None and generator.device.index not in (None, device.index)
    ):
        raise ValueError(f"NVA: the generator is on {generator.device}, the tokens on {device}")
