"""Webdataset-style shards (img2dataset output) read with tarfile: same items as CaptionDataset."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data.captions import BadImageError, CaptionDataset
from nas.data.shards import ShardDataset, ShardError, index_shard, list_shards


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def image_bytes(colour: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (6, 4)) -> bytes:
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[...] = colour
    array[0, 0] = (colour[2], colour[0], colour[1])  # one odd pixel: orientation is checked too
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample(key: str, colour, caption: str | None, *, fmt="png", meta: dict | None = None):
    members = [(f"{key}.{fmt}", image_bytes(colour, "PNG" if fmt == "png" else "JPEG"))]
    if caption is not None:
        members.append((f"{key}.txt", caption.encode()))
    if meta is not None:
        members.append((f"{key}.json", json.dumps(meta).encode()))
    return members


RED, GREEN, BLUE = (200, 10, 10), (10, 200, 10), (10, 10, 200)


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard(
        folder / "00000.tar",
        sample("000000000", RED, "A Red square!", meta={"caption": "ignored: the .txt wins", "url": "u0"})
        + sample("000000001", GREEN, None, meta={"caption": "A green-ish  thing.", "status": "success"}),
    )
    write_shard(folder / "00001.tar", sample("000010000", BLUE, "blue, on the LEFT", fmt="jpg"))
    return folder


def test_items_match_caption_dataset_items(shards, tmp_path):
    dataset = ShardDataset(shards, to_tensor, image_id_offset=100)
    assert len(dataset) == 3
    items = [dataset[i] for i in range(3)]
    assert [item["caption"] for item in items] == ["a red square", "a green ish thing", "blue on the left"]
    assert [item["index"] for item in items] == [0, 1, 2]
    assert [item["image_id"] for item in items] == [100, 101, 102]
    assert set(items[0]) == {"image", "caption", "index", "image_id"}

    # The same pairs as an ALBEF JSON + image folder give the same items through CaptionDataset.
    images = tmp_path / "images"
    images.mkdir()
    for name, colour in (("r.png", RED), ("g.png", GREEN)):
        (images / name).write_bytes(image_bytes(colour))
    annotation = tmp_path / "pairs.json"
    annotation.write_text(
        json.dumps(
            [
                {"image": "r.png", "caption": "A Red square!"},
                {"image": "g.png", "caption": "A green-ish  thing."},
            ]
        )
    )
    reference = CaptionDataset(annotation, images, to_tensor)
    for index in range(2):
        expected, got = reference[index], items[index]
        assert got["caption"] == expected["caption"]
        assert torch.equal(got["image"], expected["image"])
    assert items[0]["image"][:, 0, 0].tolist() == [RED[2], RED[0], RED[1]]  # the odd pixel, in place


def test_json_caption_is_used_without_txt_and_max_words_applies(shards):
    dataset = ShardDataset(shards, to_tensor, max_words=2)
    assert dataset[1]["caption"] == "a green"
    raw = ShardDataset(shards, to_tensor, max_words=None)
    assert raw[1]["caption"] == "A green-ish  thing."


def test_list_shards_accepts_folder_glob_file_and_list(shards):
    both = [shards / "00000.tar", shards / "00001.tar"]
    assert list_shards(shards) == both
    assert list_shards(str(shards / "0000*.tar")) == both
    assert list_shards([shards / "00001.tar", shards / "00000.tar"]) == both[::-1]
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(shards / "nothing-*.tar")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (sample("k1", RED, None), "'k1' has an image but no .txt or .json caption"),
        ([("k2.txt", b"caption only")], "'k2' has a caption but no image"),
        (sample("k3", RED, "x") + [("k3.jpg", image_bytes(RED, "JPEG"))], "'k3' has two images"),
        (sample("k4", RED, None, meta={"url": "u"}), "'k4': no .txt and the .json has no string 'caption'"),
        (sample("k5", RED, "?!..."), "'k5': the caption is empty"),
    ],
)
def test_incomplete_samples_are_errors_naming_shard_and_key(tmp_path, members, message):
    shard = write_shard(tmp_path / "bad.tar", members)
    with pytest.raises(ShardError) as info:
        index_shard(shard)
    assert message in str(info.value) and str(shard) in str(info.value)


def test_truncated_shard_is_an_error(tmp_path, shards):
    source = shards / "00000.tar"
    with tarfile.open(source) as tar:
        last = tar.getmembers()[-1]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(source.read_bytes()[: last.offset_data + last.size // 2])  # inside the last member
    with pytest.raises(ShardError, match="cut.tar: truncated tar"):
        index_shard(cut)
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(ShardError, match="empty.tar: unreadable or truncated tar"):
        index_shard(tmp_path / "empty.tar")


def test_corrupt_image_raises_or_is_skipped(tmp_path):
    good = image_bytes(RED)
    shard = write_shard(
        tmp_path / "s.tar",
        [("a.png", good[: len(good) // 2]), ("a.txt", b"broken"), ("b.png", good), ("b.txt", b"fine")],
    )
    with pytest.raises(BadImageError, match="s.tar sample 'a'"):
        ShardDataset(shard, to_tensor)[0]
    lenient = ShardDataset(shard, to_tensor, skip_bad_images=True)
    assert lenient[0] is None and lenient[1]["caption"] == "fine"


def test_keys_follow_the_webdataset_rule(tmp_path):
    shard = write_shard(
        tmp_path / "s.tar",
        [
            ("dir/abc.seg.png", image_bytes(RED)),
            ("dir/abc.seg.txt", b"one"),
            ("dir/abd.png", image_bytes(BLUE)),
        ]
        + [("dir/abd.txt", b"two"), ("dir/abd.parquet", b"ignored")],
    )
    samples = index_shard(shard)
    # key = the path up to the first dot of the file name, so "abc.seg.png" is key "dir/abc" with the
    # extension "seg.png": neither an image nor a caption, like the .parquet member.
    assert [(s.key, s.caption) for s in samples] == [("dir/abd", "two")]
