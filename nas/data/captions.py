"""Image-caption pairs from an ALBEF/BLIP-style JSON annotation file plus an image folder.

The annotation file is a JSON list of {"image": <path relative to image_root>, "caption": str or
list of str}; a list of captions gives one pair per caption. Real data (COCO, CC3M, ...) and the
synthetic set go through this same class. Every problem is an error naming the file, the record
and what is wrong; a bad image is never silently replaced.

Image paths must stay inside the image root: an absolute path, or one that leaves the root through
`..` or a symlink, is an ImagePathError naming the file, the record and the path, unless
`allow_outside_root` (params `data.allow_outside_root`). Captions cut by `max_words` are flagged per
item ("words_truncated") so the collate function counts them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from nas.data.tokenizer import clean_caption

logger = logging.getLogger(__name__)

# ALBEF's datasets clean and truncate every caption to 30 words (salesforce/ALBEF,
# dataset/caption_dataset.py, `max_words=30`).
ALBEF_MAX_WORDS = 30


class AnnotationError(ValueError):
    """The annotation file is malformed; the message names the file and the record index."""


class BadImageError(ValueError):
    """An image is missing, unreadable or truncated; the message names it and the annotation file."""


class ImagePathError(AnnotationError):
    """An image path that is absolute or resolves outside the image root; names file, record, path."""


class Pair(NamedTuple):
    """One (image, caption) pair of an annotation file and where it comes from."""

    image: str
    caption: str  # cleaned with `pre_caption` unless max_words is None
    record: int  # index of its record in the annotation file's list
    words_truncated: bool  # pre_caption dropped words beyond max_words


def load_pairs(annotation_file: str | Path, max_words: int | None = ALBEF_MAX_WORDS) -> list[tuple[str, str]]:
    """Validated (image, caption) pairs, captions cleaned with ALBEF's `pre_caption` unless
    `max_words` is None."""
    return [(pair.image, pair.caption) for pair in load_annotations(annotation_file, max_words)]


def load_annotations(annotation_file: str | Path, max_words: int | None = ALBEF_MAX_WORDS) -> list[Pair]:
    """`load_pairs` with each pair's record index and whether `max_words` cut its caption."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(records, list):
        raise AnnotationError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    pairs: list[Pair] = []
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
            cleaned, cut = (caption, False) if max_words is None else clean_caption(caption, max_words)
            if not cleaned.strip():
                raise AnnotationError(f"{where}: {label} is empty (after cleaning: {caption!r})")
            pairs.append(Pair(image, cleaned, index, cut))
    return pairs


