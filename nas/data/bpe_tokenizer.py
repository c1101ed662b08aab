"""open_clip's CLIP BPE tokenizer (MUG's captions, the UTA teacher's text tower), offline.

The BPE merges ship inside the open_clip package (`bpe_simple_vocab_16e6.txt.gz`), so nothing is
fetched at run time. Layout of an encoded caption, as CLIP's: `<start_of_text>` tokens
`<end_of_text>` then 0-padding up to `context_length` (77 in CLIP and MUG_UTA.md §1). A caption too
long for the context is cut and still ends with `<end_of_text>` (open_clip's own rule); the
`truncated` flag lets a stage count those rows in its run record instead of cutting silently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class EmptyCaptionError(ValueError):
    """An empty or whitespace-only caption: nothing for a captioner to learn, nothing to score."""


@dataclass
class BpeBatch:
    input_ids: torch.Tensor  # long [B, L]: SOT, tokens, EOT, 0-padding
    attention_mask: torch.Tensor  # long [B, L]: 1 on SOT..EOT
    truncated: torch.Tensor  # bool [B]: the caption did not fit and was cut


class BpeTokenizer:
    """CLIP BPE with fixed-length output. `pad_id` is 0, as in open_clip (token 0 is "!", but it
    never follows `<end_of_text>`, so the attention mask, not the id, says what is padding)."""

    pad_id = 0

    def __init__(self, context_length: int = 77) -> None:
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (SOT, a token, EOT), got {context_length}")
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)
        self.vocab_size = len(self._bpe.encoder)  # 49,408 for CLIP
        self.sot_id = self._bpe.sot_token_id
        self.eot_id = self._bpe.eot_token_id

    def encode(self, texts: Sequence[str]) -> BpeBatch:
        if isinstance(texts, str):
            raise TypeError("BpeTokenizer.encode takes a list of texts, not one string")
        n = len(texts)
        ids = torch.full((n, self.context_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, self.context_length), dtype=torch.long)
        truncated = torch.zeros(n, dtype=torch.bool)
        room = self.context_length - 2
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise EmptyCaptionError(f"caption {row} is empty or whitespace-only: {text!r}")
            tokens = self._bpe.encode(text)
            if not tokens:
                raise EmptyCaptionError(f"caption {row} has no BPE tokens after cleaning: {text!r}")
            if len(tokens) > room:
                tokens, truncated[row] = tokens[:room], True
            seq = [self.sot_id, *tokens, self.eot_id]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return BpeBatch(ids, mask, truncated)

    def __call__(self, texts: Sequence[str]) -> dict[str, Any]:
        """Text-collator interface (`nas.data.loader.stack_items`)."""
        batch = self.encode(texts)
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "n_truncated": int(batch.truncated.sum()),
        }

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one id sequence: starts after SOT (if present), stops at EOT, skips padding."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        out: list[int] = []
        for i, token in enumerate(values):
            if token == self.sot_id and i == 0:
                continue
            if token == self.eot_id:
                break
            out.append(int(token))
        return self._bpe.decode(out).strip()


def make_bpe_collate(tokenizer: BpeTokenizer) -> Callable[[list[Any]], dict[str, Any]]:
    """Collate for `CaptionDataset` items with BPE captions: the `collate_pairs` batch layout plus
    `n_truncated` (captions cut to the context this batch). Picklable, for worker processes."""
    from nas.data.loader import stack_items

    return functools.partial(stack_items, text_collator=tokenizer)
