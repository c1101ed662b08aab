from __future__ import annotations

import pytest
import torch

from nas.config.base import ConfigError
from nas.models.albef import ALBEF
from nas.models.registry import create_model, list_models, register_model


def test_both_variants_are_registered():
    assert {"albef_tiny", "albef_base"} <= set(list_models())


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(KeyError, match="unknown model 'albef_tiney'.*did you mean 'albef_tiny'"):
        create_model("albef_tiney")


def test_nested_overrides_merge_into_the_variant():
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
        model = create_model("albef_tiny", text={"num_fusion_layers": 1}, queue_size=96)
    assert isinstance(model, ALBEF)
    assert len(model.text_encoder.fusion_layers) == 1
    assert len(model.text_encoder.text_layers) == 2  # the variant's other text keys survive
    assert model.itc.image_queue.features.shape == (96, 256)


def test_unknown_or_mistyped_override_is_an_error_with_its_path():
    with pytest.raises(
        ConfigError, match=r"create_model\('albef_tiny'\).*'text.num_fusion_layer'.*did you mean"
    ):
        create_model("albef_tiny", text={"num_fusion_layer": 1})
    with pytest.raises(ConfigError, match="queue_size: expected an integer"):
        create_model("albef_tiny", queue_size="big")


def test_albef_base_is_the_paper_architecture():
    with torch.device("meta"):
        model = create_model("albef_base")
    cfg = model.cfg
    assert (cfg.vision.model_name, cfg.vision.img_size, cfg.vision.patch_size) == (
        "deit_base_patch16_224",
        256,
        16,
    )
    assert model.visual_encoder.pos_embed.shape == (1, 1 + 16 * 16, 768)
    assert len(model.visual_encoder.blocks) == 12
    assert (len(model.text_encoder.text_layers), len(model.text_encoder.fusion_layers)) == (6, 6)
    assert model.text_encoder.fusion_layers[0].cross_attn.key.weight.shape == (768, 768)
    assert model.itc.image_queue.features.shape == (65536, 256)
    assert (cfg.momentum, cfg.temp, cfg.text.dropout) == (0.995, 0.07, 0.1)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    # ViT-B/16 (85.8M at 256 px) + BERT-base 6+6 with cross-attention and MLM head + heads.
    assert 205e6 < trainable < 215e6
    assert frozen == trainable - 2 - 768 * 2 - 1  # momentum copies lack only the ITM head and τ


def test_registering_a_second_model_under_the_same_name_is_an_error():
    def albef_tiny(**overrides):  # same name as the real entrypoint
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="already registered"):
        register_model(albef_tiny)
