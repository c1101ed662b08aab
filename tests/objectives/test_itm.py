from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nas.objectives.itm import (
    MATCH,
    NO_MATCH,
    HardNegativeSchedule,
    ITMBlock,
    concat_blocks,
    hard_negative_blocks,
    itm_loss,
    negative_weights,
    sample_hard_negatives,
    sample_negatives,
    select_rows,
)


def test_weights_by_hand_exclude_same_image_columns():
    sim = torch.tensor([[5.0, 0.0, math.log(3.0)], [1.0, 9.0, 1.0], [0.0, 0.0, 0.0]])
    ids = torch.tensor([4, 8, 4])  # rows 0 and 2 show the same image
    weights = negative_weights(sim, ids)
    # Row 0 may only pick column 1; row 1 picks 0 or 2 (equal logits); row 2 only column 1.
    torch.testing.assert_close(weights, torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]))
    # ALBEF: softmax over the row, own pair zeroed, renormalised by multinomial: same distribution.
    albef = torch.softmax(torch.tensor([1.0, 9.0, 1.0]), 0) * torch.tensor([1.0, 0.0, 1.0])
    torch.testing.assert_close(weights[1], albef / albef.sum())


def test_confident_rows_do_not_underflow():
    sim = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])  # softmax of the row then zeroing gives 0/0
    torch.testing.assert_close(negative_weights(sim, torch.arange(2)), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_a_row_without_another_image_is_an_error():
    with pytest.raises(ValueError, match="row 0 .*image_id 3.*two distinct"):
        negative_weights(torch.zeros(2, 2), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match=r"\[B, B\]"):
        negative_weights(torch.zeros(2, 3), torch.tensor([1, 2]))


@given(
    ids=st.lists(st.integers(0, 3), min_size=2, max_size=8).filter(lambda ids: len(set(ids)) > 1),
    seed=st.integers(0, 2**16),
)
def test_samples_never_show_the_same_image(ids: list[int], seed: int):
    image_ids = torch.tensor(ids)
    sims = torch.randn(2, len(ids), len(ids), generator=torch.Generator().manual_seed(seed)) * 5
    negative_images, negative_texts = sample_hard_negatives(
        sims[0], sims[1], image_ids, torch.Generator().manual_seed(seed)
    )
    assert (image_ids[negative_images] != image_ids).all()
    assert (image_ids[negative_texts] != image_ids).all()
    again = sample_hard_negatives(sims[0], sims[1], image_ids, torch.Generator().manual_seed(seed))
    assert torch.equal(again[0], negative_images) and torch.equal(again[1], negative_texts)


def test_draw_frequencies_follow_the_weights():
    # 4 images, 500 texts each; every column showing image 1 has logit log 2, the rest 0. A text of
    # image 0 must draw image 1, 2, 3 with probabilities 1/2, 1/4, 1/4 (and never image 0).
    image_ids = torch.arange(4).repeat(500)
    sim = torch.where(image_ids == 1, math.log(2.0), 0.0).expand(len(image_ids), -1)
    negative_images, _ = sample_hard_negatives(sim, sim, image_ids, torch.Generator().manual_seed(0))
    drawn = image_ids[negative_images[image_ids == 0]]
    freq = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert freq[0] == 0
    torch.testing.assert_close(freq[1:], torch.tensor([0.5, 0.25, 0.25]), atol=0.05, rtol=0)


def test_blocks_pair_rows_and_labels_in_order():
    images = torch.arange(3.0)[:, None, None].expand(3, 2, 1)
    texts = 10 + torch.arange(3.0)[:, None, None].expand(3, 4, 1)
    masks = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    negatives = hard_negative_blocks(images, texts, masks, torch.tensor([1, 2, 0]), torch.tensor([2, 0, 1]))
    blocks = [ITMBlock(images, texts, masks, MATCH), *negatives]
    image_rows, text_rows, mask_rows, labels = concat_blocks(blocks)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert image_rows[:, 0, 0].tolist() == [0, 1, 2, 1, 2, 0, 0, 1, 2]
    assert text_rows[:, 0, 0].tolist() == [10, 11, 12, 10, 11, 12, 12, 10, 11]
    assert mask_rows.sum(1).tolist() == [2, 3, 4, 2, 3, 4, 4, 2, 3]  # masks travel with their texts
    assert negatives[0].label == negatives[1].label == NO_MATCH


def test_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p(match) = 3/4, then 1/2
    expected = (-math.log(0.75) - math.log(0.5)) / 2
    assert itm_loss(logits, torch.tensor([1, 0])).item() == pytest.approx(expected)


def test_select_rows_equals_indexing_forward_and_backward_with_repeated_rows():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(5, 3, 4, generator=generator, requires_grad=True)
    index = torch.tensor([2, 2, 0, 2, 4, 0])  # an image drawn as negative by several texts
    weights = torch.randn(6, 3, 4, generator=generator)
    selected = select_rows(source, index)
    # On CPU the backward is index_add_ (serial, a fixed sum order), not index_put_'s atomic adds.
    assert type(selected.grad_fn).__name__ == "IndexSelectBackward0"
    (selected * weights).sum().backward()
    by_select = source.grad.clone()
    source.grad = None
    indexed = source[index]
    (indexed * weights).sum().backward()
    assert torch.equal(selected, indexed)
    torch.testing.assert_close(by_select, source.grad, rtol=0, atol=1e-6)
    expected_row_2 = weights[0] + weights[1] + weights[3]
    torch.testing.assert_close(by_select[2], expected_row_2)
    assert torch.count_nonzero(by_select[[1, 3]]) == 0


# ---- the hard-negative schedule ([D], issue 12) ---------------------------------------------------------


def test_schedule_by_hand():
    schedule = HardNegativeSchedule(uniform_steps=2, ramp_steps=4, final_hard_fraction=0.8)
    fractions = [schedule.hard_fraction(step) for step in range(8)]
    assert fractions == pytest.approx([0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    assert HardNegativeSchedule().hard_fraction(0) == 1.0  # the default is ALBEF's, from step 0
    assert HardNegativeSchedule(uniform_steps=3).hard_fraction(3) == 1.0  # no ramp: a switch
    with pytest.raises(ValueError, match="final_hard_fraction"):
        HardNegativeSchedule(final_hard_fraction=1.5)
    with pytest.raises(ValueError, match="uniform_steps"):
        HardNegativeSchedule(uniform_steps=-1)


def test_full_hardness_is_albefs_draw_for_draw():
    sim = torch.randn(6, 6) * 5
    ids = torch.arange(6)
    a = sample_negatives(sim, sim.T, ids, torch.Generator().manual_seed(3), hard_fraction=1.0)
    b = sample_hard_negatives(sim, sim.T, ids, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_hardness_zero_draws_uniformly_and_excludes_the_same_image():
    # Row 0's hard weights put (almost) all mass on column 1; uniform draws must ignore that.
    sim = torch.zeros(4, 4)
    sim[:, 1] = 50.0
    ids = torch.tensor([0, 0, 1, 2])  # rows 0 and 1 show the same image
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [sample_negatives(sim, sim, ids, generator, hard_fraction=0.0)[0] for _ in range(3000)]
    )
    counts = torch.bincount(draws[:, 0], minlength=4)
    assert counts[0] == counts[1] == 0  # never row 0's own image
    assert abs(int(counts[2]) - 1500) < 150 and abs(int(counts[3]) - 1500) < 150


def test_half_hardness_mixes_rows_at_that_rate():
    sim = torch.full((8, 8), -50.0)
    sim[:, 7] = 50.0  # the hard draw is always column 7 (for rows other than 7)
    sim[7, 6] = 50.0
    ids = torch.arange(8)
    generator = torch.Generator().manual_seed(1)
    hard_share = []
    for _ in range(400):
        negative_image, _ = sample_negatives(sim, sim, ids, generator, hard_fraction=0.5)
        hard_share.append(float((negative_image[:7] == 7).float().mean()))
    # Uniform rows hit column 7 with probability 1/7 too: expected share 0.5 + 0.5 / 7.
    assert sum(hard_share) / len(hard_share) == pytest.approx(0.5 + 0.5 / 7, abs=0.03)
