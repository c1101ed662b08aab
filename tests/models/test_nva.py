"""Negative Visual Augmentation (spec NAS_METHOD.md §4): the hypothesis properties the spec lists, drawn over
realistic shapes, every option and on purpose-made ties; the sampling weights on constructed inputs; the
exclusion of the anchor's code by vector (dead all-zero codes); and the [D] options.

`pytest --hypothesis-show-statistics tests/models/test_nva.py` shows how the examples spread over the classes
(mode, options, ties, K and L buckets, |M|), so a vacuous class shows up there."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nas.config.base import ConfigError, from_dict
from nas.models import nva as nva_module
from nas.models.nva import (
    NVAConfig,
    codes_sharing_vector,
    negative_visual_augmentation,
    patch_scores,
    replacement_candidates,
)
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


# ------------------------------------------------------------------------------------------ properties
# "train_frozen" is stage 2 and fine-tuning (training mode, codebook frozen); "train_ema" takes one EMA step
# of a fresh dictionary, which turns every code the batch misses into the zero vector (spec §3).
MODES = ("eval", "train_frozen", "train_ema")
RULES = ("exclude_anchor_code", "drop_nearest")
CODE_TIES = ("duplicates", "zeros", "duplicates+zeros", "none")


@st.composite
def nva_cases(draw, modes=MODES, rules=RULES, code_ties=CODE_TIES):
    """One NVA example: realistic grid and dictionary sizes, every option drawn, ties made on purpose."""
    config = NVAConfig(
        score=draw(st.sampled_from(["dot_l2norm", "cosine"])),
        top_k=draw(st.sampled_from([3, 1, 2, 5])),
        num_candidates=draw(st.sampled_from([3, 1, 2, 5])),
        token_form=draw(st.sampled_from(["straight_through", "raw_code"])),
        candidate_rule=draw(st.sampled_from(rules)),
        detach=draw(st.booleans()),
    )
    return {
        "batch": draw(st.integers(1, 6)),
        "side": draw(st.integers(4, 8)),  # L = 16 .. 64 patches
        "num_codes": draw(st.integers(16, 64)),
        "dim": draw(st.sampled_from([16, 8, 32])),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "scale": draw(st.sampled_from([1.0, 0.1, 10.0])),
        "mode": draw(st.sampled_from(modes)),
        # "features": codes near the batch's own neck features, as a k-means init places them (assignments
        # spread over many codes); "randn": the N(0, 1) buffer of a fresh dictionary.
        "codebook": draw(st.sampled_from(["features", "randn"])),
        "code_ties": draw(st.sampled_from(code_ties)),
        "score_ties": draw(st.sampled_from(["none", "duplicate_patches", "top_k_boundary"])),
        "seed": draw(st.integers(0, 2**16)),
        "config": config,
    }


def _tie_patches(tokens, text_cls, case, generator) -> None:
    """Make patch-score ties on purpose (in place): copies of patches (equal scores, features and codes),
    or a copy of each image's k-th best patch onto a lower-ranked one (an exact tie at the top-k edge)."""
    batch, num_patches = tokens.shape[0], tokens.shape[1] - 1
    rows = torch.arange(batch)
    if case["score_ties"] == "duplicate_patches":
        count = num_patches // 4
        order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
        source, target = order[:, :count], order[:, count : 2 * count]
        tokens[rows[:, None], 1 + target] = tokens[rows[:, None], 1 + source]
    elif case["score_ties"] == "top_k_boundary":
        top_k = case["config"].top_k
        ranks = patch_scores(tokens, text_cls, case["config"].score).argsort(dim=1, descending=True)
        lower = torch.randint(top_k, num_patches, (batch,), generator=generator)
        tokens[rows, 1 + ranks[rows, lower]] = tokens[rows, 1 + ranks[rows, top_k - 1]]


