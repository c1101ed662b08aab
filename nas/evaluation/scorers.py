"""The one interface between a model and the zero-shot benchmarks: a pair scorer.

A scorer maps row-aligned (image, text) pairs to real numbers, higher meaning a better match
(BENCHMARKS.md §0.3). The model side (ITM probability, ITC cosine, ITM logit + ITC cosine, caption
log-likelihood; NAS_METHOD.md §7, MUG_UTA.md) plugs in here; the benchmark code never sees a model.
Every benchmark result names the scorer that produced it, hence the `name` attribute.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class PairScorer(Protocol):
    """Scores row-aligned pairs: `score(images, texts)[i]` is the score of `(images[i], texts[i])`.

    Contract (checked by the benchmark runner, which raises on a violation):
    - the result has shape `(len(texts),)` and converts to float64;
    - no NaN (a NaN would make every argmax/comparison silently wrong);
    - the images arrive as RGB `PIL.Image.Image`, already cropped where the benchmark crops (ARO
      VG); the scorer applies its own preprocessing and text cleaning.
    - deterministic: the runner scores each distinct (image, text) pair of a benchmark once.
    The loaders put the source file in `image.info["path"]` and the crop box (or None) in
    `image.info["box"]`, so a scorer may cache image features per (path, box).
    """

    name: str

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray: ...
