"""What every benchmark loader shares.

- errors that name the file and the record (never a silent wrong result); for score files, one
  ScoreFileError naming the file and line (invalid UTF-8 or JSON, a non-finite score, ...);
- the annotation files shipped under `nas/resources/benchmarks/` and their SHA256 check
  (BENCHMARKS.md §0.2: "the harness should do the same check at load time");
- `ImageRef`: an image file plus the optional ARO crop box, loaded lazily as RGB;
- `BenchmarkCase`: one test case = images x text options, scored as a matrix `scores[image][text]`;
- `score_cases`: the one loop that sends row-aligned pairs to a `PairScorer`, grouped by image.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:  # annotation only: rescoring a file must not import torch
    from nas.evaluation.scorers import PairScorer

CHECKSUM_FILE = "SHA256SUMS"


class BenchmarkDataError(ValueError):
    """An annotation file, or one of its records, is malformed; the message names both."""


class MissingBenchmarkFileError(FileNotFoundError):
    """A file the benchmark needs is absent; the message names it and says where to get it."""


class ChecksumError(ValueError):
    """A file's SHA256 differs from its SHA256SUMS entry (message: file, expected, actual)."""


class ScoreError(ValueError):
    """A score is NaN, has the wrong shape, or a score file does not match the benchmark."""


class ScoreFileError(ScoreError):
    """A score file is unreadable or inconsistent: invalid UTF-8 or JSON, a non-finite score, a
    field that contradicts another, a duplicate or missing entry. `file` and `line` (1-based; None
    when the fault is the file as a whole) say where; the message starts with both."""

    def __init__(self, file: str | Path, line: int | None, reason: str) -> None:
        self.file = str(file)
        self.line = line
        self.reason = reason
        where = self.file if line is None else f"{self.file}, line {line}"
        super().__init__(f"{where}: {reason}")


# ---------------------------------------------------------------------------------------------
# Shipped resources and checksums


