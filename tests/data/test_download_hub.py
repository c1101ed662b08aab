"""Gated hub files (Winoground) through huggingface_hub's `hf_hub_download`, verified and recorded like
every other download; the hub itself is replaced by a local stand-in (no network in tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

import nas.data.download as download_module
from nas.data import catalog as cat
from nas.data.download import (
    HUB_STAGING,
    MANIFEST_NAME,
    ChecksumError,
    DownloadError,
    Manifest,
    fetch,
    hub_download,
)

URL = "https://huggingface.co/datasets/facebook/winoground/resolve/main/data/examples.jsonl"
DATA = b'{"id": 0, "caption_0": "an old person kisses a young person"}\n'
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def hub(monkeypatch):
    """A stand-in for `hf_hub_download`: writes DATA where the hub would (local_dir/<path>) and logs
    each call's arguments."""
    calls: list[dict] = []

    def fake(repo_id, filename, **kw):
        calls.append({"repo_id": repo_id, "filename": filename, **kw})
        path = Path(kw["local_dir"]) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(DATA)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    return calls


def _gated(sha256: str | None) -> cat.Resource:
    return cat.Resource("winoground.examples", "x", "gated", "winoground/examples.jsonl", URL, sha256=sha256)


def test_a_gated_file_is_fetched_through_the_hub_verified_and_recorded(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(download_module, "select", lambda selection: ([_gated(SHA)], []))
    report = fetch(["winoground.examples"], tmp_path, environ={"HF_TOKEN": "hf_test"})
    dest = tmp_path / "winoground" / "examples.jsonl"
    assert report.fetched == ["winoground.examples"] and dest.read_bytes() == DATA
    (call,) = hub
    assert (call["repo_id"], call["filename"], call["repo_type"], call["revision"], call["token"]) == (
        "facebook/winoground",
        "data/examples.jsonl",
        "dataset",
        "main",
        "hf_test",
    )
    assert not (tmp_path / "winoground" / HUB_STAGING / "data" / "examples.jsonl").exists()  # moved
    entry = Manifest(tmp_path / MANIFEST_NAME).get(dest)
    assert entry["verified"] and entry["sha256"] == SHA and entry["url"] == URL
    # present: checked, never fetched again, and no token is needed for that
    again = fetch(["winoground.examples"], tmp_path, environ={})
    assert again.present == ["winoground.examples"] and len(hub) == 1


def test_a_bad_checksum_names_the_file_and_both_hashes_and_moves_nothing(tmp_path, hub):
    dest = tmp_path / "winoground" / "examples.jsonl"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        hub_download(URL, dest, wrong, token="hf_test")
    assert str(dest) in str(info.value) and wrong in str(info.value) and SHA in str(info.value)
    assert not dest.exists() and not (dest.parent / HUB_STAGING / "data" / "examples.jsonl").exists()


def test_without_a_published_checksum_the_first_download_is_recorded_then_enforced(tmp_path, hub):
    dest = tmp_path / "examples.jsonl"
    hub_download(URL, dest, token="t")
    assert Manifest(tmp_path / MANIFEST_NAME).get(dest)["sha256"] == SHA
    dest.write_bytes(b"changed")
    with pytest.raises(ChecksumError, match="recorded in"):
        hub_download(URL, dest, token="t")


def test_hub_errors_name_the_url(tmp_path, monkeypatch):
    def offline(*args, **kw):
        raise LocalEntryNotFoundError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DownloadError, match=r"examples\.jsonl: the hub could not be reached.*HF_HUB_OFFLINE"):
        hub_download(URL, tmp_path / "examples.jsonl", SHA, token="t")
    with pytest.raises(DownloadError, match="not a Hugging Face Hub file URL"):
        hub_download("https://example.org/x.jsonl", tmp_path / "x.jsonl", token="t")
