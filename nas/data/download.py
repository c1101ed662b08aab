"""Fetching the paper-scale data: resumable, checksummed downloads, safe extraction, a dry-run plan,
and the img2dataset step for the CC3M / SBU image shards.

`download` never leaves a half-written or unverified file under its final name: bytes go to
`<name>.part`, the checksum is checked, and only then is the file moved into place (os.replace, atomic
on one file system). A dropped connection is resumed only when the server gave a validator when the
download started (a strong ETag, else Last-Modified, kept in `<name>.part.json`): the resume request
carries `If-Range` with it, so a file that changed on the server is fetched again whole, never spliced
from two versions. Checksums are full digests ("<64 hex>" for sha256, or "<algorithm>:<full hex>");
a prefix is refused. Files without a published checksum get their sha256 recorded in a manifest on
first download ("trust on first use"), so a later copy that differs is caught.

`extract` checks every member before anything is written (paths, links followed through the links
defined before them, devices), bounds the total size and the expansion ratio, extracts into a
temporary folder and moves the result into place; its marker records the archive's sha256, so a
changed archive is extracted again.

What libraries do, they do here: tarfile's `data` filter checks every path and link again while a
tar is written; `huggingface_hub.hf_hub_download` fetches the gated hub files (Winoground: the
token, the redirect to the CDN without it, resuming, HF_HUB_OFFLINE). What they do not do stays
hand-written, each part saying why: the resumable HTTP download (pooch fetches with a known hash
but cannot resume a partial file, let alone with `If-Range` so that two versions are never
spliced, nor refuse an HTML page, nor record a first-use checksum), the full-digest checksum rule,
the manifest, the whole-archive check before a tar or zip is written (it names the member even
where the data filter meets a link loop as an OS error on a temporary path; zipfile has no filter
and silently rewrites bad names), zip size and CRC limits, placing an extraction, the dry-run plan
and the img2dataset wiring. img2dataset is optional.
"""

from __future__ import annotations