class RootGuard:
    """Whether image paths stay inside `root` once `..` and symlinks are resolved.

    Directories are resolved once each (cached) and a file costs one lstat, so a list of a million
    images in a few folders is checked in seconds."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.real_root = os.path.realpath(self.root)
        self._dirs: dict[str, str] = {}

    def _real(self, joined: str) -> str:
        parent, base = os.path.split(joined)
        if base in ("", ".", ".."):
            return os.path.realpath(joined)
        real_parent = self._dirs.get(parent)
        if real_parent is None:
            real_parent = self._dirs[parent] = os.path.realpath(parent)
        full = os.path.join(real_parent, base)
        return os.path.realpath(full) if os.path.islink(full) else full

    def problem(self, name: str) -> str | None:
        """None if `name` (relative to the root) stays inside it, else what is wrong."""
        if os.path.isabs(name):
            return "is an absolute path"
        real = self._real(os.path.join(self.root, name))
        if os.path.commonpath([self.real_root, real]) != self.real_root:
            return f"resolves to {real}"
        return None

    def check(self, name: str, where: str, allow_outside_root: bool = False) -> None:
        """ImagePathError naming `where` (file and record) unless `name` stays inside the root."""
        if allow_outside_root:
            return
        problem = self.problem(name)
        if problem is not None:
            raise ImagePathError(
                f"{where}: image path {name!r} {problem}, outside the image root {self.root} "
                f"({self.real_root}); list images relative to it, or set data.allow_outside_root: true"
            )


def check_image_paths(
    image_root: str | Path,
    names: Iterable[str],
    where: Callable[[int], str],
    allow_outside_root: bool = False,
) -> None:
    """`RootGuard.check` of every image path (relative to `image_root`); `where(k)` names the k-th in a
    message. Each distinct path is checked once."""
    if allow_outside_root:
        return
    guard, seen = RootGuard(image_root), set()
    for k, name in enumerate(names):
        if name not in seen:
            seen.add(name)
            if guard.problem(name) is not None:
                guard.check(name, where(k))


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
    image_root: str | Path,
    paths: Sequence[str],
    transform: Callable[[Image.Image], Any],
    source: str | Path,
    *,
    allow_outside_root: bool = False,
) -> torch.Tensor:
    """`transform(image)` of every path (relative to `image_root`), stacked `[N, ...]`; a bad image is a
    BadImageError naming the file and `source` (the annotation that listed it), a path outside
    `image_root` an ImagePathError unless `allow_outside_root`."""
    check_image_paths(image_root, paths, lambda k: f"{source}, image {k}", allow_outside_root)
    return torch.stack([transform(open_rgb(Path(image_root) / path, source)) for path in paths])


class CaptionDataset(Dataset):
    """One item per (image, caption) pair: {"image": tensor, "caption": str, "index": int,
    "image_id": int, "words_truncated": bool, "source": str, "record": int}. `image_id` numbers
    distinct image paths in order of first appearance, so it is stable for a given annotation file;
    `source` and `record` (annotation file, record index) let the collate name a refused caption.
    With `skip_bad_images`, a bad image gives None (the collate function drops and counts it)
    instead of raising. Every image path is checked against `image_root` when the dataset is built
    (ImagePathError) unless `allow_outside_root`."""

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        transform: Callable[[Image.Image], Any],
        skip_bad_images: bool = False,
        *,
        max_words: int | None = ALBEF_MAX_WORDS,
        allow_outside_root: bool = False,
    ):
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.allow_outside_root = allow_outside_root
        annotations = load_annotations(self.annotation_file, max_words)
        self.pairs: list[tuple[str, str]] = [(pair.image, pair.caption) for pair in annotations]
        self.records: list[int] = [pair.record for pair in annotations]
        self.words_truncated: list[bool] = [pair.words_truncated for pair in annotations]
        self.image_ids: dict[str, int] = {}
        for image, _ in self.pairs:
            self.image_ids.setdefault(image, len(self.image_ids))
        check_image_paths(self.image_root, (image for image, _ in self.pairs), self.where, allow_outside_root)

    def where(self, index: int) -> str:
        """Where pair `index` comes from: "<annotation file>, record <r>", for messages."""
        return f"{self.annotation_file}, record {self.records[index]}"

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
            "words_truncated": self.words_truncated[index],
            "source": str(self.annotation_file),
            "record": self.records[index],
        }


def load_split_images(
    data: Any,
    limit: int | None = None,
    annotation_file: str | None = None,
    select: slice | None = None,
):
    """The first `limit` (default: all) distinct images of the training split (or
    `annotation_file`), in order of first appearance, eval transform (no augmentation), as one tensor;
    `select` keeps a slice of them (one rank's share in sharded evaluation)."""
    import torch

    from nas.data.transforms import build_eval_transform

    annotation = data.path(annotation_file or data.train_file)
    transform = build_eval_transform(data.transform)
    seen: dict[str, None] = {}
    for image, _ in load_pairs(annotation, max_words=data.max_words):
        seen.setdefault(image, None)
        if limit is not None and len(seen) >= limit:
            break
    paths = list(seen)[select] if select is not None else list(seen)
    if not paths:
        return torch.empty(0, 3, data.transform.image_size, data.transform.image_size)
    return stack_images(data.images, paths, transform, annotation, allow_outside_root=data.allow_outside_root)
