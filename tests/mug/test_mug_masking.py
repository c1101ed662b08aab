"""MAE random masking (MUG_UTA.md §3): counts, partition, `ids_restore` inverts the shuffle, and the
encoder's output on visible tokens does not depend on the pixels of masked patches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nas.models.masking import gather_tokens, no_masking, num_visible, random_masking, restore_order

grids = st.integers(1, 64)
ratios = st.floats(0.0, 0.95)


@given(batch=st.integers(1, 4), n=grids, ratio=ratios, seed=st.integers(0, 2**31 - 1))
def test_visible_count_partition_and_inverse(batch, n, ratio, seed):
    if n - round(ratio * n) < 1:
        with pytest.raises(ValueError, match="hides all"):
            num_visible(n, ratio)
        return
    keep = n - round(ratio * n)
    view = random_masking(batch, n, ratio, generator=torch.Generator().manual_seed(seed))
    assert view.ids_keep.shape == (batch, keep) and view.ids_restore.shape == (batch, n)
    assert torch.equal(view.mask.sum(1), torch.full((batch,), float(n - keep)))
    for b in range(batch):
        visible = set(view.ids_keep[b].tolist())
        hidden = set(torch.nonzero(view.mask[b]).flatten().tolist())
        assert len(visible) == keep and not visible & hidden and visible | hidden == set(range(n))
    # ids_restore inverts the shuffle: visible tokens + mask tokens, unshuffled, are the grid again
    tokens = torch.arange(batch * n, dtype=torch.float32).reshape(batch, n, 1) + 1.0
    filled = restore_order(gather_tokens(tokens, view.ids_keep), torch.zeros(1), view.ids_restore)
    assert torch.equal(filled, tokens * (1 - view.mask).unsqueeze(-1))


@given(n=st.integers(2, 32), seed=st.integers(0, 1000))
def test_same_seed_same_mask_and_global_rng_by_default(n, seed):
    a = random_masking(3, n, 0.5, generator=torch.Generator().manual_seed(seed))
    b = random_masking(3, n, 0.5, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a.ids_keep, b.ids_keep) and torch.equal(a.mask, b.mask)
    torch.manual_seed(seed)
    c = random_masking(3, n, 0.5)
    torch.manual_seed(seed)
    assert torch.equal(c.ids_restore, random_masking(3, n, 0.5).ids_restore)


def test_no_masking_is_the_identity_and_select_takes_rows():
    view = no_masking(2, 5)
    assert view.mask.sum() == 0 and torch.equal(view.ids_keep[1], torch.arange(5))
    masked = random_masking(4, 8, 0.5, generator=torch.Generator().manual_seed(0))
    part = masked.select(slice(1, 3))
    assert torch.equal(part.ids_keep, masked.ids_keep[1:3]) and part.num_patches == 8


def test_bad_ratio_and_shapes_are_named():
    with pytest.raises(ValueError, match="mask_ratio"):
        num_visible(16, 1.0)
    with pytest.raises(ValueError, match="tokens"):
        gather_tokens(torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long))


@pytest.fixture(scope="module")
def tiny_mug():
    from nas.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(
        "mug_tiny",
        vision={"embed_dim": 24, "depth": 1, "num_heads": 2},
        decoder={"embed_dim": 16, "depth": 1},
        caption={"width": 16, "context_length": 8},
    )
    model.set_vocabulary(range(10))
    return model.eval()


@given(seed=st.integers(0, 1000))
def test_visible_tokens_ignore_the_pixels_of_dropped_patches(tiny_mug, seed):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=gen)
    view = random_masking(2, 16, 0.75, generator=gen)
    hidden = view.mask.reshape(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 16, 4, 16).reshape(2, 3, 64, 64)
    other = images + hidden * torch.randn(2, 3, 64, 64, generator=gen) * 5
    with torch.no_grad():
        assert torch.allclose(tiny_mug.encode(images, view), tiny_mug.encode(other, view), atol=1e-6)
        # ... while the visible pixels do matter
        assert not torch.allclose(tiny_mug.encode(images, view), tiny_mug.encode(images + (1 - hidden), view))


def test_position_follows_the_kept_indices(tiny_mug):
    """Keeping patch 3 then 5 or 5 then 3 gives the same tokens, permuted: positions travel with ids."""
    images = torch.randn(1, 3, 64, 64)
    a = no_masking(1, 16)
    a = type(a)(torch.tensor([[3, 5]]), a.ids_restore, a.mask)
    b = type(a)(torch.tensor([[5, 3]]), a.ids_restore, a.mask)
    with torch.no_grad():
        ta, tb = tiny_mug.encode(images, a), tiny_mug.encode(images, b)
    assert torch.allclose(ta[:, 1], tb[:, 2], atol=1e-6) and torch.allclose(ta[:, 2], tb[:, 1], atol=1e-6)


def test_unmasked_encode_is_timm_forward_features(tiny_mug):
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tiny_mug.encode(images), tiny_mug.encoder.forward_features(images), atol=1e-6)