import copy
import datetime
import errno
import glob
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
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
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
# Hex length of each algorithm's full digest ("shake_*" have no fixed length and are not offered).
DIGEST_HEX_LENGTHS = {
    name: hashlib.new(name).digest_size * 2
    for name in sorted(hashlib.algorithms_guaranteed)
    if not name.startswith("shake_")
}
# Extraction limits: the declared uncompressed total may be at most MAX_EXPANSION_RATIO times the
# archive's size (archives expanding to at most RATIO_EXEMPT_BYTES are not ratio-checked) and at most
# DISK_FRACTION of the free disk under the target (or `max_bytes`, if smaller).
MAX_EXPANSION_RATIO = 200.0
RATIO_EXEMPT_BYTES = 1 << 20
DISK_FRACTION = 0.95
_MARKER_FORMAT = 2


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL and what is left on disk."""


class ChecksumError(DownloadError):
    """The bytes do not have the expected digest; the file was not moved into place."""

    def __init__(self, path: Path, expected: str, actual: str, note: str = "", algorithm: str = "sha256"):
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(f"{algorithm} mismatch for {path}: expected {expected}, got {actual}{note}")


class ChecksumFormatError(ValueError):
    """A checksum is not the full hex digest of its algorithm (a prefix is not a checksum)."""


class ManualStepRequired(DownloadError):
    """Some files need a person (a licence to accept, a form, a web page); lists each step."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder, or the archive is damaged; names the
    archive and the member."""


class ArchiveLimitError(UnsafeArchiveError):
    """An archive expands beyond a size or ratio limit; names the archive, the member and the limit."""


class MissingDependency(RuntimeError):
    """An optional tool is not installed; the message says how to install it and what to run."""


class _Restart(Exception):
    """The partial file cannot be continued (the server's copy changed, or it resumed elsewhere)."""


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
        _write_json_atomically(self.path, {"files": self.entries})


def _write_json_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def sha256_file(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    return _digests(path, ("sha256",), chunk_size)["sha256"]


def _digests(path: Path, algorithms: Iterable[str], chunk_size: int = CHUNK_SIZE) -> dict[str, str]:
    """The hex digests of `path` for each algorithm, in one pass over the file."""
    hashers = {name: hashlib.new(name) for name in dict.fromkeys(algorithms)}
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def parse_checksum(value: str | None, entry: str = "checksum") -> tuple[str, str] | None:
    """`"<hex>"` (sha256) or `"<algorithm>:<hex>"` -> (algorithm, lower-case hex); None stays None.

    The hex must be the algorithm's full digest (64 digits for sha256, 40 for sha1, 32 for md5, ...):
    anything shorter, such as the 8-digit sha256 prefix in a torch.hub file name, is not a checksum
    and raises ChecksumFormatError naming `entry` and the length.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    algorithm, sep, digest = text.partition(":")
    if not sep:
        algorithm, digest = "sha256", text
    if algorithm not in DIGEST_HEX_LENGTHS:
        raise ChecksumFormatError(
            f"{entry}: checksum {value!r} names the unknown algorithm {algorithm!r}; use one of "
            f"{', '.join(DIGEST_HEX_LENGTHS)} as '<algorithm>:<hex>' (a bare hex digest is a sha256)"
        )
    if not re.fullmatch(r"[0-9a-f]+", digest):
        raise ChecksumFormatError(f"{entry}: checksum {value!r} is not hex digits")
    need = DIGEST_HEX_LENGTHS[algorithm]
    if len(digest) != need:
        hint = ""
        if not sep:
            others = [name for name, n in DIGEST_HEX_LENGTHS.items() if n == len(digest)]
            if others:
                hint = f"; if it is a full {others[0]}, write it as '{others[0]}:<hex>'"
        kind = "a prefix is not a checksum" if len(digest) < need else "too long"
        raise ChecksumFormatError(
            f"{entry}: checksum {value!r} has {len(digest)} hex digits, but a full {algorithm} digest "
            f"has {need} ({kind}){hint}"
        )
    return algorithm, digest


def _spec(checksum: tuple[str, str]) -> str:
    algorithm, digest = checksum
    return digest if algorithm == "sha256" else f"{algorithm}:{digest}"


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

    - `sha256`: the published checksum, the full digest: 64 hex digits, or `"<algorithm>:<full hex>"`
      for another algorithm (`"md5:<32 hex>"`); a prefix raises ChecksumFormatError. Without one, the
      manifest's sha256 of an earlier download of the same URL is used, and a first download is
      recorded there (only once it is complete: as long as the server announced, when it did).
    - An existing `dest` is checked, not re-fetched. A mismatch raises ChecksumError and leaves it.
    - Bytes go to `<dest>.part`, the server's validator (strong ETag, else Last-Modified) to
      `<dest>.part.json`. A dropped connection resumes with `Range` + `If-Range: <validator>`; a server
      whose copy changed answers with the whole new file, which replaces the partial one. Without a
      validator the download starts again from byte 0. At most `retries` more attempts after errors,
      `backoff * 2**k` s apart.
    - `reject_html`: an HTML answer is an error (Google Drive serves a page instead of a file when a
      quota is hit), so a page never gets recorded as the file.
    """
    dest = Path(dest)
    manifest = manifest if manifest is not None else Manifest(dest.parent / MANIFEST_NAME)
    published, expected, previous = _checksums(url, dest, sha256, manifest)
    if _kept_existing(dest, url, expected, published is not None, previous, manifest):
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    length_checked = _fetch_to_part(
        url, part, retries, timeout, backoff, dict(headers or {}), reject_html, chunk_size
    )
    _place_verified(part, dest, url, published, expected, manifest, length_checked, chunk_size)
    _part_state_path(part).unlink(missing_ok=True)
    return dest


def _checksums(
    url: str, dest: Path, sha256: str | None, manifest: Manifest
) -> tuple[tuple[str, str] | None, tuple[str, str] | None, dict[str, Any] | None]:
    """(published checksum, checksum to enforce, manifest entry) for `dest`: without a published one,
    the sha256 the manifest recorded for an earlier download of the same URL (trust on first use)."""
    published = parse_checksum(sha256, f"{dest} (from {url})")
    previous = manifest.get(dest)
    expected = published
    if published is None and previous and previous.get("url") == url and previous.get("sha256"):
        # trust on first use: later copies must match
        expected = parse_checksum(previous["sha256"], f"{manifest.path}: entry {manifest.key(dest)!r}")
    return published, expected, previous


def _place_verified(
    fetched: Path,
    dest: Path,
    url: str,
    published: tuple[str, str] | None,
    expected: tuple[str, str] | None,
    manifest: Manifest,
    length_checked: bool,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """Check the complete download `fetched` against `expected` and only then move it to `dest` and
    record it; a mismatch deletes it and raises ChecksumError naming `dest` and both digests."""
    digests = _digests(fetched, ["sha256"] + ([expected[0]] if expected else []), chunk_size)
    if expected and digests[expected[0]] != expected[1]:
        _discard_part(fetched)
        origin = (
            "published"
            if published
            else f"recorded in {manifest.path} on first download; remove that entry if the new file is intended"
        )
        raise ChecksumError(
            dest,
            expected[1],
            digests[expected[0]],
            f" ({origin}; the download from {url} was deleted, not moved into place)",
            algorithm=expected[0],
        )
    if not length_checked:
        logger.warning("%s: the server did not announce the length; %s is recorded unchecked", url, dest)
    os.replace(fetched, dest)
    manifest.record(
        dest,
        url=url,
        sha256=digests["sha256"],
        published_sha256=published[1] if published and published[0] == "sha256" else None,
        **({"published_checksum": _spec(published)} if published and published[0] != "sha256" else {}),
        verified=expected is not None,
        length_checked=length_checked,
        fetched_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **_stat_signature(dest),
    )


def _kept_existing(
    dest: Path,
    url: str,
    expected: tuple[str, str] | None,
    published: bool,
    previous: dict[str, Any] | None,
    manifest: Manifest,
) -> bool:
    """Whether `dest` is already here (then verified against its checksum, `_verify_existing`); a
    non-file in its place is an error naming it."""
    if not dest.exists():
        return False
    if not dest.is_file():
        raise DownloadError(f"{dest} exists and is not a file; move it away")
    _verify_existing(dest, url, expected, published, previous, manifest)
    return True


def _verify_existing(
    dest: Path,
    url: str,
    expected: tuple[str, str] | None,
    published: bool,
    previous: dict[str, Any] | None,
    manifest: Manifest,
) -> None:
    """Check a file already in place (skipping the hash when the manifest saw this exact file)."""
    unchanged = previous is not None and all(previous.get(k) == v for k, v in _stat_signature(dest).items())
    if unchanged and previous is not None:
        if expected is None:
            return
        algorithm, digest = expected
        known = previous.get("sha256") if algorithm == "sha256" else previous.get("published_checksum")
        if known == (digest if algorithm == "sha256" else _spec(expected)):
            return
    digests = _digests(dest, ["sha256"] + ([expected[0]] if expected else []))
    if expected and digests[expected[0]] != expected[1]:
        origin = "published" if published else f"recorded in {manifest.path}"
        raise ChecksumError(
            dest,
            expected[1],
            digests[expected[0]],
            f" ({origin}; the existing file was left as it is)",
            algorithm=expected[0],
        )
    pub = expected if published else None
    manifest.record(
        dest,
        url=url,
        sha256=digests["sha256"],
        published_sha256=pub[1] if pub and pub[0] == "sha256" else None,
        **({"published_checksum": _spec(pub)} if pub and pub[0] != "sha256" else {}),
        verified=expected is not None,
        fetched_at=(previous or {}).get("fetched_at", "placed by hand"),
        **_stat_signature(dest),
    )


# ---- the Hugging Face Hub (gated files) -----------------------------------------------------------

# https://huggingface.co/[datasets/|spaces/]<owner>/<name>/resolve/<revision>/<path in the repo>
_HUB_FILE_URL = re.compile(
    r"https://huggingface\.co/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)"
)
HUB_STAGING = ".hub"  # huggingface_hub's local_dir beside the file: its partial downloads, resumed


def _hub_file(url: str) -> tuple[str, str, str, str]:
    """(repo id, repo type, revision, path in the repo) of a hub `resolve` URL."""
    match = _HUB_FILE_URL.fullmatch(url)
    if match is None:
        raise DownloadError(
            f"{url}: not a Hugging Face Hub file URL "
            "(https://huggingface.co/[datasets/]<owner>/<name>/resolve/<revision>/<path>)"
        )
    kind, repo_id, revision, path = match.groups()
    return repo_id, {"datasets": "dataset", "spaces": "space"}.get(kind or "", "model"), revision, path


def hub_download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    manifest: Manifest | None = None,
    token: str | None = None,
) -> Path:
    """Fetch a Hugging Face Hub file (`url`: its `resolve` URL) to `dest`, verified as `download`
    verifies (published checksum or trust on first use, the manifest, moved into place only once
    checked); returns `dest`. `token`: the user's (a gated repo's terms accepted with that account).

    The transfer is huggingface_hub's `hf_hub_download` into `<dest folder>/.hub/` (it authenticates,
    follows the redirect to the CDN without the token, resumes an interrupted download from its
    `.incomplete` file, checks the size, and fails fast under HF_HUB_OFFLINE=1); its errors become a
    DownloadError naming the URL."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    dest = Path(dest)
    manifest = manifest if manifest is not None else Manifest(dest.parent / MANIFEST_NAME)
    published, expected, previous = _checksums(url, dest, sha256, manifest)
    if _kept_existing(dest, url, expected, published is not None, previous, manifest):
        return dest
    repo_id, repo_type, revision, path = _hub_file(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        staged = hf_hub_download(
            repo_id,
            path,
            repo_type=repo_type,
            revision=revision,
            token=token,
            local_dir=dest.parent / HUB_STAGING,
        )
    except GatedRepoError as exc:
        raise DownloadError(
            f"{url}: the hub refused the gated file ({exc}); accept the terms of "
            f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id} with the account "
            "whose token is in HF_TOKEN"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise DownloadError(
            f"{url}: the hub could not be reached and no copy is at hand ({exc}); unset HF_HUB_OFFLINE and "
            f"run again with network access, or place the file at {dest} by hand"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
    _place_verified(Path(staged), dest, url, published, expected, manifest, length_checked=True)
    return dest


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes a-b/total` -> (a, total); `bytes */total` -> (None, total)."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _part_state_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _part_state_path(part).unlink(missing_ok=True)


def _validators(headers: Any) -> dict[str, str | None]:
    """The response's validators usable in If-Range: a strong ETag (a weak one may not be used) and
    Last-Modified."""
    etag = (headers.get("ETag") or "").strip()
    modified = (headers.get("Last-Modified") or "").strip()
    return {
        "etag": etag if etag and not etag.startswith("W/") else None,
        "last_modified": modified or None,
    }


def _saved_state(part: Path, url: str) -> tuple[int, dict[str, Any] | None, str]:
    """(size of `part`, its saved state if the download can continue from it, else why not); reads
    only."""
    if not part.is_file():
        return 0, None, "no partial file"
    state_path = _part_state_path(part)
    try:
        loaded = json.loads(state_path.read_text()) if state_path.is_file() else None
    except (OSError, json.JSONDecodeError):
        loaded = None
    state = loaded if isinstance(loaded, dict) else None
    size = part.stat().st_size
    if state is None or not (state.get("etag") or state.get("last_modified")):
        return size, None, "no validator usable in If-Range (a strong ETag or Last-Modified) was saved for it"
    if state.get("url") != url:
        return size, None, f"it was started from another URL ({state.get('url')})"
    if state.get("total") is not None and size > int(state["total"]):
        return size, None, f"it is longer than the {state['total']} bytes the server announced"
    return size, state, ""


def _resume_point(part: Path, url: str) -> tuple[int, dict[str, Any] | None]:
    """(bytes to keep, saved state) for `part`. A partial file without a saved validator for this URL
    cannot be continued safely: it is deleted and the download starts from byte 0."""
    size, state, why = _saved_state(part, url)
    if state is None:
        if part.exists():
            logger.warning("%s: %s; restarting the download from byte 0", part, why)
        _discard_part(part)
        return 0, None
    return size, state


def _fetch_to_part(
    url: str,
    part: Path,
    retries: int,
    timeout: float,
    backoff: float,
    headers: dict[str, str],
    reject_html: bool,
    chunk_size: int,
) -> bool:
    """Download `url` completely into `part`; returns whether the length was checked against the
    server's announcement."""
    failures = restarts = 0
    while True:
        offset, state = _resume_point(part, url)
        request = urllib.request.Request(url, headers=dict(headers))
        if offset and state is not None:
            request.add_header("Range", f"bytes={offset}-")
            request.add_header("If-Range", state.get("etag") or state["last_modified"])
        try:
            try:
                total = _receive(request, part, offset, state, timeout, reject_html, chunk_size, url)
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response's socket
                if exc.code == 416 and offset and state is not None:
                    _, total = _content_range(exc.headers.get("Content-Range"))
                    etag = _validators(exc.headers)["etag"]
                    if (
                        total == offset
                        and state.get("total") in (None, offset)
                        and etag in (None, state.get("etag"))
                    ):
                        return True  # the .part already holds the whole file
                    raise _Restart(
                        f"the server has {total} bytes and the partial file {offset}: not the same file"
                    ) from exc
                raise
            size = part.stat().st_size if part.exists() else 0
            if total is not None and size < total:
                raise ConnectionError(f"connection closed after {size} of {total} bytes")
            if total is not None and size > total:
                raise _Restart(f"received {size} bytes, more than the announced {total}")
            return total is not None
        except _Restart as exc:
            _discard_part(part)
            restarts += 1
            if restarts > retries + 1:
                raise DownloadError(
                    f"{url}: restarted {restarts} times ({exc}); the partial file was deleted"
                ) from exc
            logger.warning("%s: %s; restarting from byte 0", url, exc)
            continue
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRYABLE_STATUS:
                kept = f"; {offset} bytes kept in {part}" if offset else ""
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}{kept}") from exc
            error: Exception = exc
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
    state: dict[str, Any] | None,
    timeout: float,
    reject_html: bool,
    chunk_size: int,
    url: str,
) -> int | None:
    """One HTTP exchange written to `part`; returns the full file size when the server says it.

    A 206 continues `part` only when it starts at `offset`, is for a file of the saved length and
    carries the saved strong ETag (or, when only Last-Modified was saved, does not carry another
    date); otherwise _Restart, so even a server that ignores If-Range cannot splice two versions. A 200 is the whole file: `part` is
    truncated and the new validators are saved before the first byte is written."""
    with urllib.request.urlopen(request, timeout=timeout) as response:
        content_type = response.headers.get("Content-Type", "")
        if reject_html and content_type.startswith("text/html"):
            raise DownloadError(
                f"{url}: the server answered with an HTML page, not the file (Google Drive does this when "
                "its download quota is exceeded or it wants a confirmation); fetch it in a browser or with "
                "gdown and place it by hand"
            )
        length = response.headers.get("Content-Length")
        validators = _validators(response.headers)
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _Restart(f"the server resumed at byte {start}, not {offset}")
            if offset and state is not None:  # a Range is only sent with a saved validator
                if state.get("etag") and validators["etag"] != state["etag"]:
                    raise _Restart(
                        f"the server's ETag is {validators['etag']}, not {state['etag']} as when the download "
                        "started: the file changed (and the server ignored If-Range)"
                    )
                if (
                    not state.get("etag")
                    and validators["last_modified"]
                    and validators["last_modified"] != state["last_modified"]
                ):
                    raise _Restart(
                        f"the file's Last-Modified is {validators['last_modified']}, not "
                        f"{state['last_modified']} as when the download started: the file changed"
                    )
                if state.get("total") is not None and total is not None and total != state["total"]:
                    raise _Restart(f"the file is now {total} bytes, not {state['total']}: it changed")
                mode = "ab"
            else:
                mode = "wb"
        else:  # 200: the whole file (If-Range did not match, or the server ignores Range)
            if offset:
                logger.warning("%s: the server sent the whole file; restarting from byte 0", url)
            offset, mode = 0, "wb"
            total = int(length) if length is not None else None
        if total is None and length is not None:
            total = offset + int(length)
        if mode == "wb":
            _write_json_atomically(
                _part_state_path(part),
                {
                    "url": url,
                    **validators,
                    "total": total,
                    "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                },
            )
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


def _parts(name: str) -> list[str]:
    return [part for part in name.split("/") if part not in ("", ".")]


class _LinkEscape(Exception):
    pass


def _resolve(
    parts: Iterable[str], links: Mapping[tuple[str, ...], str], follow_last: bool = True
) -> tuple[str, ...]:
    """Where `parts` (relative to the target) lands when the symlinks in `links` (location -> link
    text, as the archive defined them so far) are followed the way the OS does; _LinkEscape when the
    walk leaves the target (a '..' above it, an absolute link, a loop)."""
    out: list[str] = []
    queue = list(parts)
    hops = 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise _LinkEscape("..")
            out.pop()
            continue
        out.append(part)
        link = links.get(tuple(out))
        if link is not None and (queue or follow_last):
            hops += 1
            if hops > 40:
                raise _LinkEscape("too many levels of links")
            if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
                raise _LinkEscape(link)
            out.pop()  # a link's text is relative to the folder holding it
            queue = link.split("/") + queue
    return tuple(out)


# Kept beside tarfile's data filter: it refuses the whole archive before a byte is written and names
# the member even for a link loop, which the filter meets only as an OS error on a temporary path.
def _check_tar_links(archive: Path, members: list[tarfile.TarInfo]) -> None:
    """Follow every member's path, and every link's target, through the links defined before it in
    the archive (as extraction would meet them on disk), then every link again once all are defined.
    Refuses chains such as `a -> .` then `b -> a/..` that a member-by-member lexical check passes."""
    links: dict[tuple[str, ...], str] = {}
    names: dict[tuple[str, ...], str] = {}
    for member in members:
        parts = _parts(member.name)
        if not parts:
            continue
        where = f"{archive}: member {member.name!r}"
        try:
            if member.issym():
                location = _resolve(parts[:-1], links) + (parts[-1],)  # a symlink replaces what is there
                links[location], names[location] = member.linkname, member.name
            else:
                _resolve(parts, links)  # writing a file or folder follows a link already at its place
        except _LinkEscape:
            raise UnsafeArchiveError(
                f"{where} lies outside the target once the links before it in the archive are followed; "
                "nothing was extracted"
            ) from None
        try:
            if member.issym():
                _resolve(list(location[:-1]) + member.linkname.split("/"), links)
            elif member.islnk():
                _resolve(member.linkname.split("/"), links)  # hard links name archive paths
        except _LinkEscape as exc:
            leads = "loops" if "levels" in str(exc) else "leads outside the target"
            raise UnsafeArchiveError(
                f"{where} is a link to {member.linkname!r}, which {leads} once the links before it in the "
                "archive are followed; nothing was extracted"
            ) from None
    for location, text in links.items():  # a later link can change where an earlier one leads
        try:
            _resolve(list(location[:-1]) + text.split("/"), links)
        except _LinkEscape as exc:
            leads = "loops" if "levels" in str(exc) else "leads outside the target"
            raise UnsafeArchiveError(
                f"{archive}: member {names[location]!r} is a link to {text!r}, which {leads} once the "
                "later links in the archive are followed; nothing was extracted"
            ) from None


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
    _check_tar_links(archive, members)
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
            if member.file_size > 4096:
                raise UnsafeArchiveError(
                    f"{where} is a link of {member.file_size:,} bytes; nothing was extracted"
                )
            link = zf.read(member).decode("utf-8", "replace")
            if _escapes(PurePosixPath(member.filename).parent, link):
                raise UnsafeArchiveError(
                    f"{where} is a link to {link!r}, outside the target; nothing was extracted"
                )
    return members


def _extraction_limit(
    archive: Path,
    target: Path,
    sizes: list[tuple[str, int]],
    max_ratio: float | None,
    max_bytes: int | None,
) -> tuple[int, str]:
    """The most bytes the extraction may write, and what sets it; ArchiveLimitError when the members'
    declared sizes already exceed it."""
    size = archive.stat().st_size
    free = shutil.disk_usage(target).free
    caps = [
        (
            int(free * DISK_FRACTION),
            f"{DISK_FRACTION:.0%} of the {_human(free)} free under {target}",
            "free some disk space or extract elsewhere",
        )
    ]
    if max_bytes is not None:
        caps.append(
            (int(max_bytes), f"the size limit max_bytes={max_bytes:,}", "raise max_bytes to allow it")
        )
    if max_ratio is not None:
        caps.append(
            (
                max(int(max_ratio * size), RATIO_EXEMPT_BYTES),
                f"the expansion-ratio limit of {max_ratio:g}x the archive's {size:,} bytes",
                "a zip bomb? pass a larger max_ratio only if the archive is trusted",
            )
        )
    limit, why, hint = min(caps, key=lambda cap: cap[0])
    declared = sum(n for _, n in sizes)
    if declared > limit:
        name, largest = max(sizes, key=lambda item: item[1])
        raise ArchiveLimitError(
            f"{archive}: its members declare {declared:,} bytes ({declared / max(size, 1):,.0f}x the archive), "
            f"over {why}; the largest member is {name!r} ({largest:,} bytes); nothing was extracted ({hint})"
        )
    return limit, why


def _extract_zip(
    archive: Path, zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], tmp: Path, limit: int, why: str
) -> None:
    """Write the members into `tmp`, counting bytes: a member is read one byte past the size its header
    declares (so one that holds more is stopped there), its CRC-32 is checked, and the running total
    is held to `limit`. Link entries are written as small files holding the link text, as zipfile does."""
    written = 0
    for member in members:
        dest = tmp.joinpath(*_parts(member.filename))
        if member.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        declared = member.file_size
        probe = copy.copy(member)
        probe.file_size, probe.CRC = declared + 1, None  # read past the header's size; CRC checked below
        count, crc = 0, 0
        with zf.open(probe) as source, open(dest, "wb") as out:
            while chunk := source.read(min(CHUNK_SIZE, declared + 1 - count)):
                count += len(chunk)
                written += len(chunk)
                if count > declared:
                    raise ArchiveLimitError(
                        f"{archive}: member {member.filename!r} holds more than the {declared:,} bytes its "
                        "header declares; extraction stopped"
                    )
                if written > limit:
                    raise ArchiveLimitError(
                        f"{archive}: extraction reached {written:,} bytes at member {member.filename!r}, over "
                        f"{why}; extraction stopped"
                    )
                crc = zlib.crc32(chunk, crc)
                out.write(chunk)
        if count != declared or crc != member.CRC:
            raise UnsafeArchiveError(
                f"{archive}: member {member.filename!r} is damaged ({count:,} of the {declared:,} bytes its "
                f"header declares{', CRC-32 mismatch' if count == declared else ''}); extraction stopped"
            )


