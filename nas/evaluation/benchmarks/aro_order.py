"""ARO COCO-Order and Flickr30k-Order: loader of the BLIP Karpathy JSONs and official scoring.

BENCHMARKS.md §1.2-§1.6. Every raw caption of every entry (file order, then caption order) is one
test case: the entry's image and the options `[P(c), P(f1(c)), ..., P(f4(c))]` (`text.py`).
Correct iff the original scores >= every perturbation: a tie counts as RIGHT (the official argmax
returns index 0 on a tie). Reported as "Precision@1", mean +- sd over a list of seeds (§1.4 [D]).

RNG modes (§1.4 [D]):
- "dedicated" (default): a `np.random.RandomState(seed)` for f1-f2 and a `random.Random(seed)`
  for f3-f4; the global generators are left alone.
- "global": seeds Python `random` and NumPy's global state with the seed (as `main_aro.py` does
  once) and draws from them, for a bit-exact reproduction of the official script. With nothing
  else drawing in between, both modes give identical options for the same seed.
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nas.evaluation.benchmarks.common import (
    BenchmarkCase,
    BenchmarkDataError,
    ImageRef,
    check_images_exist,
    check_unique_ids,
    field_of,
    percent,
    read_json,
    require_root,
)
from nas.evaluation.benchmarks.text import Tagger, Tokenizer, nltk_tokenizer, order_options, spacy_tagger

Dataset = Literal["coco", "flickr30k"]
CASE_ID = re.compile(r"^seed(-?\d+)/(\d+)_(\d+)$")  # seed<s>/<entry>_<caption> (load_order)

ANNOTATION_HINTS = {
    "coco": (
        "Download BLIP's Karpathy split: https://storage.googleapis.com/sfr-vision-language-research/"
        "datasets/coco_karpathy_test.json (val: coco_karpathy_val.json) into the root (BENCHMARKS.md §1.1)."
    ),
    "flickr30k": (
        "Download https://storage.googleapis.com/sfr-vision-language-research/datasets/flickr30k_test.json "
        "(val: flickr30k_val.json) into the root (BENCHMARKS.md §1.1)."
    ),
}
IMAGE_HINTS = {
    "coco": (
        "COCO 2014 images: every Karpathy test image is in val2014 "
        "(http://images.cocodataset.org/zips/val2014.zip); unzip so that <root>/val2014/*.jpg exists."
    ),
    "flickr30k": (
        "Flickr30k images are manual: request access at https://forms.illinois.edu/sec/229675 and place "
        "them so that <root>/flickr30k-images/*.jpg exists."
    ),
}


@dataclass
class OrderConfig:
    """COCO-/Flickr30k-Order knobs (BENCHMARKS.md §1.3-§1.4)."""

    coco_file: str = "coco_karpathy_test.json"
    flickr_file: str = "flickr30k_test.json"
    # [D] report mean +- sd over 5 seeds (the authors average 5 runs, issue #6; their seeds are
    # unknown; main_aro.py's default --seed is 1).
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    rng_mode: Literal["dedicated", "global"] = "dedicated"
    max_words: int = 30  # pre_caption max_words for the Order sets (§1.5)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if self.rng_mode not in ("dedicated", "global"):
            raise ValueError(f"rng_mode must be 'dedicated' or 'global', got {self.rng_mode!r}")
        if self.max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {self.max_words}")


def _read_entries(path: Path, dataset: Dataset) -> list[tuple[str, list[str]]]:
    entries = read_json(path, ANNOTATION_HINTS[dataset])
    if not isinstance(entries, list):
        raise BenchmarkDataError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    out = []
    for index, entry in enumerate(entries):
        where = f"{path}, entry {index}"
        image = field_of(entry, "image", str, where)
        captions = field_of(entry, "caption", list, where)  # a str here means a train-split file
        if not all(isinstance(c, str) for c in captions):
            raise BenchmarkDataError(f"{where}: 'caption' should be a list of strings (Karpathy test format)")
        out.append((image, captions))
    return out


def load_order(
    root: Path | None,
    dataset: Dataset,
    config: OrderConfig | None = None,
    *,
    tagger: Tagger | None = None,
    tokenizer: Tokenizer | None = None,
    check_images: bool = True,
) -> list[BenchmarkCase]:
    """All test cases for every seed of `config.seeds`; case id `seed<s>/<entry>_<caption>`."""
    config = config or OrderConfig()
    if dataset not in ANNOTATION_HINTS:
        raise ValueError(f"dataset must be 'coco' or 'flickr30k', got {dataset!r}")
    root = require_root(root, f"{dataset}_order")
    path = root / (config.coco_file if dataset == "coco" else config.flickr_file)
    entries = _read_entries(path, dataset)
    tagger = tagger or spacy_tagger()
    tokenizer = tokenizer or nltk_tokenizer()
    # Tagging and tokenising are deterministic: do them once per distinct caption, not per seed.
    analysed: dict[str, tuple[list[tuple[str, str]], list[str]]] = {}
    for _, captions in entries:
        for caption in captions:
            if caption not in analysed:
                analysed[caption] = (list(tagger(caption)), list(tokenizer(caption)))
    cases = []
    for seed in config.seeds:
        if config.rng_mode == "global":
            random.seed(seed)
            np.random.seed(seed)
            permutations, shuffles = np.random, random
        else:
            permutations, shuffles = np.random.RandomState(seed), random.Random(seed)
        for entry_index, (image, captions) in enumerate(entries):
            for caption_index, caption in enumerate(captions):
                tagged, tokens = analysed[caption]
                options = order_options(caption, tagged, tokens, permutations, shuffles, config.max_words)
                cases.append(
                    BenchmarkCase(
                        case_id=f"seed{seed}/{entry_index}_{caption_index}",
                        images=(ImageRef(root / image),),
                        texts=options,
                        meta={"seed": seed, "entry": entry_index, "caption_index": caption_index},
                    )
                )
    name = f"{dataset}_order"
    check_unique_ids(cases, name)
    if check_images:
        check_images_exist(cases, name, IMAGE_HINTS[dataset])
    return cases


def load_coco_order(root: Path, config: OrderConfig | None = None, **options: Any) -> list[BenchmarkCase]:
    return load_order(root, "coco", config, **options)


def load_flickr30k_order(
    root: Path, config: OrderConfig | None = None, **options: Any
) -> list[BenchmarkCase]:
    return load_order(root, "flickr30k", config, **options)


def original_first(case_scores: np.ndarray) -> bool:
    """One Order case, scores `[[s(original), s(f1), ..., s(f4)]]`: right iff the original scores >=
    every perturbation (== "the first argmax is option 0": a tie counts as RIGHT, fully, as in the
    official script)."""
    row = case_scores[0]
    return bool(row[0] >= row[1:].max())


def order_outcomes(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: OrderConfig
) -> list[float] | None:
    """Per case (every seed's copy of a caption is its own case), in case order: 1.0 if
    `original_first`, else 0.0 (a tie is a whole 1.0: the official rule counts it right, not as a
    fraction). Their mean is `precision_at_1` as a fraction, because every seed holds the same number of
    cases (`load_order` perturbs the same captions for each seed). None if the seeds hold different
    numbers of cases (only a hand-edited score file can), where no per-case mean equals the figure."""
    counts = {seed: 0 for seed in config.seeds}
    for case in cases:
        counts[case.meta["seed"]] += 1
    if len(set(counts.values())) != 1:
        return None
    return [float(original_first(scores[case.case_id])) for case in cases]


def order_metrics(
    cases: Sequence[BenchmarkCase], scores: Mapping[str, np.ndarray], config: OrderConfig
) -> dict[str, Any]:
    """Precision@1 per seed (ties right), and its mean and sample sd (ddof 1) over the seeds."""
    per_seed: dict[int, list[int]] = {seed: [0, 0, 0] for seed in config.seeds}  # n, correct, ties
    for case in cases:
        row = scores[case.case_id][0]
        tally = per_seed[case.meta["seed"]]
        tally[0] += 1
        tally[1] += int(original_first(scores[case.case_id]))
        tally[2] += int(row[0] == row[1:].max())
    table = {
        str(seed): {"precision_at_1": percent(correct, n), "n_cases": n, "n_ties": ties}
        for seed, (n, correct, ties) in per_seed.items()
    }
    accuracies = [row["precision_at_1"] for row in table.values()]
    return {
        "precision_at_1": statistics.fmean(accuracies),
        "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
        "seeds": list(config.seeds),
        "rng_mode": config.rng_mode,
        "per_seed": table,
    }
