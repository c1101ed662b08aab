from __future__ import annotations

import pytest
import torch

from nas.config.base import ConfigError, to_dict
from nas.models.albef import ALBEF, ALBEFConfig
from nas.models.registry import (
    FAMILIES,
    create_model,
    list_models,
    model_entry,
    register_model,
    resolve_config,
)


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
    with pytest.raises(ValueError, match="already registered"):
        register_model("albef_tiny", config=ALBEFConfig, base={"queue_size": 8}, build=ALBEF, family="nas")


def test_an_entry_is_data_config_class_base_and_builder():
    entry = model_entry("albef_base")
    assert (entry.config, entry.build, entry.family) == (ALBEFConfig, ALBEF, "nas")
    assert entry.base["queue_size"] == 65536 and entry.doc
    assert model_entry("albef_tiny").base == {}  # the config's defaults are the tiny variant
    with pytest.raises(KeyError, match="did you mean 'mug_tiny'"):
        model_entry("mug_tiyn")


def test_every_model_has_a_family_and_a_doc():
    names = list_models()
    assert sorted(sum((list_models(f) for f in FAMILIES), [])) == names
    assert all(model_entry(name).doc for name in names)


def test_resolve_config_is_what_create_model_builds():
    overrides = {"text": {"num_fusion_layers": 1}, "queue_size": 96}
    cfg = resolve_config("albef_tiny", **overrides)
    assert isinstance(cfg, ALBEFConfig)
    with torch.device("meta"):
        model = create_model("albef_tiny", **overrides)
    assert to_dict(model.cfg) == to_dict(cfg)
    assert resolve_config("nas_base").vd.num_codes == 2048  # no 400M-parameter model is built


def test_resolve_config_is_strict_and_names_the_dotted_path():
    with pytest.raises(
        ConfigError, match=r"resolve_config\('mug_tiny'\).*'vision.dept'.*did you mean"
    ) as exc:
        resolve_config("mug_tiny", vision={"dept": 2})
    assert exc.value.path == "vision.dept"
    with pytest.raises(ConfigError, match=r"mug.model.overrides: mask_ratio must be in \(0, 1\)"):
        model_entry("mug_tiny").resolve({"mask_ratio": 2.0}, "mug.model.overrides")


def test_a_nested_override_changes_one_key_of_the_variant_default():
    """`vision: {depth: 2}` keeps the tiny MUG encoder's other settings (its field default), and
    mug_base's from its base dict: no base dict repeats the defaults any more."""
    tiny = resolve_config("mug_tiny", vision={"depth": 2})
    assert (tiny.vision.depth, tiny.vision.embed_dim, tiny.vision.img_size, tiny.vision.patch_size) == (
        2,
        96,
        64,
        16,
    )
    assert tiny.vision.model_name == "vit_tiny_patch16_224"
    base = resolve_config("mug_base", vision={"depth": 2})
    assert (base.vision.depth, base.vision.embed_dim) == (2, resolve_config("mug_base").vision.embed_dim)
    assert model_entry("mug_tiny").base == {}


def test_the_cards_read_the_same_configs_as_the_registry():
    """mug_card.effective_model and uta_card.effective_student (the cards' own lookups until they read the
    registry) give exactly `resolve_config`, for the shipped params' specs and a nested override."""
    import importlib

    def card(*modules: str, attr: str):
        for module in modules:
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                continue
        pytest.skip(f"no card defines {attr} any more (they read the registry themselves)")

    effective_model = card("nas.config.mug_card", "nas.recipes.mug.card", attr="effective_model")
    effective_student = card("nas.config.uta_card", "nas.recipes.uta.card", attr="effective_student")
    from nas.config.stages import ModelSpec

    for name, overrides in [
        ("mug_tiny", {}),
        ("mug_tiny", {"mask_ratio": 0.5}),
        ("mug_base", {}),
        ("mug_tiny", {"vision": {"depth": 2}, "cap_weight": 0.0}),
    ]:
        assert effective_model(ModelSpec(name, overrides)) == to_dict(resolve_config(name, **overrides))
    for name, overrides in [("uta_tiny", {}), ("uta_base", {}), ("uta_tiny", {"depth": 2})]:
        assert effective_student(ModelSpec(name, overrides)) == to_dict(resolve_config(name, **overrides))