def _extract_tar(
    archive: Path, tar: tarfile.TarFile, members: list[tarfile.TarInfo], tmp: Path, limit: int, why: str
) -> None:
    """Extract into `tmp` through tarfile's `data` filter (it re-checks every path and link against the
    real file system as it goes, and sanitises modes); tarfile copies exactly the size each header
    declares, and the running total is held to `limit`."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # Pythons before 3.10.12 / 3.11.4 lack it; no hand-written stand-in
        raise UnsafeArchiveError(
            f"{archive}: this Python ({sys.version.split()[0]}) has no tarfile data filter; extract with "
            "Python >= 3.10.12, 3.11.4 or 3.12"
        )
    written = 0

    def count(member: tarfile.TarInfo) -> tarfile.TarInfo:
        nonlocal written
        if member.isreg():
            written += member.size
            if written > limit:
                raise ArchiveLimitError(
                    f"{archive}: extraction reached {written:,} bytes at member {member.name!r}, over {why}; "
                    "extraction stopped"
                )
        return member

    tar.extractall(tmp, members, filter=lambda member, path: count(data_filter(member, path)))


def _extraction_settings(kind: str) -> dict[str, str]:
    if kind == "tar":
        return {"kind": kind, "tar_filter": "data"}
    return {"kind": kind}


def _archive_signature(archive: Path) -> dict[str, int]:
    info = archive.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino}


def _read_marker(marker: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _MARKER_FORMAT else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # dst is under a link to another file system
            raise
        shutil.move(str(src), str(dst))


def _merge(src: Path, dst: Path) -> None:
    """Move `src` onto `dst`: folders are merged (a link to a folder is merged into), anything else
    replaced."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir():
        for child in src.iterdir():
            there = dst / child.name
            if os.path.lexists(there):
                _merge(child, there)
            else:
                _move(child, there)
    else:
        _remove(dst)
        _move(src, dst)


