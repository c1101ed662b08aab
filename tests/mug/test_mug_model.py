"""The MUG model: causal caption decoder, one encoder pass on the masked view serving both branches,
ablation arms as weights, the corpus vocabulary, config errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nas.config.base import ConfigError
from nas.models.mug import CLIP_EOT_ID, CLIP_SOT_ID, UNK_SLOT
from nas.models.registry import create_model, list_models

SMALL = {
    "vision": {"embed_dim": 24, "depth": 1, "num_heads": 2},
    "decoder": {"embed_dim": 16, "depth": 1},
    "caption": {"width": 16, "context_length": 10, "corpus_slots": 16},
}
WORDS = [320, 1746, 736, 3608]  # CLIP BPE ids of "a", "red", "circle", "square" (any ids would do)


def small(**overrides):
    from nas.config.base import merge

    torch.manual_seed(0)
    model = create_model("mug_tiny", **merge(SMALL, overrides))
    model.set_vocabulary(WORDS)
    return model


def batch(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, 10, dtype=torch.long)
    mask = torch.zeros(n, 10, dtype=torch.long)
    for row in range(n):
        length = 2 + row % 3
        words = [WORDS[int(i)] for i in torch.randint(0, 4, (length,), generator=gen)]
        seq = [CLIP_SOT_ID, *words, CLIP_EOT_ID]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"image": torch.randn(n, 3, 64, 64, generator=gen), "input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def model():
    return small().eval()


def test_registered_and_paper_config_values():
    assert {"mug_tiny", "mug_base"} <= set(list_models())
    from nas.config.stages import ModelSpec
    from nas.recipes.mug.card import effective_model

    base = effective_model(ModelSpec("mug_base", {}))
    assert base["vision"]["embed_dim"] == 768 and base["decoder"] == {
        "embed_dim": 512,
        "depth": 8,
        "num_heads": 16,
        "mlp_ratio": 4.0,
    }
    assert base["caption"]["context_length"] == 77 and base["caption"]["vocab"] == "full"
    tiny = effective_model(ModelSpec("mug_tiny", {"vision": {"depth": 2}}))
    assert (
        tiny["vision"]["patch_size"] == 16 and tiny["vision"]["depth"] == 2
    )  # a nested override keeps the rest


@given(seed=st.integers(0, 1000), t=st.integers(0, 7))
def test_changing_token_t_plus_1_never_changes_logits_up_to_t(model, seed, t):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (2, 9), generator=gen)
    latent = torch.randn(2, 5, 24, generator=gen)
    changed = ids.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 1 + torch.randint(0, 4, (2,), generator=gen)) % 6
    with torch.no_grad():
        a, b = model.caption_logits(latent, ids), model.caption_logits(latent, changed)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_arms_return_their_terms_and_freeze_the_other_branch():
    data = batch()
    for overrides, terms, frozen in (
        ({}, {"recon", "caption"}, None),
        ({"cap_weight": 0.0}, {"recon"}, "text_decoder"),
        ({"recon_weight": 0.0}, {"caption"}, "decoder"),
    ):
        model = small(**overrides)
        out = model(data)
        assert set(out) == terms
        sum(out.values()).backward()
        assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
        if frozen:
            assert not any(p.requires_grad for p in getattr(model, frozen).parameters())
    model, reference = small(recon_weight=2.0, cap_weight=0.5), small()
    torch.manual_seed(3)
    weighted = model(data)
    torch.manual_seed(3)
    plain = reference(data)
    assert weighted["recon"].item() == pytest.approx(2.0 * plain["recon"].item(), rel=1e-5)
    assert weighted["caption"].item() == pytest.approx(0.5 * plain["caption"].item(), rel=1e-5)
    with pytest.raises(ConfigError, match="nothing to train"):
        create_model("mug_tiny", recon_weight=0.0, cap_weight=0.0)


def test_one_encoder_pass_on_the_masked_view_serves_both_branches():
    model = small()
    data = batch()
    calls = []
    model.encoder.blocks.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    torch.manual_seed(5)
    view = model.mask(data["image"])
    torch.manual_seed(5)
    first = model(data)
    assert calls == [torch.Size([3, 1 + 4, 24])]  # one pass, [CLS] + 4 of 16 patches
    # the caption sees only the masked-view latent: hidden pixels change the pixel targets, not the caption
    hidden = view.mask.reshape(3, 1, 4, 1, 4, 1).expand(3, 3, 4, 16, 4, 16).reshape(3, 3, 64, 64)
    other = dict(data, image=data["image"] + hidden * torch.randn(3, 3, 64, 64))
    torch.manual_seed(5)
    second = model(other)
    assert torch.allclose(first["caption"], second["caption"]) and not torch.allclose(
        first["recon"], second["recon"]
    )


def test_corpus_vocabulary_maps_and_overflows():
    model = small()
    assert model.sot_id != UNK_SLOT and model.eot_id != UNK_SLOT
    local = model.to_local(torch.tensor([CLIP_SOT_ID, 320, 999, CLIP_EOT_ID]))
    assert local[2].item() == UNK_SLOT and model.to_bpe(local[[0, 1, 3]]).tolist() == [
        CLIP_SOT_ID,
        320,
        CLIP_EOT_ID,
    ]
    bias = model.logit_bias()
    assert torch.isinf(bias).sum() == 16 - 1 - 6 and bias[UNK_SLOT] == 0  # 6 used: 4 words, SOT, EOT
    with pytest.raises(ValueError, match="raise caption.corpus_slots"):
        model.set_vocabulary(range(100, 130))
    fresh = create_model("mug_tiny", **SMALL)
    with pytest.raises(RuntimeError, match="set_vocabulary"):
        fresh.to_local(torch.tensor([1]))


def test_full_vocabulary_is_the_identity():
    model = create_model("mug_tiny", **{**SMALL, "caption": {"width": 8, "num_heads": 1, "vocab": "full"}})
    ids = torch.tensor([5, CLIP_EOT_ID])
    assert (
        torch.equal(model.to_local(ids), ids) and model.logit_bias() is None and model.eot_id == CLIP_EOT_ID
    )
    assert model.text_decoder.token_embed.num_embeddings == 49408


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"caption": {"multimodal_layers": 0}}, "multimodal_layers"),
        ({"decoder": {"embed_dim": 18, "num_heads": 2}}, "divisible by 4"),
        ({"caption": {"widht": 8}}, "caption.widht"),
    ],
)
def test_bad_config_is_named(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        create_model("mug_tiny", **overrides)


def test_tied_embedding_and_device_agnostic_buffers():
    model = small()
    decoder = model.text_decoder
    latent = torch.zeros(1, 2, 24)
    with torch.no_grad():
        decoder.token_embed.weight[3] += 1.0  # the output row of token 3 moves with its input row
        logits = decoder(torch.tensor([[1]]), latent)
        h = decoder.norm(
            decoder.blocks[-1](
                decoder.blocks[0](decoder.token_embed(torch.tensor([[1]])) + decoder.pos_embed[:, :1], None),
                decoder.image_proj(latent),
            )
        )
    assert torch.allclose(logits[0, 0, 3], (h[0, 0] * decoder.token_embed.weight[3]).sum(), atol=1e-5)
    assert model.bpe_to_local.device == model.encoder.cls_token.device
