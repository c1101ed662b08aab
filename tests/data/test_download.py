"""Downloads against a local HTTP server on 127.0.0.1 (never the network), safe extraction, the plan,
the catalogue and the img2dataset helpers."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nas.data import catalog as cat
from nas.data.download import (
    MANIFEST_NAME,
    ChecksumError,
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


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.files`; per-path behaviours in `server.modes`; logs (path, Range) per request."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        path = self.path
        server.log.append((path, self.headers.get("Range")))
        mode = server.modes.get(path, "normal")
        hits = sum(1 for p, _ in server.log if p == path)
        if path not in server.files:
            self.send_error(404, "Not Found")
            return
        if mode == "busy" and hits <= 2:
            self.send_error(503, "Busy")
            return
        data = server.files[path]
        content_type = "text/html; charset=utf-8" if mode == "html" else "application/octet-stream"
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if match and mode != "ignore_range":
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate" and hits == 1:
            self.wfile.write(body[: len(body) // 2])  # then drop the connection
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.modes, httpd.log = {}, {}, []
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
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


# ---- download ------------------------------------------------------------------------------------


def test_download_verifies_and_records(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    dest = _fetch(server, "file.bin", tmp_path / "out" / "file.bin", PAYLOAD_SHA.upper())
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "out" / "file.bin.part").exists()
    entry = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]["file.bin"]
    assert entry["sha256"] == PAYLOAD_SHA and entry["published_sha256"] == PAYLOAD_SHA and entry["verified"]
    assert entry["size"] == len(PAYLOAD)
    # Present and recorded: no second request.
    _fetch(server, "file.bin", dest, PAYLOAD_SHA)
    assert len(server.log) == 1


def test_truncated_transfer_resumes_with_a_range_request(server, tmp_path):
    server.files["/flaky.bin"] = PAYLOAD
    server.modes["/flaky.bin"] = "truncate"
    dest = _fetch(server, "flaky.bin", tmp_path / "flaky.bin", PAYLOAD_SHA, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/flaky.bin", None), ("/flaky.bin", f"bytes={len(PAYLOAD) // 2}-")]


def test_a_part_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    _fetch(server, "file.bin", tmp_path / "file.bin", PAYLOAD_SHA)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert server.log == [("/file.bin", "bytes=1000-")]


def test_a_complete_part_file_is_finished_on_416(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    _fetch(server, "file.bin", tmp_path / "file.bin", PAYLOAD_SHA)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_a_server_ignoring_range_restarts_the_file(server, tmp_path):
    server.files["/plain.bin"] = PAYLOAD
    server.modes["/plain.bin"] = "ignore_range"
    (tmp_path / "plain.bin.part").write_bytes(b"garbage" * 10)
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


def test_existing_file_with_wrong_checksum_is_reported_and_left_alone(tmp_path):
    dest = tmp_path / "placed.bin"
    dest.write_bytes(b"placed by hand")
    with pytest.raises(ChecksumError, match="left as it is"):
        download("http://127.0.0.1:9/never-contacted", dest, PAYLOAD_SHA)
    assert dest.read_bytes() == b"placed by hand"


def test_sha256_prefix_is_accepted(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD
    _fetch(server, "file.bin", tmp_path / "file.bin", PAYLOAD_SHA[:8])
    with pytest.raises(ValueError, match="hex digits"):
        _fetch(server, "file.bin", tmp_path / "other.bin", "xyz")


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


def _tar(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """members: (name, kind, data-or-link-target) with kind "file", "sym" or "hard"."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    return path


def _zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777) << 16  # S_IFLNK | 0777
            zf.writestr(info, target)
    return path


def test_extract_zip_and_tar_and_skip_a_second_time(tmp_path):
    archive = _zip(tmp_path / "a.zip", [("images/x.jpg", b"x"), ("images/sub/y.jpg", b"y")])
    target = extract(archive, tmp_path / "out")
    assert (target / "images" / "x.jpg").read_bytes() == b"x"
    assert (target / "images" / "sub" / "y.jpg").read_bytes() == b"y"
    (target / "images" / "x.jpg").write_bytes(b"edited")
    extract(archive, tmp_path / "out")  # the marker makes it a no-op
    assert (target / "images" / "x.jpg").read_bytes() == b"edited"

    tar = _tar(tmp_path / "b.tar.gz", [("d/z.txt", "file", b"z"), ("d/link", "sym", "z.txt")])
    extract(tar, tmp_path / "tar_out")
    assert (tmp_path / "tar_out" / "d" / "z.txt").read_bytes() == b"z"
    assert (tmp_path / "tar_out" / "d" / "link").is_symlink()


@pytest.mark.parametrize(
    ("members", "bad"),
    [
        ([("ok.txt", "file", b"1"), ("/abs/evil.txt", "file", b"2")], "/abs/evil.txt"),
        ([("ok.txt", "file", b"1"), ("d/../../evil.txt", "file", b"2")], "d/../../evil.txt"),
        ([("ok.txt", "file", b"1"), ("d/link", "sym", "../../outside")], "d/link"),
        ([("ok.txt", "file", b"1"), ("link", "sym", "/etc/passwd")], "link"),
        ([("ok.txt", "file", b"1"), ("hard", "hard", "../outside")], "hard"),
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
    ],
)
def test_malicious_zip_is_refused_before_anything_is_written(tmp_path, members, symlinks, bad):
    archive = _zip(tmp_path / "evil.zip", members, symlinks)
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert repr(bad) in str(info.value)
    assert not any(target.rglob("*"))


def test_extract_rejects_non_archives(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a zip nor a tar"):
        extract(tmp_path / "notes.txt", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        extract(tmp_path / "absent.zip", tmp_path / "out")


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
            assert re.fullmatch(r"[0-9a-f]{8,64}", res.sha256), res.key
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
