"""A captioner as a pair scorer (nas.evaluation.scorers.PairScorer): the mean per-token
log-likelihood of the caption given the full, unmasked image (MUG_UTA.md §1 [D], the generative
score used for captioners on ARO and Winoground).

score(image, text) = (1 / T) * sum_t log p(token_t | image, tokens_<t), over the caption's BPE
tokens and its EOT (T of them), teacher-forced. The mean, not the sum, so that a longer caption is
not penalised for its length alone. A text longer than the decoder's context is cut (its tokens
past the context are not scored) and counted in `truncated`; an empty text is an error naming it.

Every distinct image and text is encoded once per call, and once per probe suite when
`run_probe_suite` lends the scorer a cache (`nas.evaluation.encoding_cache`); the pairs go in batches
of `batch_size`, longest captions first. The model runs in eval mode under no_grad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from nas.evaluation.encoding_cache import EncodingCache
from nas.objectives.mug import mean_token_log_likelihood, teacher_forcing


class CaptionLikelihoodScorer:
    """PairScorer of a model with the MUG captioning API (`encode`, `caption_logits`, `to_local`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Any,
        *,
        batch_size: int = 64,
        name: str = "caption-ll",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.transform, self.tokenizer = model, transform, tokenizer
        self.batch_size = batch_size
        self.name = name
        self.truncated = 0  # texts cut to the context, over every call
        # Encodings kept across `score` calls (`nas.evaluation.encoding_cache`); None: one per call.
        self.cache: EncodingCache | None = None

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def cache_scope(self) -> tuple:
        """What the encodings depend on (`nas.evaluation.encoding_cache.shared_encodings`)."""
        return ("caption-ll", id(self.model), id(self.transform), id(self.tokenizer))

    def _latents(self, images: list[Image.Image]) -> list[torch.Tensor]:
        device = self._device()
        parts: list[torch.Tensor] = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(image) for image in images[start : start + self.batch_size]])
            parts.extend(self.model.encode(pixels.to(device)))
        return parts

    def _texts(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
        """Per text, (decoder ids, attention mask, truncated), each row padded to the context."""
        encoded = self.tokenizer.encode(texts)  # EmptyCaptionError names an empty text
        device = self._device()
        ids = self.model.to_local(encoded.input_ids.to(device))
        mask = encoded.attention_mask.to(device)
        return [(ids[i], mask[i], bool(encoded.truncated[i])) for i in range(len(texts))]

    def _log_likelihoods(
        self, pairs: list[tuple[Any, str]], latents: dict[Any, torch.Tensor], texts: dict[str, tuple]
    ) -> list[torch.Tensor]:
        """Mean token log-likelihood (float64) of each distinct (image key, text) pair, in batches of
        `batch_size` pairs, longest texts first, each batch cut to its longest text."""
        lengths = [int(texts[text][1].sum()) for _, text in pairs]
        order = sorted(range(len(pairs)), key=lambda i: -lengths[i])
        out: list[Any] = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = lengths[rows[0]]  # the longest text of this batch
            ids = torch.stack([texts[pairs[i][1]][0][:width] for i in rows])
            mask = torch.stack([texts[pairs[i][1]][1][:width] for i in rows])
            inputs, labels, label_mask = teacher_forcing(ids, mask)
            logits = self.model.caption_logits(torch.stack([latents[pairs[i][0]] for i in rows]), inputs)
            values = mean_token_log_likelihood(logits, labels, label_mask).double()
            for j, i in enumerate(rows):
                out[i] = values[j]
        return out

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        if len(images) != len(texts):
            raise ValueError(
                f"{self.name}: {len(images)} images but {len(texts)} texts; pairs must be row-aligned"
            )
        if not texts:
            return np.zeros(0, dtype=np.float64)
        cache = self.cache if self.cache is not None else EncodingCache()
        image_keys = [cache.image_key(image) for image in images]
        first_image = dict(zip(image_keys, images))

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                text_values = cache.values("caption_texts", texts, self._texts)
                text_entries = dict(zip(texts, text_values))
                # texts cut to the context, counted once per call as before the cache
                self.truncated += sum(entry[2] for entry in text_entries.values())
                latent_values = cache.values(
                    "caption_latents", image_keys, lambda keys: self._latents([first_image[k] for k in keys])
                )
                latents = dict(zip(image_keys, latent_values))
                values = cache.values(
                    "caption_ll",
                    list(zip(image_keys, texts)),
                    lambda keys: self._log_likelihoods(keys, latents, text_entries),
                )
        finally:
            self.model.train(was_training)
        return torch.stack(values).cpu().numpy().astype(np.float64)
