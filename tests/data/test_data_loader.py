from __future__ import annotations

import io
import json
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from nas.config.base import ConfigError, from_dict
from nas.data.captions import CaptionDataset
from nas.data.loader import (
    COUNT_KEYS,
    LoaderConfig,
    build_loader,
    collate_pairs,
    make_collate,
    set_sampler_epoch,
)
from nas.data.tokenizer import UnkOnlyCaptionError, load_tokenizer
from nas.data.transforms import TransformConfig, build_eval_transform


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _item(index: int, caption: str = "a red circle", image_id: int = 0) -> dict:
    return {
        "image": torch.full((3, 4, 4), float(index)),
        "caption": caption,
        "index": index,
        "image_id": image_id,
    }


def test_collate_shapes_dtypes_and_skip_count(tokenizer):
    items = [_item(0, "a red circle", 5), None, _item(2, "a small blue square left of a cross", 7), None]
    batch = collate_pairs(items, tokenizer, max_length=8)
    assert batch["num_skipped"] == 2
    assert batch["image"].shape == (2, 3, 4, 4) and batch["image"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 8)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["index"].tolist() == [0, 2] and batch["index"].dtype == torch.long
    assert batch["image_id"].tolist() == [5, 7] and batch["image_id"].dtype == torch.long
    assert batch["caption"] == ["a red circle", "a small blue square left of a cross"]
    assert batch["image"][1, 0, 0, 0].item() == 2.0  # images stay with their captions


def test_collate_refuses_a_batch_of_only_bad_images(tokenizer):
    with pytest.raises(ValueError, match="2 skipped"):
        collate_pairs([None, None], tokenizer, max_length=8)
    with pytest.raises(ValueError, match="max_length"):
        make_collate(tokenizer, 1)


