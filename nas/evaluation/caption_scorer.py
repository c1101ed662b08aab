"""A captioner as a pair scorer (nas.evaluation.scorers.PairScorer): the mean per-token
log-likelihood of the caption given the full, unmasked image (MUG_UTA.md §1 [D], the generative
score used for captioners on ARO and Winoground).

score(image, text) = (1 / T) * sum_t log p(token_t | image, tokens_<t), over the caption's BPE
tokens and its EOT (T of them), teacher-forced. The mean, not the sum, so that a longer caption is
not penalised for its length alone. A text longer than the decoder's context is cut (its tokens
past the context are not scored) and counted in `truncated`; an empty text is an error naming it.

Every distinct image and text is encoded once per call; the model runs in eval mode under no_grad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from nas.evaluation.scorers import distinct_pairs
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

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _latents(self, images: list[Image.Image]) -> torch.Tensor:
        device = self._device()
        parts = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(image) for image in images[start : start + self.batch_size]])
            parts.append(self.model.encode(pixels.to(device)))
        return torch.cat(parts)

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        pairs = distinct_pairs(images, texts, self.name)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        encoded = self.tokenizer.encode(pairs.texts)  # EmptyCaptionError names an empty text
        self.truncated += int(encoded.truncated.sum())
        rows, cols = pairs.rows, pairs.cols

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                latents = self._latents(pairs.images)
                device = latents.device
                ids = self.model.to_local(encoded.input_ids.to(device))
                mask = encoded.attention_mask.to(device)
                out = []
                for start in range(0, len(texts), self.batch_size):
                    r = rows[start : start + self.batch_size].to(device)
                    c = cols[start : start + self.batch_size].to(device)
                    width = int(mask[c].sum(dim=1).max())  # the longest text of this batch
                    inputs, labels, label_mask = teacher_forcing(ids[c, :width], mask[c, :width])
                    logits = self.model.caption_logits(latents[r], inputs)
                    out.append(mean_token_log_likelihood(logits, labels, label_mask).double())
        finally:
            self.model.train(was_training)
        return torch.cat(out).cpu().numpy()
