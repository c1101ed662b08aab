"""The `data` section of params.yaml: where the pairs live and how images/text are prepared."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nas.data.probes import ProbeConfig
from nas.data.synthetic import SyntheticConfig
from nas.data.transforms import TransformConfig


def _default_anchors() -> dict[str, str]:
    from nas.data.pair_lists import DEFAULT_ANCHORS

    return dict(DEFAULT_ANCHORS)


@dataclass
class DownloadConfig:
    """`data.download`: what the `data` stage fetches with `source: files` (nas/data/download.py)."""

    # Catalogue groups, sets ("pretrain", "benchmarks", "all") or single keys (nas/data/catalog.py).
    selection: tuple[str, ...] = ("pretrain", "benchmarks")
    dry_run: bool = False  # list what would be fetched, from where, and the disk it needs; fetch nothing
    retries: int = 3
    timeout: float = 60.0  # seconds per HTTP request
    # img2dataset for the URL-list corpora (CC3M, SBU); false: print the commands and stop.
    run_img2dataset: bool = True
    img2dataset_image_size: int = 512
    img2dataset_processes: int = 16
    img2dataset_threads: int = 64
    # ALBEF pair lists merged into `data.train_file`, image paths rewritten by anchors
    # (nas/data/pair_lists.py); CC3M and SBU come from `data.train_shards` instead.
    pair_lists: tuple[str, ...] = ()
    path_anchors: dict[str, str] = field(default_factory=_default_anchors)

    def __post_init__(self) -> None:
        if self.retries < 0 or not self.timeout > 0:
            raise ValueError(f"retries must be >= 0 and timeout > 0, got {self.retries}, {self.timeout}")


@dataclass
class DataConfig:
    # `synthetic` (the embedded default, generated locally) or `files` (real corpora already on
    # disk in the same JSON+folder layout; the paper-scale download stage writes them).
    source: Literal["synthetic", "files"] = "synthetic"
    root: str = "data/synthetic"
    train_file: str = "train.json"  # ALBEF-style JSON list, relative to root
    val_file: str = "val.json"
    test_file: str = "test.json"
    image_root: str = ""  # image paths are relative to root/image_root
    # webdataset tar shards (img2dataset output: CC3M, SBU) added to the training pairs: folders or
    # glob patterns relative to root. Empty: the training set is `train_file` alone.
    train_shards: tuple[str, ...] = ()
    download: DownloadConfig = field(default_factory=DownloadConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # Fine-grained probes written from the test scenes in the official ARO / Winoground / VALSE /
    # SugarCrepe file formats; `evaluate` scores them with the same code as the real benchmarks.
    probes_root: str = "data/probes"
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    max_words: int = 30  # ALBEF pre_caption(max_words=30) for pretraining captions
    text_max_length: int = 32  # BERT tokens incl. [CLS]/[SEP]; the longest synthetic caption is 27
    skip_bad_images: bool = False  # True: a missing/corrupt image is skipped and counted, never silent
    # Image paths of the annotation files must stay inside root/image_root once `..` and symlinks are
    # resolved; an absolute path or one leaving it is an error naming file, record and path. True reads
    # them anyway (e.g. an image folder symlinked from another disk).
    allow_outside_root: bool = False
    # Captions whose tokens are all [UNK] besides [CLS]/[SEP] (emoji-only, an unsupported script):
    # `count` trains on them and counts them (batch key num_unk_only); `error` stops, naming the
    # annotation file, the record and the caption.
    unk_only_captions: Literal["count", "error"] = "count"
    # Pre-flight of the training list before the first step (nas.data.training_set.preflight): the
    # images exist and decode as training decodes them. `full`: every distinct image; `sample`:
    # `preflight_sample` of them (a seeded draw); `off`: nothing checked. A bad image is an error naming
    # file and record or, with skip_bad_images, counted and listed in the stage's record. Unless `off`,
    # every caption is also counted (cut, [UNK]-only; ~20 us a caption) and `unk_only_captions: error`
    # refuses the list before the first step. Measured on the 1,800-image synthetic set (2 CPU cores):
    # full 0.23 s, sample 1,000 0.13 s, the 3,600 captions 0.07 s.
    preflight: Literal["full", "sample", "off"] = "sample"
    preflight_sample: int = 1000

    def __post_init__(self):
        if self.text_max_length < 2:
            raise ValueError("text_max_length must be >= 2 (transformers 5 ignores truncation below 2)")
        if self.preflight_sample < 1:
            raise ValueError(f"preflight_sample must be >= 1, got {self.preflight_sample}")

    def path(self, name: str) -> Path:
        return Path(self.root) / name

    @property
    def images(self) -> Path:
        return Path(self.root) / self.image_root