class Indices(Dataset):
    """Item i is the integer i."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _order(loader) -> list[int]:
    return [i for batch in loader for i in batch.tolist()]


def test_single_process_batches_are_per_gpu_size_and_shuffle_follows_torch_seed():
    cfg = LoaderConfig(batch_size_per_gpu=4)
    loader = build_loader(Indices(10), cfg, torch.tensor, shuffle=True)
    torch.manual_seed(0)
    batches = [b.tolist() for b in loader]
    assert [len(b) for b in batches] == [4, 4]  # drop_last: the 2 left over are dropped
    torch.manual_seed(0)
    assert [b.tolist() for b in loader] == batches
    torch.manual_seed(1)
    assert _order(loader) != sum(batches, [])
    ordered = build_loader(
        Indices(10), LoaderConfig(batch_size_per_gpu=4, drop_last=False), torch.tensor, shuffle=False
    )
    assert _order(ordered) == list(range(10))
    set_sampler_epoch(ordered, 3)  # no-op without a DistributedSampler


def _fake_world(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    # ignite.distributed re-exports these from ignite.distributed.utils, which auto_dataloader
    # reads; patch both. An explicit rank and num_replicas let DistributedSampler run without a
    # process group, so one process can play both ranks.
    for namespace in (idist, idist.utils):
        monkeypatch.setattr(namespace, "get_world_size", lambda: world)
        monkeypatch.setattr(namespace, "get_rank", lambda: rank)
        monkeypatch.setattr(namespace, "get_nproc_per_node", lambda: world)


def test_under_two_processes_each_gets_batch_size_per_gpu(monkeypatch: pytest.MonkeyPatch):
    cfg = LoaderConfig(batch_size_per_gpu=3, num_workers=1)
    per_rank = {}
    for rank in range(2):
        _fake_world(monkeypatch, rank, world=2)
        loader = build_loader(Indices(24), cfg, torch.tensor, shuffle=True)
        assert isinstance(loader.sampler, DistributedSampler)
        assert loader.batch_size == 3 and loader.num_workers == 1  # per process, not divided
        epochs = []
        for epoch in range(2):
            set_sampler_epoch(loader, epoch)
            epochs.append(list(loader))
        per_rank[rank] = epochs
    for epoch in range(2):
        assert all([len(b) for b in per_rank[r][epoch]] == [3, 3, 3, 3] for r in range(2))  # 24 / 2 ranks / 3
        seen = sorted(i for r in range(2) for b in per_rank[r][epoch] for i in b.tolist())
        assert seen == list(range(24))  # the two ranks split the data set between them
    assert [b.tolist() for b in per_rank[0][0]] != [b.tolist() for b in per_rank[0][1]]  # reshuffled by epoch


def test_caption_dataset_through_the_loader_counts_skipped_images(tmp_path: Path, tokenizer):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
    (tmp_path / "ok.png").write_bytes(buffer.getvalue())
    records = [{"image": "ok.png", "caption": f"caption {i}"} for i in range(5)]
    records.insert(2, {"image": "missing.png", "caption": "lost"})
    (tmp_path / "ann.json").write_text(json.dumps(records))
    dataset = CaptionDataset(
        tmp_path / "ann.json", tmp_path, build_eval_transform(TransformConfig(image_size=8)), True
    )
    loader = build_loader(
        dataset, LoaderConfig(batch_size_per_gpu=3), make_collate(tokenizer, 12), shuffle=False
    )
    batches = list(loader)
    assert [b["num_skipped"] for b in batches] == [1, 0]
    assert [b["image"].shape[0] for b in batches] == [2, 3]
    assert batches[0]["index"].tolist() == [0, 1]


def test_loader_config_validation():
    with pytest.raises(ValueError, match="batch_size_per_gpu"):
        LoaderConfig(batch_size_per_gpu=0)
    with pytest.raises(ConfigError, match="loader.batch_size"):
        from_dict(LoaderConfig, {"batch_size": 8}, "loader")


LONG_CAPTION = " ".join(f"word{i % 7}" for i in range(250))  # 250 words, 2 tokens each
EMOJI_ONLY = "\U0001f600\U0001f600"


def _caption_set(tmp_path: Path, captions: list[str], max_words: int | None = 30) -> CaptionDataset:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buffer, "PNG")
    (tmp_path / "ok.png").write_bytes(buffer.getvalue())
    (tmp_path / "ann.json").write_text(json.dumps([{"image": "ok.png", "caption": c} for c in captions]))
    transform = build_eval_transform(TransformConfig(image_size=8))
    return CaptionDataset(tmp_path / "ann.json", tmp_path, transform, max_words=max_words)


def test_collate_counts_cut_and_unk_only_captions(tmp_path: Path, tokenizer):
    dataset = _caption_set(tmp_path, ["a red circle", LONG_CAPTION, EMOJI_ONLY])
    batch = make_collate(tokenizer, 32)([dataset[i] for i in range(3)])
    # the 250-word caption is cut to 30 words when loaded, and its 32 tokens are then cut again
    assert batch["num_truncated_words"] == 1 and batch["num_truncated_tokens"] == 1
    assert batch["num_unk_only"] == 1 and batch["num_skipped"] == 0
    assert all(type(batch[key]) is int for key in COUNT_KEYS)
    raw = _caption_set(tmp_path, [LONG_CAPTION], max_words=None)
    batch = make_collate(tokenizer, 32)([raw[0]])
    assert batch["num_truncated_words"] == 0 and batch["num_truncated_tokens"] == 1


def test_collate_counts_of_a_clean_batch_are_zero(tmp_path: Path, tokenizer):
    dataset = _caption_set(tmp_path, ["a red circle", "a small blue square left of a cross"])
    batch = make_collate(tokenizer, 32)([dataset[0], dataset[1]])
    assert {key: batch[key] for key in COUNT_KEYS} == dict.fromkeys(COUNT_KEYS, 0)


def test_unk_only_caption_under_error_names_file_record_and_caption(tmp_path: Path, tokenizer):
    dataset = _caption_set(tmp_path, ["a red circle", "fine", EMOJI_ONLY])
    collate = make_collate(tokenizer, 32, unk_only="error")
    assert collate([dataset[0], dataset[1]])["num_unk_only"] == 0
    with pytest.raises(UnkOnlyCaptionError) as info:
        collate([dataset[0], None, dataset[2]])
    message = str(info.value)
    assert f"{tmp_path / 'ann.json'}, record 2: {EMOJI_ONLY!r}" in message
    with pytest.raises(ValueError, match="unk_only_captions"):
        make_collate(tokenizer, 32, unk_only="skip")


def test_hand_built_items_without_dataset_keys_still_collate(tokenizer):
    batch = collate_pairs([_item(0, EMOJI_ONLY)], tokenizer, max_length=8)
    assert batch["num_truncated_words"] == 0 and batch["num_unk_only"] == 1
    with pytest.raises(UnkOnlyCaptionError, match="dataset item 0"):
        collate_pairs([_item(0, EMOJI_ONLY)], tokenizer, max_length=8, unk_only="error")


def test_count_keys_pass_the_engine_batch_checks(tmp_path: Path, tokenizer):
    from nas.engine.trainer import count_images, move_batch

    dataset = _caption_set(tmp_path, ["a red circle", LONG_CAPTION])
    batch = make_collate(tokenizer, 32)([dataset[0], dataset[1]])
    assert count_images(batch, "image") == (2, 0)
    moved = move_batch(batch, torch.device("cpu"))
    assert all(moved[key] == batch[key] for key in COUNT_KEYS)
