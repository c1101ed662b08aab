"""The pretraining pairs: `data.train_file` (ALBEF JSON + image folder) plus any `data.train_shards`
(img2dataset webdataset shards: CC3M and SBU at paper scale) as one map-style dataset, and the
pre-flight check a training stage runs on it before its first step (`preflight`)."""

from __future__ import annotations

import bisect
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import ConcatDataset, Dataset

from nas.config.data import DataConfig
from nas.data.captions import BadImageError, CaptionDataset, open_rgb
from nas.data.shards import ShardDataset, decode_rgb
from nas.data.tokenizer import UnkOnlyCaptionError, caption_flags, check_unk_policy

if TYPE_CHECKING:
    from transformers import BertTokenizerFast

logger = logging.getLogger(__name__)

# Bad images listed by name in the pre-flight summary (all of them are counted).
MAX_LISTED = 20
# Captions tokenized per call in the pre-flight's caption scan.
CAPTION_CHUNK = 2048


def build_training_set(data: DataConfig, transform: Callable[[Any], Any]) -> Dataset:
    """Items {"image", "caption", "index", "image_id", ...} from the JSON list, then the shards. Image
    ids of shard samples start after the JSON list's, so ITC's same-image positives stay exact. Image
    paths outside `data.images` are an error unless `data.allow_outside_root`."""
    pairs = CaptionDataset(
        data.path(data.train_file),
        data.images,
        transform,
        skip_bad_images=data.skip_bad_images,
        max_words=data.max_words,
        allow_outside_root=data.allow_outside_root,
    )
    if not data.train_shards:
        return pairs
    shards = ShardDataset(
        [str(Path(data.root) / spec) for spec in data.train_shards],
        transform,
        data.skip_bad_images,
        max_words=data.max_words,
        image_id_offset=max(pairs.image_ids.values(), default=-1) + 1,
    )
    return _Reindexed(ConcatDataset([pairs, shards]))


