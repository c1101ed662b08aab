"""ALBEF-style pair lists from published files: local image paths, one merged training list.

ALBEF's released pretraining JSON (`json_pretrain.zip`) names images by the absolute paths of the
authors' cluster. `merge_pair_lists` rewrites each path to the local download layout with
*anchor* rules: the first anchor found in a path (e.g. "/train2014/") is replaced, together with
everything before it, by the local folder ("coco/train2014/"), so the rule holds whatever the
original prefix was. A path no rule matches is an error naming the file and record; a rewritten
image that is missing on disk is counted, and is an error unless `skip_missing` (a counted skip).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nas.config.data import DEFAULT_ANCHORS  # the `data.download.path_anchors` default, re-exported
from nas.jsonfile import read_json_file


class PairListError(ValueError):
    """A pair list that cannot be used: unreadable, malformed record, or an unmapped image path."""


def rewrite_path(path: str, anchors: Mapping[str, str]) -> str | None:
    """`path` in the local layout, or None when no anchor occurs in it (the first anchor wins)."""
    for anchor, local in anchors.items():
        at = path.find(anchor)
        if at >= 0:
            return local + path[at + len(anchor) :]
    return None


def merge_pair_lists(
    sources: Sequence[str | Path],
    out: str | Path,
    root: str | Path,
    anchors: Mapping[str, str] = DEFAULT_ANCHORS,
    *,
    skip_missing: bool = False,
) -> dict[str, Any]:
    """Write one `[{"image", "caption"}]` list to `out` from the ALBEF lists `sources` (paths under
    `root`), with image paths relative to `root`. A record whose caption is a list (COCO's five
    captions) becomes one pair per caption, as ALBEF's dataset does. Returns counts per source."""
    root, out = Path(root), Path(out)
    merged: list[dict[str, str]] = []
    counts: dict[str, Any] = {}
    for source in sources:
        path = root / source
        records = read_json_file(path, expect=list, missing="fetch `albef_json` first", error=PairListError)
        pairs = missing = 0
        for k, record in enumerate(records):
            if not isinstance(record, dict) or "image" not in record or "caption" not in record:
                raise PairListError(f"{path}: record {k} needs 'image' and 'caption', got {record!r:.200}")
            local = rewrite_path(str(record["image"]), anchors)
            if local is None:
                raise PairListError(
                    f"{path}: record {k}: no anchor of {list(anchors)} in image path {record['image']!r} "
                    "(add one to data.download.path_anchors)"
                )
            if not (root / local).is_file():
                missing += 1
                if not skip_missing:
                    raise FileNotFoundError(
                        f"{path}: record {k}: image {root / local} is missing (set data.skip_bad_images "
                        "to skip and count such records)"
                    )
                continue
            captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
            for caption in captions:
                merged.append({"image": local, "caption": str(caption)})
                pairs += 1
        counts[str(source)] = {"records": len(records), "pairs": pairs, "missing_images": missing}
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(merged))
    os.replace(part, out)  # complete or absent, never half-written
    return {"pairs": len(merged), "sources": counts}
