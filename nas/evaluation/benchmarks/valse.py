"""VALSE: loader of the 11 official JSONs (shipped) and the paper's metrics.

BENCHMARKS.md §3. Each file is `{sample_id: record}`; ids collide across files, so a case is keyed
`<file stem>/<sample id>`. The official valid-sample filter keeps `mturk["caption"] >= 2`
(7,702 of 8,782; it also removes the 24 caption == foil records) and is on by default [D].

Per instrument, on the kept samples (scores `[[s(caption), s(foil)]]`):
- acc_r: % with s(caption) > s(foil), strict (a tie is wrong). Any scorer.
- AUROC of the score, captions positive and foils negative; ties get half credit.
- With `match_threshold` set (a binary ITM head: 0.5 on P(match), 0 on a logit difference):
  p_c = % captions that fit (s > t, strict), p_f = % foils detected (s <= t: a tie is detected),
  acc = (p_c + p_f) / 2, min(p_c, p_f). Leave it None for cosine or likelihood scorers.
Averages, each labelled [D]: macro over the instruments (the paper's "Avg."), micro over all kept
samples (FGE's "overall"), and piece means (Counting = mean of 3, Actions and Coreference of 2).

Score files: besides the harness format, FGE's per-pair JSONL (`{"label": "<n>_c"|"<n>_f",
"score", "instrument", "piece", "type", "id"}`) is read and written; FGE's `n` is a running index
over all records of the 11 files taken in file-name order (checked against FGE's released files).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.evaluation.benchmarks.common import (
    BenchmarkCase,
    BenchmarkDataError,
    ImageRef,
    ScoreError,
    ScoreFileError,
    check_images_exist,
    check_unique_ids,
    field_of,
    iter_jsonl,
    labelled_score,
    mean,
    percent,
    read_json,
    resource_path,
)

# stem -> piece, in the column order of the paper, FGE and CE (§3.4).
INSTRUMENT_PIECES = {
    "existence": "Existence",
    "plurals": "Plurality",
    "counting-hard": "Counting",
    "counting-small-quant": "Counting",
    "counting-adversarial": "Counting",
    "relations": "Spatial relations",
    "action-replacement": "Actions",
    "actant-swap": "Actions",
    "coreference-standard": "Coreference",
    "coreference-hard": "Coreference",
    "foil-it": "FOIL-it!",
}
VALSE_FILES = tuple(INSTRUMENT_PIECES)
MIN_CAPTION_VOTES = 2  # official filter: at least 2 of 3 annotators chose the caption (§3.3)

IMAGES_HINT = (
    "VALSE ships no images. Put them in one flat folder (default <root>/images/) or map each "
    "record's `dataset` (image_dirs_by_dataset) or image-file prefix (image_dirs_by_prefix) to a "
    "folder. Sources: visual7w -> "
    "http://vision.stanford.edu/yukezhu/visual7w_images.zip; coco2017/coco_2017 -> COCO val2017 "
    "(http://images.cocodataset.org/zips/val2017.zip); SWiG -> SWiG/imSitu images_512; "
    "VisDial_v1.0 -> COCO train2014 + val2014 (coreference-standard) and VisDial v1.0 val images "
    "(coreference-hard); FOIL dataset -> COCO val2014 (BENCHMARKS.md §3.1)."
)
FGE_LABEL_PATTERN = re.compile(r"^(\d+)_([cf])$")


@dataclass
class ValseConfig:
    """VALSE files, image layout, filter and ITM threshold (BENCHMARKS.md §3)."""

    annotation_dir: str | None = None  # None = the copy shipped in nas/resources/benchmarks/valse
    files: tuple[str, ...] = VALSE_FILES
    image_dir: str = "images"  # [D] one flat folder, as FGE does (relative to the root)
    image_dirs_by_dataset: dict[str, str] = field(default_factory=dict)  # optional `dataset` -> folder
    # Optional `image_file` prefix -> folder, before `image_dirs_by_dataset` (the longest prefix wins):
    # one `dataset` can span folders, e.g. VisDial_v1.0 = COCO_train2014_*, COCO_val2014_* and
    # VisualDialog_val2018_* images (coreference-standard / -hard).
    image_dirs_by_prefix: dict[str, str] = field(default_factory=dict)
    valid_only: bool = True  # [D] official filter on; switching it off is explicit and reported
    # None: no p_c/p_f. 0.5 for an ITM match probability (the VALSE paper's binary head rule).
    match_threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("files must not be empty")
        if len(set(self.files)) != len(self.files):
            raise ValueError(f"files must be distinct, got {self.files}")
        if self.match_threshold is not None and not math.isfinite(self.match_threshold):
            raise ValueError(f"match_threshold must be finite, got {self.match_threshold}")


def annotation_folder(config: ValseConfig) -> Path:
    return Path(config.annotation_dir) if config.annotation_dir else resource_path("valse")


def image_folder(config: ValseConfig, dataset: str, image_file: str) -> str:
    """The folder (relative to the root) of one record's image: the longest matching
    `image_dirs_by_prefix` key, else `image_dirs_by_dataset[dataset]`, else `image_dir`."""
    prefixes = [p for p in config.image_dirs_by_prefix if image_file.startswith(p)]
    if prefixes:
        return config.image_dirs_by_prefix[max(prefixes, key=len)]
    return config.image_dirs_by_dataset.get(dataset, config.image_dir)


def load_valse(
    root: Path | None, config: ValseConfig | None = None, *, check_images: bool = True
) -> list[BenchmarkCase]:
    """Test cases of every file in `config.files` (file order, then record order)."""
    config = config or ValseConfig()
    if root is None and check_images:
        raise ValueError("VALSE: an image root is needed to score images (root=None only for score files)")
    folder = annotation_folder(config)
    hint = "The 11 VALSE JSONs ship under nas/resources/benchmarks/valse/ (https://github.com/Heidelberg-NLP/VALSE)."
    data = {stem: read_json(folder / f"{stem}.json", hint) for stem in config.files}
    # FGE's running id: all records of the files, taken in file-name order.
    offsets, running = {}, 0
    for stem in sorted(config.files):
        offsets[stem] = running
        running += len(data[stem]) if isinstance(data[stem], dict) else 0
    cases = []
    for stem in config.files:
        path = folder / f"{stem}.json"
        if not isinstance(data[stem], dict):
            raise BenchmarkDataError(f"{path}: expected a JSON object {{sample_id: record}}")
        for position, (sample_id, record) in enumerate(data[stem].items()):
            where = f"{path}, sample {sample_id!r}"
            votes = field_of(field_of(record, "mturk", dict, where), "caption", int, f"{where}, mturk")
            caption = field_of(record, "caption", str, where)
            foil = field_of(record, "foil", str, where)
            image_file = field_of(record, "image_file", str, where)
            dataset = field_of(record, "dataset", str, where)
            piece = field_of(record, "linguistic_phenomena", str, where)
            if config.valid_only and votes < MIN_CAPTION_VOTES:
                continue
            image_dir = image_folder(config, dataset, image_file)
            cases.append(
                BenchmarkCase(
                    case_id=f"{stem}/{sample_id}",
                    images=(ImageRef(Path(root or ".") / image_dir / image_file),),
                    texts=(caption, foil),
                    meta={
                        "instrument": stem,
                        "sample_id": sample_id,
                        "phenomenon": piece,
                        "position": offsets[stem] + position,
                        "valid": votes >= MIN_CAPTION_VOTES,
                    },
                )
            )
    check_unique_ids(cases, "valse")
    if check_images:
        check_images_exist(cases, "valse", IMAGES_HINT)
    return cases


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve in percent (scikit-learn's roc_auc_score: tied scores count one half, the
    Mann-Whitney U statistic the VALSE/FGE evaluation reports)."""
    from sklearn.metrics import roc_auc_score

    positives, negatives = np.asarray(positives, float), np.asarray(negatives, float)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    labels = np.concatenate([np.ones(positives.size), np.zeros(negatives.size)])
    return 100.0 * float(roc_auc_score(labels, np.concatenate([positives, negatives])))


