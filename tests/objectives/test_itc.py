from __future__ import annotations

import math

import pytest
import torch

from nas.objectives.itc import (
    TEMP_MAX,
    ContrastiveLoss,
    distillation_targets,
    positive_targets,
    soft_cross_entropy,
)

EYE = torch.eye(2)


def _loss_with_queue(temp: float = 0.5, **kwargs) -> ContrastiveLoss:
    """Queue of one row: image queue [1, 0], text queue [0, 1]."""
    itc = ContrastiveLoss(2, 1, temp=temp, **kwargs)
    itc.image_queue.features.copy_(torch.tensor([[1.0, 0.0]]))
    itc.text_queue.features.copy_(torch.tensor([[0.0, 1.0]]))
    return itc


def test_hard_targets_by_hand():
    # τ = 0.5: image→text logits [[2, 0, 0], [0, 2, 2]], text→image [[2, 0, 2], [0, 2, 0]];
    # the positives are the diagonal. Both directions hold one row of each kind.
    out = _loss_with_queue()(EYE, EYE, EYE, EYE, alpha=0.0)
    row_a = -math.log(math.exp(2) / (math.exp(2) + 2))  # [2, 0, 0], positive first
    row_b = -math.log(math.exp(2) / (2 * math.exp(2) + 1))  # [0, 2, 2] or [2, 0, 2]
    assert out.loss.item() == pytest.approx((row_a + row_b) / 2, rel=1e-6)
    torch.testing.assert_close(out.sim_i2t, torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 2.0]]))
    torch.testing.assert_close(out.sim_t2i, torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 0.0]]))


def test_full_distillation_is_the_entropy_when_momentum_equals_online():
    # α = 1 and momentum features = online ones: targets = softmax(logits), loss = mean row entropy.
    out = _loss_with_queue()(EYE, EYE, EYE, EYE, alpha=1.0)

    def entropy(logits: list[float]) -> float:
        z = sum(math.exp(v) for v in logits)
        return -sum(math.exp(v) / z * (v - math.log(z)) for v in logits)

    expected = (entropy([2, 0, 0]) + entropy([0, 2, 2])) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_partial_distillation_matches_a_naive_loop():
    torch.manual_seed(0)
    feats = [torch.nn.functional.normalize(torch.randn(3, 4), dim=1) for _ in range(4)]
    itc = ContrastiveLoss(4, 5, temp=0.1)
    alpha = 0.3
    out = itc(*feats, alpha=alpha)

    image, text, image_m, text_m = feats
    image_all = torch.cat([image_m, itc.image_queue.features])
    text_all = torch.cat([text_m, itc.text_queue.features])
    total = 0.0
    for query, query_m, keys in ((image, image_m, text_all), (text, text_m, image_all)):
        for i in range(3):
            logits = [float(query[i] @ k) / 0.1 for k in keys]
            logits_m = [float(query_m[i] @ k) / 0.1 for k in keys]
            z, z_m = sum(map(math.exp, logits)), sum(map(math.exp, logits_m))
            for j in range(len(keys)):
                target = alpha * math.exp(logits_m[j]) / z_m + (1 - alpha) * (i == j)
                total -= target * (logits[j] - math.log(z)) / 3
    assert out.loss.item() == pytest.approx(total / 2, rel=1e-5)


def test_gradient_reaches_online_features_and_temperature_only():
    image, text = EYE.clone().requires_grad_(), EYE.clone().requires_grad_()
    image_m, text_m = EYE.clone().requires_grad_(), EYE.clone().requires_grad_()
    itc = _loss_with_queue()
    itc(image, text, image_m, text_m, alpha=0.4).loss.backward()
    assert image.grad is not None and text.grad is not None and itc.temp.grad is not None
    assert image_m.grad is None and text_m.grad is None


def test_temperature_is_clamped_in_forward():
    itc = _loss_with_queue()
    with torch.no_grad():
        itc.temp.fill_(3.0)
    itc(EYE, EYE, EYE, EYE, alpha=0.0)
    assert itc.temp.item() == TEMP_MAX
    with pytest.raises(ValueError, match="temp"):
        ContrastiveLoss(2, 1, temp=0.9)


def test_enqueue_gathers_every_rank():
    def fake_gather(x: torch.Tensor) -> torch.Tensor:  # world size 2: the other rank sends x + 10
        return torch.cat([x, x + 10])

    itc = ContrastiveLoss(2, 8, gather=fake_gather)
    image_m, text_m = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.full((3, 2), 2.0)
    itc.enqueue(image_m, text_m)
    assert int(itc.image_queue.ptr) == int(itc.text_queue.ptr) == 6
    torch.testing.assert_close(itc.image_queue.features[:6], torch.cat([image_m, image_m + 10]))
    torch.testing.assert_close(itc.text_queue.features[:6], torch.cat([text_m, text_m + 10]))


def test_same_image_positives_include_queued_rows():
    ids = torch.tensor([7, 7, 3])
    all_ids = torch.tensor([7, 7, 3, -100, 3])
    expected = torch.tensor([[0.5, 0.5, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 0.5, 0, 0.5]])
    torch.testing.assert_close(positive_targets(3, 5, ids, all_ids), expected)
    torch.testing.assert_close(positive_targets(2, 4), torch.eye(2, 4))

    itc = ContrastiveLoss(2, 4, match_ids=True)
    itc.enqueue(EYE, EYE, torch.tensor([5, 6]))
    assert itc.image_queue.ids.tolist()[:2] == [5, 6]
    with pytest.raises(ValueError, match="image ids"):
        itc(EYE, EYE, EYE, EYE, alpha=0.0)
    out = itc(EYE, EYE, EYE, EYE, alpha=0.0, ids=torch.tensor([5, 9]))
    assert torch.isfinite(out.loss)


def test_soft_cross_entropy_and_targets_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    assert soft_cross_entropy(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(-math.log(0.75))
    targets = distillation_targets(logits, torch.tensor([[1.0, 0.0]]), alpha=0.4)
    torch.testing.assert_close(targets, torch.tensor([[0.4 * 0.25 + 0.6, 0.4 * 0.75]]))
