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
Winoground cases repeat them), and so are a model's ITM image tokens (NAS: the visual dictionary) and
each distinct pair's ITM logits; `run_probe_suite` lends a model's scorers one cache for the whole
suite (`nas.evaluation.encoding_cache`), so that this holds across calls, benchmarks and scorers (images
keyed by their file's content and crop box, texts by the cleaned string). The benchmark runner sends
the pairs grouped by image (`score_cases`). Texts are encoded longest first in batches of `batch_size`
and the ITM pairs go in batches of `batch_size`, longest texts first; each batch is cut to its longest
text (the padding is masked out of every attention, so only float rounding differs from padding to
`max_length`: within 1e-6). The model runs in eval mode under no_grad, and its mode is restored.
Texts are cleaned with ALBEF's `pre_caption` (salesforce/ALBEF evaluates on cleaned captions)
and tokenised to `max_length`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from nas.data.tokenizer import pre_caption
from nas.evaluation.encoding_cache import EncodingCache
from nas.models.scoring import TextRow, encode_text_rows, itm_functions, itm_pair_logits

ScoreKind = Literal["itm", "itc", "itm+itc"]
SCORE_KINDS: tuple[str, ...] = ("itm", "itc", "itm+itc")
IMAGES_WITH_ITM = "images+itm"  # cache table: (ITC feature, ITM image tokens) per image


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
        # Encodings kept across `score` calls (`nas.evaluation.encoding_cache`); None: one per call.
        self.cache: EncodingCache | None = None

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

    def cache_scope(self) -> tuple:
        """What the encodings depend on: scorers of one model, transform and tokenizer share a cache."""
        return ("model-pair", id(self.model), id(self.transform), id(self.tokenizer))

    def _encode_images(self, images: Sequence[Image.Image]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per image, (ITC feature, ITM image tokens or None when this scorer needs no ITM)."""
        device, dtype = self._device_dtype()
        itm_tokens_of, _ = itm_functions(self.model)
        out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(image) for image in images[start : start + self.batch_size]])
            tokens, feats = self.model.encode_image(batch.to(device=device, dtype=dtype))
            itm = None
            if self.needs_itm:
                itm = tokens if itm_tokens_of is None else itm_tokens_of(tokens)
            out.extend((feats[j], None if itm is None else itm[j]) for j in range(len(feats)))
        return out

    def _encode_texts(self, texts: Sequence[str]) -> list[TextRow]:
        """Per cleaned text, `nas.models.scoring.encode_text_rows`'s row: tokenised to `max_length` as
        ALBEF does (in one tokenizer call), then encoded longest first, each batch cut to its longest."""
        encoded = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return encode_text_rows(self.model, encoded["input_ids"], encoded["attention_mask"], self.batch_size)

    def _itm_logits(
        self, pairs: list[tuple[Any, Any]], images: dict[Any, tuple], texts: dict[Any, TextRow]
    ) -> list[torch.Tensor]:
        """ITM logits (float64 [2]) of each distinct (image key, text key) pair (`itm_pair_logits`)."""
        _, pair_function = itm_functions(self.model)
        return itm_pair_logits(
            pair_function,
            [images[image][1] for image, _ in pairs],
            [texts[text] for _, text in pairs],
            self.batch_size,
        )

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """Scores of the row-aligned pairs `(images[i], texts[i])`, float64 of shape (len(texts),)."""
        if len(images) != len(texts):
            raise ValueError(
                f"{self.name}: {len(images)} images but {len(texts)} texts; pairs must be row-aligned"
            )
        if not texts:
            return np.zeros(0, dtype=np.float64)
        cache = self.cache if self.cache is not None else EncodingCache()
        image_keys = [cache.image_key(image) for image in images]
        first_image = dict(zip(image_keys, images))
        text_keys = [
            (self.max_length, pre_caption(t, self.max_words) if self.max_words else t) for t in texts
        ]

        def encode_images(keys: list[Any]) -> list[Any]:
            # an ITC-only scorer takes the features an ITM scorer of the same model already computed
            known = {} if self.needs_itm else {k: cache.peek(IMAGES_WITH_ITM, k) for k in keys}
            todo = [k for k in keys if known.get(k) is None]
            encoded = dict(zip(todo, self._encode_images([first_image[k] for k in todo])))
            return [encoded[k] if known.get(k) is None else (known[k][0], None) for k in keys]

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                image_table = IMAGES_WITH_ITM if self.needs_itm else "images"
                image_values = cache.values(image_table, image_keys, encode_images)
                image_entries = dict(zip(image_keys, image_values))
                text_values = cache.values(
                    "texts", text_keys, lambda keys: self._encode_texts([k[1] for k in keys])
                )
                text_entries = dict(zip(text_keys, text_values))
                logits = cosine = None
                if self.needs_itm:
                    pair_keys = list(zip(image_keys, text_keys))
                    logits = torch.stack(
                        cache.values(
                            "itm_logits",
                            pair_keys,
                            lambda keys: self._itm_logits(keys, image_entries, text_entries),
                        )
                    )
                if self.needs_itc:
                    # float64 so that near-1 probabilities and close cosines do not collapse into ties
                    image_feat = torch.stack([entry[0] for entry in image_values]).double()
                    text_feat = torch.stack([entry[1] for entry in text_values]).double()
                    cosine = (image_feat * text_feat).sum(-1)
                scores = self.combine(logits, cosine)
        finally:
            self.model.train(was_training)
        return scores.cpu().numpy().astype(np.float64)


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