def _place(tmp: Path, target: Path, archive_name: str, previous: dict[str, Any] | None) -> list[str]:
    """Move the extracted tree from `tmp` into `target`. Top-level entries that only the previous
    extraction of this archive made are replaced whole (and those the new version lacks removed);
    entries shared with other archives' markers, or made by hand, are merged into."""
    new_top = sorted(entry.name for entry in tmp.iterdir())
    old_top = set((previous or {}).get("top_level", []))
    claimed: set[str] = set()
    for other in target.glob(".extracted.*"):
        if other.name != f".extracted.{archive_name}":
            claimed.update((_read_marker(other) or {}).get("top_level", []))
    for name in new_top:
        src, dst = tmp / name, target / name
        if not os.path.lexists(dst):
            _move(src, dst)
        elif name in old_top and name not in claimed and not dst.is_symlink():
            _remove(dst)
            _move(src, dst)
        else:
            _merge(src, dst)
    for name in sorted(old_top - set(new_top) - claimed):
        if os.path.lexists(target / name):
            _remove(target / name)
    return new_top


def _remove_stale_temporaries(target: Path, archive_name: str) -> None:
    """Delete `.extracting.<archive>.<pid>.*` folders of runs that were killed (their process is gone)."""
    for stale in target.glob(f".extracting.{glob.escape(archive_name)}.*"):
        pid = stale.name[len(f".extracting.{archive_name}.") :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # still running: another extraction of the same archive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif pid.isdigit():
            continue  # ours: removed by the `finally` of the extraction that made it
        shutil.rmtree(stale, ignore_errors=True)


def _extract_and_place(
    archive: Path, target: Path, previous: dict[str, Any] | None, write: Callable[[Path], None]
) -> list[str]:
    """Run `write` into a fresh temporary folder inside `target`, then move the result into place
    (the marker is removed first, so an interrupted move is never taken as complete)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".extracting.{archive.name}.{os.getpid()}.", dir=target))
    try:
        try:
            write(tmp)
        except UnsafeArchiveError as exc:
            raise type(exc)(f"{exc}; nothing was moved into {target}") from exc
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as exc:
            raise UnsafeArchiveError(
                f"{archive}: {type(exc).__name__}: {exc} (extraction stopped; nothing was moved into {target})"
            ) from exc
        (target / f".extracted.{archive.name}").unlink(missing_ok=True)
        return _place(tmp, target, archive.name, previous)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract(
    archive: str | Path,
    target: str | Path,
    *,
    max_ratio: float | None = MAX_EXPANSION_RATIO,
    max_bytes: int | None = None,
    archive_sha256: str | None = None,
) -> Path:
    """Unpack a zip or tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) into `target`; returns `target`.

    - Every member is checked before anything is written: an absolute path, a '..' component, a
      device or FIFO, or a link that leads outside `target` (following the links defined before it in
      the archive) raises UnsafeArchiveError naming the member.
    - The members' declared sizes may add up to at most `max_ratio` times the archive's size (None:
      no ratio limit), `max_bytes`, and DISK_FRACTION of the free disk under `target`; the same limits
      are enforced while writing, and a zip member holding more than its header declares is stopped.
      ArchiveLimitError names the archive, the member and the limit.
    - Members are extracted into a temporary folder inside `target`, then moved into place; only then
      is the marker `.extracted.<archive name>` written, holding the archive's sha256 and the
      extraction settings. A later call with the same archive is a no-op (the sha256 is recomputed
      only when the archive's size, mtime or inode changed, or taken from `archive_sha256`); a changed
      archive is extracted again and replaces what its previous version put there.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    if zipfile.is_zipfile(archive):
        kind = "zip"
    elif tarfile.is_tarfile(archive):
        kind = "tar"
    else:
        raise ValueError(f"{archive}: neither a zip nor a tar archive")
    given = parse_checksum(archive_sha256, f"archive_sha256 of {archive}") if archive_sha256 else None
    if given is not None and given[0] != "sha256":
        raise ChecksumFormatError(f"archive_sha256 of {archive}: expected a sha256, got {archive_sha256!r}")
    digest = given[1] if given else None
    settings = _extraction_settings(kind)
    marker = target / f".extracted.{archive.name}"
    previous = _read_marker(marker)
    signature = _archive_signature(archive)
    if previous is not None and previous.get("settings") == settings:
        same_file = all(previous.get(k) == v for k, v in signature.items())
        if digest is None and same_file:
            return target
        digest = digest or sha256_file(archive)
        if previous.get("sha256") == digest:
            if not same_file:
                _write_json_atomically(marker, {**previous, **signature})
            return target
        logger.info("%s changed since it was extracted into %s; extracting it again", archive, target)
    elif marker.exists():
        logger.info("%s: marker of an older format or other settings; extracting %s again", marker, archive)
    digest = digest or sha256_file(archive)

    target.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target, archive.name)
    members: list[Any]
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            members = _zip_members(archive, zf)
            sizes = [(m.filename, m.file_size) for m in members if not m.is_dir()]
            limit, why = _extraction_limit(archive, target, sizes, max_ratio, max_bytes)
            top_level = _extract_and_place(
                archive, target, previous, lambda tmp: _extract_zip(archive, zf, members, tmp, limit, why)
            )
    else:
        with tarfile.open(archive) as tar:
            members = _tar_members(archive, tar)
            sizes = [(m.name, m.size) for m in members if m.isreg()]
            limit, why = _extraction_limit(archive, target, sizes, max_ratio, max_bytes)
            top_level = _extract_and_place(
                archive, target, previous, lambda tmp: _extract_tar(archive, tar, members, tmp, limit, why)
            )
    _write_json_atomically(
        marker,
        {
            "format": _MARKER_FORMAT,
            "archive": archive.name,
            "path": str(archive),
            "sha256": digest,
            **signature,
            "settings": settings,
            "limits": {"max_ratio": max_ratio, "max_bytes": max_bytes, "applied": limit},
            "members": len(members),
            "bytes": sum(n for _, n in sizes),
            "top_level": top_level,
            "extracted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )
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
        have, state, why_not = _saved_state(part, str(res.url))
        kept = have if state is not None else 0
        needed = (
            0
            if present or res.method in ("manual", "shipped")
            else (None if res.size is None else max(res.size - kept, 0))
        )
        note = "gated: " + res.instructions if res.method == "gated" else ""
        if action == "download" and part.is_file():
            note = (
                f"resumes from {have:,} bytes (If-Range)"
                if state is not None
                else f"restarts from byte 0: a partial file of {have:,} bytes, but {why_not}"
            )
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
    max_ratio: float | None = MAX_EXPANSION_RATIO,
    max_bytes: int | None = None,
) -> FetchReport:
    """Download, verify and extract everything `selection` names into `root`; manual and gated steps
    that are not done yet are collected in the report (call `raise_for_manual()` to stop on them).
    `max_ratio` and `max_bytes` bound each extraction (see `extract`)."""
    root = Path(root)
    environ = os.environ if environ is None else environ
    manifest = Manifest(root / MANIFEST_NAME)
    resources_, jobs = select(selection)
    for res in resources_:  # a bad catalogue checksum stops the run before anything is fetched
        parse_checksum(res.sha256, f"catalogue entry {res.key!r} ({res.filename})")
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
        elif res.method == "gated":
            hub_download(str(res.url), dest, res.sha256, manifest=manifest, token=environ.get("HF_TOKEN"))
        else:
            download(
                str(res.url),
                dest,
                res.sha256,
                manifest=manifest,
                retries=retries,
                timeout=timeout,
                reject_html=res.method == "gdrive",
            )
        (report.present if existed else report.fetched).append(res.key)
        if extract_archives and res.extract_to:
            entry = manifest.get(dest) or {}
            known = all(entry.get(k) == v for k, v in _stat_signature(dest).items()) and entry.get("sha256")
            extract(
                dest,
                root / res.extract_to,
                max_ratio=max_ratio,
                max_bytes=max_bytes,
                archive_sha256=known or None,
            )
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
    checksum = parse_checksum(res.sha256, f"catalogue entry {res.key!r} ({res.filename})")
    _verify_existing(dest, f"package:nas/resources/{res.shipped}", checksum, True, previous, manifest)


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
