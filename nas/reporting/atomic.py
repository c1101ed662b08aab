"""Figures, tables and copies the report writes, made atomic through `nas.atomic`.

Each file goes to a temporary file in the same folder, is fsync'd and `os.replace`d onto its name (then
the folder is fsync'd): a reader sees the old file or the whole new one, never half a figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """`fig.savefig(path, **savefig_kwargs)`, atomically. The format comes from the suffix as savefig
    infers it (or `format=`), so the bytes are those savefig would write to `path`."""
    from nas.atomic import atomic_write

    path = Path(path)
    fmt = savefig_kwargs.pop("format", None) or path.suffix[1:].lower() or None
    atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, **savefig_kwargs))
    return path


def write_text(path: str | Path, text: str) -> Path:
    """`text` (UTF-8) to `path`, atomically."""
    from nas.atomic import atomic_write_text

    atomic_write_text(path, text)
    return Path(path)


def copy_file(source: str | Path, path: str | Path) -> Path:
    """A byte copy of `source` at `path`, atomically."""
    from nas.atomic import atomic_copy

    atomic_copy(source, path)
    return Path(path)
