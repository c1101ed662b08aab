"""Image-caption pairs from an ALBEF/BLIP-style JSON annotation file plus an image folder.

The annotation file is a JSON list of {"image": <path relative to image_root>, "caption": str or
list of str}; a list of captions gives one pair per caption. Real data (COCO, CC3M, ...) and the
synthetic set go through this same class. Every problem is an error naming the file, the record
and what is wrong; a bad image is never silently replaced.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from nas.data.tokenizer import pre_caption

logger = logging.getLogger(__name__)

# ALBEF's datasets clean and truncate every caption to 30 words (salesforce/ALBEF,
# dataset/caption_dataset.py, `max_words=30`).
ALBEF_MAX_WORDS = 30


class AnnotationError(ValueError):
    """The annotation file is malformed; the message names the file and the record index."""


class BadImageError(ValueError):
    """An image is missing, unreadable or truncated; the message names it and the annotation file."""


def load_pairs(annotation_file: str | Path, max_words: int | None = ALBEF_MAX_WORDS) -> list[tuple[str, str]]:
    """Validated (image, caption) pairs, captions cleaned with ALBEF's `pre_caption` unless
    `max_words` is None."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(records, list):
        raise AnnotationError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    pairs: list[tuple[str, str]] = []
    for index, record in enumerate(records):
        where = f"{path}, record {index}"
        if not isinstance(record, dict):
            raise AnnotationError(f"{where}: expected an object, got {type(record).__name__}")
        image = record.get("image")
        if not isinstance(image, str) or not image.strip():
            raise AnnotationError(f"{where}: 'image' must be a non-empty string, got {image!r}")
        if "caption" not in record:
            raise AnnotationError(f"{where}: missing key 'caption'")
        captions = record["caption"]
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not captions:
            raise AnnotationError(f"{where}: 'caption' must be a string or a non-empty list of strings")
        for k, caption in enumerate(captions):
            label = "'caption'" if isinstance(record["caption"], str) else f"'caption'[{k}]"
            if not isinstance(caption, str):
                raise AnnotationError(f"{where}: {label} must be a string, got {type(caption).__name__}")
            cleaned = caption if max_words is None else pre_caption(caption, max_words)
            if not cleaned.strip():
                raise AnnotationError(f"{where}: {label} is empty (after cleaning: {caption!r})")
            pairs.append((image, cleaned))
    return pairs


def open_rgb(path: Path, annotation_file: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; BadImageError if it is missing, corrupt or truncated."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Some libraries set this globally; it makes PIL pad truncated files with grey silently.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; set it back to False")
    if not path.is_file():
        raise BadImageError(f"image file not found: {path} (listed in {annotation_file})")
    try:
        # verify() checks PNG chunk checksums and the end marker, which a plain decode skips;
        # it leaves the image unusable, hence the second open for the real decode.
        with Image.open(path) as probe:
            probe.verify()
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "PA"):  # palette transparency must go through RGBA first
                image = image.convert("RGBA")
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise BadImageError(
            f"unreadable or truncated image: {path} (listed in {annotation_file}): {type(exc).__name__}: {exc}"
        ) from exc


def stack_images(
    image_root: str | Path, paths: Sequence[str], transform: Callable[[Image.Image], Any], source: str | Path
) -> torch.Tensor:
    """`transform(image)` of every path (relative to `image_root`), stacked `[N, ...]`; a bad image is a
    BadImageError naming the file and `source` (the annotation that listed it)."""
    return torch.stack([transform(open_rgb(Path(image_root) / path, source)) for path in paths])


class CaptionDataset(Dataset):
    """One item per (image, caption) pair: {"image": tensor, "caption": str, "index": int,
    "image_id": int}. `image_id` numbers distinct image paths in order of first appearance, so it
    is stable for a given annotation file. With `skip_bad_images`, a bad image gives None (the
    collate function drops and counts it) instead of raising."""

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        transform: Callable[[Image.Image], Any],
        skip_bad_images: bool = False,
        *,
        max_words: int | None = ALBEF_MAX_WORDS,
    ):
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.pairs = load_pairs(self.annotation_file, max_words)
        self.image_ids: dict[str, int] = {}
        for image, _ in self.pairs:
            self.image_ids.setdefault(image, len(self.image_ids))

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, index: int) -> Path:
        return self.image_root / self.pairs[index][0]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        image_name, caption = self.pairs[index]
        try:
            image = open_rgb(self.image_root / image_name, self.annotation_file)
        except BadImageError as exc:
            if not self.skip_bad_images:
                raise
            logger.warning("skipping item %d: %s", index, exc)
            return None
        return {
            "image": self.transform(image),
            "caption": caption,
            "index": index,
            "image_id": self.image_ids[image_name],
        }
