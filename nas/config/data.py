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

    def __post_init__(self):
        if self.text_max_length < 2:
            raise ValueError("text_max_length must be >= 2 (transformers 5 ignores truncation below 2)")

    def path(self, name: str) -> Path:
        return Path(self.root) / name

    @property
    def images(self) -> Path:
        return Path(self.root) / self.image_root
