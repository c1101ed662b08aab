from __future__ import annotations

import math

import pytest
import torch

from nas.objectives.mlm import IGNORE_INDEX, mask_tokens, mlm_loss

CLS, SEP, PAD, MASK = 101, 102, 0, 103
VOCAB = 30522


def _texts(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """[CLS] words [SEP] [PAD]...: word ids in 1000..29999, each row with its own length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, length), generator=g)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    for row, n in enumerate(lengths.tolist()):
        ids[row, 0], ids[row, n - 1] = CLS, SEP
        ids[row, n:] = PAD
    return ids


def test_everything_selected_becomes_mask_when_replace_is_certain():
    ids = _texts(4, 9)
    masked, labels = mask_tokens(
        ids, vocab_size=VOCAB, mask_probability=1.0, replace_probability=1.0, random_probability=0.0
    )
    words = (ids != CLS) & (ids != SEP) & (ids != PAD)
    assert torch.equal(masked, torch.where(words, torch.full_like(ids, MASK), ids))
    assert torch.equal(labels, torch.where(words, ids, torch.full_like(ids, IGNORE_INDEX)))


def test_keep_branch_leaves_ids_but_still_labels_them():
    ids = _texts(4, 9)
    masked, labels = mask_tokens(
        ids, vocab_size=VOCAB, mask_probability=1.0, replace_probability=0.0, random_probability=0.0
    )
    assert torch.equal(masked, ids)
    assert ((labels != IGNORE_INDEX) == ((ids != CLS) & (ids != SEP) & (ids != PAD))).all()


def test_nothing_selected_at_probability_zero():
    ids = _texts(3, 6)
    masked, labels = mask_tokens(ids, vocab_size=VOCAB, mask_probability=0.0)
    assert torch.equal(masked, ids) and (labels == IGNORE_INDEX).all()


def test_statistics_on_a_big_batch():
    ids = _texts(512, 32)
    masked, labels = mask_tokens(ids, vocab_size=VOCAB, generator=torch.Generator().manual_seed(1))
    special = (ids == CLS) | (ids == SEP) | (ids == PAD)
    selected = labels != IGNORE_INDEX
    assert not (selected & special).any()
    assert torch.equal(masked[special], ids[special])  # specials are never touched
    assert torch.equal(masked[~selected], ids[~selected])  # nor unselected words
    assert torch.equal(labels[selected], ids[selected])
    rate = selected.sum().item() / (~special).sum().item()
    assert rate == pytest.approx(0.15, abs=0.01)
    n = selected.sum().item()
    to_mask = (masked[selected] == MASK).sum().item() / n
    kept = (masked[selected] == ids[selected]).sum().item() / n
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)  # a random draw equal to the word is ~3e-5 likely
    assert 1 - to_mask - kept == pytest.approx(0.1, abs=0.02)


def test_same_generator_seed_same_masks():
    ids = _texts(8, 12)
    first = mask_tokens(ids, vocab_size=VOCAB, generator=torch.Generator().manual_seed(5))
    second = mask_tokens(ids, vocab_size=VOCAB, generator=torch.Generator().manual_seed(5))
    other = mask_tokens(ids, vocab_size=VOCAB, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_invalid_probabilities_are_errors():
    ids = _texts(2, 5)
    with pytest.raises(ValueError, match="mask_probability"):
        mask_tokens(ids, vocab_size=VOCAB, mask_probability=1.5)
    with pytest.raises(ValueError, match="sum to at most 1"):
        mask_tokens(ids, vocab_size=VOCAB, replace_probability=0.8, random_probability=0.3)


def test_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0]])  # softmax [.2, .6, .2], [1/3]*3
    targets = torch.tensor([1, 2])
    hard = (-math.log(0.6) - math.log(1 / 3)) / 2
    assert mlm_loss(logits, targets).item() == pytest.approx(hard)
    # Soft targets softmax(momentum) = one-hot-like on column 0 for row 0, uniform for row 1.
    momentum = torch.tensor([[30.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    soft = (-math.log(0.2) - math.log(1 / 3)) / 2
    assert mlm_loss(logits, targets, momentum, alpha=0.4).item() == pytest.approx(
        0.6 * hard + 0.4 * soft, rel=1e-6
    )
    assert mlm_loss(logits, targets, momentum, alpha=0.0).item() == pytest.approx(hard)


def test_no_selected_position_gives_a_connected_zero():
    logits = torch.zeros(0, 5, requires_grad=True)
    loss = mlm_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, 5), alpha=0.4)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None
