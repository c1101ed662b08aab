"""The shard reader against webdataset: the same shards give the same samples (key, caption, image
bytes) through `ShardDataset` (map-style, tarfile index + seek) and `webdataset.WebDataset`
(its streaming tar pipeline), and the key rule webdataset lends `nas.data.shards` splits names as the hand-written
rule it replaced did."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from nas.data.shards import IMAGE_EXTENSIONS, ShardDataset, _split_key, index_shard


def _image(colour: tuple[int, int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 5, 3), colour, dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    meta = {"caption": "From the JSON, as img2dataset writes it.", "status": "success"}
    first = _write_shard(
        tmp_path / "00000.tar",
        [
            ("000000000.jpg", _image((200, 10, 10), "JPEG")),
            ("000000000.txt", b"A red square!"),
            ("000000000.json", json.dumps({"caption": "the .txt wins"}).encode()),
            ("000000001.png", _image((10, 200, 10), "PNG")),
            ("000000001.json", json.dumps(meta).encode()),
            ("sub/dir/000000002.PNG", _image((10, 10, 200), "PNG")),  # folder key, upper-case extension
            ("sub/dir/000000002.txt", "Ünïcode caption".encode()),
            ("sub/dir/000000002.seg.parquet", b"not part of the pair"),
        ],
    )
    second = _write_shard(
        tmp_path / "00001.tar",
        [("x.y/000010000.webp", _image((90, 90, 90), "WEBP")), ("x.y/000010000.txt", b"grey")],
    )
    return [first, second]


def _webdataset_samples(shards: list[Path]) -> list[tuple[str, str, bytes]]:
    """(key, caption, image bytes) by webdataset's tar pipeline (what `webdataset.WebDataset` runs after
    opening the URLs; opened here so that the files are closed: WebDataset 1.0.2 leaves them to the
    garbage collector), taking the .txt caption, else the .json's "caption"."""
    with contextlib.ExitStack() as stack:
        sources = [{"url": str(s), "stream": stack.enter_context(open(s, "rb"))} for s in shards]
        samples = list(group_by_keys(tar_file_expander(sources)))
    out = []
    for sample in samples:
        (image,) = [sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample]
        if "txt" in sample:
            caption = sample["txt"].decode("utf-8")
        else:
            caption = json.loads(sample["json"])["caption"]
        out.append((sample["__key__"], caption, image))
    return out


def test_shard_dataset_reads_the_samples_webdataset_reads(shards):
    dataset = ShardDataset(shards, lambda image: image, max_words=None)
    ours = [
        (sample.key, sample.caption, dataset.read_image_bytes(k)) for k, sample in enumerate(dataset.samples)
    ]
    theirs = _webdataset_samples(shards)
    assert len(ours) == 4
    assert ours == theirs
    # and the decoded items keep their order, index and image ids
    assert [dataset[k]["index"] for k in range(len(dataset))] == [0, 1, 2, 3]


def _old_split_key(name: str) -> tuple[str, str]:
    """The hand-written rule `_split_key` had before it took webdataset's (kept here as the reference)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


NAMES = [
    "000.jpg",
    "000.TXT",
    "dir/abc.seg.png",
    "x.y/abc.PNG",
    "a..png",
    "a/b/c.d.e",
    "dir/.png",
    "noext",
    "x.y/abc",
    "dir/",
]


@pytest.mark.parametrize("name", NAMES)
def test_key_rule_equals_the_hand_written_one(name):
    (key, ext), (old_key, old_ext) = _split_key(name), _old_split_key(name)
    # A name without an extension is passed over by both (its key is never used).
    assert ext == old_ext and (key == old_key or ext == "")


def test_a_top_level_dot_name_has_no_key_as_in_webdataset(tmp_path):
    # The one difference: the old rule made ".txt" a caption of the empty key "" (an error: caption
    # without image); webdataset gives such a name no key, so it is passed over like any other file.
    assert _old_split_key(".txt") == ("", "txt") and _split_key(".txt") == ("", "")
    shard = _write_shard(
        tmp_path / "s.tar", [(".txt", b"stray"), ("k.png", _image((1, 2, 3), "PNG")), ("k.txt", b"cap")]
    )
    assert [(s.key, s.caption) for s in index_shard(shard)] == [("k", "cap")]
