"""MUG_UTA.md §3: the student's output for a visible token does not depend on the pixels of any
dropped patch; position information (absolute embedding + RoPE) follows the kept indices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from uta_fixtures import tiny_student

from nas.config.base import ConfigError
from nas.models.registry import create_model

N = 16  # 32 px / patch 8 = a 4 x 4 grid


@pytest.fixture(scope="module")
def student():
    return tiny_student().eval()


def _images(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _keep(seed: int, k: int, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:k].sort().values for _ in range(n)])


def test_the_full_view_is_timm_eva_forward_features(student):
    x = _images(0)
    with torch.no_grad():
        assert torch.equal(student.forward_features(x), student.vit.forward_features(x))
        every = torch.arange(N).expand(2, -1)
        assert torch.equal(student.forward_features(x, every), student.forward_features(x))
    assert student(x).shape == (2, 1 + N, 16) and student(x, _keep(0, 5)).shape == (2, 6, 16)


@given(seed=st.integers(0, 10_000), k=st.integers(1, N - 1))
def test_visible_tokens_do_not_depend_on_dropped_pixels(student, seed, k):
    x = _images(seed)
    keep = _keep(seed, k)
    changed = x.clone()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1)) * 5
    for row in range(2):
        dropped = sorted(set(range(N)) - set(keep[row].tolist()))
        for index in dropped:  # overwrite every dropped patch of this image
            r, c = divmod(index, 4)
            changed[row, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = noise[
                row, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8
            ]
    with torch.no_grad():
        torch.testing.assert_close(student(changed, keep), student(x, keep), rtol=0, atol=1e-6)


@given(seed=st.integers(0, 10_000), k=st.integers(2, N))
def test_position_information_follows_the_kept_indices(student, seed, k):
    # Listing the same kept patches in another order permutes the outputs and nothing else: each
    # token's position comes from its index, not from its place in the sequence.
    x = _images(seed)
    keep = _keep(seed, k)
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sorted_out = student.forward_features(x, keep)
        shuffled_out = student.forward_features(x, keep[:, order])
    torch.testing.assert_close(shuffled_out[:, 0], sorted_out[:, 0], rtol=1e-5, atol=1e-5)  # CLS
    torch.testing.assert_close(shuffled_out[:, 1:], sorted_out[:, 1:][:, order], rtol=1e-5, atol=1e-5)


def test_the_same_pixels_at_another_index_give_another_token(student):
    # Move patch 0's pixels to patch 15 and keep only that patch: if positions did not follow the
    # index, both views would be the same one-token sequence.
    x = _images(3, n=1)
    moved = x.clone()
    moved[..., 24:32, 24:32] = x[..., 0:8, 0:8]
    with torch.no_grad():
        at_0 = student.forward_features(x, torch.tensor([[0]]))
        at_15 = student.forward_features(moved, torch.tensor([[15]]))
    assert torch.equal(student.vit.patch_embed(x)[:, 0], student.vit.patch_embed(moved)[:, 15])
    assert (at_0 - at_15).abs().max() > 1e-3


def test_rope_alone_also_follows_the_indices(student):
    # Without the absolute embedding, RoPE still tells kept patches apart by index.
    x = _images(4, n=1)
    keep_a, keep_b = torch.tensor([[0, 5]]), torch.tensor([[0, 10]])
    moved = x.clone()
    moved[..., 16:24, 16:24] = x[..., 8:16, 8:16]  # patch 5's pixels at patch 10
    saved = student.vit.pos_embed.data.clone()
    try:
        student.vit.pos_embed.data.zero_()
        with torch.no_grad():
            a = student.forward_features(x, keep_a)
            b = student.forward_features(moved, keep_b)
    finally:
        student.vit.pos_embed.data.copy_(saved)
    assert (a - b).abs().max() > 1e-4  # relative distance 5 vs 10 changes attention


def test_the_encode_image_embedding_is_the_normalised_projected_cls(student):
    x = _images(5)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(student(x)[:, 0], dim=-1)
        torch.testing.assert_close(student.encode_image(x), expected)
        assert student.features(x).shape == (2, 32)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"image_size": 30}, r"image_size=30 with patch_size=8 leaves no valid token grid"),
        ({"patch_size": 64}, r"image_size=64 with patch_size=64|image_size=32 with patch_size=64"),
        ({"embed_dim": 30, "num_heads": 2}, r"head width 15 must be a multiple of 4"),
    ],
)
def test_a_resolution_without_a_valid_grid_names_the_params(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        create_model("uta_tiny", **{"image_size": 32, "patch_size": 8, **overrides})


def test_keep_of_the_wrong_shape_is_an_error(student):
    with pytest.raises(ValueError, match=r"keep must be \[B, K\]"):
        student(_images(0), torch.tensor([0, 1]))
