"""UTA's pair scorer for the fine-grained benchmarks (MUG_UTA.md §2 "Decisions"): the cosine of the
student's image embedding (projected CLS, L2-normalised) with the frozen teacher text tower's
embedding of the caption. The same class scores the teacher itself (its own image tower), so the
tables show the student beside the CLIP it was aligned to.

Within one `score` call every distinct image and text is encoded once (the benchmarks repeat them), and
within one probe suite when `run_probe_suite` lends the scorer a cache (`nas.evaluation.encoding_cache`);
models run under no_grad in eval mode, and the modes are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from nas.evaluation.encoding_cache import EncodingCache

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, H, W] -> unit vectors [B, D]
TextEncoder = Callable[[torch.Tensor], torch.Tensor]  # BPE ids [B, L] -> unit vectors [B, D]


class CosinePairScorer:
    """`score(images, texts)[i] = cos(image_encoder(images[i]), text_encoder(texts[i]))`."""

    def __init__(
        self,
        name: str,
        encode_image: ImageEncoder,
        encode_text: TextEncoder,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Any,
        *,
        modules: tuple[torch.nn.Module, ...] = (),
        batch_size: int = 64,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.encode_image = encode_image
        self.encode_text = encode_text
        self.transform = transform
        self.tokenizer = tokenizer  # nas.data.bpe_tokenizer.BpeTokenizer
        self.modules = modules  # put in eval mode while scoring
        self.batch_size = batch_size
        self.device = torch.device(device)
        # Encodings kept across `score` calls (`nas.evaluation.encoding_cache`); None: one per call.
        self.cache: EncodingCache | None = None

    def _embed(self, items: list[Any], encode: Callable[[list[Any]], torch.Tensor]) -> torch.Tensor:
        parts = [encode(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        return torch.cat(parts).float()

    def _images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.transform(image.convert("RGB")) for image in images]).to(self.device)
        return self.encode_image(pixels)

    def _texts(self, texts: list[str]) -> torch.Tensor:
        return self.encode_text(self.tokenizer.encode(texts).input_ids.to(self.device))

    def cache_scope(self) -> tuple:
        """What the encodings depend on (`nas.evaluation.encoding_cache.shared_encodings`)."""
        return ("cosine", id(self))

    @torch.no_grad()
    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        if len(images) != len(texts):
            raise ValueError(
                f"{self.name}: {len(images)} images but {len(texts)} texts; pairs must be row-aligned"
            )
        cache = self.cache if self.cache is not None else EncodingCache()
        image_keys = [cache.image_key(image) for image in images]
        first_image = dict(zip(image_keys, images))
        modes = [module.training for module in self.modules]
        for module in self.modules:
            module.eval()
        try:
            image_emb = cache.values(
                "cosine_images",
                image_keys,
                lambda keys: list(self._embed([first_image[k] for k in keys], self._images)),
            )
            text_emb = cache.values("cosine_texts", texts, lambda keys: list(self._embed(keys, self._texts)))
        finally:
            for module, mode in zip(self.modules, modes):
                module.train(mode)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        return (torch.stack(image_emb) * torch.stack(text_emb)).sum(dim=-1).double().cpu().numpy()


def uta_scorer(
    student, teacher, transform, tokenizer, *, name: str = "uta", **kwargs: Any
) -> CosinePairScorer:
    """The student's image embedding against the frozen teacher's text embedding."""
    return CosinePairScorer(
        name,
        student.encode_image,
        teacher.encode_text,
        transform,
        tokenizer,
        modules=(student, teacher),
        **kwargs,
    )


def teacher_scorer(
    teacher, transform, tokenizer, *, name: str = "uta_teacher", **kwargs: Any
) -> CosinePairScorer:
    """The teacher CLIP's own image-text cosine (the reference row)."""
    return CosinePairScorer(
        name, teacher.encode_image, teacher.encode_text, transform, tokenizer, modules=(teacher,), **kwargs
    )