class _Reindexed(Dataset):
    """ConcatDataset with `index` set to the position in the concatenation (each part counts from 0)."""

    def __init__(self, inner: ConcatDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.inner[index]
        if item is not None:
            item = {**item, "index": index}
        return item


# ---- pre-flight ---------------------------------------------------------------------------------


def dataset_parts(dataset: Any) -> list[CaptionDataset | ShardDataset]:
    """The CaptionDataset / ShardDataset parts of a training set, in index order. Understands
    `build_training_set`'s output, ConcatDataset, and wrappers keeping their dataset in `.pairs`
    (nas.recipes.uta.data.MemoizedImages)."""
    if isinstance(dataset, (CaptionDataset, ShardDataset)):
        return [dataset]
    if isinstance(dataset, _Reindexed):
        return dataset_parts(dataset.inner)
    if isinstance(dataset, ConcatDataset):
        return [part for inner in dataset.datasets for part in dataset_parts(inner)]
    inner = getattr(dataset, "pairs", None)
    if isinstance(inner, Dataset):
        return dataset_parts(inner)
    raise TypeError(
        f"preflight: cannot find the image list of a {type(dataset).__name__}; expected a CaptionDataset, "
        "a ShardDataset, or build_training_set's output"
    )


def _image_units(part: CaptionDataset | ShardDataset) -> list[int]:
    """Item indices that reach every distinct image of `part` once (the first pair of each)."""
    if isinstance(part, ShardDataset):
        return list(range(len(part)))
    first: dict[str, int] = {}
    for index, (image, _) in enumerate(part.pairs):
        first.setdefault(image, index)
    return list(first.values())


def _where(part: CaptionDataset | ShardDataset, index: int) -> str:
    """Where item `index` comes from: "<annotation file>, record <r>" or "<shard>, sample <key>"."""
    if isinstance(part, ShardDataset):
        sample = part.samples[index]
        return f"{sample.shard}, sample {sample.key!r}"
    return part.where(index)


def _check_image(part: CaptionDataset | ShardDataset, index: int) -> None:
    """BadImageError if the image of item `index` is missing or does not decode."""
    if isinstance(part, ShardDataset):
        try:
            decode_rgb(part.read_image_bytes(index), _where(part, index))
        except OSError as exc:  # the shard itself is gone or unreadable
            raise BadImageError(f"{_where(part, index)}: {type(exc).__name__}: {exc}") from exc
        return
    # The decode training does (verify(), then a full load); the message names image and file.
    open_rgb(part.image_root / part.pairs[index][0], part.annotation_file)


def _scan_captions(
    parts: list[CaptionDataset | ShardDataset], data: DataConfig, tokenizer: BertTokenizerFast
) -> dict[str, int]:
    """Counts over every caption of the training list, as the collate would count them batch by batch;
    under `data.unk_only_captions: error` the first [UNK]-only caption is an UnkOnlyCaptionError."""
    counts = {"captions": 0, "truncated_words": 0, "truncated_tokens": 0, "unk_only": 0}
    for part in parts:
        if isinstance(part, ShardDataset):
            captions = [sample.caption for sample in part.samples]
        else:
            captions = [caption for _, caption in part.pairs]
            counts["truncated_words"] += sum(part.words_truncated)
        counts["captions"] += len(captions)
        for start in range(0, len(captions), CAPTION_CHUNK):
            chunk = captions[start : start + CAPTION_CHUNK]
            truncated, unk_only = caption_flags(tokenizer, chunk, data.text_max_length)
            rows = [row for row, flag in enumerate(unk_only) if flag]
            counts["truncated_tokens"] += sum(truncated)
            counts["unk_only"] += len(rows)
            if rows and data.unk_only_captions == "error":
                where = [_where(part, start + row) for row in rows]
                raise UnkOnlyCaptionError(rows, [chunk[row] for row in rows], where)
    return counts


def preflight(
    dataset: Any,
    data: DataConfig,
    *,
    tokenizer: BertTokenizerFast | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Check a training set before the first step; returns the counts for the stage's run record.

    Images (`data.preflight`): `full` decodes every distinct image, `sample` `data.preflight_sample`
    of them drawn with `random.Random(seed)` (the global RNGs are untouched), `off` none. Each is
    decoded exactly as training decodes it (PIL verify(), then a full load). A missing or corrupt
    image is a BadImageError naming the annotation file, the record and the image unless
    `data.skip_bad_images`, in which case every bad one is counted and the first MAX_LISTED listed.

    Captions (when `tokenizer` is given and `data.preflight` is not `off`): every caption is counted
    as the collate counts it (cut to `max_words` words, cut to `text_max_length` tokens, [UNK]-only);
    an [UNK]-only caption is an UnkOnlyCaptionError under `data.unk_only_captions: error`.
    """
    check_unk_policy(data.unk_only_captions)
    start = time.perf_counter()
    parts = dataset_parts(dataset)
    units = [_image_units(part) for part in parts]
    offsets = [0]
    for part_units in units:
        offsets.append(offsets[-1] + len(part_units))
    total = offsets[-1]
    summary: dict[str, Any] = {"mode": data.preflight, "images": total, "images_checked": 0, "bad_images": 0}
    if data.preflight == "off":
        summary["seconds"] = round(time.perf_counter() - start, 3)
        return summary

    if data.preflight == "full" or data.preflight_sample >= total:
        chosen: list[int] | range = range(total)
    else:
        chosen = sorted(random.Random(seed).sample(range(total), data.preflight_sample))
    bad: list[dict[str, str]] = []
    for unit in chosen:
        k = bisect.bisect_right(offsets, unit) - 1
        part, index = parts[k], units[k][unit - offsets[k]]
        try:
            _check_image(part, index)
        except BadImageError as exc:
            where = _where(part, index)
            if not data.skip_bad_images:
                raise BadImageError(
                    f"pre-flight: {where}: {exc} (set data.skip_bad_images: true to skip and count bad images)"
                ) from exc
            summary["bad_images"] += 1
            if len(bad) < MAX_LISTED:
                bad.append({"where": where, "error": str(exc)})
                logger.warning("pre-flight: bad image, skipped in training: %s: %s", where, exc)
    summary["images_checked"] = len(chosen)
    if bad:
        summary["bad_image_list"] = bad
    if tokenizer is not None:
        counts = _scan_captions(parts, data, tokenizer)
        summary["captions"] = counts.pop("captions")
        summary.update({f"captions_{key}": value for key, value in counts.items()})
    summary["seconds"] = round(time.perf_counter() - start, 3)
    logger.info("pre-flight of the training list: %s", summary)
    return summary
