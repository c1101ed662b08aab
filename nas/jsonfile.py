"""Reading a JSON file with errors that name it (bad input never fails deep inside a stage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_KINDS = {list: "list", dict: "object"}


def read_json_file(
    path: str | Path, *, expect: type | None = None, missing: str = "", error: type[Exception] = ValueError
) -> Any:
    """The parsed content of `path`. A missing file is FileNotFoundError (with the `missing` hint:
    where the file comes from); unparsable content or a top level other than `expect` (list or dict)
    raises `error` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing" + (f" ({missing})" if missing else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
    if expect is not None and not isinstance(data, expect):
        raise error(
            f"{path}: expected a JSON {_KINDS.get(expect, expect.__name__)}, got {type(data).__name__}"
        )
    return data
