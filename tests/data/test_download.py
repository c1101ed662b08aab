"""Downloads against a local HTTP server on 127.0.0.1 (never the network), safe extraction, the plan,
the catalogue and the img2dataset helpers."""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import re
import stat
import struct
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import nas.data.download as download_module
from nas.data import catalog as cat
from nas.data.download import (
    MANIFEST_NAME,
    ArchiveLimitError,
    ChecksumError,
    ChecksumFormatError,
    DownloadError,
    Manifest,
    ManualStepRequired,
    MissingDependency,
    UnsafeArchiveError,
    describe_plan,
    download,
    dry_run,
    extract,
    fetch,
    img2dataset_available,
    img2dataset_command,
    plan,
    prepare_cc3m_url_list,
    read_img2dataset_stats,
    run_img2dataset,
)

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
VERSION_A = bytes(range(256)) * 1200  # 307,200 bytes
VERSION_B = bytes(reversed(range(256))) * 1200  # same length, other bytes: only a validator tells
START = 1_700_000_000  # Last-Modified of version A (epoch seconds)


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.files`. Per-path behaviours in `server.modes` ("+"-joined flags):
    - busy: 503 on the first two hits; html: a text/html answer; ignore_range: always 200;
    - truncate: the first answer stops after `server.cut` bytes (default half) and drops the connection;
    - always_truncate: every answer does; no_length: no Content-Length (the body ends at close);
    - ignore_if_range: Range is honoured even when If-Range does not match (a broken server);
    - wrong_offset: a 206 that starts at byte 0 whatever was asked.
    Validators in `server.validators` ("etag" [default, with Last-Modified], "last-modified", "weak",
    "none"); `server.next_version[path]` replaces the file (new ETag and date) after the first hit.
    Logs (path, Range) per request in `server.log` and the If-Range headers in `server.if_range`."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _validator_headers(self, path: str, data: bytes) -> dict[str, str]:
        kind = self.server.validators.get(path, "etag")
        tag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        date = email.utils.formatdate(self.server.mtimes.get(path, START), usegmt=True)
        return {
            "etag": {"ETag": tag, "Last-Modified": date},
            "last-modified": {"Last-Modified": date},
            "weak": {"ETag": "W/" + tag},
            "none": {},
        }[kind]

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        path = self.path
        server.log.append((path, self.headers.get("Range")))
        server.if_range.append(self.headers.get("If-Range"))
        flags = set(server.modes.get(path, "normal").split("+"))
        hits = sum(1 for p, _ in server.log if p == path)
        if path not in server.files:
            self.send_error(404, "Not Found")
            return
        if "busy" in flags and hits <= 2:
            self.send_error(503, "Busy")
            return
        data = server.files[path]
        validators = self._validator_headers(path, data)
        content_type = "text/html; charset=utf-8" if "html" in flags else "application/octet-stream"
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        current = validators.get("ETag") if "ETag" in validators else validators.get("Last-Modified")
        matches = if_range is None or if_range == current or "ignore_if_range" in flags
        if match and "ignore_range" not in flags and matches:
            start = 0 if "wrong_offset" in flags else int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                for name, value in validators.items():
                    self.send_header(name, value)
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", content_type)
        if "no_length" not in flags:
            self.send_header("Content-Length", str(len(body)))
        for name, value in validators.items():
            self.send_header(name, value)
        self.end_headers()
        if path in server.next_version and hits == 1:
            server.files[path] = server.next_version.pop(path)
            server.mtimes[path] = server.mtimes.get(path, START) + 3600
        if ("truncate" in flags and hits == 1) or "always_truncate" in flags:
            self.wfile.write(body[: server.cut.get(path, len(body) // 2)])  # then drop the connection
            self.wfile.flush()
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.modes, httpd.log, httpd.if_range = {}, {}, [], []
    httpd.validators, httpd.mtimes, httpd.next_version, httpd.cut = {}, {}, {}, {}
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _fetch(server, name, dest, sha=None, **kw):
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 5.0)
    return download(f"{server.base}/{name}", dest, sha, **kw)


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


# ---- download ------------------------------------------------------------------------------------


def test_download_verifies_and_records(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    dest = _fetch(server, "file.bin", tmp_path / "out" / "file.bin", PAYLOAD_SHA.upper())
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "out" / "file.bin.part").exists()
    assert not (tmp_path / "out" / "file.bin.part.json").exists()
    entry = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]["file.bin"]
    assert entry["sha256"] == PAYLOAD_SHA and entry["published_sha256"] == PAYLOAD_SHA and entry["verified"]
    assert entry["size"] == len(PAYLOAD) and entry["length_checked"]
    # Present and recorded: no second request.
    _fetch(server, "file.bin", dest, PAYLOAD_SHA)
    assert len(server.log) == 1


def test_truncated_transfer_resumes_with_range_and_if_range(server, tmp_path):
    server.files["/flaky.bin"] = PAYLOAD
    server.modes["/flaky.bin"] = "truncate"
    dest = _fetch(server, "flaky.bin", tmp_path / "flaky.bin", PAYLOAD_SHA, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/flaky.bin", None), ("/flaky.bin", f"bytes={len(PAYLOAD) // 2}-")]
    assert server.if_range == [None, _etag(PAYLOAD)]  # the strong ETag, saved when the download began
    assert not (tmp_path / "flaky.bin.part.json").exists()


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_resume_with_a_matching_validator_equals_an_uninterrupted_download(server, tmp_path, validator):
    server.files["/whole.bin"] = server.files["/cut.bin"] = VERSION_A
    server.validators["/cut.bin"] = validator
    server.modes["/cut.bin"] = "truncate"
    server.cut["/cut.bin"] = 100_000
    whole = _fetch(server, "whole.bin", tmp_path / "whole.bin")
    resumed = _fetch(server, "cut.bin", tmp_path / "cut.bin")
    assert resumed.read_bytes() == whole.read_bytes() == VERSION_A
    assert server.log[1:] == [("/cut.bin", None), ("/cut.bin", "bytes=100000-")]
    expected = _etag(VERSION_A) if validator == "etag" else email.utils.formatdate(START, usegmt=True)
    assert server.if_range[-1] == expected


@pytest.mark.parametrize("server_mode", ["honours If-Range", "ignores If-Range"])
@pytest.mark.parametrize("validator", ["etag", "last-modified"])
@pytest.mark.parametrize("version_b", [VERSION_B, VERSION_B + b"B" * 200_000], ids=["same-size", "longer"])
def test_a_file_changed_mid_download_is_fetched_again_whole_never_spliced(
    server, tmp_path, server_mode, validator, version_b
):
    # 100 kB of version A arrive, the connection drops, the host replaces the file with version B:
    # the result is version B whole, and the sha256 recorded on first use is B's.
    server.files["/data.bin"] = VERSION_A
    server.next_version["/data.bin"] = version_b
    server.validators["/data.bin"] = validator
    server.cut["/data.bin"] = 100_000
    server.modes["/data.bin"] = "truncate" + ("+ignore_if_range" if server_mode == "ignores If-Range" else "")
    dest = _fetch(server, "data.bin", tmp_path / "data.bin", retries=1)
    assert dest.read_bytes() == version_b
    entry = Manifest(tmp_path / MANIFEST_NAME).get(dest)
    assert entry["sha256"] == hashlib.sha256(version_b).hexdigest() and entry["length_checked"]
    assert server.log[1] == ("/data.bin", "bytes=100000-")  # it did try to resume, with If-Range
    assert server.if_range[1] is not None
    if server_mode == "honours If-Range":
        assert len(server.log) == 2  # the server answered 200 with version B: the .part was truncated
    else:
        # A 206 of version B (other ETag / date / length) was refused; then a fresh full request.
        assert server.log[2:] == [("/data.bin", None)]


@pytest.mark.parametrize("validator", ["none", "weak"])
def test_without_a_usable_validator_a_dropped_download_restarts_from_zero(server, tmp_path, validator):
    server.files["/plain.bin"] = VERSION_A
    server.validators["/plain.bin"] = validator  # a weak ETag may not be used in If-Range
    server.modes["/plain.bin"] = "truncate"
    dest = _fetch(server, "plain.bin", tmp_path / "plain.bin")
    assert dest.read_bytes() == VERSION_A
    assert server.log == [("/plain.bin", None), ("/plain.bin", None)]


def test_a_part_file_from_an_earlier_run_is_resumed_only_with_its_validator(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    url = f"{server.base}/file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    state = {"url": url, "etag": _etag(PAYLOAD), "last_modified": None, "total": len(PAYLOAD)}
    (tmp_path / "file.bin.part.json").write_text(json.dumps(state))
    _fetch(server, "file.bin", tmp_path / "file.bin", PAYLOAD_SHA)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert server.log == [("/file.bin", "bytes=1000-")] and server.if_range == [_etag(PAYLOAD)]

    # Without its saved validator (an older run, or a crash before it was written) it is not trusted.
    server.log.clear()
    (tmp_path / "other.bin.part").write_bytes(b"x" * 1000)
    _fetch(server, "file.bin", tmp_path / "other.bin", PAYLOAD_SHA)
    assert (tmp_path / "other.bin").read_bytes() == PAYLOAD and server.log == [("/file.bin", None)]


def test_a_complete_part_file_is_finished_on_416(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    state = {"url": f"{server.base}/file.bin", "etag": _etag(PAYLOAD), "total": len(PAYLOAD)}
    (tmp_path / "file.bin.part.json").write_text(json.dumps(state))
    _fetch(server, "file.bin", tmp_path / "file.bin", PAYLOAD_SHA)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert server.log == [("/file.bin", f"bytes={len(PAYLOAD)}-")]


def test_a_206_at_another_offset_restarts_instead_of_splicing(server, tmp_path):
    server.files["/odd.bin"] = VERSION_A
    server.modes["/odd.bin"] = "truncate+wrong_offset"
    dest = _fetch(server, "odd.bin", tmp_path / "odd.bin", hashlib.sha256(VERSION_A).hexdigest())
    assert dest.read_bytes() == VERSION_A
    assert [r for _, r in server.log] == [None, f"bytes={len(VERSION_A) // 2}-", None]


def test_a_server_ignoring_range_restarts_the_file(server, tmp_path):
    server.files["/plain.bin"] = PAYLOAD
    server.modes["/plain.bin"] = "ignore_range"
    (tmp_path / "plain.bin.part").write_bytes(b"garbage" * 10)
    state = {"url": f"{server.base}/plain.bin", "etag": _etag(PAYLOAD)}
    (tmp_path / "plain.bin.part.json").write_text(json.dumps(state))
    _fetch(server, "plain.bin", tmp_path / "plain.bin", PAYLOAD_SHA)
    assert (tmp_path / "plain.bin").read_bytes() == PAYLOAD


def test_bad_checksum_names_file_expected_and_actual_and_moves_nothing(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        _fetch(server, "file.bin", tmp_path / "file.bin", wrong)
    message = str(info.value)
    assert str(tmp_path / "file.bin") in message and wrong in message and PAYLOAD_SHA in message
    assert not (tmp_path / "file.bin").exists() and not (tmp_path / "file.bin.part").exists()
    assert not (tmp_path / "file.bin.part.json").exists()


def test_unpublished_checksum_is_recorded_then_enforced(server, tmp_path):
    server.files["/data.json"] = b'{"a": 1}'
    dest = tmp_path / "data.json"
    _fetch(server, "data.json", dest)
    manifest = Manifest(tmp_path / MANIFEST_NAME)
    entry = manifest.get(dest)
    assert entry["sha256"] == hashlib.sha256(b'{"a": 1}').hexdigest()
    assert entry["published_sha256"] is None and not entry["verified"]
    # The host now serves different bytes under the same URL: caught against the recorded sha256.
    dest.unlink()
    server.files["/data.json"] = b'{"a": 2}'
    with pytest.raises(ChecksumError, match="recorded in"):
        _fetch(server, "data.json", dest)
    assert not dest.exists()


def test_nothing_is_recorded_for_an_incomplete_download(server, tmp_path):
    server.files["/short.bin"] = VERSION_A
    server.modes["/short.bin"] = "always_truncate"  # announces 307,200 bytes, sends half, every time
    with pytest.raises(DownloadError, match="gave up after 2 attempts"):
        _fetch(server, "short.bin", tmp_path / "short.bin", retries=1)
    assert not (tmp_path / "short.bin").exists() and not (tmp_path / MANIFEST_NAME).exists()
    # No announced length: recorded, but marked as not checked against one.
    server.files["/stream.bin"] = PAYLOAD
    server.modes["/stream.bin"] = "no_length"
    dest = _fetch(server, "stream.bin", tmp_path / "stream.bin")
    assert dest.read_bytes() == PAYLOAD
    assert Manifest(tmp_path / MANIFEST_NAME).get(dest)["length_checked"] is False


def test_existing_file_with_wrong_checksum_is_reported_and_left_alone(tmp_path):
    dest = tmp_path / "placed.bin"
    dest.write_bytes(b"placed by hand")
    with pytest.raises(ChecksumError, match="left as it is"):
        download("http://127.0.0.1:9/never-contacted", dest, PAYLOAD_SHA)
    assert dest.read_bytes() == b"placed by hand"


@pytest.mark.parametrize(
    ("checksum", "message"),
    [
        (PAYLOAD_SHA[:8], "has 8 hex digits, but a full sha256 digest has 64 (a prefix is not a checksum)"),
        (PAYLOAD_SHA[:63], "has 63 hex digits, but a full sha256 digest has 64"),
        (PAYLOAD_SHA + "0", "has 65 hex digits, but a full sha256 digest has 64 (too long)"),
        ("a" * 40, "if it is a full sha1, write it as 'sha1:<hex>'"),
        ("md5:" + "a" * 8, "has 8 hex digits, but a full md5 digest has 32"),
        ("crc32:1234abcd", "unknown algorithm 'crc32'"),
        ("xyz", "not hex digits"),
    ],
)
def test_a_checksum_shorter_than_its_full_digest_is_refused(server, tmp_path, checksum, message):
    server.files["/file.bin"] = PAYLOAD
    with pytest.raises(ChecksumFormatError) as info:
        _fetch(server, "file.bin", tmp_path / "file.bin", checksum)
    assert message in str(info.value) and str(tmp_path / "file.bin") in str(info.value)
    assert server.log == []  # refused before any request


def test_full_digests_of_other_algorithms_are_verified(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    dest = _fetch(server, "file.bin", tmp_path / "file.bin", f"MD5:{md5}")
    entry = Manifest(tmp_path / MANIFEST_NAME).get(dest)
    assert entry["published_checksum"] == f"md5:{md5}" and entry["sha256"] == PAYLOAD_SHA
    _fetch(server, "file.bin", dest, f"md5:{md5}")  # recorded: no second request
    assert len(server.log) == 1
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        _fetch(server, "file.bin", tmp_path / "other.bin", "md5:" + "0" * 32)


def test_a_short_catalogue_checksum_stops_fetch_naming_the_entry(tmp_path, monkeypatch):
    entry = cat.Resource("weights.x", "x", "http", "weights/x.pth", "http://127.0.0.1:9/x", sha256="b5f2ef4d")
    monkeypatch.setattr(download_module, "select", lambda selection: ([entry], []))
    with pytest.raises(ChecksumFormatError, match=r"catalogue entry 'weights.x' \(weights/x.pth\).*8 hex"):
        fetch(["weights.x"], tmp_path)
    assert not (tmp_path / "weights").exists()


def test_http_errors_are_final_unless_transient(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        _fetch(server, "missing.bin", tmp_path / "missing.bin", retries=3)
    assert len(server.log) == 1  # a 404 is not retried

    server.files["/busy.bin"] = PAYLOAD
    server.modes["/busy.bin"] = "busy"  # 503 twice, then the file
    with pytest.raises(DownloadError, match="gave up after 2 attempts"):
        _fetch(server, "busy.bin", tmp_path / "busy.bin", retries=1)
    server.log.clear()
    _fetch(server, "busy.bin", tmp_path / "busy.bin", PAYLOAD_SHA, retries=3)
    assert len(server.log) == 3 and (tmp_path / "busy.bin").read_bytes() == PAYLOAD


def test_html_instead_of_a_file_is_rejected(server, tmp_path):
    server.files["/page"] = b"<html>quota exceeded</html>"
    server.modes["/page"] = "html"
    with pytest.raises(DownloadError, match="HTML page"):
        _fetch(server, "page", tmp_path / "file.json", reject_html=True)
    assert not (tmp_path / "file.json").exists()


# ---- extraction ----------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[str, str, bytes | str]], mode: str = "w:gz") -> Path:
    """members: (name, kind, data-or-link-target) with kind "file", "sym", "hard" or "fifo"."""
    with tarfile.open(path, mode) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    return path


def _zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> Path:
    """Written to a temporary name and moved into place, as `download` does (a new inode)."""
    part = path.with_name(path.name + ".part")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777) << 16  # S_IFLNK | 0777
            zf.writestr(info, target)
    os.replace(part, path)
    return path


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir()) if target.exists() else []


def test_extract_zip_and_tar_and_skip_a_second_time(tmp_path):
    archive = _zip(tmp_path / "a.zip", [("images/x.jpg", b"x"), ("images/sub/y.jpg", b"y")])
    target = extract(archive, tmp_path / "out")
    assert (target / "images" / "x.jpg").read_bytes() == b"x"
    assert (target / "images" / "sub" / "y.jpg").read_bytes() == b"y"
    marker = json.loads((target / ".extracted.a.zip").read_text())
    assert marker["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert marker["top_level"] == ["images"] and marker["settings"] == {"kind": "zip"}
    (target / "images" / "x.jpg").write_bytes(b"edited")
    extract(archive, tmp_path / "out")  # the marker makes it a no-op
    os.utime(archive, ns=(1, 1))  # touched, same bytes: hashed again, still a no-op
    extract(archive, tmp_path / "out")
    assert (target / "images" / "x.jpg").read_bytes() == b"edited"

    tar = _tar(tmp_path / "b.tar.gz", [("d/z.txt", "file", b"z"), ("d/link", "sym", "z.txt")])
    extract(tar, tmp_path / "tar_out")
    assert (tmp_path / "tar_out" / "d" / "z.txt").read_bytes() == b"z"
    assert (tmp_path / "tar_out" / "d" / "link").is_symlink()
    assert not [n for n in _leftovers(tmp_path / "tar_out") if n.startswith(".extracting")]


def test_a_changed_archive_is_extracted_again(tmp_path):
    target = tmp_path / "out"
    other = _zip(tmp_path / "other.zip", [("shared/o.txt", b"o"), ("solo/s.txt", b"s")])
    extract(other, target)
    archive = _zip(tmp_path / "a.zip", [("d/a.txt", b"1"), ("d/old.txt", b"old"), ("gone/g.txt", b"g")])
    extract(archive, target)
    archive = _zip(tmp_path / "a.zip", [("d/a.txt", b"2"), ("shared/n.txt", b"n")])  # a new version
    extract(archive, target)
    assert (target / "d" / "a.txt").read_bytes() == b"2"
    assert not (target / "d" / "old.txt").exists() and not (target / "gone").exists()  # its own: replaced
    assert (target / "shared" / "o.txt").read_bytes() == b"o"  # another archive's folder: merged into
    assert (target / "shared" / "n.txt").read_bytes() == b"n" and (target / "solo" / "s.txt").is_file()
    marker = json.loads((target / ".extracted.a.zip").read_text())
    assert marker["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    # A marker of the old format (no sha256) is not trusted either.
    (target / ".extracted.a.zip").write_text('{"archive": "a.zip", "members": 2}\n')
    (target / "d" / "a.txt").write_bytes(b"edited")
    extract(archive, target)
    assert (target / "d" / "a.txt").read_bytes() == b"2"


def test_an_interrupted_move_into_place_is_not_taken_as_complete(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "a.zip", [("d1/a.txt", b"1"), ("d2/b.txt", b"2")])
    target = tmp_path / "out"
    real_move, calls = download_module._move, []

    def failing_move(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_move(src, dst)

    monkeypatch.setattr(download_module, "_move", failing_move)
    with pytest.raises(OSError, match="disk full"):
        extract(archive, target)
    assert not (target / ".extracted.a.zip").exists()
    assert not [n for n in _leftovers(target) if n.startswith(".extracting")]
    monkeypatch.setattr(download_module, "_move", real_move)
    extract(archive, target)
    assert (target / "d1" / "a.txt").read_bytes() == b"1" and (target / "d2" / "b.txt").read_bytes() == b"2"


def test_a_zip_bomb_is_refused_by_the_expansion_ratio(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("readme.txt", b"hello")
        zf.writestr("zeros.bin", bytes(8 << 20))  # 8 MiB of zeros: an ~8 kB archive
    target = tmp_path / "target"
    with pytest.raises(ArchiveLimitError) as info:
        extract(archive, target)
    message = str(info.value)
    assert str(archive) in message and "'zeros.bin'" in message
    assert "expansion-ratio limit of 200x" in message and "nothing was extracted" in message
    assert _leftovers(target) == []
    with pytest.raises(ArchiveLimitError, match=r"the size limit max_bytes=1,000,000; the largest member"):
        extract(archive, target, max_ratio=None, max_bytes=1_000_000)
    extract(archive, target, max_ratio=None)  # allowed explicitly
    assert (target / "zeros.bin").stat().st_size == 8 << 20


def test_a_zip_member_holding_more_than_its_header_declares_is_stopped(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr("liar.bin", bytes(1 << 20))
    raw = bytearray(archive.read_bytes())
    # Patch liar.bin's uncompressed size to 100 bytes in its local header and central directory entry.
    local = raw.find(b"liar.bin") - 30
    assert raw[local : local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", raw, local + 22, 100)
    central = raw.rfind(b"PK\x01\x02")
    assert raw[central + 46 : central + 54] == b"liar.bin"
    struct.pack_into("<I", raw, central + 24, 100)
    archive.write_bytes(bytes(raw))
    target = tmp_path / "target"
    with pytest.raises(ArchiveLimitError) as info:
        extract(archive, target)
    message = str(info.value)
    assert "member 'liar.bin' holds more than the 100 bytes its header declares" in message
    assert str(archive) in message and f"nothing was moved into {target}" in message
    assert _leftovers(target) == []  # not even ok.txt: nothing half-extracted is left


def test_a_damaged_zip_member_is_reported(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("data.txt", b"0123456789")
    raw = archive.read_bytes().replace(b"0123456789", b"0123456780")
    archive.write_bytes(raw)
    with pytest.raises(UnsafeArchiveError, match=r"member 'data.txt' is damaged .*CRC-32 mismatch"):
        extract(archive, tmp_path / "target")
    assert _leftovers(tmp_path / "target") == []


CHAINED = [("a", "sym", "."), ("b", "sym", "a/.."), ("b/evil.txt", "file", b"outside")]


def test_chained_links_are_refused_by_the_member_check(tmp_path):
    archive = _tar(tmp_path / "chain.tar", CHAINED, "w")
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, tmp_path / "target")
    assert "member 'b' is a link to 'a/..', which leads outside the target" in str(info.value)
    assert _leftovers(tmp_path / "target") == [] and not (tmp_path / "evil.txt").exists()
    # The order reversed: `x -> a/..` is harmless until `a -> .` follows; the final pass sees it.
    archive = _tar(tmp_path / "late.tar", [("x", "sym", "a/.."), ("a", "sym", ".")], "w")
    with pytest.raises(UnsafeArchiveError, match="member 'x' is a link to 'a/..'.*later links"):
        extract(archive, tmp_path / "target")


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="this Python has no tarfile data filter")
def test_chained_links_are_refused_by_the_data_filter_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "_check_tar_links", lambda archive, members: None)
    archive = _tar(tmp_path / "chain.tar", CHAINED, "w")
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert str(archive) in str(info.value) and "'b'" in str(info.value)
    assert f"nothing was moved into {target}" in str(info.value)
    assert _leftovers(target) == [] and not (tmp_path / "evil.txt").exists()


def test_without_the_data_filter_a_tar_is_refused_not_extracted(tmp_path, monkeypatch):
    # The member check still names a chained link first; a benign tar is not extracted without the
    # filter (it was once extracted with a hand-written stand-in for it).
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = _tar(tmp_path / "chain.tar", CHAINED, "w")
    with pytest.raises(UnsafeArchiveError, match="member 'b' is a link to 'a/..'"):
        extract(archive, tmp_path / "target")
    assert _leftovers(tmp_path / "target") == [] and not (tmp_path / "evil.txt").exists()
    path = tmp_path / "ok.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("bin/tool")
        info.size, info.mode = 2, 0o6777
        tar.addfile(info, io.BytesIO(b"#!"))
        tar.addfile(_sym("bin/alias", "tool"))
    with pytest.raises(UnsafeArchiveError, match=r"ok\.tar: this Python .* has no tarfile data filter"):
        extract(path, tmp_path / "ok")
    assert _leftovers(tmp_path / "ok") == []


def test_the_data_filter_sanitises_modes(tmp_path):
    path = tmp_path / "ok.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("bin/tool")
        info.size, info.mode = 2, 0o6777
        tar.addfile(info, io.BytesIO(b"#!"))
        tar.addfile(_sym("bin/alias", "tool"))
    extract(path, tmp_path / "ok")
    assert stat.S_IMODE((tmp_path / "ok" / "bin" / "tool").stat().st_mode) == 0o755
    assert os.readlink(tmp_path / "ok" / "bin" / "alias") == "tool"
    marker = json.loads((tmp_path / "ok" / ".extracted.ok.tar").read_text())
    assert marker["settings"]["tar_filter"] == "data"


def _sym(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(
    ("members", "bad"),
    [
        ([("ok.txt", "file", b"1"), ("/abs/evil.txt", "file", b"2")], "/abs/evil.txt"),
        ([("ok.txt", "file", b"1"), ("d/../../evil.txt", "file", b"2")], "d/../../evil.txt"),
        ([("ok.txt", "file", b"1"), ("d/link", "sym", "../../outside")], "d/link"),
        ([("ok.txt", "file", b"1"), ("link", "sym", "/etc/passwd")], "link"),
        ([("ok.txt", "file", b"1"), ("hard", "hard", "../outside")], "hard"),
        ([("ok.txt", "file", b"1"), ("pipe", "fifo", b"")], "pipe"),
        ([("d", "sym", "."), ("e", "sym", "d/d/d/.."), ("e/x", "file", b"2")], "e"),
        ([("up", "sym", "sub/.."), ("sub", "sym", "."), ("f", "file", b"2")], "up"),
        ([("l", "sym", "l/x"), ("l/y", "file", b"2")], "l"),  # a loop
    ],
)
def test_malicious_tar_is_refused_before_anything_is_written(tmp_path, members, bad):
    archive = _tar(tmp_path / "evil.tar.gz", members)
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert repr(bad) in str(info.value) and str(archive) in str(info.value)
    assert not any(target.rglob("*")) and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    ("members", "symlinks", "bad"),
    [
        ([("ok.txt", b"1"), ("../evil.txt", b"2")], None, "../evil.txt"),
        ([("ok.txt", b"1"), ("/abs/evil.txt", b"2")], None, "/abs/evil.txt"),
        ([("ok.txt", b"1")], {"a/link": "../../../etc"}, "a/link"),
        ([("ok.txt", b"1")], {"link": "/etc/passwd"}, "link"),
    ],
)
def test_malicious_zip_is_refused_before_anything_is_written(tmp_path, members, symlinks, bad):
    archive = _zip(tmp_path / "evil.zip", members, symlinks)
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert repr(bad) in str(info.value)
    assert not any(target.rglob("*"))


def test_a_zip_link_pointing_inside_is_kept_as_a_file(tmp_path):
    archive = _zip(tmp_path / "links.zip", [("d/x.txt", b"x")], {"d/link": "x.txt"})
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "link").read_bytes() == b"x.txt"  # zipfile's behaviour: no symlink
    assert not (tmp_path / "out" / "d" / "link").is_symlink()


def test_extract_rejects_non_archives(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a zip nor a tar"):
        extract(tmp_path / "notes.txt", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        extract(tmp_path / "absent.zip", tmp_path / "out")


def test_fetch_extracts_a_downloaded_archive_within_the_limits(server, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("imgs/1.txt", b"one")
        zf.writestr("imgs/zeros.bin", bytes(4 << 20))
    server.files["/pack.zip"] = buffer.getvalue()
    entry = cat.Resource("x.pack", "x", "http", "x/pack.zip", f"{server.base}/pack.zip", extract_to="x")
    monkeypatch.setattr(download_module, "select", lambda selection: ([entry], []))
    stale = tmp_path / "x" / ".extracting.pack.zip.junk"  # left by a killed run
    stale.mkdir(parents=True)
    with pytest.raises(ArchiveLimitError, match="pack.zip.*expansion-ratio limit of 200x"):
        fetch(["x.pack"], tmp_path, timeout=5.0)
    assert not stale.exists() and (tmp_path / "x" / "pack.zip").is_file()  # downloaded, not extracted
    report = fetch(["x.pack"], tmp_path, timeout=5.0, max_ratio=None)
    assert report.present == ["x.pack"] and (tmp_path / "x" / "imgs" / "1.txt").read_bytes() == b"one"
    marker = json.loads((tmp_path / "x" / ".extracted.pack.zip").read_text())
    assert marker["sha256"] == Manifest(tmp_path / MANIFEST_NAME).get(tmp_path / "x" / "pack.zip")["sha256"]
    assert len(server.log) == 1


# ---- catalogue, plan, fetch ------------------------------------------------------------------------


def test_catalogue_entries_are_complete_and_safe():
    everything = cat.catalog()
    assert len(everything) == len({r.filename for r in everything.values()})  # no two share a file
    for res in everything.values():
        assert res.key.split(".")[0] and res.source, res.key
        assert not Path(res.filename).is_absolute() and ".." not in Path(res.filename).parts, res.key
        if res.method in ("http", "gdrive", "gated", "shipped"):
            assert res.url and res.url.startswith("http"), res.key
        if res.method in ("manual", "gated"):
            assert res.instructions, res.key
        if res.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", res.sha256), res.key  # full digests only
    # Published checksums the spec states, and the shipped sums, are carried over exactly.
    assert everything["winoground.examples"].sha256 == (
        "055f68668e60bb9bac18ec37dcbb40b935690302011e3f8f53767f0b68a65911"
    )
    assert everything["sugarcrepe.swap_obj"].sha256 == (
        "073cdb8e253d053614e80710834d9773b09dbc1dd0a412f6f9492262caa1dcad"
    )
    assert sum(1 for k in everything if k.startswith("valse.")) == 11 + 3  # 11 JSONs + 3 image sources
    assert everything["aro.vg_relation"].url.endswith(
        "id=1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3&export=download&confirm=t"
    )


def test_every_resource_belongs_to_a_selectable_group():
    everything, jobs = cat.catalog(), cat.shard_jobs()
    resources, shard_jobs = cat.select(["all"])
    assert {r.key for r in resources} == set(everything) and {j.key for j in shard_jobs} == set(jobs)
    resources, _ = cat.select(["pretrain"])
    assert "albef_json.pretrain" in {r.key for r in resources}


def test_select_resolves_sets_groups_and_dependencies():
    resources, jobs = cat.select(["benchmarks"])
    keys = {r.key for r in resources}
    assert {
        "coco.val2014",
        "coco.karpathy_test",
        "coco2017.val2017",
    } <= keys  # needed by ARO / VALSE / SugarCrepe
    assert "coco.train2014" in keys and "vg.images" not in keys and not jobs
    resources, jobs = cat.select(["pretrain"])
    assert {j.key for j in jobs} == {"cc3m.shards", "sbu.shards"}
    assert "coco2017.val2017" not in {r.key for r in resources}
    resources, _ = cat.select(["sugarcrepe.swap_obj", "sugarcrepe.swap_obj"])
    assert [r.key for r in resources] == ["sugarcrepe.swap_obj"]
    with pytest.raises(KeyError, match="unknown data selection 'cocoa'.*pretrain"):
        cat.select(["cocoa"])


def test_plan_counts_bytes_still_needed(tmp_path):
    part = tmp_path / "coco" / "val2017.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)
    items = {item.key: item for item in plan(["sugarcrepe"], tmp_path)}
    assert items["coco2017.val2017"].bytes_needed == 815_585_330  # no saved validator: not resumable
    assert "restarts from byte 0" in items["coco2017.val2017"].note
    state = {"url": cat.catalog()["coco2017.val2017"].url, "etag": '"abc"', "total": 815_585_330}
    (part.parent / "val2017.zip.part.json").write_text(json.dumps(state))
    items = {item.key: item for item in plan(["sugarcrepe"], tmp_path)}
    assert items["coco2017.val2017"].action == "download"
    assert items["coco2017.val2017"].bytes_needed == 815_585_330 - 1000
    assert "resumes from 1,000 bytes" in items["coco2017.val2017"].note
    assert (
        items["sugarcrepe.add_att"].action == "copy shipped file"
        and items["sugarcrepe.add_att"].bytes_needed == 0
    )
    lines: list[str] = []
    dry_run(["winoground"], tmp_path, echo=lines.append)
    text = "\n".join(lines)
    assert "winoground/examples.jsonl" in text and "accept the licence" in text and "free disk" in text
    assert "huggingface.co/datasets/facebook/winoground" in describe_plan(
        plan(["winoground"], tmp_path), tmp_path
    )


def test_fetch_copies_shipped_files_verified_and_offline(tmp_path):
    report = fetch(["sugarcrepe.swap_obj"], tmp_path)
    dest = tmp_path / "sugarcrepe" / "swap_obj.json"
    assert report.fetched == ["sugarcrepe.swap_obj"] and dest.is_file()
    assert Manifest(tmp_path / MANIFEST_NAME).get(dest)["verified"]
    dest.write_text("{}")  # tampered: the next run says so
    with pytest.raises(ChecksumError, match="swap_obj.json"):
        fetch(["sugarcrepe.swap_obj"], tmp_path)


def test_gated_files_without_a_token_become_manual_steps(tmp_path):
    report = fetch(["winoground"], tmp_path, environ={})
    assert set(report.manual) == {"winoground.examples", "winoground.images"} and not report.fetched
    with pytest.raises(ManualStepRequired, match="accept the licence"):
        report.raise_for_manual()


def test_command_line_dry_run_and_fetch(tmp_path, capsys):
    from nas.data.download import main

    assert main(["sugarcrepe.swap_obj", "--root", str(tmp_path), "--dry-run"]) == 0
    assert "copy shipped file" in capsys.readouterr().out and not (tmp_path / "sugarcrepe").exists()
    assert main(["sugarcrepe.swap_obj", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "sugarcrepe" / "swap_obj.json").is_file()


# ---- img2dataset helpers ---------------------------------------------------------------------------


def test_img2dataset_command_and_missing_tool(tmp_path):
    job = cat.shard_jobs()["cc3m.shards"]
    command = img2dataset_command(job, tmp_path)
    args = dict(zip(command[1::2], command[2::2]))
    assert command[0] == "img2dataset"
    assert args["--url_list"] == str(tmp_path / "cc3m" / "cc3m_with_header.tsv")
    assert (
        args["--input_format"] == "tsv" and args["--url_col"] == "url" and args["--caption_col"] == "caption"
    )
    assert args["--output_format"] == "webdataset" and args["--resize_mode"] == "keep_ratio"
    if img2dataset_available():
        pytest.skip("img2dataset is installed here")
    with pytest.raises(MissingDependency, match="pip install img2dataset") as info:
        run_img2dataset(job, tmp_path)
    assert "--url_list" in str(info.value)


def test_prepare_cc3m_url_list_adds_the_header(tmp_path):
    source = tmp_path / "Train_GCC-training.tsv"
    source.write_text("a cat on a mat\thttp://x/1.jpg\nthe sky\thttp://x/2.jpg\n")
    out = prepare_cc3m_url_list(source, tmp_path / "cc3m" / "with_header.tsv")
    assert out.read_text().splitlines() == [
        "caption\turl",
        "a cat on a mat\thttp://x/1.jpg",
        "the sky\thttp://x/2.jpg",
    ]
    (tmp_path / "bad.tsv").write_text("no tab here\n")
    with pytest.raises(ValueError, match="caption<TAB>url"):
        prepare_cc3m_url_list(tmp_path / "bad.tsv", tmp_path / "x.tsv")


def test_read_img2dataset_stats_sums_shards_and_flags_unfinished(tmp_path):
    def stats(name, count, ok, dl, rs, status):
        (tmp_path / f"{name}_stats.json").write_text(
            json.dumps(
                {
                    "count": count,
                    "successes": ok,
                    "failed_to_download": dl,
                    "failed_to_resize": rs,
                    "duration": 1.0,
                    "status_dict": status,
                }
            )
        )

    stats("00000", 10, 7, 2, 1, {"success": 7, "HTTP Error 404": 2, "image decoding error": 1})
    stats("00001", 5, 5, 0, 0, {"success": 5})
    stats("00003", 4, 0, 4, 0, {"timeout": 4})
    for name in ("00000", "00001", "00002"):
        (tmp_path / f"{name}.tar").write_bytes(b"")
    result = read_img2dataset_stats(tmp_path)
    assert (result.count, result.successes, result.failed_to_download, result.failed_to_resize) == (
        19,
        12,
        6,
        1,
    )
    assert result.status == {"success": 12, "HTTP Error 404": 2, "image decoding error": 1, "timeout": 4}
    assert result.shards == ["00000", "00001"] and result.unfinished == ["00002"]
    assert result.missing_tar == ["00003"]
    assert result.success_rate == pytest.approx(12 / 19)
    (tmp_path / "00004_stats.json").write_text('{"count": 1}')
    with pytest.raises(ValueError, match="00004_stats.json"):
        read_img2dataset_stats(tmp_path)
