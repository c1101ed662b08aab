"""Pre-flight of the training list (nas.data.training_set.preflight) and the data params it reads."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nas.config.base import ConfigError, from_dict
from nas.config.data import DataConfig
from nas.data.captions import BadImageError, CaptionDataset, ImagePathError
from nas.data.tokenizer import UnkOnlyCaptionError, load_tokenizer
from nas.data.training_set import build_training_set, dataset_parts, preflight


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _image_bytes(fmt: str = "JPEG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, fmt)
    return buffer.getvalue()


def _data(root: Path, records: list[dict], images: dict[str, bytes], **overrides) -> DataConfig:
    for name, blob in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    (root / "train.json").write_text(json.dumps(records))
    return DataConfig(root=str(root), **overrides)


def _identity(image):
    return image


def _clean_set(tmp_path: Path, n: int = 6, **overrides) -> DataConfig:
    images = {f"img/{k}.jpg": _image_bytes(seed=k) for k in range(n)}
    records = [{"image": name, "caption": ["a red circle", "a blue square"]} for name in images]
    return _data(tmp_path, records, images, **overrides)


def test_corrupt_jpg_is_found_naming_file_and_record(tmp_path: Path):
    data = _clean_set(tmp_path, preflight="full")
    (tmp_path / "img" / "3.jpg").write_bytes(b"\xff\xd8 garbage, not a jpeg" * 20)
    dataset = build_training_set(data, _identity)
    with pytest.raises(BadImageError) as info:
        preflight(dataset, data)
    message = str(info.value)
    assert f"{tmp_path / 'train.json'}, record 3" in message and str(tmp_path / "img" / "3.jpg") in message
    assert "data.skip_bad_images" in message


def test_with_skip_bad_images_bad_ones_are_counted_and_listed(tmp_path: Path):
    data = _clean_set(tmp_path, preflight="full", skip_bad_images=True)
    (tmp_path / "img" / "1.jpg").write_bytes(b"garbage" * 30)
    (tmp_path / "img" / "4.jpg").unlink()  # missing
    summary = preflight(build_training_set(data, _identity), data)
    assert summary["images"] == summary["images_checked"] == 6 and summary["bad_images"] == 2
    listed = summary["bad_image_list"]
    assert [entry["where"] for entry in listed] == [
        f"{tmp_path / 'train.json'}, record 1",
        f"{tmp_path / 'train.json'}, record 4",
    ]
    assert "1.jpg" in listed[0]["error"] and "not found" in listed[1]["error"]


def test_counts_of_a_clean_list_are_zero(tmp_path: Path, tokenizer):
    data = _clean_set(tmp_path)
    summary = preflight(build_training_set(data, _identity), data, tokenizer=tokenizer)
    assert summary["mode"] == "sample" and summary["images"] == summary["images_checked"] == 6
    assert summary["captions"] == 12
    for key in ("bad_images", "captions_truncated_words", "captions_truncated_tokens", "captions_unk_only"):
        assert summary[key] == 0, key
    assert "bad_image_list" not in summary and summary["seconds"] >= 0


def test_sample_checks_n_distinct_images_with_a_seeded_draw(tmp_path: Path):
    data = _clean_set(tmp_path, n=20, preflight="sample", preflight_sample=5, skip_bad_images=True)
    dataset = build_training_set(data, _identity)
    broken = sorted((tmp_path / "img").iterdir())
    for path in broken:
        path.write_bytes(b"garbage")  # every image is bad: the count is the number checked
    first = preflight(dataset, data, seed=1)
    assert first["images"] == 20 and first["images_checked"] == first["bad_images"] == 5
    again = preflight(dataset, data, seed=1)
    assert [e["where"] for e in again["bad_image_list"]] == [e["where"] for e in first["bad_image_list"]]
    other = preflight(dataset, data, seed=2)
    assert [e["where"] for e in other["bad_image_list"]] != [e["where"] for e in first["bad_image_list"]]
    off = preflight(dataset, dataclasses.replace(data, preflight="off"))
    assert off["images_checked"] == 0 and off["bad_images"] == 0 and "captions" not in off


def test_caption_scan_counts_cut_and_unk_only_and_refuses_them_under_error(tmp_path: Path, tokenizer):
    long = " ".join(f"word{k % 5}" for k in range(250))  # 250 words, two tokens each
    images = {"a.jpg": _image_bytes()}
    records = [
        {"image": "a.jpg", "caption": "a red circle"},
        {"image": "a.jpg", "caption": [long, "ok"]},
        {"image": "a.jpg", "caption": "\U0001f600\U0001f389"},
    ]
    data = _data(tmp_path, records, images)
    summary = preflight(build_training_set(data, _identity), data, tokenizer=tokenizer)
    assert summary["captions"] == 4
    assert summary["captions_truncated_words"] == 1 and summary["captions_truncated_tokens"] == 1
    assert summary["captions_unk_only"] == 1
    strict = dataclasses.replace(data, unk_only_captions="error")
    with pytest.raises(UnkOnlyCaptionError) as info:
        preflight(build_training_set(strict, _identity), strict, tokenizer=tokenizer)
    assert f"{tmp_path / 'train.json'}, record 2: '\U0001f600\U0001f389'" in str(info.value)


@pytest.mark.parametrize("image", ["ABSOLUTE", "../outside.jpg"])
def test_training_set_refuses_paths_outside_the_root_unless_allowed(tmp_path: Path, image: str):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.jpg").write_bytes(_image_bytes())
    image = str(tmp_path / "outside.jpg") if image == "ABSOLUTE" else image
    data = _data(root, [{"image": image, "caption": "c"}], {"in.jpg": _image_bytes()})
    with pytest.raises(ImagePathError, match="record 0: image path") as info:
        build_training_set(data, _identity)
    assert str(root / "train.json") in str(info.value) and image in str(info.value)
    allowed = dataclasses.replace(data, allow_outside_root=True, preflight="full")
    dataset = build_training_set(allowed, _identity)
    assert preflight(dataset, allowed)["bad_images"] == 0


def _shard(path: Path, samples: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, blob in samples.items():
            for name, data in ((f"{key}.jpg", blob), (f"{key}.txt", f"caption {key}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shard_samples_are_checked_too(tmp_path: Path):
    data = _clean_set(tmp_path, n=2, preflight="full")
    (tmp_path / "shards").mkdir()
    _shard(tmp_path / "shards" / "00000.tar", {"000": _image_bytes(), "001": b"garbage" * 10})
    data = dataclasses.replace(data, train_shards=("shards",))
    dataset = build_training_set(data, _identity)
    assert [type(part).__name__ for part in dataset_parts(dataset)] == ["CaptionDataset", "ShardDataset"]
    with pytest.raises(BadImageError, match=r"00000.tar, sample '001'"):
        preflight(dataset, data)
    summary = preflight(dataset, dataclasses.replace(data, skip_bad_images=True))
    assert summary["images"] == 4 and summary["bad_images"] == 1


def test_wrappers_and_unknown_datasets(tmp_path: Path):
    data = _clean_set(tmp_path, n=2)
    pairs = CaptionDataset(tmp_path / "train.json", tmp_path, _identity)

    class Memoized:  # the shape of nas.recipes.uta.data.MemoizedImages
        def __init__(self, inner):
            self.pairs = inner

    assert dataset_parts(Memoized(pairs)) == [pairs]
    with pytest.raises(TypeError, match="list"):
        preflight([1, 2], data)


def test_data_params_defaults_and_validation():
    data = DataConfig()
    assert (data.allow_outside_root, data.unk_only_captions, data.preflight) == (False, "count", "sample")
    assert data.preflight_sample == 1000
    parsed = from_dict(
        DataConfig,
        {
            "unk_only_captions": "error",
            "preflight": "full",
            "preflight_sample": 8,
            "allow_outside_root": True,
        },
        "data",
    )
    assert (parsed.unk_only_captions, parsed.preflight, parsed.preflight_sample) == ("error", "full", 8)
    with pytest.raises(ConfigError, match="data.unk_only_captions"):
        from_dict(DataConfig, {"unk_only_captions": "drop"}, "data")
    with pytest.raises(ConfigError, match="data.preflight"):
        from_dict(DataConfig, {"preflight": "some"}, "data")
    with pytest.raises(ConfigError, match="preflight_sample must be >= 1"):
        from_dict(DataConfig, {"preflight_sample": 0}, "data")
