"""Batching: the collate function for image-caption items and the DataLoader factory.

`build_loader` goes through `ignite.distributed.auto_dataloader`, which adds a DistributedSampler
under a process group and treats `batch_size` (and `num_workers`) as totals over the processes of
a node. We pass totals, so every process gets exactly `batch_size_per_gpu` pairs per step
(paper: 64 per GPU x 8 GPUs = 512 [P]).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from nas.config.data import LoaderConfig  # noqa: F401  (pure config, moved down; kept importable)
from nas.data.tokenizer import TextCollator, UnkOnlyCaptionError, UnkOnlyPolicy, check_unk_policy

# auto_dataloader logs its kwargs at INFO, including the whole tokenizer vocabulary repr.
logging.getLogger("ignite.distributed.auto.auto_dataloader").setLevel(logging.WARNING)

if TYPE_CHECKING:
    from transformers import BertTokenizerFast


# Per-batch counts (plain ints) a collate function puts in the batch besides the tensors, for the
# engine to sum over steps and ranks into the run record. "num_skipped" is required by the engine
# (nas.engine.trainer.count_images); the others are present whenever the data layer can count them.
COUNT_KEYS: tuple[str, ...] = (
    "num_skipped",  # items dropped as bad images (data.skip_bad_images: true)
    "num_truncated_words",  # captions cut to data.max_words words when loaded
    "num_truncated_tokens",  # captions cut to data.text_max_length tokens ([CLS]/[SEP] included)
    "num_unk_only",  # captions whose tokens are all [UNK] besides [CLS]/[SEP]/[PAD]
)


def collate_pairs(
    items: list[dict[str, Any] | None],
    tokenizer: BertTokenizerFast,
    max_length: int,
    unk_only: UnkOnlyPolicy = "count",
) -> dict[str, Any]:
    """Stack CaptionDataset items into a batch; None items (skipped bad images) are dropped and
    counted in "num_skipped". Keys: image float [B,3,H,W], input_ids / attention_mask long [B,T],
    index / image_id long [B], caption list[str] (for text-side negatives), and the int counts of
    COUNT_KEYS. `unk_only="error"`: an [UNK]-only caption is an UnkOnlyCaptionError naming its
    annotation file and record."""
    return stack_items(items, TextCollator(tokenizer, max_length, unk_only=unk_only))


def describe_item(item: dict[str, Any]) -> str:
    """Where an item comes from: "<annotation file>, record <r>" when the dataset says, else its index."""
    if "source" in item and "record" in item:
        return f"{item['source']}, record {item['record']}"
    return f"dataset item {item.get('index')}"


def stack_items(
    items: list[dict[str, Any] | None], text_collator: Callable[[list[str]], dict[str, Any]]
) -> dict[str, Any]:
    """The batch layout of `collate_pairs` with any text collator (BERT WordPiece, CLIP BPE): its
    output keys (input_ids, attention_mask, and any counts it adds) join the batch, as does
    "num_truncated_words" (items flagged "words_truncated" by the dataset)."""
    kept = [item for item in items if item is not None]
    num_skipped = len(items) - len(kept)
    if not kept:
        raise ValueError(
            f"every item of this batch was a bad image ({num_skipped} skipped); check the data set"
        )
    captions = [item["caption"] for item in kept]
    try:
        text = text_collator(captions)
    except UnkOnlyCaptionError as exc:
        raise exc.located([describe_item(kept[row]) for row in exc.rows]) from None
    return {
        "image": torch.stack([item["image"] for item in kept]),
        **text,
        "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
        "image_id": torch.tensor([item["image_id"] for item in kept], dtype=torch.long),
        "caption": captions,
        "num_skipped": num_skipped,
        "num_truncated_words": sum(bool(item.get("words_truncated", False)) for item in kept),
    }


def make_collate(
    tokenizer: BertTokenizerFast, max_length: int, *, unk_only: UnkOnlyPolicy = "count"
) -> Callable[[list[Any]], dict[str, Any]]:
    """`collate_pairs` with the tokenizer bound (picklable, so it works with worker processes);
    `unk_only` is `data.unk_only_captions`."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    return functools.partial(
        collate_pairs, tokenizer=tokenizer, max_length=max_length, unk_only=check_unk_policy(unk_only)
    )


def build_loader(
    dataset: Dataset, cfg: LoaderConfig, collate_fn: Callable[[list[Any]], Any], *, shuffle: bool
) -> DataLoader:
    """A DataLoader giving `cfg.batch_size_per_gpu` items per process and step.

    Single process: a plain shuffled DataLoader whose order is drawn from the torch global RNG at
    each new epoch's iteration, so restoring that RNG state reproduces the order. Under a process
    group: a DistributedSampler (seed 0) whose order depends on its epoch only; the trainer must
    call `set_sampler_epoch` at every epoch start (a plain ignite Engine does not).
    """
    world = idist.get_world_size()
    nproc = idist.get_nproc_per_node() if world > 1 else 1
    return idist.auto_dataloader(
        dataset,
        batch_size=cfg.batch_size_per_gpu * world,  # auto_dataloader divides by the world size
        num_workers=cfg.num_workers * nproc,  # ... and this by the processes per node
        pin_memory=cfg.pin_memory,
        drop_last=cfg.drop_last,
        shuffle=shuffle,
        collate_fn=collate_fn,
    )


def set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a DistributedSampler for `epoch` (0-based); no-op for other samplers."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
