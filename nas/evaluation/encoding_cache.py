"""What a model scorer has already computed within one model's evaluation, keyed by input content.

The probe benchmarks repeat their inputs: the same image file sits in several benchmark folders (ARO,
Winoground, VALSE and SugarCrepe are drawn from the same test scenes), the same caption is an option
of several cases and benchmarks, and a benchmark's pairs arrive in several `score` calls
(`nas.evaluation.benchmarks.common.score_cases`). A scorer that holds an `EncodingCache` encodes each
distinct image and text once for as long as the cache lives, and scores each distinct pair once;
`nas.evaluation.probe_suite.run_probe_suite` gives the scorers of one model one cache for the whole
suite (`shared_encodings`) and drops it afterwards, since the encodings are only valid for the model's
weights at that time. Without one, a scorer uses a fresh cache per `score` call.

Keys: an image is the SHA-256 of its file's bytes and its crop box (the benchmark loaders record both in
`image.info`; a file that cannot be read is keyed by its path), or the digest of its pixels when it has
no file; a text is the string the tokenizer receives. Entries are dropped oldest-first past `max_bytes`
of tensors (then an input seen again is encoded again; the scores are the same).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB: every probe encoding of the tiny profile takes ~0.4 GB


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class EncodingCache:
    """Tables of encodings (`table` name -> {content key: value}) under one byte budget, with counts of
    hits and misses per table (`stats`)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: collections.OrderedDict[tuple[str, Hashable], tuple[Any, int]] = (
            collections.OrderedDict()
        )
        self._file_digests: dict[str, str | None] = {}
        self.stats: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._entries)

    # ---- keys ------------------------------------------------------------------------------------

    def _file_digest(self, path: str) -> str | None:
        if path not in self._file_digests:
            try:
                with open(path, "rb") as handle:
                    self._file_digests[path] = hashlib.sha256(handle.read()).hexdigest()
            except OSError:
                self._file_digests[path] = None
        return self._file_digests[path]

    def image_key(self, image: Image.Image) -> Hashable:
        """The image's content: (file digest, crop box), else its pixels' digest."""
        path = image.info.get("path")
        if path is not None:
            box = image.info.get("box")
            box = None if box is None else tuple(box)
            digest = self._file_digest(str(path))
            return ("file", digest, box) if digest is not None else ("path", str(path), box)
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
        return ("pixels", image.mode, image.size, digest)

    # ---- entries ---------------------------------------------------------------------------------

    def get(self, table: str, key: Hashable) -> Any | None:
        entry = self._entries.get((table, key))
        if entry is None:
            self.stats[f"{table} miss"] += 1
            return None
        self._entries.move_to_end((table, key))
        self.stats[f"{table} hit"] += 1
        return entry[0]

    def peek(self, table: str, key: Hashable) -> Any | None:
        """`table[key]` or None, not counted in `stats`."""
        entry = self._entries.get((table, key))
        return None if entry is None else entry[0]

    def put(self, table: str, key: Hashable, value: Any) -> None:
        size = _nbytes(value)
        old = self._entries.pop((table, key), None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[(table, key)] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self.stats["evicted"] += 1

    def values(self, table: str, keys: Sequence[Hashable], compute: Callable[[list[Hashable]], list[Any]]):
        """`[table[key] for key in keys]`, computing the missing ones with `compute(missing keys)` (one
        value per key, in order) and storing them. Values evicted while filling are still returned."""
        found: dict[Hashable, Any] = {}
        todo: dict[Hashable, None] = {}
        for key in keys:
            if key in found or key in todo:
                continue
            value = self.get(table, key)
            if value is None:
                todo[key] = None
            else:
                found[key] = value
        if todo:
            computed = compute(list(todo))
            if len(computed) != len(todo):
                raise RuntimeError(f"{table}: computed {len(computed)} values for {len(todo)} keys")
            for key, value in zip(todo, computed):
                self.put(table, key, value)
                found[key] = value
        return [found[key] for key in keys]


def cache_scope(scorer: Any) -> Hashable | None:
    """What a scorer's encodings depend on (scorers with equal scopes may share a cache), or None
    for a scorer that keeps no cache."""
    scope = getattr(scorer, "cache_scope", None)
    return scope() if callable(scope) else None


@contextmanager
def shared_encodings(scorers: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[dict]:
    """For the duration of the block, one `EncodingCache` per distinct `cache_scope` among `scorers`
    (the scorers of one model share it); each scorer's own cache is restored afterwards."""
    caches: dict[Hashable, EncodingCache] = {}
    previous = []
    for scorer in scorers:
        scope = cache_scope(scorer)
        if scope is None:
            continue
        previous.append((scorer, scorer.cache))
        scorer.cache = caches.setdefault(scope, EncodingCache(max_bytes))
    try:
        yield caches
    finally:
        for scorer, cache in previous:
            scorer.cache = cache
