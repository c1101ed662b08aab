"""NAS's visual dictionary (VD): discretise every ViT patch token to one of K codes (spec NAS_METHOD.md §3).

Data flow of one forward, for image tokens `[V_cls ; v_1 … v_L]` (L = h², row-major patches):

    x_i = ReLU(LN(Linear(v_i)))                       the neck feature
    h_i = argmin_j ||x_i − d_j||²                     with the codebook from BEFORE this step's update
    (EMA update of the codebook, training mode only)
    q_i = x_i + (d_{h_i} − x_i).detach()              straight-through, codebook from AFTER the update
    p_i = pos_line(q_i)
    g_i = softmax(ReLU(LN_2(Linear_2D→2([p_i ; x_i]))))
    t_i = g_i[0] · p_i + g_i[1] · x_i
    out = [V_cls ; LN(t_i + sine_position(i))]

The codebook is a buffer updated by exponential moving averages (VQ-VAE-EMA in SOHO's form), never by
gradient; the neck's layers (Linear + LN, pos_line, gate, final LN) are ordinary trainable parameters.
Sources: [A] = github.com/Gavin001201/NAS_ALBEF (models/sohonecks.py, models/soho_pre_vd.py);
[B] = SOHO (Huang et al., CVPR 2021); [D] = this project's decision (spec §3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas.distributed import all_reduce_sum
from nas.finite import check_finite

# [A] sohonecks.position_encoding_sine: positions 1..h are divided by (h + 1e-6) and scaled to 2π.
_POSITION_EPS = 1e-6
# k-means works through the features in chunks so the [chunk, K] distance matrix stays small.
_KMEANS_CHUNK = 8192


@dataclass
class VisualDictionaryConfig:
    """Knobs of the visual dictionary. Defaults are the tiny profile; paper values in the comments."""

    num_codes: int = 64  # K; [A] num_tokens=2048 (spec §3)
    dim: int = 192  # token width = ViT width; [A] 768 (ViT-B/16). Must be divisible by 4 (sine encoding).
    epsilon: float = 1e-5  # Laplace smoothing of the EMA counts; [B]/[A] 1e-5
    gamma_start: float = 0.2  # EMA momentum floor at the start of stage 1; [A] 0.2
    freeze_fraction: float = 0.9  # γ reaches 1 (VD frozen) after this fraction of stage-1 steps; [A] 0.9
    init: Literal["kmeans", "random"] = "kmeans"  # [D] spec §3 "VD construction stage"; "random" = [A]
    kmeans_iters: int = 20  # [D] Lloyd iterations of the k-means initialisation
    kmeans_sample_images: int = 64  # [D] training images whose neck features feed the k-means
    position_temperature: float = 10000.0  # sine position encoding temperature; [A] 10000
    frozen: bool = False  # stage 2 and fine-tuning: True (codebook buffer frozen; the neck still trains)

    def __post_init__(self) -> None:
        if self.num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {self.num_codes}")
        if self.dim < 4 or self.dim % 4:
            raise ValueError(
                f"dim must be a positive multiple of 4 (half the channels encode y, half x, in sin/cos "
                f"pairs), got {self.dim}"
            )
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if not 0.0 <= self.gamma_start <= 1.0:
            raise ValueError(f"gamma_start must be in [0, 1], got {self.gamma_start}")
        if not 0.0 < self.freeze_fraction <= 1.0:
            raise ValueError(f"freeze_fraction must be in (0, 1], got {self.freeze_fraction}")
        if self.kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, got {self.kmeans_iters}")
        if self.kmeans_sample_images < 1:
            raise ValueError(f"kmeans_sample_images must be >= 1, got {self.kmeans_sample_images}")
        if not self.position_temperature > 0:
            raise ValueError(f"position_temperature must be > 0, got {self.position_temperature}")


@dataclass
class VDOutput:
    """Everything one VD forward produces; NVA (nas.models.nva) consumes the middle fields."""

    tokens: torch.Tensor  # [B, 1+L, D] image tokens for the fusion encoder: [V_cls ; t_1..t_L] encoded
    features: torch.Tensor  # [B, L, D] neck features x
    codes: torch.Tensor  # [B, L] long, assignments h (pre-update codebook)
    distances: torch.Tensor  # [B, L, K] squared L2 from x to the pre-update codebook (no gradient)
    quantized: torch.Tensor  # [B, L, D] straight-through q (post-update codebook)
    gate: torch.Tensor  # [B, L, 2] gate weights (g[0] for p, g[1] for x)
    pre_position: torch.Tensor  # [B, L, D] gated tokens t, before position encoding and final LN


def ema_momentum(step: int, total_steps: int, gamma_start: float, freeze_fraction: float) -> float:
    """γ_t = min(1, max(γ_start, t / ⌈freeze_fraction · T⌉)), t counted from 1 ([A], spec §3).

    The product is rounded to 9 decimals before the ceiling so that e.g. 0.9 · 70 (= 63.000000000000014
    in binary floating point) ramps over 63 steps, not 64.
    """
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    ramp_steps = max(1, math.ceil(round(freeze_fraction * total_steps, 9)))
    return min(1.0, max(gamma_start, step / ramp_steps))


def sine_position_encoding(
    num_patches: int,
    dim: int,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """2-D sine position encoding [L, dim] of a square, row-major patch grid ([A], spec §3).

    Row and column positions 1..h are divided by (h + 1e-6) and multiplied by 2π; channel 2k and 2k+1 of
    a half hold sin and cos of position / temperature^(2k / (dim/2)); the first half encodes the row (y),
    the second half the column (x).
    """
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"the visual dictionary needs a square patch grid, got L={num_patches} patches")
    if dim % 4:
        raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
    half = dim // 2
    # Computed in float32 as [A] does, then cast, so every dtype sees the same encoding.
    positions = torch.arange(1, side + 1, dtype=torch.float32, device=device)
    positions = positions / (side + _POSITION_EPS) * (2 * math.pi)
    pair_index = torch.arange(half, device=device, dtype=torch.float32).div(2, rounding_mode="floor")
    frequencies = temperature ** (2 * pair_index / half)
    angles = positions[:, None] / frequencies  # [h, half]
    encoded = torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)  # interleave
    rows = encoded[:, None, :].expand(side, side, half)  # y: constant along a row
    cols = encoded[None, :, :].expand(side, side, half)  # x: constant along a column
    return torch.cat((rows, cols), dim=2).reshape(num_patches, dim).to(dtype)


def _xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    # [A] SimpleVDforPreGate.init_weights: Xavier-normal weights, zero bias for every Linear of the neck.
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class VisualDictionary(nn.Module):
    """Neck + EMA codebook + gate + position encoding; see the module docstring for the data flow.

    `reduce_sum` sums a tensor over ranks (default: `nas.distributed.all_reduce_sum`); tests inject a fake.
    Call `set_total_steps(T)` (stage-1 steps per rank) before training an unfrozen dictionary.
    """

    def __init__(
        self,
        config: VisualDictionaryConfig | None = None,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] = all_reduce_sum,
    ) -> None:
        super().__init__()
        self.config = config = config or VisualDictionaryConfig()
        self.reduce_sum = reduce_sum
        self.frozen = config.frozen
        self.total_steps: int | None = None
        dim, num_codes = config.dim, config.num_codes

        self.input_proj = _xavier_linear(dim, dim)
        self.input_norm = nn.LayerNorm(dim)
        self.pos_line = _xavier_linear(dim, dim)
        self.gate_proj = _xavier_linear(2 * dim, 2)
        # LayerNorm over 2 channels maps any pair to ≈ ±(1, −1): the gate is nearly binary
        # (≈ 0.731 / 0.269 after ReLU + softmax). [A] has it so; reproduced as is (spec §3).
        self.gate_norm = nn.LayerNorm(2)
        self.output_norm = nn.LayerNorm(dim)

        # Codebook and EMA state are buffers: checkpointed, moved by .to(), never trained by gradient.
        self.register_buffer("codebook", torch.randn(num_codes, dim))
        self.register_buffer("ema_counts", torch.zeros(num_codes))  # N_j
        self.register_buffer("ema_sums", torch.zeros(num_codes, dim))  # m_j
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # EMA steps taken (t)

    # ----------------------------------------------------------------------------------- schedule
    def set_total_steps(self, total_steps: int) -> None:
        """T of the γ ramp: the number of stage-1 steps per rank."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)

    def freeze(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the codebook buffer; the neck's parameters keep training either way."""
        self.frozen = frozen

    def momentum(self, step: int) -> float:
        """γ for EMA step `step` (counted from 1)."""
        if self.total_steps is None:
            raise RuntimeError(
                "VisualDictionary: call set_total_steps(T) before training an unfrozen dictionary "
                "(T = stage-1 steps per rank, for the γ ramp)"
            )
        cfg = self.config
        return ema_momentum(step, self.total_steps, cfg.gamma_start, cfg.freeze_fraction)

    # ----------------------------------------------------------------------------------- forward
    def forward(self, image_tokens: torch.Tensor) -> VDOutput:
        """`image_tokens` [B, 1+L, D]: the ViT output, [CLS] first. In training mode (and not frozen) the
        codebook takes one EMA step between the assignment and the straight-through value."""
        self._check_tokens(image_tokens)
        cls_token, patches = image_tokens[:, :1], image_tokens[:, 1:]
        features = self.features(patches)
        distances = self.squared_distances(features)
        codes = distances.argmin(dim=-1)
        if self.training and not self.frozen:
            self.update_codebook(features.detach(), codes)
        quantized = self.straight_through(features, codes)
        projected = self.pos_line(quantized)
        gate = self.gate_weights(projected, features)
        gated = gate[..., :1] * projected + gate[..., 1:] * features
        return VDOutput(
            tokens=self.finish(cls_token, gated),
            features=features,
            codes=codes,
            distances=distances,
            quantized=quantized,
            gate=gate,
            pre_position=gated,
        )

    def features(self, patches: torch.Tensor) -> torch.Tensor:
        """The neck feature x = ReLU(LN(Linear(v))) of patch tokens [..., D]."""
        return F.relu(self.input_norm(self.input_proj(patches)))

    @torch.no_grad()
    def squared_distances(self, features: torch.Tensor) -> torch.Tensor:
        """||x − d_j||² to every code [..., K], in the codebook's precision (autocast off)."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features.to(self.codebook.dtype)
            codebook = self.codebook
            return x.pow(2).sum(-1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(-1)

    def straight_through(self, features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """q = x + (d_h − x).detach(): the code's value forward, the identity's gradient backward."""
        code_vectors = self.codebook[codes].to(features.dtype)
        return features + (code_vectors - features).detach()

    def gate_weights(self, projected: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """softmax(ReLU(LN_2(Linear([p ; x])))) [..., 2]."""
        logits = F.relu(self.gate_norm(self.gate_proj(torch.cat([projected, features], dim=-1))))
        return logits.softmax(dim=-1)

    def finish(self, cls_token: torch.Tensor, pre_position: torch.Tensor) -> torch.Tensor:
        """[V_cls ; LN(t + sine position)]: shared by the positive and NVA's negative, so tokens the
        negative did not touch come out bitwise equal."""
        position = sine_position_encoding(
            pre_position.shape[1],
            pre_position.shape[2],
            self.config.position_temperature,
            device=pre_position.device,
            dtype=pre_position.dtype,
        )
        return torch.cat([cls_token, self.output_norm(pre_position + position)], dim=1)

    def _check_tokens(self, image_tokens: torch.Tensor) -> None:
        if image_tokens.dim() != 3 or image_tokens.shape[1] < 2:
            raise ValueError(
                f"VisualDictionary expects image tokens [B, 1+L, D] ([CLS] + L >= 1 patches), "
                f"got shape {tuple(image_tokens.shape)}"
            )
        if image_tokens.shape[2] != self.config.dim:
            raise ValueError(
                f"VisualDictionary: token width {image_tokens.shape[2]} != config dim {self.config.dim}"
            )

    # ----------------------------------------------------------------------------------- EMA
    @torch.no_grad()
    def update_codebook(self, features: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step (spec §3) from local features [..., D] and their codes [...]; counts and sums are
        summed over ranks first. Increments the step counter; a no-op when frozen or once γ = 1."""
        if self.frozen:
            return
        if features.shape[:-1] != codes.shape:
            raise ValueError(
                f"update_codebook: features {tuple(features.shape)} and codes {tuple(codes.shape)} disagree"
            )
        gamma = self.momentum(int(self.step) + 1)
        self.step += 1
        if gamma >= 1.0:
            # With γ = 1 the state is unchanged and d = m / Ñ recomputes the same codebook [A]: skip
            # (and skip the collective, which every rank skips at the same step).
            return
        num_codes, dim = self.codebook.shape
        with torch.autocast(device_type=features.device.type, enabled=False):
            flat = features.reshape(-1, dim).to(self.codebook.dtype)
            # One-hot matmul rather than index_add_: deterministic on every device.
            one_hot = F.one_hot(codes.reshape(-1), num_codes).to(flat.dtype)
            local = torch.cat([one_hot.sum(0)[:, None], one_hot.t() @ flat], dim=1)
            total = self.reduce_sum(local)  # one collective for counts and sums together
            self.ema_counts.mul_(gamma).add_(total[:, 0], alpha=1 - gamma)
            self.ema_sums.mul_(gamma).add_(total[:, 1:], alpha=1 - gamma)
            self.codebook.copy_(self.ema_sums / self._smoothed_counts()[:, None])

    def _smoothed_counts(self) -> torch.Tensor:
        # Laplace smoothing [B]: Ñ_j = (N_j + ε) / (Σ_k N_k + K ε) · Σ_k N_k.
        eps = self.config.epsilon
        total = self.ema_counts.sum()
        return (self.ema_counts + eps) / (total + self.ema_counts.numel() * eps) * total

    # ----------------------------------------------------------------------------------- init
    def initialize(
        self, features: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> None:
        """Initialise as `config.init` says (the build_vd stage's entry point): "kmeans" needs neck
        features [N, D] (`self.features(patches)` of `config.kmeans_sample_images` images)."""
        if self.config.init == "random":
            self.init_random(generator)
        elif features is None:
            raise ValueError("visual_dictionary.init = 'kmeans' needs neck features to cluster; got none")
        else:
            self.init_from_kmeans(features, generator)

    @torch.no_grad()
    def init_random(self, generator: torch.Generator | None = None) -> None:
        """The sources' initialisation [A]: N(0, 1) codebook, EMA state zero (so the first update zeroes
        every code the first global batch misses). The step counter restarts."""
        self.codebook.copy_(
            torch.randn(
                self.codebook.shape, generator=generator, device=self._generator_device(generator)
            ).to(self.codebook)
        )
        self.ema_counts.zero_()
        self.ema_sums.zero_()
        self.step.zero_()

    @torch.no_grad()
    def init_from_kmeans(self, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """k-means (k-means++ seeds, then `config.kmeans_iters` Lloyd rounds) over neck features [N, D] [D].

        Seeds the EMA state consistently with the codebook, N_j = cluster size and m_j = d_j · N_j, so the
        first EMA update does not erase it. Clusters that empty out are re-seeded with the features
        farthest from their centres; a cluster still empty at the end has N_j = 0 (reported by `health`).
        """
        num_codes, dim = self.codebook.shape
        if features.dim() != 2 or features.shape[1] != dim:
            raise ValueError(f"init_from_kmeans: features must be [N, {dim}], got {tuple(features.shape)}")
        if features.shape[0] < num_codes:
            raise ValueError(
                f"init_from_kmeans: {features.shape[0]} features cannot seed {num_codes} codes "
                "(sample more images: visual_dictionary.kmeans_sample_images)"
            )
        check_finite(features, "init_from_kmeans: the VD neck features")
        data = features.to(self.codebook)
        centres = _kmeans_plus_plus_seeds(data, num_codes, generator)
        for _ in range(self.config.kmeans_iters):
            codes, nearest = _nearest_codes(data, centres)
            counts, sums = _cluster_sums(data, codes, num_codes)
            filled = counts > 0
            centres[filled] = sums[filled] / counts[filled, None]
            empty = (~filled).nonzero().squeeze(1)
            if empty.numel():
                far = nearest.topk(empty.numel()).indices
                centres[empty] = data[far]
        codes, _ = _nearest_codes(data, centres)
        counts, _ = _cluster_sums(data, codes, num_codes)
        self.codebook.copy_(centres)
        self.ema_counts.copy_(counts)
        self.ema_sums.copy_(centres * counts[:, None])
        self.step.zero_()

    def _generator_device(self, generator: torch.Generator | None) -> torch.device:
        return generator.device if generator is not None else self.codebook.device

    # ----------------------------------------------------------------------------------- health
    @torch.no_grad()
    def health(
        self, *, codes: torch.Tensor | None = None, counts: torch.Tensor | None = None
    ) -> dict[str, float | int]:
        """Dictionary health from assignments (`codes`, any shape) or a per-code histogram (`counts` [K]):
        codes in use, perplexity of the assignment histogram, and dead codes = never used or all-zero."""
        num_codes = self.codebook.shape[0]
        if (codes is None) == (counts is None):
            raise ValueError("health: pass exactly one of codes= or counts=")
        if codes is not None:
            if codes.numel() and (codes.min() < 0 or codes.max() >= num_codes):
                raise ValueError(
                    f"health: codes must lie in [0, {num_codes}), got {codes.min()}..{codes.max()}"
                )
            counts = torch.bincount(codes.reshape(-1).long(), minlength=num_codes)
        assert counts is not None
        if counts.shape != (num_codes,):
            raise ValueError(f"health: counts must have shape ({num_codes},), got {tuple(counts.shape)}")
        counts = counts.double()
        if (counts < 0).any() or counts.sum() <= 0:
            raise ValueError("health: the histogram must be non-negative with a positive total")
        probs = counts / counts.sum()
        entropy = -(probs * probs.clamp_min(1e-300).log()).sum()
        unused = counts == 0
        zero = (self.codebook == 0).all(dim=1).to(unused.device)
        return {
            "num_codes": num_codes,
            "codes_in_use": int((~unused).sum()),
            "perplexity": float(entropy.exp()),
            "unused_codes": int(unused.sum()),
            "zero_codes": int(zero.sum()),
            "dead_codes": int((unused | zero).sum()),
        }


def _kmeans_plus_plus_seeds(
    data: torch.Tensor, num_codes: int, generator: torch.Generator | None
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each next seed is drawn with probability ∝ its
    squared distance to the nearest seed so far. Plain random seeds often put two centres in one cluster,
    which Lloyd iterations cannot undo."""
    draw_device = generator.device if generator is not None else data.device

    def draw(weights: torch.Tensor) -> int:
        # Finite features can still overflow their squared distances: stop by name, not in multinomial.
        check_finite(weights, "k-means++ seeding weights (squared distances of the VD features)")
        if not weights.sum() > 0:  # every remaining point sits on a seed (duplicates): draw uniformly
            weights = torch.ones_like(weights)
        return int(torch.multinomial(weights.to(draw_device), 1, generator=generator))

    centres = torch.empty(num_codes, data.shape[1], dtype=data.dtype, device=data.device)
    centres[0] = data[draw(torch.ones(data.shape[0], dtype=data.dtype, device=data.device))]
    closest = (data - centres[0]).pow(2).sum(-1)
    for index in range(1, num_codes):
        centres[index] = data[draw(closest)]
        closest = torch.minimum(closest, (data - centres[index]).pow(2).sum(-1))
    return centres


def _nearest_codes(data: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row of `data` and its squared distance, chunk by chunk."""
    codes, distances = [], []
    centre_norms = centres.pow(2).sum(-1)
    for chunk in data.split(_KMEANS_CHUNK):
        squared = chunk.pow(2).sum(-1, keepdim=True) - 2 * chunk @ centres.t() + centre_norms
        best = squared.min(dim=1)
        codes.append(best.indices)
        distances.append(best.values)
    return torch.cat(codes), torch.cat(distances)


def _cluster_sums(
    data: torch.Tensor, codes: torch.Tensor, num_codes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster counts [K] and feature sums [K, D] (one-hot matmul: deterministic on every device)."""
    counts = torch.zeros(num_codes, dtype=data.dtype, device=data.device)
    sums = torch.zeros(num_codes, data.shape[1], dtype=data.dtype, device=data.device)
    for chunk, chunk_codes in zip(data.split(_KMEANS_CHUNK), codes.split(_KMEANS_CHUNK)):
        one_hot = F.one_hot(chunk_codes, num_codes).to(data.dtype)
        counts += one_hot.sum(0)
        sums += one_hot.t() @ chunk
    return counts, sums
