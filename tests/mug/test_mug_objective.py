"""MUG's losses on tiny tensors: hand-checkable values, loss only on masked patches, teacher forcing
shifts by one, padding never counts (MUG_UTA.md §3)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nas.objectives.mug import (
    caption_cross_entropy,
    masked_patch_mse,
    mean_token_log_likelihood,
    patchify,
    reconstruction_targets,
    teacher_forcing,
    unigram_cross_entropy,
    unpatchify,
)


def test_patchify_order_and_round_trip():
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # 2 channels, 2x2 grid of 2x2
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 8)
    # patch 1 = rows 0-1, columns 2-3; pixels (row, col, channel): (0,2,c0)=2, (0,2,c1)=18, (0,3,c0)=3 ...
    assert patches[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]
    assert torch.equal(unpatchify(patches, 2, channels=2), image)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 3, 5, 4), 2)


def test_normalised_pixel_targets_by_hand():
    patch = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])  # mean 3, unbiased var (4+1+0+9)/3 = 14/3
    expected = (patch - 3.0) / math.sqrt(14 / 3 + 1e-6)
    assert torch.allclose(reconstruction_targets(patch), expected)
    assert torch.equal(reconstruction_targets(patch, norm_pix=False), patch)


def test_masked_mse_by_hand_and_only_masked_patches_count():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [5.0, 5.0]]])
    target = torch.zeros(1, 3, 2)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # patch 2 is visible
    # per-patch MSE: 1, 2, (25, ignored) -> mean over the two masked patches = 1.5
    assert masked_patch_mse(pred, target, mask).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="no masked patch"):
        masked_patch_mse(pred, target, torch.zeros(1, 3))


@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), p=st.integers(1, 6))
def test_changing_visible_patch_predictions_never_changes_the_loss(seed, n, p):
    gen = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(2, n, p, generator=gen), torch.randn(2, n, p, generator=gen)
    mask = (torch.rand(2, n, generator=gen) < 0.5).float()
    mask[:, 0] = 1.0
    changed = pred + (1 - mask).unsqueeze(-1) * torch.randn(2, n, p, generator=gen)
    assert torch.allclose(masked_patch_mse(pred, target, mask), masked_patch_mse(changed, target, mask))


def test_teacher_forcing_shifts_by_one():
    ids = torch.tensor([[49406, 7, 8, 49407, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    inputs, labels, label_mask = teacher_forcing(ids, mask)
    assert inputs.tolist() == [[49406, 7, 8, 49407]]
    assert labels.tolist() == [[7, 8, 49407, 0]]
    assert label_mask.tolist() == [[1, 1, 1, 0]]  # EOT is predicted, padding is not
    with pytest.raises(ValueError, match="L >= 2"):
        teacher_forcing(ids[:, :1], mask[:, :1])


def test_caption_cross_entropy_by_hand():
    # vocabulary of 2; position 0: logits (0, 0) -> log 2; position 1: (log 3, 0) with label 0 -> log(4/3)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [9.0, -9.0]]])
    labels = torch.tensor([[1, 0, 1]])
    label_mask = torch.tensor([[1, 1, 0]])
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert caption_cross_entropy(logits, labels, label_mask).item() == pytest.approx(expected)
    assert mean_token_log_likelihood(logits, labels, label_mask).item() == pytest.approx(-expected)
    with pytest.raises(ValueError, match="every label is padding"):
        caption_cross_entropy(logits, labels, torch.zeros_like(label_mask))


@given(seed=st.integers(0, 10_000), length=st.integers(2, 8), vocab=st.integers(2, 9))
def test_padding_never_contributes(seed, length, vocab):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, length, vocab, generator=gen)
    labels = torch.randint(0, vocab, (3, length), generator=gen)
    real = torch.randint(1, length + 1, (3,), generator=gen)
    label_mask = (torch.arange(length)[None] < real[:, None]).long()
    pad = 1 - label_mask
    other_logits = logits + pad.unsqueeze(-1) * torch.randn(3, length, vocab, generator=gen) * 10
    other_labels = torch.where(pad.bool(), torch.randint(0, vocab, (3, length), generator=gen), labels)
    assert torch.allclose(
        caption_cross_entropy(logits, labels, label_mask),
        caption_cross_entropy(other_logits, other_labels, label_mask),
    )
    assert torch.allclose(
        mean_token_log_likelihood(logits, labels, label_mask),
        mean_token_log_likelihood(other_logits, other_labels, label_mask),
    )


def test_unigram_cross_entropy_by_hand():
    # train counts {1: 2, 2: 1}, vocabulary 3, add-one: p(1) = 3/6, p(2) = 2/6, p(0) = 1/6
    value = unigram_cross_entropy([1, 1, 2], [1, 0], vocab_size=3)
    assert value == pytest.approx(-(math.log(3 / 6) + math.log(1 / 6)) / 2)
    with pytest.raises(ValueError, match="no evaluation token"):
        unigram_cross_entropy([1], [], vocab_size=3)
