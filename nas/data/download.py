"""Fetching the paper-scale data: resumable, checksummed downloads, safe extraction, a dry-run plan,
and the img2dataset step for the CC3M / SBU image shards.

`download` never leaves a half-written or unverified file under its final name: bytes go to
`<name>.part` (resumed with an HTTP Range request after a dropped connection), the sha256 is checked,
and only then is the file moved into place (os.replace, atomic on one file system). Files without a
published checksum get theirs recorded in a manifest on first download ("trust on first use"), so a
later copy that differs is caught. `extract` refuses members that would land outside the target.
Only the standard library is used (urllib, tarfile, zipfile); img2dataset is optional.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from nas.data.catalog import Resource, ShardJob, select

logger = logging.getLogger(__name__)

MANIFEST_NAME = "download_manifest.json"
CHUNK_SIZE = 1 << 20
# Transient HTTP statuses worth another try; any other error status is final.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL and what is left on disk."""


class ChecksumError(DownloadError):
    """The bytes do not have the expected sha256; the file was not moved into place."""

    def __init__(self, path: Path, expected: str, actual: str, note: str = ""):
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(f"sha256 mismatch for {path}: expected {expected}, got {actual}{note}")


class ManualStepRequired(DownloadError):
    """Some files need a person (a licence to accept, a form, a web page); lists each step."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder; names the archive and the member."""


class MissingDependency(RuntimeError):
    """An optional tool is not installed; the message says how to install it and what to run."""


# ---- the manifest --------------------------------------------------------------------------------


class Manifest:
    """`download_manifest.json`: what was fetched, from where, its sha256 and size. Keys are file paths
    relative to the manifest's folder. Written atomically after every change."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise DownloadError(f"{self.path}: not valid JSON ({exc}); fix or delete it") from exc
            if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
                raise DownloadError(f"{self.path}: expected {{'files': {{...}}}}; fix or delete it")
            self.entries = data["files"]

    def key(self, file: Path) -> str:
        try:
            return file.resolve().relative_to(self.path.parent.resolve()).as_posix()
        except ValueError:
            return file.resolve().as_posix()

    def get(self, file: Path) -> dict[str, Any] | None:
        return self.entries.get(self.key(file))

    def record(self, file: Path, **entry: Any) -> None:
        self.entries[self.key(file)] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"files": self.entries}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def sha256_file(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest_format(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not _HEX.match(digest):
        raise ValueError(f"sha256 must be 8 to 64 hex digits (a prefix is allowed), got {sha256!r}")
    return digest


def _stat_signature(path: Path) -> dict[str, int]:
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


# ---- download ------------------------------------------------------------------------------------


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    manifest: Manifest | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 2.0,
    headers: Mapping[str, str] | None = None,
    reject_html: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> Path:
    """Fetch `url` to `dest`, verified; returns `dest`.

    - `sha256`: the published checksum (full, or a hex prefix of >= 8 digits). Without one, the
      manifest's record of an earlier download of the same URL is used, and a first download is
      recorded there.
    - An existing `dest` is checked, not re-fetched. A mismatch raises ChecksumError and leaves it.
    - Bytes go to `<dest>.part`; a dropped connection resumes with `Range: bytes=<n>-` (or restarts
      when the server ignores ranges), at most `retries` more attempts, `backoff * 2**k` s apart.
    - `reject_html`: an HTML answer is an error (Google Drive serves a page instead of a file when a
      quota is hit), so a page never gets recorded as the file.
    """
    dest = Path(dest)
    expected = _check_digest_format(sha256)
    manifest = manifest if manifest is not None else Manifest(dest.parent / MANIFEST_NAME)
    previous = manifest.get(dest)
    recorded = None
    if expected is None and previous and previous.get("url") == url:
        recorded = previous.get("sha256")  # trust on first use: later copies must match
    target_digest = expected or recorded

    if dest.exists():
        if not dest.is_file():
            raise DownloadError(f"{dest} exists and is not a file; move it away")
        _verify_existing(dest, url, target_digest, expected is not None, previous, manifest)
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_to_part(url, part, retries, timeout, backoff, dict(headers or {}), reject_html, chunk_size)
    actual = sha256_file(part, chunk_size)
    if target_digest and not actual.startswith(target_digest):
        part.unlink()
        origin = (
            "published"
            if expected
            else f"recorded in {manifest.path} on first download; remove that entry if the new file is intended"
        )
        raise ChecksumError(
            dest,
            target_digest,
            actual,
            f" ({origin}; the download from {url} was deleted, not moved into place)",
        )
    os.replace(part, dest)
    manifest.record(
        dest,
        url=url,
        sha256=actual,
        published_sha256=expected,
        verified=bool(target_digest),
        fetched_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **_stat_signature(dest),
    )
    return dest


def _verify_existing(
    dest: Path,
    url: str,
    digest: str | None,
    published: bool,
    previous: dict[str, Any] | None,
    manifest: Manifest,
) -> None:
    """Check a file already in place (skipping the hash when the manifest saw this exact file)."""
    unchanged = previous is not None and all(previous.get(k) == v for k, v in _stat_signature(dest).items())
    if (
        unchanged
        and previous is not None
        and (digest is None or str(previous.get("sha256", "")).startswith(digest))
    ):
        return
    actual = sha256_file(dest)
    if digest and not actual.startswith(digest):
        origin = "published" if published else f"recorded in {manifest.path}"
        raise ChecksumError(dest, digest, actual, f" ({origin}; the existing file was left as it is)")
    manifest.record(
        dest,
        url=url,
        sha256=actual,
        published_sha256=digest if published else None,
        verified=bool(digest),
        fetched_at=(previous or {}).get("fetched_at", "placed by hand"),
        **_stat_signature(dest),
    )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes a-b/total` -> (a, total); `bytes */total` -> (None, total)."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _fetch_to_part(
    url: str,
    part: Path,
    retries: int,
    timeout: float,
    backoff: float,
    headers: dict[str, str],
    reject_html: bool,
    chunk_size: int,
) -> None:
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers=dict(headers))
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            total = _receive(request, part, offset, timeout, reject_html, chunk_size, url)
            size = part.stat().st_size if part.exists() else 0
            if total is not None and size < total:
                raise ConnectionError(f"connection closed after {size} of {total} bytes")
            if total is not None and size > total:
                part.unlink()
                raise ConnectionError(f"received {size} bytes, more than the announced {total}; restarting")
            return
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket
            if exc.code == 416 and offset:
                _, total = _content_range(exc.headers.get("Content-Range"))
                if total == offset:
                    return  # the .part already holds the whole file
                part.unlink()  # the .part is longer than the file: it is not this file, start over
                error: Exception = exc
            elif exc.code not in RETRYABLE_STATUS:
                kept = f"; {offset} bytes kept in {part}" if offset else ""
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}{kept}") from exc
            else:
                error = exc
        except _NETWORK_ERRORS as exc:
            error = exc
        failures += 1
        if failures > retries:
            have = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"{url}: gave up after {failures} attempts ({type(error).__name__}: {error}); {have} bytes kept in "
                f"{part}: run again to resume"
            ) from error
        delay = backoff * 2 ** (failures - 1)
        logger.warning("%s: %s; retry %d/%d in %.1f s", url, error, failures, retries, delay)
        time.sleep(delay)


def _receive(
    request: urllib.request.Request,
    part: Path,
    offset: int,
    timeout: float,
    reject_html: bool,
    chunk_size: int,
    url: str,
) -> int | None:
    """One HTTP exchange appended to `part`; returns the full file size when the server says it."""
    with urllib.request.urlopen(request, timeout=timeout) as response:
        content_type = response.headers.get("Content-Type", "")
        if reject_html and content_type.startswith("text/html"):
            raise DownloadError(
                f"{url}: the server answered with an HTML page, not the file (Google Drive does this when "
                "its download quota is exceeded or it wants a confirmation); fetch it in a browser or with "
                "gdown and place it by hand"
            )
        length = response.headers.get("Content-Length")
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise ConnectionError(f"server resumed at byte {start}, not {offset}; restarting")
            mode = "ab"
        else:  # 200: the whole file (a server that ignores Range starts over)
            offset, mode = 0, "wb"
            total = int(length) if length is not None else None
        if total is None and length is not None:
            total = offset + int(length)
        with open(part, mode) as stream:
            while chunk := response.read(chunk_size):
                stream.write(chunk)
            stream.flush()
            os.fsync(stream.fileno())
        return total


# ---- extraction ----------------------------------------------------------------------------------


def _is_unsafe_name(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or re.match(r"^[A-Za-z]:", name) is not None or ".." in path.parts


def _escapes(base: PurePosixPath, link_target: str) -> bool:
    """Whether `link_target`, resolved lexically from folder `base` (relative to the target), leaves it."""
    target = link_target.replace("\\", "/")
    if PurePosixPath(target).is_absolute() or re.match(r"^[A-Za-z]:", target):
        return True
    depth = len(base.parts)
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


def _tar_members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        where = f"{archive}: member {member.name!r}"
        if _is_unsafe_name(member.name):
            raise UnsafeArchiveError(
                f"{where} has an absolute path or a '..' component; nothing was extracted"
            )
        if member.issym() and _escapes(PurePosixPath(member.name).parent, member.linkname):
            raise UnsafeArchiveError(
                f"{where} is a link to {member.linkname!r}, outside the target; nothing was extracted"
            )
        if member.islnk() and _is_unsafe_name(member.linkname):  # hard links name archive paths
            raise UnsafeArchiveError(
                f"{where} is a hard link to {member.linkname!r}, outside the target; nothing was extracted"
            )
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeArchiveError(f"{where} is a device or FIFO; nothing was extracted")
    return members


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for member in members:
        where = f"{archive}: member {member.filename!r}"
        if _is_unsafe_name(member.filename):
            raise UnsafeArchiveError(
                f"{where} has an absolute path or a '..' component; nothing was extracted"
            )
        if stat.S_ISLNK(member.external_attr >> 16):
            link = zf.read(member).decode("utf-8", "replace")
            if _escapes(PurePosixPath(member.filename).parent, link):
                raise UnsafeArchiveError(
                    f"{where} is a link to {link!r}, outside the target; nothing was extracted"
                )
    return members


def extract(archive: str | Path, target: str | Path) -> Path:
    """Unpack a zip or tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) into `target`; returns `target`.

    Every member is checked before anything is written: an absolute path, a '..' component or a link
    pointing outside `target` raises UnsafeArchiveError naming the member. A marker file
    `.extracted.<archive name>` makes a second call a no-op.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    marker = target / f".extracted.{archive.name}"
    if marker.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = _zip_members(archive, zf)
            zf.extractall(target, members)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            members = _tar_members(archive, tar)
            # Python's own "data" filter (3.11.4+) re-checks with the real file system.
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            try:
                tar.extractall(target, members, **kwargs)
            except tarfile.TarError as exc:
                raise UnsafeArchiveError(
                    f"{archive}: {exc} (extraction stopped; remove {target} and retry)"
                ) from exc
    else:
        raise ValueError(f"{archive}: neither a zip nor a tar archive")
    marker.write_text(json.dumps({"archive": str(archive), "members": len(members)}) + "\n")
    return target


# ---- the plan (dry run) --------------------------------------------------------------------------


@dataclass
class PlanItem:
    key: str
    action: str  # "download", "copy shipped file", "manual", "img2dataset", "present"
    source: str  # URL, package resource or instruction
    dest: Path
    size: int | None  # bytes of the download (None = unknown)
    bytes_needed: int | None  # still to fetch (None = unknown)
    extract_to: Path | None = None
    note: str = ""


def _path_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def plan(selection: Iterable[str], root: str | Path) -> list[PlanItem]:
    """What `fetch(selection, root)` would do, without touching the network."""
    root = Path(root)
    resources_, jobs = select(selection)
    items: list[PlanItem] = []
    for res in resources_:
        dest = root / res.filename
        extract_to = root / res.extract_to if res.extract_to else None
        present = dest.exists()
        if res.method == "manual":
            action, source = ("present" if present else "manual"), res.instructions
        elif res.method == "shipped":
            action, source = ("present" if present else "copy shipped file"), f"nas/resources/{res.shipped}"
        else:
            action, source = ("present" if present else "download"), str(res.url)
        part = dest.with_name(dest.name + ".part")
        needed = (
            0
            if present or res.method in ("manual", "shipped")
            else (None if res.size is None else max(res.size - _path_size(part), 0))
        )
        note = "gated: " + res.instructions if res.method == "gated" else ""
        if action == "download" and part.is_file():
            note = f"resumes from {_path_size(part):,} bytes"
        items.append(PlanItem(res.key, action, source, dest, res.size, needed, extract_to, note))
    for job in jobs:
        items.append(
            PlanItem(
                job.key,
                "img2dataset",
                shlex.join(img2dataset_command(job, root)),
                root / job.output_folder,
                None,
                None,
                note=job.prepare,
            )
        )
    return items


def describe_plan(items: list[PlanItem], root: str | Path) -> str:
    """A readable table of `plan(...)` with the bytes to fetch and the free disk space."""
    lines = [f"data root: {root}", "", "| key | action | size | from | to |", "|---|---|---:|---|---|"]
    for item in items:
        size = "?" if item.size is None else _human(item.size)
        lines.append(f"| {item.key} | {item.action} | {size} | {item.source} | {item.dest} |")
        if item.note:
            lines.append(f"|  | ↳ {item.note} |  |  |  |")
    known = sum(i.bytes_needed or 0 for i in items)
    unknown = [i.key for i in items if i.bytes_needed is None]
    archives = sum(i.bytes_needed or 0 for i in items if i.extract_to is not None)
    free = shutil.disk_usage(_existing_parent(Path(root))).free
    lines += [
        "",
        f"to download: {_human(known)} of known size, plus {len(unknown)} item(s) of unknown size"
        + (f" ({', '.join(unknown)})" if unknown else ""),
        f"extraction: about {_human(archives)} more (image archives barely compress), unless the archives "
        "are deleted after extraction",
        f"free disk under {root}: {_human(free)}",
    ]
    manual = [i for i in items if i.action == "manual" or i.note.startswith("gated")]
    if manual:
        lines += ["", "steps a person must do:"] + [
            f"- {i.key}: {i.source if i.action == 'manual' else i.note}" for i in manual
        ]
    return "\n".join(lines)


def dry_run(selection: Iterable[str], root: str | Path, echo: Callable[[str], Any] = print) -> list[PlanItem]:
    """Print (via `echo`) and return what would be fetched, from where, and the disk it needs."""
    items = plan(selection, root)
    echo(describe_plan(items, root))
    return items


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1000
    raise AssertionError("unreachable")


# ---- fetching a selection ------------------------------------------------------------------------


@dataclass
class FetchReport:
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    manual: dict[str, str] = field(default_factory=dict)  # key -> what a person must do
    shard_jobs: list[str] = field(default_factory=list)  # img2dataset commands still to run

    def raise_for_manual(self) -> None:
        if self.manual:
            steps = "\n".join(f"- {key}: {text}" for key, text in self.manual.items())
            raise ManualStepRequired(f"{len(self.manual)} file(s) need a manual step:\n{steps}")


def fetch(
    selection: Iterable[str],
    root: str | Path,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    extract_archives: bool = True,
    environ: Mapping[str, str] | None = None,
) -> FetchReport:
    """Download, verify and extract everything `selection` names into `root`; manual and gated steps
    that are not done yet are collected in the report (call `raise_for_manual()` to stop on them)."""
    root = Path(root)
    environ = os.environ if environ is None else environ
    manifest = Manifest(root / MANIFEST_NAME)
    resources_, jobs = select(selection)
    report = FetchReport()
    for res in resources_:
        dest = root / res.filename
        if res.method == "manual":
            if dest.exists():
                report.present.append(res.key)
            else:
                report.manual[res.key] = res.instructions
            continue
        existed = dest.exists()
        if res.method == "shipped":
            _copy_shipped(res, dest, manifest)
        elif res.method == "gated" and not existed and not environ.get("HF_TOKEN"):
            report.manual[res.key] = res.instructions
            continue
        else:
            headers = {"Authorization": f"Bearer {environ['HF_TOKEN']}"} if res.method == "gated" else {}
            download(
                str(res.url),
                dest,
                res.sha256,
                manifest=manifest,
                retries=retries,
                timeout=timeout,
                headers=headers,
                reject_html=res.method == "gdrive",
            )
        (report.present if existed else report.fetched).append(res.key)
        if extract_archives and res.extract_to:
            extract(dest, root / res.extract_to)
    for job in jobs:
        report.shard_jobs.append(shlex.join(img2dataset_command(job, root)))
    return report


def _copy_shipped(res: Resource, dest: Path, manifest: Manifest) -> None:
    """Copy a file the package ships (VALSE, SugarCrepe) and verify it like a download."""
    if not dest.exists():
        source = resources.files("nas") / "resources" / str(res.shipped)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        part.write_bytes(source.read_bytes())
        os.replace(part, dest)
    previous = manifest.get(dest)
    _verify_existing(dest, f"package:nas/resources/{res.shipped}", res.sha256, True, previous, manifest)


# ---- img2dataset (CC3M / SBU image shards) -------------------------------------------------------


def img2dataset_command(
    job: ShardJob,
    root: str | Path,
    *,
    image_size: int = 512,
    processes: int = 16,
    threads: int = 64,
    output_format: str = "webdataset",
) -> list[str]:
    """The img2dataset command line for `job` (the options of img2dataset's own CC3M/SBU examples).

    [D] `--resize_mode keep_ratio --image_size 512 --resize_only_if_bigger`: the shorter side is at
    most 512 px, so ALBEF's RandomResizedCrop(256, scale=(0.2, 1)) still cuts its smallest crops from
    about 229 px of source instead of upsampling; img2dataset's default ("border" to 256 x 256) would
    pad every image to a square. Sites' "noai"/"noindex" opt-outs are respected, as in its example.
    """
    root = Path(root)
    options = {
        "url_list": str(root / job.url_list),
        "input_format": job.input_format,
        "url_col": job.url_col,
        "caption_col": job.caption_col,
        "output_format": output_format,
        "output_folder": str(root / job.output_folder),
        "processes_count": str(processes),
        "thread_count": str(threads),
        "image_size": str(image_size),
        "resize_mode": "keep_ratio",
        "resize_only_if_bigger": "True",
        "enable_wandb": "False",
        "user_agent_token": "img2dataset",
        "disallowed_header_directives": '["noai", "noindex"]',
    }
    return ["img2dataset", *[part for name, value in options.items() for part in (f"--{name}", value)]]


def img2dataset_available() -> bool:
    return importlib.util.find_spec("img2dataset") is not None


def run_img2dataset(job: ShardJob, root: str | Path, **options: Any) -> Path:
    """Run img2dataset for `job` (blocking); MissingDependency with the exact command when it is not
    installed. Returns the shard folder."""
    import subprocess

    command = img2dataset_command(job, root, **options)
    if not img2dataset_available():
        raise MissingDependency(
            f"{job.key} needs img2dataset, which is not installed: `pip install img2dataset`, then run\n"
            f"  {shlex.join(command)}\n(or let the harness run it again)."
        )
    url_list = Path(root) / job.url_list
    if not url_list.is_file():
        raise FileNotFoundError(
            f"{job.key}: URL list {url_list} is missing; {job.prepare or 'fetch it first'}"
        )
    executable = shutil.which("img2dataset")
    argv = [executable, *command[1:]] if executable else [sys.executable, "-m", "img2dataset", *command[1:]]
    subprocess.run(argv, check=True)
    return Path(root) / job.output_folder


