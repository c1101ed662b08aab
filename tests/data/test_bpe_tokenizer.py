from __future__ import annotations

import pytest
import torch

from nas.data.bpe_tokenizer import BpeTokenizer, EmptyCaptionError, make_bpe_collate


@pytest.fixture(scope="module")
def tok():
    return BpeTokenizer(context_length=8)


def test_layout_is_sot_tokens_eot_then_padding(tok):
    batch = tok.encode(["a red circle"])
    # CLIP BPE ids: "a" 320, "red" 736, "circle" 7117; SOT 49406, EOT 49407 (open_clip vocabulary)
    assert batch.input_ids.tolist() == [[49406, 320, 736, 7117, 49407, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch.truncated.tolist() == [False]
    assert tok.vocab_size == 49408


def test_long_caption_is_cut_flagged_and_still_ends_with_eot(tok):
    batch = tok.encode(["a red circle left of a large blue square"])
    assert batch.truncated.tolist() == [True]
    assert batch.input_ids[0, -1].item() == tok.eot_id
    assert batch.attention_mask[0].sum().item() == 8
    assert tok(["a red circle left of a large blue square", "a cross"])["n_truncated"] == 1


def test_decode_inverts_encode_and_stops_at_eot(tok):
    ids = tok.encode(["the small green cross"]).input_ids[0]
    assert tok.decode(ids) == "the small green cross"
    assert tok.decode([tok.sot_id, 320, tok.eot_id, 736]) == "a"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_caption_is_a_named_error(tok, text):
    with pytest.raises(EmptyCaptionError, match="caption 1"):
        tok.encode(["a cross", text])


def test_collate_keeps_the_batch_layout_and_counts(tok):
    items = [
        {"image": torch.zeros(3, 4, 4), "caption": "a red circle", "index": 0, "image_id": 0},
        None,
        {
            "image": torch.ones(3, 4, 4),
            "caption": "a red circle left of a blue square",
            "index": 1,
            "image_id": 1,
        },
    ]
    batch = make_bpe_collate(tok)(items)
    assert batch["image"].shape == (2, 3, 4, 4)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["num_skipped"] == 1 and batch["n_truncated"] == 1
    assert batch["caption"][0] == "a red circle"
