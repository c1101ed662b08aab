"""What a training run *is*: its params, the harness code, its input data and its init checkpoint.

The identity keys the run's checkpoint folder and travels inside every checkpoint (`fit(identity=...)`),
so a run whose params, code, data or starting weights changed never resumes or "finishes" from a
checkpoint of the old one: a model-code change retrains, and a foreign checkpoint is refused by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nas.config.stages import code_digest, config_digest

_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run identity: input file {path} does not exist")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_digest(paths: Iterable[str | Path]) -> str:
    """sha256 over several files (names and contents, in the order given)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + b"\0" + file_digest(path).encode())
    return digest.hexdigest()


def run_identity(
    resolved: Mapping[str, Any],
    *,
    data_files: Iterable[str | Path] = (),
    init_checkpoint: str | Path | None = None,
) -> dict[str, str]:
    """{"config", "code", "data", "init"} of a run: `resolved` is the config it reads (hashed with the
    code, `config_digest`), `data_files` the annotation/shard files it trains on, `init_checkpoint` the
    weights it starts from."""
    return {
        "config": config_digest(dict(resolved)),
        "code": code_digest()[:16],
        "data": files_digest(data_files)[:16],
        "init": "none" if init_checkpoint is None else file_digest(init_checkpoint)[:16],
    }


def identity_digest(identity: Mapping[str, str]) -> str:
    """The 12-hex folder name of a run identity."""
    return hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()[:12]