def resource_path(benchmark: str, filename: str | None = None) -> Path:
    """Path of a shipped benchmark folder (`valse`, `sugarcrepe`, `aro`) or of a file in it."""
    folder = resources.files("nas") / "resources" / "benchmarks" / benchmark
    path = Path(str(folder / filename)) if filename else Path(str(folder))
    if not path.exists():
        # A zipped install would also land here: the loaders need real files.
        raise MissingBenchmarkFileError(f"shipped benchmark resource {path} does not exist")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checksums(folder: Path) -> dict[str, str] | None:
    """`{file name: sha256}` from `folder/SHA256SUMS` (sha256sum's format), or None if absent."""
    sums_path = folder / CHECKSUM_FILE
    if not sums_path.exists():
        return None
    sums: dict[str, str] = {}
    for number, line in enumerate(sums_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise BenchmarkDataError(f"{sums_path}, line {number}: expected '<sha256>  <file>', got {line!r}")
        sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def verify_checksum(path: Path) -> None:
    """If `path`'s folder holds a SHA256SUMS, the file must be listed there and match it.

    Folders without SHA256SUMS (user data, synthetic probes) are not checked.
    """
    sums = read_checksums(path.parent)
    if sums is None:
        return
    if path.name not in sums:
        raise ChecksumError(f"{path}: not listed in {path.parent / CHECKSUM_FILE}")
    actual = file_sha256(path)
    if actual != sums[path.name]:
        raise ChecksumError(
            f"{path}: SHA256 mismatch (expected {sums[path.name]}, actual {actual}); "
            "the file differs from the copy the project ships"
        )


# ---------------------------------------------------------------------------------------------
# Reading annotation files


def require_root(root: Path | None, benchmark: str) -> Path:
    if root is None:
        raise ValueError(f"{benchmark}: a root folder with the benchmark's files is required")
    return Path(root)


def require_file(path: Path, where_to_get_it: str) -> Path:
    if not path.is_file():
        raise MissingBenchmarkFileError(f"{path} not found. {where_to_get_it}")
    return path


def read_json(path: Path, where_to_get_it: str) -> Any:
    """Parse a JSON file after the existence and checksum checks; errors name the file."""
    require_file(path, where_to_get_it)
    verify_checksum(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise BenchmarkDataError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BenchmarkDataError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None


def field_of(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`record[key]`, checked to be of `kind` (bool never passes as a number); errors name `where`."""
    if not isinstance(record, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise BenchmarkDataError(f"{where}: missing field {key!r}")
    value = record[key]
    numeric = kind in (int, float) or (isinstance(kind, tuple) and set(kind) <= {int, float})
    if not isinstance(value, kind) or (numeric and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchmarkDataError(f"{where}: field {key!r} should be {names}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchmarkDataError(f"{where}: field {key!r} is not finite: {value!r}")
    return value


def check_images_exist(cases: Sequence[BenchmarkCase], benchmark: str, where_to_get_it: str) -> None:
    """Fail before any model runs if an image is missing; the message names the cases."""
    missing: dict[Path, str] = {}
    checked: set[Path] = set()
    for case in cases:
        for image in case.images:
            if image.path not in checked:
                checked.add(image.path)
                if not image.path.is_file():
                    missing[image.path] = case.case_id
    if missing:
        examples = "; ".join(f"case {cid!r}: {path}" for path, cid in list(missing.items())[:5])
        raise MissingBenchmarkFileError(
            f"{benchmark}: {len(missing)} image file(s) missing, e.g. {examples}. {where_to_get_it}"
        )


def check_unique_ids(cases: Sequence[BenchmarkCase], benchmark: str) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise BenchmarkDataError(f"{benchmark}: duplicate test case id {case.case_id!r}")
        seen.add(case.case_id)
    if not cases:
        raise BenchmarkDataError(f"{benchmark}: the annotation files hold no test case")


# ---------------------------------------------------------------------------------------------
# Images and test cases


@dataclass(frozen=True)
class ImageRef:
    """An image file and an optional crop box `(left, top, right, bottom)` in pixels.

    The crop uses Pillow's semantics on purpose (ARO `aro_datasets.py` crops with `Image.crop`):
    float coordinates are rounded and parts of the box outside the image come out zero-filled.
    """

    path: Path
    box: tuple[float, float, float, float] | None = None

    def load(self) -> Image.Image:
        try:
            with Image.open(self.path) as opened:
                image = opened.convert("RGB")  # RGBA and palette PNGs (Winoground) become RGB
        except UnidentifiedImageError as exc:
            raise BenchmarkDataError(f"{self.path}: not an image Pillow can read") from exc
        if self.box is not None:
            image = image.crop(self.box)
        image.info["path"] = str(self.path)
        image.info["box"] = self.box
        return image


@dataclass(frozen=True)
class BenchmarkCase:
    """One test case: every image is scored against every text option.

    `scores[k][j]` is the score of image k with text j; `meta` holds what the metric groups by
    (relation name, attribute pair, instrument, tags, seed, ...).
    """

    case_id: str
    images: tuple[ImageRef, ...]
    texts: tuple[str, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.images), len(self.texts))


# Pairs per `PairScorer.score` call. A model scorer encodes each distinct image and text of a call once
# and holds their encodings for the call, so a call should hold as many pairs as memory allows: 4,096
# pairs cover every ~1,000-case probe set but the Order sets in one call (ARO VG-R at paper scale: ~2,000
# crops, ~1.6 GB of ViT-B tokens in fp32).
PAIRS_PER_CALL = 4096


def score_cases(
    cases: Sequence[BenchmarkCase],
    scorer: PairScorer,
    *,
    benchmark: str,
    batch_size: int = PAIRS_PER_CALL,
) -> dict[str, np.ndarray]:
    """Score every case; returns `{case_id: float64 array of shape case.shape}`.

    Each distinct (image, text) pair is sent once (Order options often repeat the original, and
    several seeds share pairs). The pairs go grouped by image (images in order of first appearance)
    in calls of at most `batch_size` pairs, and an image's pairs are split over calls only when they
    alone exceed `batch_size`: each image is loaded once, and a scorer that encodes the distinct
    images and texts of a call once (every model scorer does) encodes each image once per benchmark,
    and each text once per call; within `run_probe_suite` the model scorers keep their encodings across
    calls, benchmarks and scorers (`nas.evaluation.encoding_cache`), so each is encoded once per model. A NaN, or a result of the wrong shape, raises ScoreError naming the
    benchmark, the scorer and the first case that uses the pair.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    by_image: dict[ImageRef, dict[str, str]] = {}  # image -> {text: first case using the pair}
    for case in cases:
        for image in case.images:
            texts = by_image.setdefault(image, {})
            for text in case.texts:
                texts.setdefault(text, case.case_id)
    index: dict[tuple[ImageRef, str], int] = {}
    first_case: list[str] = []
    calls: list[tuple[int, int]] = []  # [start, stop) of each call over the pairs in `index` order
    start = 0
    for image, texts in by_image.items():
        if len(first_case) > start and len(first_case) + len(texts) - start > batch_size:
            calls.append((start, len(first_case)))
            start = len(first_case)
        for text, case_id in texts.items():
            index[(image, text)] = len(first_case)
            first_case.append(case_id)
        while len(first_case) - start > batch_size:  # one image with more pairs than a call holds
            calls.append((start, start + batch_size))
            start += batch_size
    if len(first_case) > start:
        calls.append((start, len(first_case)))
    pairs = list(index)
    values = np.empty(len(pairs), dtype=np.float64)
    for start, stop in calls:
        batch = pairs[start:stop]
        loaded: dict[ImageRef, Image.Image] = {}
        for ref, _ in batch:
            if ref not in loaded:
                loaded[ref] = ref.load()
        raw = scorer.score([loaded[ref] for ref, _ in batch], [text for _, text in batch])
        out = np.asarray(raw, dtype=np.float64)
        if out.shape != (len(batch),):
            raise ScoreError(
                f"{benchmark}: scorer {scorer.name!r} returned shape {out.shape} for {len(batch)} pairs"
            )
        nan = np.flatnonzero(np.isnan(out))
        if nan.size:
            ref, text = batch[nan[0]]
            raise ScoreError(
                f"{benchmark}: scorer {scorer.name!r} returned NaN for case {first_case[start + nan[0]]!r} "
                f"(image {ref.path.name}, text {text!r})"
            )
        values[start:stop] = out
    return {
        case.case_id: values[[index[(image, text)] for image in case.images for text in case.texts]].reshape(
            case.shape
        )
        for case in cases
    }


def check_scores_match(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], *, benchmark: str, source: str
) -> dict[str, np.ndarray]:
    """Scores from a file must cover exactly the loaded cases, with the right shapes, no NaN."""
    wanted = {case.case_id for case in cases}
    missing = [case.case_id for case in cases if case.case_id not in scores]
    extra = [cid for cid in scores if cid not in wanted]
    if missing or extra:
        raise ScoreError(
            f"{benchmark}: {source} does not match the loaded test cases: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})"
        )
    checked = {}
    for case in cases:
        value = np.asarray(scores[case.case_id], dtype=np.float64)
        if value.shape != case.shape:
            raise ScoreError(
                f"{benchmark}: {source}, case {case.case_id!r}: expected scores of shape {case.shape}, "
                f"got {value.shape}"
            )
        if np.isnan(value).any():
            raise ScoreError(f"{benchmark}: {source}, case {case.case_id!r}: NaN score")
        checked[case.case_id] = value
    return checked


def percent(count: float, total: int) -> float:
    if total <= 0:
        raise ValueError("percent of an empty set")
    return 100.0 * float(count) / total


def mean(values: Iterable[float]) -> float:
    values = list(values)
    if not values:
        raise ValueError("mean of an empty list")
    return float(sum(values) / len(values))


@dataclass(frozen=True)
class Line:
    """Where a score-file entry sits; `str()` gives "<file>, line <n>" for messages."""

    file: str
    number: int

    def __str__(self) -> str:
        return f"{self.file}, line {self.number}"

    def error(self, reason: str) -> ScoreFileError:
        return ScoreFileError(self.file, self.number, reason)


class _NonFinite(ValueError):
    pass


def _refuse_constant(token: str) -> float:
    raise _NonFinite(token)  # NaN, Infinity, -Infinity: Python's json accepts them, JSON does not


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999 overflows to inf
        raise _NonFinite(text)
    return value


def parse_json_line(text: str, where: Line) -> Any:
    """One JSON value; invalid JSON and non-finite numbers (NaN, ±Infinity, overflowing literals)
    are a ScoreFileError naming the file and line."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise where.error(
            f"non-finite number {exc.args[0]} (NaN and ±Infinity are refused: a score must be finite)"
        ) from None
    except json.JSONDecodeError as exc:
        raise where.error(f"not valid JSON: {exc.msg} (column {exc.colno})") from exc


def score_file_lines(path: str | Path, *, first_line: int = 1) -> Iterable[tuple[Line, str]]:
    """`(where, text)` for every non-blank line of a score file from line `first_line` on, each
    decoded as UTF-8 on its own, so that a bad byte is reported with its line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score file {path} not found")
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if number < first_line:
            continue
        where = Line(str(path), number)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise where.error(
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            ) from None
        if text.strip():
            yield where, text


def iter_jsonl(path: str | Path, *, first_line: int = 1) -> Iterable[tuple[Line, Any]]:
    """`(where, entry)` for every non-blank line of a JSONL score file from line `first_line` on;
    `where.error(reason)` builds the ScoreFileError naming the file and line."""
    for where, text in score_file_lines(path, first_line=first_line):
        yield where, parse_json_line(text, where)


def finite_score(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def labelled_score(entry: Any, pattern: Any, expected: str, where: Line) -> tuple[Any, float]:
    """`(label match, score)` of a `{"label", "score"}` line (the official Winoground and FGE score
    formats); a label not matching `pattern` or a score that is not a finite number is a
    ScoreFileError."""
    if not isinstance(entry, dict):
        raise where.error(f"expected a JSON object, got {type(entry).__name__}")
    label = entry.get("label")
    match = pattern.match(label) if isinstance(label, str) else None
    if match is None:
        raise where.error(f"expected a label {expected}, got {label!r}")
    score = entry.get("score")
    if not finite_score(score):
        raise where.error(f"score for {label} is not a finite number: {score!r}")
    return match, float(score)
