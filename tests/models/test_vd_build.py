"""The build_vd stage's library side (spec NAS_METHOD.md §3, "VD construction stage"): k-means over the
model's own neck features with a consistent EMA state, the random init, and the saved artifact."""

from __future__ import annotations

import pytest
import torch
from nas_parity_worker import SMALL

from nas.models.nas_model import NAS
from nas.models.registry import create_model
from nas.models.vd_build import build_initial_dictionary, load_initial_dictionary, sample_neck_features

NUM_CODES, SAMPLE = 16, 8  # 8 images x 16 patches = 128 features for 16 codes


def _model(seed: int = 0, **vd) -> NAS:
    torch.manual_seed(seed)
    return create_model(
        "nas_tiny", **{**SMALL, "vd": {"num_codes": NUM_CODES, "kmeans_sample_images": SAMPLE, **vd}}
    )


def _images(count: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_kmeans_state_is_consistent_with_the_sample_clusters():
    model = _model()
    record = build_initial_dictionary(model, _images(), torch.Generator().manual_seed(0))
    assert (record["init"], record["num_images"], record["num_features"]) == ("kmeans", SAMPLE, SAMPLE * 16)

    vd = model.vd
    features, used = sample_neck_features(model, _images(), SAMPLE)  # only the first 8 of the 12 images
    assert used == SAMPLE and features.shape == (SAMPLE * 16, 192)
    clusters = vd.squared_distances(features).argmin(dim=-1)
    sizes = torch.bincount(clusters, minlength=NUM_CODES).float()
    assert torch.equal(vd.ema_counts, sizes)  # N_j = cluster sizes
    torch.testing.assert_close(vd.ema_sums, vd.codebook * sizes[:, None])  # m_j = d_j · N_j
    assert int(vd.step) == 0 and sizes.sum() == SAMPLE * 16
    # A filled cluster's centre is the mean of its members (Lloyd's fixed point after the last round).
    filled = sizes > 0
    means = torch.zeros_like(vd.codebook).index_add_(0, clusters, features)[filled] / sizes[filled, None]
    assert (means - vd.codebook[filled]).abs().max() < 0.05

    health = record["health"]
    assert health["codes_in_use"] == int(filled.sum()) and health["num_codes"] == NUM_CODES
    for key, value in vd.state_dict().items():  # the record holds the whole VD state, neck included
        assert torch.equal(record["vd_state"][key], value), key
    assert "input_proj.weight" in record["vd_state"] and record["vd_config"]["num_codes"] == NUM_CODES


def test_loader_batches_give_the_same_dictionary_as_one_tensor():
    from_tensor = build_initial_dictionary(_model(), _images(), torch.Generator().manual_seed(0))
    batches = [{"image": chunk, "image_id": torch.arange(5)} for chunk in _images().split(5)]
    from_batches = build_initial_dictionary(_model(), batches, torch.Generator().manual_seed(0))
    assert from_batches["num_images"] == SAMPLE
    for key, value in from_tensor["vd_state"].items():
        torch.testing.assert_close(from_batches["vd_state"][key], value, rtol=1e-5, atol=1e-5)


def test_save_and_load_into_a_fresh_stage1_model(tmp_path):
    path = tmp_path / "vd" / "vd_init.pt"
    built = _model()
    record = build_initial_dictionary(built, _images(), torch.Generator().manual_seed(0), path=path)
    fresh = _model(seed=3)
    vit_before = fresh.visual_encoder.pos_embed.clone()
    loaded = load_initial_dictionary(fresh, path)
    assert loaded["health"] == record["health"]
    for key, value in built.vd.state_dict().items():
        assert torch.equal(fresh.vd.state_dict()[key], value), key
    assert torch.equal(fresh.visual_encoder.pos_embed, vit_before)  # only the VD is loaded

    with pytest.raises(ValueError, match="vd.num_codes / vd.dim"):
        load_initial_dictionary(_model(num_codes=32), path)
    with pytest.raises(FileNotFoundError, match="build_vd"):
        load_initial_dictionary(fresh, tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an initial visual dictionary"):
        load_initial_dictionary(fresh, tmp_path / "other.pt")


def test_random_init_is_the_sources_behaviour():
    model = _model(init="random")
    record = build_initial_dictionary(model, None, torch.Generator().manual_seed(5))
    assert record["health"] is None and record["num_images"] == 0
    assert not model.vd.ema_counts.any() and not model.vd.ema_sums.any()
    expected = torch.randn(NUM_CODES, 192, generator=torch.Generator().manual_seed(5))
    assert torch.equal(model.vd.codebook, expected)
    with_health = build_initial_dictionary(_model(init="random"), _images(), torch.Generator().manual_seed(5))
    assert with_health["health"]["num_codes"] == NUM_CODES and with_health["num_features"] == SAMPLE * 16


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="needs neck features"):
        build_initial_dictionary(_model(), None)
    with pytest.raises(KeyError, match="batch 0 has no 'image'"):
        build_initial_dictionary(_model(), [{"pixels": _images()}])
    with pytest.raises(ValueError, match=r"batch 1 must be images \[B, 3, H, W\]"):
        build_initial_dictionary(_model(), [_images(2), torch.zeros(3, 32, 32)])
    with pytest.raises(ValueError, match="no images"):
        build_initial_dictionary(_model(), [])
