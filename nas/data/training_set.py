"""The pretraining pairs: `data.train_file` (ALBEF JSON + image folder) plus any `data.train_shards`
(img2dataset webdataset shards: CC3M and SBU at paper scale) as one map-style dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from nas.config.data import DataConfig
from nas.data.captions import CaptionDataset
from nas.data.shards import ShardDataset


def build_training_set(data: DataConfig, transform: Callable[[Any], Any]) -> Dataset:
    """Items {"image", "caption", "index", "image_id"} from the JSON list, then the shards. Image ids
    of shard samples start after the JSON list's, so ITC's same-image positives stay exact."""
    pairs = CaptionDataset(
        data.path(data.train_file),
        data.images,
        transform,
        skip_bad_images=data.skip_bad_images,
        max_words=data.max_words,
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
