"""Negative Visual Augmentation (spec NAS_METHOD.md §4): the hypothesis properties the spec lists, the
sampling weights on constructed inputs, and the [D] options."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nas.config.base import ConfigError, from_dict
from nas.models.nva import NVAConfig, negative_visual_augmentation, patch_scores
from nas.models.visual_dictionary import VisualDictionary, VisualDictionaryConfig


def setup(batch, side, num_codes, dim, seed, scale=1.0, dtype=torch.float32, train=False):
    """A VD (trained one step when `train`), random ViT tokens and text [CLS], and the positive."""
    torch.manual_seed(seed)
    vd = VisualDictionary(VisualDictionaryConfig(num_codes=num_codes, dim=dim)).to(dtype).train(train)
    vd.set_total_steps(10)
    generator = torch.Generator().manual_seed(seed)
    tokens = scale * torch.randn(batch, 1 + side * side, dim, generator=generator, dtype=dtype)
    text_cls = scale * torch.randn(batch, dim, generator=generator, dtype=dtype)
    return vd, tokens, text_cls, vd(tokens)


def run_nva(vd, positive, tokens, text_cls, seed=0, **config):
    generator = torch.Generator().manual_seed(seed)
    return negative_visual_augmentation(vd, positive, tokens, text_cls, NVAConfig(**config), generator)


@given(
    batch=st.integers(1, 4),
    side=st.integers(2, 5),
    num_codes=st.integers(4, 24),
    dim=st.sampled_from([8, 16]),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.1, 10.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    train=st.booleans(),
)
def test_nva_properties(batch, side, num_codes, dim, seed, scale, dtype, train):
    vd, tokens, text_cls, positive = setup(batch, side, num_codes, dim, seed, scale, dtype, train)
    neg = run_nva(vd, positive, tokens, text_cls, seed=seed)
    num_patches = side * side
    rows = torch.arange(batch)

    # Shapes, dtypes, devices preserved.
    assert neg.tokens.shape == positive.tokens.shape == (batch, 1 + num_patches, dim)
    assert neg.tokens.dtype == dtype and neg.tokens.device == tokens.device
    assert neg.replaced.shape == (batch, num_patches) and neg.replaced.dtype == torch.bool
    assert neg.anchor.shape == neg.code.shape == neg.anchor_code.shape == (batch,)

    # [CLS] untouched; outside M bitwise the positive's tokens.
    assert torch.equal(neg.tokens[:, 0], tokens[:, 0])
    outside = ~neg.replaced
    assert torch.equal(neg.tokens[:, 1:][outside], positive.tokens[:, 1:][outside])
    assert torch.equal(neg.pre_position[outside], positive.pre_position[outside])

    # M is exactly the set of patches sharing the anchor's code, and contains the anchor.
    assert torch.equal(neg.anchor_code, positive.codes[rows, neg.anchor])
    assert torch.equal(neg.replaced, positive.codes == neg.anchor_code[:, None])
    assert neg.replaced[rows, neg.anchor].all()

    # Inside M every token carries code c: pos_line(x_j + (d_c − x_j).detach()) ≈ pos_line(d_c).
    with torch.no_grad():
        code_tokens = vd.pos_line(vd.codebook[neg.code])  # [B, D], post-update codebook
    inside = neg.pre_position[neg.replaced]
    expected = code_tokens[:, None].expand(batch, num_patches, dim)[neg.replaced]
    tolerance = 1e-5 * (1 + scale) if dtype == torch.float32 else 1e-12 * (1 + scale)
    torch.testing.assert_close(inside, expected, atol=tolerance, rtol=tolerance)

    # c ≠ h_a, and c is among the 3 nearest codes to x_a other than h_a (pre-update distances).
    assert (neg.code != neg.anchor_code).all()
    anchor_distances = positive.distances[rows, neg.anchor].clone()
    anchor_distances[rows, neg.anchor_code] = float("inf")
    strictly_closer = (anchor_distances < anchor_distances[rows, neg.code][:, None]).sum(1)
    assert (strictly_closer <= 2).all()
    assert (positive.distances[rows, neg.anchor].argmin(1) == neg.anchor_code).all()

    # The anchor is among the top-3 scores (recomputed independently in float64).
    patches, image_cls = tokens[:, 1:].double(), tokens[:, 0].double()
    to_text = (patches @ text_cls.double()[:, :, None]).squeeze(2)
    to_image = (patches @ image_cls[:, :, None]).squeeze(2)
    scores = to_text / to_text.norm(dim=1, keepdim=True) + to_image / to_image.norm(dim=1, keepdim=True)
    third = scores.topk(3, dim=1).values[:, 2]
    assert (scores[rows, neg.anchor] >= third - 1e-5).all()

    # The same generator seed gives the same negatives.
    again = run_nva(vd, positive, tokens, text_cls, seed=seed)
    assert torch.equal(again.tokens, neg.tokens)
    for field in ("anchor", "code", "replaced"):
        assert torch.equal(getattr(again, field), getattr(neg, field))


def test_different_seeds_draw_different_negatives():
    vd, tokens, text_cls, positive = setup(batch=32, side=4, num_codes=16, dim=16, seed=0)
    first = run_nva(vd, positive, tokens, text_cls, seed=0)
    second = run_nva(vd, positive, tokens, text_cls, seed=1)
    assert not (torch.equal(first.anchor, second.anchor) and torch.equal(first.code, second.code))


def _constructed_anchor_inputs(copies: int):
    """Eight channels; T_cls = V_cls = e0 and v_i = c_i e0 + e_{i+1}, so a_t = a_v = c and
    S = 2c / ||c|| = (1.5614, 0.3904, 0.1952, −1.1711) for c = (4, 1, 0.5, −3)."""
    dim, c = 8, torch.tensor([4.0, 1.0, 0.5, -3.0])
    image = torch.zeros(5, dim)
    image[0, 0] = 1.0
    for i in range(4):
        image[1 + i, 0], image[1 + i, 1 + i] = c[i], 1.0
    text = torch.zeros(dim)
    text[0] = 1.0
    return image.expand(copies, 5, dim).contiguous(), text.expand(copies, dim).contiguous()


def test_scores_on_constructed_inputs():
    tokens, text_cls = _constructed_anchor_inputs(1)
    expected = torch.tensor([[1.5614, 0.3904, 0.1952, -1.1711]])
    torch.testing.assert_close(patch_scores(tokens, text_cls, "dot_l2norm"), expected, atol=1e-4, rtol=0)
    # cosine: cos(e0, c_i e0 + e_{i+1}) = c_i / sqrt(c_i² + 1), counted twice (text and image).
    c = torch.tensor([4.0, 1.0, 0.5, -3.0])
    torch.testing.assert_close(patch_scores(tokens, text_cls, "cosine"), (2 * c / (c * c + 1).sqrt())[None])


def test_anchor_sampling_frequencies_follow_softmax_of_top3_scores():
    copies = 4000
    tokens, text_cls = _constructed_anchor_inputs(copies)
    torch.manual_seed(0)
    vd = VisualDictionary(VisualDictionaryConfig(num_codes=8, dim=8)).eval()
    neg = run_nva(vd, vd(tokens), tokens, text_cls, seed=0)
    # softmax(1.5614, 0.3904, 0.1952) = (0.6389, 0.1981, 0.1630); patch 3 (lowest score) never.
    torch.testing.assert_close(neg.anchor_probs[0], torch.tensor([0.6389, 0.1981, 0.1630]), atol=1e-4, rtol=0)
    frequencies = torch.bincount(neg.anchor, minlength=4).double() / copies
    torch.testing.assert_close(
        frequencies, torch.tensor([0.6389, 0.1981, 0.1630, 0.0]).double(), atol=0.025, rtol=0
    )


def test_code_sampling_frequencies_follow_softmax_of_inverse_normalised_distances():
    copies, side, num_codes = 4000, 2, 6
    vd, tokens, text_cls, positive = setup(copies, side, num_codes, dim=8, seed=0)
    # Every patch on code 0 (so M = all patches); distances from x_a: h_a = 0 nearest, then 5, 6, 6.2.
    distances = torch.tensor([0.1, 5.0, 6.0, 6.2, 50.0, 60.0]).expand(copies, side * side, num_codes)
    constructed = dataclasses.replace(
        positive, codes=torch.zeros(copies, side * side, dtype=torch.long), distances=distances.contiguous()
    )
    neg = run_nva(vd, constructed, tokens, text_cls, seed=0)
    # π = softmax(1 / (l2normalize(5, 6, 6.2) + 1e-4)) = (0.4172, 0.2992, 0.2836).
    assert torch.equal(neg.code_candidates[0], torch.tensor([1, 2, 3]))
    torch.testing.assert_close(neg.code_probs[0], torch.tensor([0.4172, 0.2992, 0.2836]), atol=1e-4, rtol=0)
    frequencies = torch.bincount(neg.code, minlength=num_codes).double() / copies
    expected = torch.tensor([0.0, 0.4172, 0.2992, 0.2836, 0.0, 0.0]).double()
    torch.testing.assert_close(frequencies, expected, atol=0.025, rtol=0)
    assert neg.replaced.all()


def test_anchor_code_is_excluded_even_under_distance_ties():
    # All-zero dead codes tie exactly: x_a = 0 is at distance 0 from codes 0..4 alike.
    copies, side, num_codes = 500, 2, 6
    vd, tokens, text_cls, positive = setup(copies, side, num_codes, dim=8, seed=0)
    distances = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 3.0]).expand(copies, side * side, num_codes)
    codes = torch.randint(0, 5, (copies, side * side), generator=torch.Generator().manual_seed(0))
    constructed = dataclasses.replace(positive, codes=codes, distances=distances.contiguous())
    neg = run_nva(vd, constructed, tokens, text_cls, seed=0)
    assert (neg.code != neg.anchor_code).all()
    assert (neg.code < 5).all()  # a tied (distance 0) code, never the far one
    torch.testing.assert_close(neg.code_probs, torch.full((copies, 3), 1 / 3))  # all-zero distances → uniform


def test_drop_nearest_rule_equals_exclusion_without_ties():
    vd, tokens, text_cls, positive = setup(batch=8, side=4, num_codes=16, dim=16, seed=3)
    default = run_nva(vd, positive, tokens, text_cls, seed=5)
    sources = run_nva(vd, positive, tokens, text_cls, seed=5, candidate_rule="drop_nearest")
    assert torch.equal(default.code_candidates, sources.code_candidates)
    assert torch.equal(default.tokens, sources.tokens)


def test_raw_code_form_puts_the_code_vector_itself_in_m():
    vd, tokens, text_cls, positive = setup(batch=4, side=3, num_codes=8, dim=16, seed=2)
    neg = run_nva(vd, positive, tokens, text_cls, token_form="raw_code")
    code_vectors = vd.codebook[neg.code][:, None].expand(4, 9, 16)
    assert torch.equal(neg.pre_position[neg.replaced], code_vectors[neg.replaced])
    assert torch.equal(neg.pre_position[~neg.replaced], positive.pre_position[~neg.replaced])


def test_detached_negative_carries_no_gradient_and_undetached_reaches_vit_and_neck():
    vd, tokens, text_cls, _ = setup(batch=2, side=3, num_codes=8, dim=16, seed=1)
    tokens = tokens.requires_grad_()
    positive = vd(tokens)
    assert not run_nva(vd, positive, tokens, text_cls, detach=True).tokens.requires_grad

    neg = run_nva(vd, positive, tokens, text_cls, detach=False)
    # Only the replaced tokens: their gradient reaches x (straight-through), hence the neck and the ViT.
    (neg.tokens[:, 1:] * neg.replaced[..., None]).sum().backward()
    assert tokens.grad is not None and tokens.grad[:, 1:].abs().sum() > 0
    assert vd.input_proj.weight.grad.abs().sum() > 0 and vd.pos_line.weight.grad.abs().sum() > 0


def test_inputs_are_checked():
    vd, tokens, text_cls, positive = setup(batch=2, side=2, num_codes=8, dim=16, seed=0)
    with pytest.raises(ValueError, match="text"):
        run_nva(vd, positive, tokens, text_cls[:, :8])
    with pytest.raises(ValueError, match="top_k=5"):
        run_nva(vd, positive, tokens, text_cls, top_k=5)  # L = 4 patches
    with pytest.raises(ValueError, match="K=8"):
        run_nva(vd, positive, tokens, text_cls, num_candidates=8)
    with pytest.raises(ValueError, match="image tokens"):
        run_nva(vd, positive, tokens[:1], text_cls)


def test_config_is_strict():
    cfg = from_dict(NVAConfig, {"score": "cosine", "token_form": "raw_code", "detach": False}, "nva")
    assert (cfg.score, cfg.top_k, cfg.num_candidates, cfg.detach) == ("cosine", 3, 3, False)
    with pytest.raises(ConfigError, match="nva.score"):
        from_dict(NVAConfig, {"score": "dot"}, "nva")
    with pytest.raises(ConfigError, match="nva.topk"):
        from_dict(NVAConfig, {"topk": 2}, "nva")
    with pytest.raises(ConfigError, match="top_k"):
        from_dict(NVAConfig, {"top_k": 0}, "nva")
