"""Progress for every loop that can take more than a few seconds: a tqdm bar on a terminal, and plain
lines every `every_seconds` (default 10 s) where stdout is a file or a pipe (DVC, CI, `| tee`), so logs
never fill with carriage-return frames.

    for batch in progress(loader, total=len(loader), desc="evaluate[albef] encode"):
        ...

`NAS_PROGRESS=off` silences both forms; `NAS_PROGRESS=lines` forces plain lines on a terminal too.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
EVERY_SECONDS = 10.0


def mode() -> str:
    """'bar', 'lines' or 'off' for this process (NAS_PROGRESS, else whether stderr is a terminal)."""
    chosen = os.environ.get("NAS_PROGRESS", "").strip().lower()
    if chosen in ("off", "lines", "bar"):
        return chosen
    return "bar" if sys.stderr.isatty() else "lines"


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class LineProgress:
    """Plain progress lines: `desc: n/total (pct) elapsed m:ss, eta m:ss [postfix]`, at most one per
    `every_seconds`, and one at the end."""

    def __init__(
        self, total: int | None, desc: str, every_seconds: float = EVERY_SECONDS, stream: Any = None
    ):
        self.total, self.desc, self.every = total, desc, every_seconds
        self.stream = stream if stream is not None else sys.stdout
        self.n = 0
        self.start = self.last = time.monotonic()
        self.postfix = ""

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        if self.total:
            eta = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
            eta_text = _fmt_seconds(eta) if eta == eta else "?"
            head = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f} %)"
            text = f"{self.desc}: {head} elapsed {_fmt_seconds(elapsed)}, eta {eta_text}"
        else:
            text = f"{self.desc}: {self.n} elapsed {_fmt_seconds(elapsed)}"
        return text + (f" {self.postfix}" if self.postfix else "")

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.n += n
        if postfix:
            self.postfix = postfix
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.n and time.monotonic() - self.start >= self.every:  # short loops stay quiet
            print(self.line(), file=self.stream, flush=True)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate `iterable` with a progress display for this process's mode."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    chosen = mode()
    if chosen == "off":
        yield from iterable
        return
    if chosen == "bar":
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    bar = LineProgress(total, desc)
    try:
        for item in iterable:
            yield item
            bar.update()
    finally:
        bar.close()