def caption_wins(captions: np.ndarray, foils: np.ndarray) -> np.ndarray:
    """The pairwise rule behind acc_r, elementwise: the caption scores strictly above its foil (a tie is
    wrong)."""
    return np.asarray(captions) > np.asarray(foils)


def pairwise_outcomes(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: ValseConfig
) -> list[float]:
    """Per sample, in case order: 1.0 if `caption_wins`, else 0.0. Their mean is the micro acc_r (over
    all kept samples) as a fraction; the macro acc_r weights instruments, not samples."""
    rows = np.array([scores[case.case_id][0] for case in cases], dtype=np.float64).reshape(-1, 2)
    return caption_wins(rows[:, 0], rows[:, 1]).astype(np.float64).tolist()


def _instrument_metrics(captions: np.ndarray, foils: np.ndarray, threshold: float | None) -> dict[str, Any]:
    n = captions.size
    out: dict[str, Any] = {
        "n": n,
        "acc_r": percent(np.sum(caption_wins(captions, foils)), n),
        "n_ties": int(np.sum(captions == foils)),
        "auroc": auroc(captions, foils),
    }
    if threshold is not None:
        p_c = percent(np.sum(captions > threshold), n)  # caption fits: strict
        p_f = percent(np.sum(foils <= threshold), n)  # foil detected: a tie counts as detected
        out.update({"p_c": p_c, "p_f": p_f, "acc": (p_c + p_f) / 2, "min_p_c_p_f": min(p_c, p_f)})
    return out


