"""The one interface between a model and the zero-shot benchmarks: a pair scorer.

A scorer maps row-aligned (image, text) pairs to real numbers, higher meaning a better match
(BENCHMARKS.md §0.3). The model side (ITM probability, ITC cosine, ITM logit + ITC cosine, caption
log-likelihood; NAS_METHOD.md §7, MUG_UTA.md) plugs in here; the benchmark code never sees a model.
Every benchmark result names the scorer that produced it, hence the `name` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
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


def image_key(image: Image.Image) -> Any:
    """What identifies an image: the file and crop box the benchmark loaders record, else the object."""
    if "path" in image.info:
        return ("file", image.info["path"], image.info.get("box"))
    return ("object", id(image))


@dataclass
class DistinctPairs:
    """Row-aligned pairs reduced to their distinct images and texts, so each is encoded once:
    pair i is (images[rows[i]], texts[cols[i]])."""

    images: list[Image.Image]
    texts: list[str]
    rows: torch.Tensor  # long [n_pairs]
    cols: torch.Tensor  # long [n_pairs]


def distinct_pairs(images: list[Image.Image], texts: list[str], scorer_name: str) -> DistinctPairs:
    """The shared first step of every model scorer; unaligned inputs are an error naming the scorer."""
    if len(images) != len(texts):
        raise ValueError(
            f"{scorer_name}: {len(images)} images but {len(texts)} texts; pairs must be row-aligned"
        )
    image_index: dict[Any, int] = {}
    unique_images: list[Image.Image] = []
    for image in images:
        key = image_key(image)
        if key not in image_index:
            image_index[key] = len(unique_images)
            unique_images.append(image)
    text_index: dict[str, int] = {}
    for text in texts:
        text_index.setdefault(text, len(text_index))
    return DistinctPairs(
        unique_images,
        list(text_index),
        torch.tensor([image_index[image_key(image)] for image in images], dtype=torch.long),
        torch.tensor([text_index[text] for text in texts], dtype=torch.long),
    )
