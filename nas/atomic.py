"""Files a later stage reads, written so that a kill never leaves half of one: a temporary file in the
same folder, fsync'd, given an ordinary file's mode, `os.replace`d onto its name, the folder fsync'd.
A kill leaves at most a temporary file, which `remove_orphans` deletes at the next start.

No torch at import (the data generator and the report use it without loading torch): `atomic_save`, which
is `torch.save` through `atomic_write`, imports it when called.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Temporary files of an interrupted write: ours (`.<name>.<random>.tmp`) and Ignite's DiskSaver's
# (`tmp<random>`, from releases before this saver replaced it).
ORPHAN_PATTERNS = (re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$"), re.compile(r"^tmp[A-Za-z0-9_]{6,10}$"))


def _file_mode() -> int:
    """The mode an ordinary new file gets here (0o666 less the umask); mkstemp's 0o600 is not it."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Any) -> None:
    """Call `write(binary_handle)` on a temporary file in `path`'s folder, fsync it, give it the usual
    file mode, and `os.replace` it onto `path`: a reader sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through `atomic_write`: never a half-written file, durable once it returns."""
    import torch

    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_copy(source: str | Path, path: str | Path) -> None:
    """Copy `source` onto `path` through `atomic_write` (e.g. a stage's hand-off checkpoint)."""
    with open(source, "rb") as src:
        atomic_write(path, lambda handle: shutil.copyfileobj(src, handle, 1 << 20))


def atomic_link(source: str | Path, path: str | Path) -> None:
    """`path` becomes a hard link to `source` (the same bytes on disk once, e.g. a stage's hand-off
    checkpoint and the run's own last.pt), atomically; a byte copy where the file system has no hard
    links or the two paths are on different devices. Safe because no writer here changes a file in place:
    every write replaces the name with a new file, which leaves the other name's bytes as they were."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        atomic_copy(source, path)
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """A text file (configs, metrics) through `atomic_write`."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in `folder`; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if path.is_file() and any(pattern.match(path.name) for pattern in ORPHAN_PATTERNS):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.warning("removed %d temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed
