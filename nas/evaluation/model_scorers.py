"""Pair scorers (nas.evaluation.scorers.PairScorer) for any model with the ALBEF evaluation API:

    model.encode_image(image [B, 3, H, W]) -> (image_tokens, image_feat L2-normalised)
    model.encode_text(input_ids, attention_mask) -> (text_tokens, text_feat L2-normalised)
    model.itm_logits(image_tokens, text_tokens, attention_mask) -> [B, 2], column 1 = match

Scores (NAS_METHOD.md §7; every benchmark result names the one it used):
- "itm":     softmax(itm_logits)[:, 1], the ITM match probability. The default: Bugliarello et
             al. (ACL 2023) score ALBEF-type models this way. `itm_logits` applies the model's
             own `itm_image_tokens`, so a NAS model scores with its visual-dictionary tokens.
- "itc":     cosine of the normalised image and text features.
- "itm+itc": ITM match logit + ITC cosine, the score of the ARO repository's BLIP wrapper
             (BENCHMARKS.md §1.8, pitfall 7).

Within one `score` call every distinct image and every distinct text is encoded once (the ARO and
Winoground cases repeat them), and so are a model's ITM image tokens (NAS: the visual dictionary);
the benchmark runner sends all pairs of an image in one call (`score_cases`). The model runs in eval
mode under no_grad, and its mode is restored.
Texts are cleaned with ALBEF's `pre_caption` (salesforce/ALBEF evaluates on cleaned captions)
and padded to `max_length`, so a pair's score does not depend on the batch it arrives in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from nas.data.tokenizer import pre_caption
from nas.evaluation.scorers import distinct_pairs

ScoreKind = Literal["itm", "itc", "itm+itc"]
SCORE_KINDS: tuple[str, ...] = ("itm", "itc", "itm+itc")


@dataclass
class ScorerConfig:
    """How a model scores benchmark pairs. Defaults: the tiny synthetic profile."""

    kind: ScoreKind = "itm"  # NAS_METHOD §7 default
    max_length: int = 32  # BERT tokens incl. [CLS]/[SEP]; ALBEF evaluates with 30-word captions
    batch_size: int = 64
    # ALBEF's pre_caption(text, max_words=30) before tokenising; 0 = feed texts unchanged.
    max_words: int = 30

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"kind must be one of {list(SCORE_KINDS)}, got {self.kind!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {self.max_length}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_words < 0:
            raise ValueError(f"max_words must be >= 0, got {self.max_words}")


class ModelPairScorer:
    """Shared machinery: distinct images/texts encoded once per call, pairs scored in batches."""

    kind: str = ""
    default_name: str = ""

    def __init__(
        self,
        model: torch.nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., Any],
        max_length: int = 32,
        batch_size: int = 64,
        *,
        max_words: int = 30,
        name: str | None = None,
    ) -> None:
        self.config = ScorerConfig(self.kind, max_length, batch_size, max_words)  # validates the knobs
        self.model = model
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_words = max_words
        self.name = name or self.default_name

    # ---- what each score needs -------------------------------------------------------------------

    needs_itm: bool = False
    needs_itc: bool = False

    def combine(self, itm_logits: torch.Tensor | None, cosine: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # ---- scoring ---------------------------------------------------------------------------------

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.model.parameters(), None)
        if parameter is None:
            return torch.device("cpu"), torch.float32
        return parameter.device, parameter.dtype

    def _encode_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        device, dtype = self._device_dtype()
        tokens, feats = [], []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(image) for image in images[start : start + self.batch_size]])
            t, f = self.model.encode_image(batch.to(device=device, dtype=dtype))
            tokens.append(t)
            feats.append(f)
        return torch.cat(tokens), torch.cat(feats)

    def _encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device, _ = self._device_dtype()
        cleaned = [pre_caption(t, self.max_words) if self.max_words else t for t in texts]
        tokens, feats, masks = [], [], []
        for start in range(0, len(cleaned), self.batch_size):
            encoded = self.tokenizer(
                cleaned[start : start + self.batch_size],
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            ids = encoded["input_ids"].to(device)
            mask = encoded["attention_mask"].to(device)
            t, f = self.model.encode_text(ids, mask)
            tokens.append(t)
            feats.append(f)
            masks.append(mask)
        return torch.cat(tokens), torch.cat(feats), torch.cat(masks)

    def _itm_inputs(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """(per distinct image, the tokens ITM takes; the pair function). A model that splits ITM into
        `itm_image_tokens` + `fused_itm_logits` (ALBEF, NAS: its VD tokens) gets its ITM image tokens
        once per distinct image rather than once per pair; `itm_logits` is exactly their composition."""
        model = self.model
        if not (hasattr(model, "itm_image_tokens") and hasattr(model, "fused_itm_logits")):
            return image_tokens, model.itm_logits
        parts = [
            model.itm_image_tokens(image_tokens[start : start + self.batch_size])
            for start in range(0, len(image_tokens), self.batch_size)
        ]
        return torch.cat(parts), model.fused_itm_logits

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """Scores of the row-aligned pairs `(images[i], texts[i])`, float64 of shape (len(texts),)."""
        pairs = distinct_pairs(images, texts, self.name)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        rows, cols = pairs.rows, pairs.cols

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                image_tokens, image_feat = self._encode_images(pairs.images)
                text_tokens, text_feat, text_mask = self._encode_texts(pairs.texts)
                if self.needs_itm:
                    itm_tokens, itm_pairs = self._itm_inputs(image_tokens)
                rows, cols = rows.to(image_tokens.device), cols.to(text_tokens.device)
                out = []
                for start in range(0, len(texts), self.batch_size):
                    r, c = rows[start : start + self.batch_size], cols[start : start + self.batch_size]
                    logits = (
                        itm_pairs(itm_tokens[r], text_tokens[c], text_mask[c]) if self.needs_itm else None
                    )
                    # float64 so that near-1 probabilities and close cosines do not collapse into ties
                    cosine = (
                        (image_feat[r].double() * text_feat[c].double()).sum(-1) if self.needs_itc else None
                    )
                    out.append(self.combine(None if logits is None else logits.double(), cosine))
        finally:
            self.model.train(was_training)
        return torch.cat(out).cpu().numpy().astype(np.float64)


class ITMScorer(ModelPairScorer):
    """softmax(itm_logits)[:, 1]: the ITM match probability (NAS_METHOD §7 default)."""

    kind = "itm"
    default_name = "itm_probability"
    needs_itm = True

    def combine(self, itm_logits: torch.Tensor | None, cosine: torch.Tensor | None) -> torch.Tensor:
        return torch.softmax(itm_logits, dim=-1)[:, 1]


class ITCScorer(ModelPairScorer):
    """Cosine of the L2-normalised image and text features (the ITC similarity, no temperature)."""

    kind = "itc"
    default_name = "itc_cosine"
    needs_itc = True

    def combine(self, itm_logits: torch.Tensor | None, cosine: torch.Tensor | None) -> torch.Tensor:
        return cosine


class ITMPlusITCScorer(ModelPairScorer):
    """ITM match logit + ITC cosine (the ARO repository's BLIP wrapper, BENCHMARKS.md §1.8)."""

    kind = "itm+itc"
    default_name = "itm_logit+itc_cosine"
    needs_itm = True
    needs_itc = True

    def combine(self, itm_logits: torch.Tensor | None, cosine: torch.Tensor | None) -> torch.Tensor:
        return itm_logits[:, 1] + cosine


SCORERS: dict[str, type[ModelPairScorer]] = {"itm": ITMScorer, "itc": ITCScorer, "itm+itc": ITMPlusITCScorer}


def build_scorer(
    kind: str,
    model: torch.nn.Module,
    transform: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[..., Any],
    max_length: int = 32,
    batch_size: int = 64,
    *,
    max_words: int = 30,
    name: str | None = None,
) -> ModelPairScorer:
    """The scorer of `kind` ("itm", "itc" or "itm+itc") for `model`."""
    if kind not in SCORERS:
        raise ValueError(f"unknown scorer kind {kind!r}; expected one of {list(SCORERS)}")
    return SCORERS[kind](model, transform, tokenizer, max_length, batch_size, max_words=max_words, name=name)


def scorer_from_config(
    cfg: ScorerConfig,
    model: torch.nn.Module,
    transform: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[..., Any],
) -> ModelPairScorer:
    return build_scorer(
        cfg.kind, model, transform, tokenizer, cfg.max_length, cfg.batch_size, max_words=cfg.max_words
    )