@torch.no_grad()
def _shape_codebook(vd, tokens, case, generator) -> None:
    """Place the codes, then make codebook ties on purpose: groups of 2–4 identical rows (copies of codes
    in use), and/or 2..K/2 all-zero rows (the sources' dead codes). At most K/2 rows share a vector, so K/2 >= 8 >= num_candidates
    codes always differ from any code's vector."""
    codebook = vd.codebook
    num_codes, dim = codebook.shape
    if case["codebook"] == "features":
        features = vd.features(tokens[:, 1:]).reshape(-1, dim)
        picks = torch.randint(features.shape[0], (num_codes,), generator=generator)
        noise = 0.05 * torch.randn(num_codes, dim, generator=generator, dtype=codebook.dtype)
        codebook.copy_(features[picks] + noise)
    if "duplicates" in case["code_ties"]:
        # Copies of at least half the codes in use (those patches are assigned to), so that anchors' codes
        # do have duplicates.
        used = vd.squared_distances(vd.features(tokens[:, 1:])).argmin(dim=-1).unique()
        used = used[torch.randperm(used.numel(), generator=generator)]
        group = int(torch.randint(2, 5, (1,), generator=generator))
        most = min(used.numel(), num_codes // group)
        count = int(torch.randint(max(1, min(most, used.numel() // 2)), most + 1, (1,), generator=generator))
        is_source = torch.zeros(num_codes, dtype=torch.bool).index_fill(0, used[:count], True)
        others = (~is_source).nonzero().squeeze(1)
        others = others[torch.randperm(others.numel(), generator=generator)]
        codebook[others[: count * (group - 1)]] = codebook[used[:count].repeat(group - 1)]
    if "zeros" in case["code_ties"]:
        count = int(torch.randint(2, num_codes // 2 + 1, (1,), generator=generator))
        codebook[torch.randperm(num_codes, generator=generator)[:count]] = 0.0


def build_case(case):
    """The drawn example's VD (in its mode), raw ViT tokens, text [CLS] and the positive `vd(tokens)`."""
    dtype, dim, num_patches = case["dtype"], case["dim"], case["side"] ** 2
    torch.manual_seed(case["seed"])
    vd = VisualDictionary(VisualDictionaryConfig(num_codes=case["num_codes"], dim=dim)).to(dtype)
    vd.set_total_steps(10)
    generator = torch.Generator().manual_seed(case["seed"])
    tokens = case["scale"] * torch.randn(
        case["batch"], 1 + num_patches, dim, generator=generator, dtype=dtype
    )
    text_cls = case["scale"] * torch.randn(case["batch"], dim, generator=generator, dtype=dtype)
    _tie_patches(tokens, text_cls, case, generator)
    _shape_codebook(vd, tokens, case, generator)
    vd.train(case["mode"] != "eval").freeze(case["mode"] == "train_frozen")
    return vd, tokens, text_cls, vd(tokens)


def reference_scores(tokens: torch.Tensor, text_cls: torch.Tensor, score: str) -> torch.Tensor:
    """S [B, L] recomputed independently in float64 (spec §4 step 1)."""
    patches, image_cls, text = tokens[:, 1:].double(), tokens[:, 0].double(), text_cls.double()
    to_text, to_image = (patches @ text[:, :, None]).squeeze(2), (patches @ image_cls[:, :, None]).squeeze(2)
    if score == "dot_l2norm":
        return to_text / to_text.norm(dim=1, keepdim=True) + to_image / to_image.norm(dim=1, keepdim=True)
    lengths = patches.norm(dim=2)
    return to_text / (lengths * text.norm(dim=1, keepdim=True)) + to_image / (
        lengths * image_cls.norm(dim=1, keepdim=True)
    )


def _label(case, neg, twins, changed) -> None:
    """Classes for `--hypothesis-show-statistics`."""
    cfg, num_patches, num_codes = case["config"], case["side"] ** 2, case["num_codes"]
    event(f"mode={case['mode']}")
    event(f"token_form={cfg.token_form}")
    event(f"score={cfg.score}")
    event(f"candidate_rule={cfg.candidate_rule}")
    event(f"detach={cfg.detach}")
    event(f"top_k={cfg.top_k}, num_candidates={cfg.num_candidates}")
    event(f"dtype={str(case['dtype']).removeprefix('torch.')}")
    event(f"K={'16-31' if num_codes < 32 else '32-64'}")
    event(f"L={'16-25' if num_patches <= 25 else '36-49' if num_patches <= 49 else '64'}")
    event(f"codebook={case['codebook']}, code ties={case['code_ties']}")
    event(f"score ties={case['score_ties']}")
    shared = "some" if (twins.sum(dim=1) > 1).any() else "no"
    event(f"{cfg.candidate_rule}: h_a's vector shared by other codes in {shared} image")
    sizes = neg.replaced.sum(dim=1)
    event("|M| = L in every image" if (sizes == num_patches).all() else "|M| < L in some image")
    event("|M| = 1 in some image" if (sizes == 1).any() else "|M| > 1 in every image")
    event("changed positions == M" if torch.equal(changed, neg.replaced) else "changed positions < M")
    if cfg.candidate_rule == "drop_nearest":
        kept = "some" if twins.gather(1, neg.code[:, None]).any() else "no"
        event(f"drop_nearest: c shares h_a's vector in {kept} image")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(case=nva_cases())
def test_nva_properties(case):
    check_nva(case)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    case=nva_cases(
        modes=("eval", "train_frozen"),
        rules=("exclude_anchor_code",),
        code_ties=("duplicates", "duplicates+zeros"),
    )
)
def test_nva_properties_where_anchor_codes_have_duplicates(case):
    """The [D] exclusion by vector where it bites: frozen codebooks with copies of the codes in use (in
    `test_nva_properties` only a share of the examples has them)."""
    check_nva(case)


def check_nva(case) -> None:
    """Every property of spec §4 on one drawn example."""
    cfg, dtype, dim = case["config"], case["dtype"], case["dim"]
    vd, tokens, text_cls, positive = build_case(case)
    neg = negative_visual_augmentation(
        vd, positive, tokens, text_cls, cfg, torch.Generator().manual_seed(case["seed"])
    )
    batch, num_patches, num_codes = case["batch"], case["side"] ** 2, case["num_codes"]
    rows = torch.arange(batch)
    codebook = vd.codebook  # the codebook the negative's tokens are built from (post-update in train_ema)
    anchor, anchor_code, code = neg.anchor, neg.anchor_code, neg.code
    # Codes whose vector equals d_{h_a} (h_a included), computed here without nva's helper.
    twins = (codebook[anchor_code][:, None] == codebook[None]).all(dim=-1)
    changed = (neg.pre_position != positive.pre_position).any(dim=-1)
    _label(case, neg, twins, changed)

    # Shapes, dtypes, devices preserved; gradient only when not detached.
    assert neg.tokens.shape == positive.tokens.shape == (batch, 1 + num_patches, dim)
    assert neg.pre_position.shape == (batch, num_patches, dim)
    assert neg.tokens.dtype == neg.pre_position.dtype == dtype and neg.tokens.device == tokens.device
    assert neg.replaced.shape == (batch, num_patches) and neg.replaced.dtype == torch.bool
    for field in (anchor, anchor_code, code):
        assert field.shape == (batch,) and field.dtype == torch.long
    assert neg.anchor_candidates.shape == neg.anchor_probs.shape == (batch, cfg.top_k)
    assert neg.code_candidates.shape == neg.code_probs.shape == (batch, cfg.num_candidates)
    assert neg.tokens.requires_grad == (not cfg.detach)

    # [CLS] untouched; the tokens are the shared position encoding + LN of the pre-position tokens.
    assert torch.equal(neg.tokens[:, 0], tokens[:, 0])
    with torch.no_grad():
        assert torch.equal(neg.tokens, vd.finish(tokens[:, :1], neg.pre_position))

    # M is exactly the set of patches sharing the anchor's code h_a, and contains the anchor.
    assert torch.equal(anchor_code, positive.codes[rows, anchor])
    assert torch.equal(neg.replaced, positive.codes == anchor_code[:, None])
    assert neg.replaced[rows, anchor].all()

    # Outside M bitwise the positive's tokens; so the changed positions lie within M.
    outside = ~neg.replaced
    assert torch.equal(neg.pre_position[outside], positive.pre_position[outside])
    assert torch.equal(neg.tokens[:, 1:][outside], positive.tokens[:, 1:][outside])
    assert not (changed & outside).any()

    # Within M every token is the one made from the single code c of its image.
    new_codes = code[:, None].expand(batch, num_patches)
    with torch.no_grad():
        if cfg.token_form == "straight_through":
            expected = vd.pos_line(vd.straight_through(positive.features, new_codes))
            closed_form = vd.pos_line(codebook[new_codes])  # x + (d_c − x) = d_c up to rounding
            tolerance = 1e-4 if dtype == torch.float32 else 1e-10
            torch.testing.assert_close(
                neg.pre_position[neg.replaced], closed_form[neg.replaced], atol=tolerance, rtol=tolerance
            )
        else:
            expected = codebook[new_codes]
    assert torch.equal(neg.pre_position[neg.replaced], expected[neg.replaced])

    # The replacement code: among the candidates, which are distinct and nearest first.
    distances = positive.distances[rows, anchor]  # x_a to every code, pre-update codebook
    assert torch.equal(distances[rows, anchor_code], distances.min(dim=1).values)  # h_a = argmin
    candidates = neg.code_candidates
    candidate_distances = distances.gather(1, candidates)
    assert (candidates == code[:, None]).any(dim=1).all()
    assert (candidates.sort(dim=1).values.diff(dim=1) != 0).all()
    assert (candidate_distances.diff(dim=1) >= 0).all()
    is_candidate = torch.zeros(batch, num_codes, dtype=torch.bool).scatter(1, candidates, True)
    if cfg.candidate_rule == "exclude_anchor_code":
        # c ≠ h_a by index and by vector; the candidates are the nearest codes once every code holding
        # d_{h_a} is excluded.
        assert (code != anchor_code).all()
        assert (codebook[code] != codebook[anchor_code]).any(dim=-1).all()
        assert not (is_candidate & twins).any()
        others = distances.masked_fill(is_candidate | twins, float("inf"))
        assert (others.min(dim=1).values >= candidate_distances[:, -1]).all()
    else:
        # [A]: the n + 1 nearest less the first; exactly one code outside the candidates comes first.
        rest = distances.masked_fill(is_candidate, float("inf")).sort(dim=1).values
        assert (rest[:, 0] <= candidate_distances[:, 0]).all()
        assert (rest[:, 1] >= candidate_distances[:, -1]).all()
        nearest_two = distances.sort(dim=1).values[:, :2]
        unique_nearest = nearest_two[:, 0] < nearest_two[:, 1]
        assert (code != anchor_code)[unique_nearest].all()  # c ≠ h_a unless distances tie
    normalised = F.normalize(candidate_distances, dim=1)
    expected_probs = (1.0 / (normalised + 1e-4)).softmax(dim=1)
    torch.testing.assert_close(neg.code_probs, expected_probs)

    # The anchor: drawn among a top-k set of scores (ties: its score reaches the k-th largest).
    scores = reference_scores(tokens, text_cls, cfg.score)
    kth = scores.topk(cfg.top_k, dim=1).values[:, -1]
    assert (neg.anchor_candidates == anchor[:, None]).any(dim=1).all()
    assert (neg.anchor_candidates.sort(dim=1).values.diff(dim=1) != 0).all()
    assert (scores.gather(1, neg.anchor_candidates) >= kth[:, None] - 1e-4).all()
    assert (scores[rows, anchor] >= kth - 1e-4).all()
    own_scores = patch_scores(tokens, text_cls, cfg.score).gather(1, neg.anchor_candidates)
    torch.testing.assert_close(neg.anchor_probs, own_scores.softmax(dim=1))

    # The same generator seed gives the same negatives.
    again = negative_visual_augmentation(
        vd, positive, tokens, text_cls, cfg, torch.Generator().manual_seed(case["seed"])
    )
    for field in dataclasses.fields(neg):
        assert torch.equal(getattr(again, field.name), getattr(neg, field.name)), field.name


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


def _dead_code_case(num_zero_codes: int, images: int = 4000):
    """The sources' dead codes, constructed: K = 16 codes of which `num_zero_codes` are the zero vector and
    the rest N(0, 16). Every neck feature x (norm ≈ 3) lies nearer the origin (||x||²) than to such a code
    (||x||² + ||d||² − 2 x·d), so every patch goes to the first zero code and the zero codes tie exactly."""
    vd, tokens, text_cls, _ = setup(images, side=4, num_codes=16, dim=16, seed=0)
    zero_codes = torch.tensor([3, 5, 6, 9, 12, 0, 1, 2, 4, 7, 8, 10, 11, 13][:num_zero_codes])
    with torch.no_grad():
        vd.codebook.mul_(4.0)
        vd.codebook[zero_codes] = 0.0
    positive = vd(tokens)
    assert (vd.codebook[positive.codes] == 0).all()  # precondition: every h is a zero code
    return vd, tokens, text_cls, positive


def test_all_zero_dead_codes_never_replace_a_zero_anchor_code_under_exclusion():
    vd, tokens, text_cls, positive = _dead_code_case(num_zero_codes=5)
    zero = (vd.codebook == 0).all(dim=1)
    neg = run_nva(vd, positive, tokens, text_cls)
    # [D] exclude_anchor_code: 0 of 4,000 draws pick a zero-vector code; the replaced tokens get a live code.
    assert not zero[neg.code_candidates].any() and not zero[neg.code].any()
    with torch.no_grad():
        expected = vd.pos_line(vd.codebook[neg.code])[:, None].expand_as(neg.pre_position)
    torch.testing.assert_close(neg.pre_position[neg.replaced], expected[neg.replaced], atol=1e-5, rtol=1e-5)

    # [A] drop_nearest: the 4 nearest codes are 4 of the 5 tied zero codes, so all 4,000 draws move M to a
    # zero vector again (sometimes h_a itself: the tie order of topk is unspecified). The "negative" keeps
    # the very code vector of the positive and differs from it only by losing the gate's x share.
    sources = run_nva(vd, positive, tokens, text_cls, candidate_rule="drop_nearest")
    assert zero[sources.code_candidates].all() and zero[sources.code].all()
    with torch.no_grad():
        own_code = vd.pos_line(vd.codebook[sources.anchor_code])[:, None].expand_as(sources.pre_position)
    torch.testing.assert_close(
        sources.pre_position[sources.replaced], own_code[sources.replaced], atol=1e-5, rtol=1e-5
    )


def test_too_few_codes_apart_from_the_anchor_vector_raise():
    # [D] 14 of K = 16 codes are the zero vector and every anchor is on one: only 2 codes hold another
    # vector, fewer than num_candidates = 3.
    vd, tokens, text_cls, positive = _dead_code_case(num_zero_codes=14, images=8)
    with pytest.raises(
        ValueError, match=r"K=16 codes hold only 3 distinct vectors.*shared by 14 codes, leaving 2"
    ):
        run_nva(vd, positive, tokens, text_cls)
    # Enough with num_candidates = 2 (c is then one of the two live codes), and [A]'s rule does not compare
    # vectors at all.
    live = run_nva(vd, positive, tokens, text_cls, num_candidates=2)
    assert (vd.codebook[live.code] != 0).any(dim=1).all()
    sources = run_nva(vd, positive, tokens, text_cls, candidate_rule="drop_nearest")
    assert (vd.codebook[sources.code] == 0).all()


def test_replacement_candidates_exclude_every_copy_of_the_anchor_vector():
    v, w, u = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([5.0, 5.0])
    codebook = torch.stack([v, torch.zeros(2), v, w, torch.tensor([-0.0, 0.0]), u])  # rows 1 and 4 equal
    distances = torch.tensor([[0.0, 1.0, 0.0, 2.0, 1.0, 3.0]])
    anchor_code = torch.tensor([0])
    candidates, candidate_distances = replacement_candidates(distances, anchor_code, codebook, 3)
    assert set(candidates[0, :2].tolist()) == {1, 4} and candidates[0, 2] == 3  # code 2 (= v) excluded
    assert torch.equal(candidate_distances, torch.tensor([[1.0, 1.0, 2.0]]))
    # [A]'s rule drops only position 0 of the 4 nearest, so it keeps the copy of v (code 0 or 2).
    kept, _ = replacement_candidates(distances, anchor_code, codebook, 3, "drop_nearest")
    assert len({0, 2} & set(kept[0].tolist())) == 1
    # With the anchor on the zero vector (codes 1 and 4), 4 other codes remain: n = 4 works, n = 5 raises.
    assert set(replacement_candidates(distances, torch.tensor([4]), codebook, 4)[0][0].tolist()) == {
        0,
        2,
        3,
        5,
    }
    with pytest.raises(
        ValueError, match=r"num_candidates=5 .* K=6 codes hold only 4 distinct vectors .* h_a=4"
    ):
        replacement_candidates(distances, torch.tensor([4]), codebook, 5)
    with pytest.raises(ValueError, match="candidate_rule"):
        replacement_candidates(distances, anchor_code, codebook, 3, "nearest")


def test_codes_sharing_vector_matches_a_direct_comparison_in_any_chunking(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    codebook = torch.randn(12, 10, generator=generator)
    codebook[[4, 7]] = codebook[1].clone()
    codebook[[2, 9]] = 0.0
    codebook[11] = -0.0  # −0.0 == 0.0: the same vector
    codebook[5] = codebook[6] + torch.tensor([0.0] * 9 + [1e-3])  # differs in one channel only
    codes = torch.tensor([1, 2, 6, 0, 11, 5])
    expected = (codebook[codes][:, None] == codebook[None]).all(dim=-1)
    assert expected.sum(dim=1).tolist() == [3, 3, 1, 1, 3, 1]
    for chunk_elements in (1 << 24, 7 * 6 * 12, 6 * 12, 1):  # chunks of 10, 7, 1 and 1 channels
        monkeypatch.setattr(nva_module, "_EQUALITY_CHUNK_ELEMENTS", chunk_elements)
        assert torch.equal(codes_sharing_vector(codebook, codes), expected)


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
