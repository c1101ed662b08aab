"""MUG_UTA.md §3: reversed block-wise masking keeps exactly K visible for any grid, ratio and seed;
the same seed gives the same mask; the visible set sits in the centre (reversed) or at the borders
(BEiT's block-wise), as the spec measured."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nas.config.base import ConfigError, from_dict
from nas.models.block_masking import (
    SCHEMES,
    MaskingConfig,
    num_visible,
    sample_visible,
    visibility_frequency,
)
from nas.recipes.uta.card import UTASection

grids = st.tuples(st.integers(1, 12), st.integers(1, 12))
ratios = st.floats(0.01, 0.99)


@given(
    grid=grids,
    ratio=ratios,
    seed=st.integers(0, 2**31 - 1),
    scheme=st.sampled_from(SCHEMES),
    m=st.integers(1, 16),
)
def test_exactly_k_distinct_sorted_visible_tokens(grid, ratio, seed, scheme, m):
    n = grid[0] * grid[1]
    k = n if scheme == "none" else int(round((1 - ratio) * n))
    cfg = MaskingConfig(scheme=scheme, ratio=ratio, min_patches=m)
    generator = torch.Generator().manual_seed(seed)
    if k < 1:
        with pytest.raises(ValueError, match="masking.ratio"):
            sample_visible(3, grid, cfg, generator=generator)
        return
    keep = sample_visible(3, grid, cfg, generator=generator)
    assert keep.shape == (3, k) and keep.dtype == torch.long
    assert int(keep.min()) >= 0 and int(keep.max()) < n
    assert bool((keep[:, 1:] > keep[:, :-1]).all())  # sorted and distinct


@given(grid=grids, ratio=st.floats(0.1, 0.9), seed=st.integers(0, 2**31 - 1), scheme=st.sampled_from(SCHEMES))
def test_same_seed_same_mask(grid, ratio, seed, scheme):
    cfg = MaskingConfig(scheme=scheme, ratio=ratio, min_patches=2)
    if scheme != "none" and round((1 - ratio) * grid[0] * grid[1]) < 1:
        return  # no valid mask (tested above)
    first = sample_visible(4, grid, cfg, generator=torch.Generator().manual_seed(seed))
    second = sample_visible(4, grid, cfg, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(first, second)


def test_the_global_rng_drives_masks_when_no_generator_is_given():
    cfg = MaskingConfig()
    torch.manual_seed(3)
    first = sample_visible(8, (8, 8), cfg)
    torch.manual_seed(3)
    assert torch.equal(first, sample_visible(8, (8, 8), cfg))  # the engine checkpoints this RNG
    assert not torch.equal(first, sample_visible(8, (8, 8), cfg))


def test_k_is_round_of_one_minus_r_times_n():
    assert num_visible(196, 0.4) == 118 and num_visible(196, 0.5) == 98 and num_visible(64, 0.5) == 32
    assert num_visible(64, 0.5, "none") == 64
    with pytest.raises(ValueError, match="leaves 0 visible"):
        num_visible(4, 0.9)


def test_visible_tokens_sit_in_the_centre_for_reversed_and_at_the_borders_for_blockwise():
    # MUG_UTA.md §2 (2,000 draws, 14 x 14, r = 0.5): reversed centre 0.86 / corner 0.07,
    # block-wise centre 0.15 / corner 0.94. 400 draws here.
    def centre_and_corner(scheme: str) -> tuple[float, float]:
        cfg = MaskingConfig(scheme=scheme, ratio=0.5, min_patches=16)
        freq = visibility_frequency((14, 14), cfg, 400, generator=torch.Generator().manual_seed(0))
        return float(freq[6:8, 6:8].mean()), float(freq[[0, 0, 13, 13], [0, 13, 0, 13]].mean())

    centre, corner = centre_and_corner("reversed_blockwise")
    assert centre > 0.75 and corner < 0.15
    centre, corner = centre_and_corner("blockwise")
    assert centre < 0.25 and corner > 0.85
    centre, corner = centre_and_corner("random")
    assert 0.4 < centre < 0.6 and 0.4 < corner < 0.6


def test_visible_blocks_are_rectangles_before_the_top_up():
    # With a target the generator can meet exactly, the visible set is a union of rectangles: on a
    # 14 x 14 grid most reversed masks have far fewer boundary edges than a random set of the same K.
    def boundary(keep: torch.Tensor) -> int:
        grid = torch.zeros(196, dtype=torch.bool)
        grid[keep] = True
        grid = grid.reshape(14, 14)
        return int((grid[1:] != grid[:-1]).sum() + (grid[:, 1:] != grid[:, :-1]).sum())

    g = torch.Generator().manual_seed(1)
    blocks = sample_visible(50, (14, 14), MaskingConfig("reversed_blockwise", 0.5, 16), generator=g)
    random = sample_visible(50, (14, 14), MaskingConfig("random", 0.5), generator=g)
    assert sum(map(boundary, blocks)) < 0.5 * sum(map(boundary, random))


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1])
def test_a_mask_ratio_outside_the_open_interval_names_the_param(ratio):
    with pytest.raises(ValueError, match=r"ratio \(the mask ratio\) must be in \(0, 1\)"):
        MaskingConfig(ratio=ratio)
    with pytest.raises(ConfigError, match=r"uta\.masking.*ratio"):
        from_dict(UTASection, {"masking": {"ratio": ratio}}, "uta")
    with pytest.raises(ConfigError, match=r"uta\.arms\.random.*ratio"):
        from_dict(UTASection, {"arms": {"random": {"scheme": "random", "ratio": ratio}}}, "uta")
    with pytest.raises(ConfigError, match=r"uta\.context_arms\.random.*ratio"):
        from_dict(UTASection, {"context_arms": {"random": {"scheme": "random", "ratio": ratio}}}, "uta")
