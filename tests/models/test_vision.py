from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from nas.config.base import ConfigError, from_dict
from nas.models.pretrained import PretrainedWeightsError
from nas.models.vision import (
    VisionConfig,
    build_vision_encoder,
    load_vision_weights,
    resize_position_embeddings,
)

SMALL = {"embed_dim": 24, "depth": 2, "num_heads": 2}


def _encoder(**overrides) -> torch.nn.Module:
    return build_vision_encoder(VisionConfig(**{**SMALL, **overrides}))


def test_outputs_cls_and_every_patch_token():
    cfg = VisionConfig()
    model = build_vision_encoder(cfg)
    tokens = model.forward_features(torch.randn(2, 3, cfg.img_size, cfg.img_size))
    assert tokens.shape == (2, 1 + cfg.grid_size**2, cfg.embed_dim) == (2, 65, 192)
    assert len(model.blocks) == 4 and model.blocks[0].attn.num_heads == 3


def _deit_like_checkpoint(tmp_path: Path, img_size: int = 32) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 'DeiT release' at a smaller resolution: {'model': state_dict} with an ImageNet head."""
    source = _encoder(img_size=img_size)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.randn(10, 24), torch.randn(10)
    path = tmp_path / "deit.pth"
    torch.save({"model": state}, path)
    return path, state


def test_local_checkpoint_loads_with_resampled_position_embeddings(tmp_path):
    path, state = _deit_like_checkpoint(tmp_path, img_size=32)  # grid 4x4
    model = _encoder(img_size=64)  # grid 8x8
    report = load_vision_weights(model, str(path))
    expected_pos = resample_abs_pos_embed(state["pos_embed"], new_size=[8, 8], num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.data, expected_pos)
    torch.testing.assert_close(model.pos_embed.data[:, 0], state["pos_embed"][:, 0])  # [CLS] untouched
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight.data, state["blocks.1.mlp.fc2.weight"])
    assert report.unexpected == ["head.weight", "head.bias"]
    assert report.missing == [] and len(report.resampled) == 1


def test_config_path_and_safetensors_folder(tmp_path):
    source = _encoder()
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors")
    )
    model = build_vision_encoder(VisionConfig(**SMALL, pretrained=str(tmp_path)))
    torch.testing.assert_close(model.cls_token.data, source.cls_token.data)


def test_missing_file_names_the_parameter_and_the_file_expected(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r"vision.pretrained=.*does not exist.*\.pth"):
        build_vision_encoder(VisionConfig(**SMALL, pretrained=str(tmp_path / "deit_base.pth")))
    with pytest.raises(PretrainedWeightsError, match="folder without weights.*model.safetensors"):
        load_vision_weights(_encoder(), str(tmp_path))


def test_hub_name_offline_says_what_to_provide():
    # tests/conftest.py sets HF_HUB_OFFLINE=1: the lookup fails at once with LocalEntryNotFoundError.
    with pytest.raises(
        PretrainedWeightsError, match=r"not in the local cache.*Set vision.pretrained to a local"
    ):
        load_vision_weights(_encoder(), "deit_tiny_patch16_224.fb_in1k")


def test_width_mismatch_and_missing_blocks_are_errors(tmp_path):
    path, _ = _deit_like_checkpoint(tmp_path)
    with pytest.raises(PretrainedWeightsError, match=r"'cls_token' has shape \(1, 1, 24\).*\(1, 1, 48\)"):
        load_vision_weights(_encoder(embed_dim=48), str(path))
    with pytest.raises(PretrainedWeightsError, match=r"lacks ViT parameters \['blocks.2"):
        load_vision_weights(_encoder(depth=3), str(path))


def test_resize_for_fine_tuning_resolution():
    model = _encoder(img_size=64)
    before = model.pos_embed.data.clone()
    resize_position_embeddings(model, 96)  # grid 8x8 -> 12x12
    assert model.pos_embed.shape == (1, 1 + 144, 24)
    torch.testing.assert_close(model.pos_embed.data[:, 0], before[:, 0])
    assert model.forward_features(torch.randn(1, 3, 96, 96)).shape == (1, 145, 24)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        resize_position_embeddings(model, 100)


def test_config_validation():
    with pytest.raises(ValueError, match="img_size .* multiple of patch_size"):
        VisionConfig(img_size=60)
    with pytest.raises(ValueError, match="embed_dim .* divisible by num_heads"):
        VisionConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError, match="vision.patch"):
        from_dict(VisionConfig, {"patch": 16}, "vision")
