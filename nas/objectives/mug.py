"""MUG's two losses (MUG_UTA.md §1, Algorithm 1): masked-patch reconstruction and captioning.

- Reconstruction [B] (MAE): the image cut into patches, each flattened as (row, column, channel);
  with `norm_pix` the target of a patch is its pixels standardised by the patch's own mean and
  (unbiased) variance, eps 1e-6 as in MAE; the mean-squared error per patch is averaged over the
  *masked* patches only.
- Captioning [P]: `label, txt = txt[:, 1:], txt[:, :-1]` (teacher forcing shifts by one); the
  cross-entropy of the shifted labels, averaged over the real tokens (the EOT target included,
  padding never counted).

Also the two baselines the evaluation reports beside them: predicting the patch mean (MSE of a zero
prediction on normalised targets) and a unigram language model of the training captions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import torch
import torch.nn.functional as F

MAE_NORM_EPS = 1e-6  # MAE models_mae.py forward_loss: (target - mean) / (var + 1.e-6) ** .5


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches in row-major grid order, pixels as (row, col, channel)."""
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch_size}")
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Inverse of `patchify` for a square grid: [B, N, p*p*C] -> [B, C, H, W]."""
    batch, num, _ = patches.shape
    side = math.isqrt(num)
    if side * side != num:
        raise ValueError(f"unpatchify needs a square grid, got {num} patches")
    x = patches.reshape(batch, side, side, patch_size, patch_size, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(batch, channels, side * patch_size, side * patch_size)


def reconstruction_targets(patches: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """MAE's target per patch: the raw pixels, or (norm_pix) standardised by the patch's statistics."""
    if not norm_pix:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, as torch.Tensor.var in MAE
    return (patches - mean) / (var + MAE_NORM_EPS).sqrt()


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches (mask = 1) of the per-patch mean squared error. Shapes [B, N, P], [B, N]."""
    if pred.shape != target.shape or pred.shape[:2] != mask.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} disagree"
        )
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    hidden = mask.sum()
    if hidden == 0:
        raise ValueError("no masked patch in the batch: the reconstruction loss is undefined (mask_ratio 0?)")
    return (per_patch * mask).sum() / hidden


def teacher_forcing(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(decoder inputs, labels, label mask): `ids[:, :-1]`, `ids[:, 1:]`, `attention_mask[:, 1:]`."""
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must be "
            "equal [B, L] with L >= 2"
        )
    return input_ids[:, :-1], input_ids[:, 1:], attention_mask[:, 1:]


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) at every position: logits [B, T, V], labels [B, T] -> [B, T] (float32)."""
    return -F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")


def caption_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy (nats per token) over the positions where `label_mask` is 1."""
    counted = label_mask.to(torch.float32)
    total = counted.sum()
    if total == 0:
        raise ValueError("no caption token to predict in the batch (every label is padding)")
    return -(token_log_probs(logits, labels) * counted).sum() / total


def mean_token_log_likelihood(
    logits: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor
) -> torch.Tensor:
    """Per sequence, the mean log-likelihood of its real tokens: [B] (the caption-likelihood score)."""
    counted = label_mask.to(torch.float32)
    lengths = counted.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("a sequence has no token to score (every label is padding)")
    return (token_log_probs(logits, labels) * counted).sum(dim=1) / lengths


def unigram_cross_entropy(train_tokens: Iterable[int], eval_tokens: Iterable[int], vocab_size: int) -> float:
    """Nats per token of `eval_tokens` under the add-one-smoothed unigram model of `train_tokens`:
    the caption loss of a decoder that ignores both the image and the preceding words."""
    counts = Counter(train_tokens)
    total = sum(counts.values()) + vocab_size
    eval_list = list(eval_tokens)
    if not eval_list:
        raise ValueError("unigram_cross_entropy: no evaluation token")
    return -sum(math.log((counts.get(t, 0) + 1) / total) for t in eval_list) / len(eval_list)
