from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nas.data.tokenizer import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    VOCAB_SIZE,
    TextCollator,
    TokenizerLoadError,
    UnkOnlyCaptionError,
    caption_flags,
    clean_caption,
    default_vocab_dir,
    load_tokenizer,
    pre_caption,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_bundled_vocabulary_is_bert_base_uncased(tokenizer):
    assert (
        (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id)
        == (
            PAD_ID,
            CLS_ID,
            SEP_ID,
            MASK_ID,
        )
        == (0, 101, 102, 103)
    )
    assert tokenizer.vocab_size == VOCAB_SIZE == 30522
    # uncased WordPiece ids of bert-base-uncased
    assert tokenizer("A Small RED circle")["input_ids"] == [101, 1037, 2235, 2417, 4418, 102]


def test_local_folder_with_vocab_txt_loads(tmp_path: Path, tokenizer):
    shutil.copy(default_vocab_dir() / "vocab.txt", tmp_path / "vocab.txt")
    local = load_tokenizer(tmp_path)
    assert local("a small red circle")["input_ids"] == tokenizer("a small red circle")["input_ids"]


@pytest.mark.parametrize("kind", ["empty_folder", "missing_folder", "unknown_hub_id"])
def test_unloadable_tokenizer_says_what_to_provide(tmp_path: Path, kind: str):
    # HF_HUB_OFFLINE=1 (tests/conftest.py): a hub id cannot be fetched. transformers 5 then returns a
    # tokenizer with only the special tokens rather than failing; that must be an error too.
    path = {
        "empty_folder": str(tmp_path),
        "missing_folder": str(tmp_path / "absent"),
        "unknown_hub_id": "nobody/no-model",
    }[kind]
    with pytest.raises(TokenizerLoadError, match="vocab.txt") as info:
        load_tokenizer(path)
    assert "HF_HUB_OFFLINE=0" in str(info.value)


@pytest.mark.parametrize(
    ("text", "max_words", "expected"),
    [
        ("A man's dog, running (fast)!", 30, "a mans dog running fast"),
        ("<person> rides a bike-path/road", 30, "person rides a bike path road"),
        ("  two   spaces\tand a tab  ", 30, "two spaces\tand a tab"),
        ('He said: "stop"; #now ~ok*', 30, "he said stop now ok"),
        ("one two three four five", 3, "one two three"),
        ("well... done", 30, "well done"),
    ],
)
def test_pre_caption_matches_albef(text: str, max_words: int, expected: str):
    assert pre_caption(text, max_words) == expected


def test_collator_pads_to_longest_and_truncates(tokenizer):
    batch = TextCollator(tokenizer, max_length=5)(
        ["a red circle", "a small red circle left of a square", "hi"]
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == (3, 5)
    assert ids[0].tolist() == [101, 1037, 2417, 4418, 102]
    assert ids[1].tolist() == [101, 1037, 2235, 2417, 102]  # truncated, [SEP] kept
    assert ids[2].tolist()[-2:] == [PAD_ID, PAD_ID]
    assert torch.equal(mask, (ids != PAD_ID).long())
    short = TextCollator(tokenizer, max_length=30)(["hi", "a red circle"])
    assert short["input_ids"].shape == (2, 5)
    fixed = TextCollator(tokenizer, max_length=12, pad_to_max_length=True)(["hi"])
    assert fixed["input_ids"].shape == (1, 12)


def test_collator_rejects_max_length_below_two(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        TextCollator(tokenizer, max_length=1)


LONG_CAPTION = " ".join(f"word{i % 7}" for i in range(250))  # 250 words: far over max_words and tokens
EMOJI_ONLY = "\U0001f600\U0001f600 \U0001f389"


def test_clean_caption_says_when_it_cut_words():
    assert clean_caption(LONG_CAPTION, 30) == (" ".join(LONG_CAPTION.split()[:30]), True)
    assert clean_caption("a red circle", 3) == ("a red circle", False)
    assert pre_caption(LONG_CAPTION, 30) == clean_caption(LONG_CAPTION, 30)[0]


def test_emoji_only_caption_is_all_unk(tokenizer):
    assert tokenizer(EMOJI_ONLY)["input_ids"] == [
        CLS_ID,
        tokenizer.unk_token_id,
        tokenizer.unk_token_id,
        SEP_ID,
    ]
    truncated, unk_only = caption_flags(tokenizer, [EMOJI_ONLY, "a red \U0001f600", "a red circle"], 32)
    assert unk_only == [True, False, False] and truncated == [False, False, False]


def test_collator_counts_truncated_and_unk_only_captions(tokenizer):
    out = TextCollator(tokenizer, max_length=32)([LONG_CAPTION, EMOJI_ONLY, "a red circle"])
    assert out["input_ids"].shape == (3, 32)
    assert out["num_truncated_tokens"] == 1 and out["num_unk_only"] == 1
    # exactly max_length tokens ([CLS] + 3 + [SEP]) is not cut; one more is
    edge = TextCollator(tokenizer, max_length=5)(["a red circle", "a red circle now"])
    assert edge["num_truncated_tokens"] == 1


def test_collator_counts_of_a_clean_batch_are_zero(tokenizer):
    out = TextCollator(tokenizer, max_length=32)(["a red circle", "a small blue square left of a cross"])
    assert out["num_truncated_tokens"] == 0 and out["num_unk_only"] == 0


def test_collator_refuses_unk_only_captions_under_error(tokenizer):
    collator = TextCollator(tokenizer, max_length=32, unk_only="error")
    assert collator(["a red circle"])["num_unk_only"] == 0
    with pytest.raises(UnkOnlyCaptionError, match="batch row 1") as info:
        collator(["a red circle", EMOJI_ONLY])
    assert info.value.rows == [1] and EMOJI_ONLY in str(info.value)
    assert "data.unk_only_captions" in str(info.value)
    with pytest.raises(ValueError, match="unk_only_captions must be one of"):
        TextCollator(tokenizer, max_length=32, unk_only="drop")


def test_caption_flags_agree_with_the_collated_ids(tokenizer):
    captions = [LONG_CAPTION, EMOJI_ONLY, "a red circle", "\U0001f600 " * 40 + "circle", "hi [UNK]", "x"]
    for max_length in (3, 5, 32):
        out = TextCollator(tokenizer, max_length=max_length)(captions)
        ids = out["input_ids"]
        content = (ids != CLS_ID) & (ids != SEP_ID) & (ids != PAD_ID)
        from_ids = (content.any(1) & ((ids == tokenizer.unk_token_id) | ~content).all(1)).tolist()
        truncated, unk_only = caption_flags(tokenizer, captions, max_length)
        assert unk_only == from_ids, max_length
        assert sum(truncated) == out["num_truncated_tokens"]