def valse_metrics(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: ValseConfig
) -> dict[str, Any]:
    by_instrument: dict[str, list[np.ndarray]] = {stem: [] for stem in config.files}
    for case in cases:
        by_instrument[case.meta["instrument"]].append(scores[case.case_id][0])
    present = {stem: np.array(rows) for stem, rows in by_instrument.items() if rows}
    instruments = {
        stem: _instrument_metrics(rows[:, 0], rows[:, 1], config.match_threshold)
        for stem, rows in present.items()
    }
    metric_names = [key for key in next(iter(instruments.values())) if key not in ("n", "n_ties")]
    pieces: dict[str, dict[str, Any]] = {}
    for stem in instruments:
        pieces.setdefault(INSTRUMENT_PIECES.get(stem, stem), {"instruments": []})["instruments"].append(stem)
    for piece in pieces.values():
        for name in metric_names:
            piece[name] = mean(instruments[stem][name] for stem in piece["instruments"])
    pooled = np.concatenate(list(present.values()))
    return {
        "instruments": instruments,
        "pieces": pieces,
        "macro": {name: mean(row[name] for row in instruments.values()) for name in metric_names},
        "micro": _instrument_metrics(pooled[:, 0], pooled[:, 1], config.match_threshold),
        "n_instruments": len(instruments),
        "valid_only": config.valid_only,
        "match_threshold": config.match_threshold,
    }


# ---------------------------------------------------------------------------------------------
# FGE per-pair score files (§3.2)


def _require_official_files(cases: Sequence[BenchmarkCase]) -> None:
    # FGE's running id is only defined over the 11 official files, filtered or not.
    stems = {case.meta["instrument"] for case in cases}
    if stems != set(VALSE_FILES):
        raise ScoreError(
            f"FGE score files index the 11 official VALSE files; these cases cover {sorted(stems)}"
        )


def write_fge_scores(path: Path, cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray]) -> None:
    """FGE's format, plus the harness's `file` and `sample_id` so each line names its sample."""
    _require_official_files(cases)
    for case in cases:
        if not np.isfinite(np.asarray(scores[case.case_id], dtype=np.float64)).all():
            raise ScoreError(f"valse: sample {case.case_id!r} has a non-finite score")
    with open(path, "w", encoding="utf-8") as handle:
        for case in sorted(cases, key=lambda c: c.meta["position"]):  # FGE's line order
            for column, (suffix, kind) in enumerate((("c", "caption"), ("f", "foil"))):
                line = {
                    "label": f"{case.meta['position']}_{suffix}",
                    "score": float(scores[case.case_id][0, column]),
                    "instrument": case.meta["instrument"],
                    "piece": case.meta["phenomenon"],
                    "type": kind,
                    "id": case.meta["position"],
                    "file": case.meta["instrument"],
                    "sample_id": case.meta["sample_id"],
                }
                handle.write(json.dumps(line) + "\n")


_FGE_TYPES = {"c": "caption", "f": "foil"}


def read_fge_scores(path: Path, cases: Sequence[BenchmarkCase]) -> dict[str, np.ndarray]:
    """`{case_id: [[s_caption, s_foil]]}` from an FGE-format file, mapped through the running id.

    The label (`<n>_c` / `<n>_f`) decides; the optional fields `type`, `id` and `instrument` must
    agree with it (and, for the harness's extra `file` / `sample_id`, with the loaded sample), or
    the line is a ScoreFileError naming both values."""
    _require_official_files(cases)
    by_position = {case.meta["position"]: case for case in cases}
    found: dict[str, dict[str, float]] = {}
    first_line: dict[str, int] = {}
    for where, entry in iter_jsonl(path):
        match, score = labelled_score(entry, FGE_LABEL_PATTERN, "'<n>_c' or '<n>_f'", where)
        label = entry["label"]
        position, suffix = int(match.group(1)), match.group(2)
        if "type" in entry and entry["type"] != _FGE_TYPES[suffix]:
            raise where.error(
                f"label {label!r} is a {_FGE_TYPES[suffix]} score but 'type' is {entry['type']!r}"
            )
        if "id" in entry and (
            isinstance(entry["id"], bool) or not isinstance(entry["id"], int) or entry["id"] != position
        ):
            raise where.error(f"label {label!r} is sample {position} but 'id' is {entry['id']!r}")
        case = by_position.get(position)
        if case is None:
            raise where.error(f"id {position} is not a loaded VALSE sample (filtered out, or unknown)")
        for key, loaded in (
            ("instrument", case.meta["instrument"]),
            ("file", case.meta["instrument"]),
            ("sample_id", case.meta["sample_id"]),
        ):
            if key in entry and entry[key] != loaded:
                raise where.error(
                    f"label {label!r} is sample {position}, whose {key} is {loaded!r}, "
                    f"but the line says {entry[key]!r}"
                )
        first_line.setdefault(case.case_id, where.number)
        if suffix in found.setdefault(case.case_id, {}):
            raise where.error(f"duplicate label {label}")
        found[case.case_id][suffix] = score
    if not found:
        raise ScoreFileError(path, None, "no score lines")
    out = {}
    for case_id, pair in found.items():
        if set(pair) != {"c", "f"}:
            raise ScoreFileError(
                path,
                first_line[case_id],
                f"sample {case_id!r} lacks its {'caption' if 'c' not in pair else 'foil'} score",
            )
        out[case_id] = np.array([[pair["c"], pair["f"]]])
    return out