def prepare_cc3m_url_list(tsv: str | Path, out: str | Path) -> Path:
    """Copy Google's header-less CC3M TSV (caption<TAB>url) with the header img2dataset needs."""
    tsv, out = Path(tsv), Path(out)
    if not tsv.is_file():
        raise FileNotFoundError(f"CC3M URL list not found: {tsv} (see catalog entry cc3m.train_tsv)")
    with open(tsv, "rb") as source:
        first = source.readline()
        if first.count(b"\t") != 1:
            raise ValueError(f"{tsv}: line 1 should be 'caption<TAB>url', got {first[:120]!r}")
        part = out.with_name(out.name + ".part")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as target:
            target.write(b"caption\turl\n")
            target.write(first)
            shutil.copyfileobj(source, target, CHUNK_SIZE)
    os.replace(part, out)
    return out


@dataclass
class ShardStats:
    """What img2dataset reported for a shard folder (its `<shard>_stats.json` files)."""

    count: int = 0
    successes: int = 0
    failed_to_download: int = 0
    failed_to_resize: int = 0
    status: dict[str, int] = field(default_factory=dict)  # status/error message -> count
    shards: list[str] = field(default_factory=list)  # complete shards (a .tar and its stats)
    unfinished: list[str] = field(default_factory=list)  # a .tar without stats: interrupted, re-run
    missing_tar: list[str] = field(default_factory=list)  # stats without a .tar: not written

    @property
    def success_rate(self) -> float:
        return self.successes / self.count if self.count else 0.0


def read_img2dataset_stats(folder: str | Path) -> ShardStats:
    """Sum img2dataset's per-shard `*_stats.json` (count, successes, failed_to_download,
    failed_to_resize, status_dict) and pair them with the .tar shards, so unfinished shards show."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"img2dataset output folder not found: {folder}")
    stats = ShardStats()
    stats_files = sorted(folder.glob("*_stats.json"))
    with_stats = set()
    for path in stats_files:
        shard = path.name.removesuffix("_stats.json")
        try:
            data = json.loads(path.read_text())
            counts = {
                k: int(data[k]) for k in ("count", "successes", "failed_to_download", "failed_to_resize")
            }
            status = {str(k): int(v) for k, v in (data.get("status_dict") or {}).items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not an img2dataset stats file ({type(exc).__name__}: {exc})") from exc
        stats.count += counts["count"]
        stats.successes += counts["successes"]
        stats.failed_to_download += counts["failed_to_download"]
        stats.failed_to_resize += counts["failed_to_resize"]
        for key, value in status.items():
            stats.status[key] = stats.status.get(key, 0) + value
        with_stats.add(shard)
        (stats.shards if (folder / f"{shard}.tar").is_file() else stats.missing_tar).append(shard)
    stats.unfinished = sorted(p.stem for p in folder.glob("*.tar") if p.stem not in with_stats)
    return stats


def main(argv: list[str] | None = None) -> int:
    """`python -m nas.data.download pretrain benchmarks --root data/paper [--dry-run]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m nas.data.download",
        description="Fetch the paper-scale data (nas/data/catalog.py): resumable, checksummed, extracted.",
    )
    parser.add_argument(
        "selection", nargs="+", help="sets (pretrain, benchmarks, all), groups or resource keys"
    )
    parser.add_argument("--root", default="data/paper", help="data root (default: data/paper)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be fetched and the disk needed"
    )
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args(argv)
    if args.dry_run:
        dry_run(args.selection, args.root)
        return 0
    report = fetch(args.selection, args.root, retries=args.retries)
    print(f"fetched {len(report.fetched)}, already present {len(report.present)}")
    for command in report.shard_jobs:
        print(f"image shards (img2dataset): {command}")
    if report.manual:
        print("\nstill to do by hand:\n" + "\n".join(f"- {k}: {v}" for k, v in report.manual.items()))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
