"""The `data` and `loader` sections of params.yaml: where the pairs live, how images are prepared
(`TransformConfig`, read by nas.data.transforms) and how they are batched (`LoaderConfig`, read by
nas.data.loader). Pure data: nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nas.config.synthetic import ProbeConfig, SyntheticConfig

# ALBEF's (= CLIP's) normalisation constants (salesforce/ALBEF, dataset/__init__.py).
ALBEF_MEAN = (0.48145466, 0.4578275, 0.40821073)
ALBEF_STD = (0.26862954, 0.26130258, 0.27577711)
RANDAUGMENT_MAX_LEVEL = 10  # ALBEF's dataset/randaugment.py: levels run to 10
_MAX_LEVEL = RANDAUGMENT_MAX_LEVEL


@dataclass
class TransformConfig:
    """Image pipeline knobs; defaults are the tiny profile (64 px synthetic scenes)."""

    image_size: int = 64  # paper: 256 for pretraining, 384 for fine-tuning [P]
    # ALBEF uses (0.2, 1.0); we default to (0.5, 1.0) so a crop of a 64 px scene rarely drops an
    # object that its caption names.
    crop_scale: tuple[float, float] = (0.5, 1.0)
    # ALBEF flips; off by default because a flip swaps "left of"/"right of" in our captions.
    hflip: bool = False
    randaugment: bool = True
    randaugment_n: int = 2  # ALBEF RandomAugment(2, 7)
    randaugment_m: int = 7
    mean: tuple[float, float, float] = ALBEF_MEAN
    std: tuple[float, float, float] = ALBEF_STD

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.randaugment_n < 0:
            raise ValueError(f"randaugment_n must be >= 0, got {self.randaugment_n}")
        if not 0 <= self.randaugment_m <= _MAX_LEVEL:
            raise ValueError(f"randaugment_m must be in 0..{_MAX_LEVEL}, got {self.randaugment_m}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")


@dataclass
class LoaderConfig:
    """DataLoader knobs; defaults are the tiny profile."""

    batch_size_per_gpu: int = 64  # paper: 64 per GPU [P]; also the size the CPU speed table used
    num_workers: int = 0  # per process; 0 loads in the main process (deterministic, no fork cost)
    pin_memory: bool = False
    drop_last: bool = True  # training: every step sees a full batch (ITM hard negatives, queue)

    def __post_init__(self) -> None:
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size_per_gpu must be >= 1, got {self.batch_size_per_gpu}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


# [D] anchors of the layout nas/data/catalog.py extracts to (COCO 2014 zips into coco/, Visual
# Genome's two zips into vg/VG_100K and vg/VG_100K_2); nas.data.pair_lists rewrites image paths by them.
DEFAULT_ANCHORS: dict[str, str] = {
    "/train2014/": "coco/train2014/",
    "/val2014/": "coco/val2014/",
    "/VG_100K_2/": "vg/VG_100K_2/",
    "/VG_100K/": "vg/VG_100K/",
}


def _default_anchors() -> dict[str, str]:
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
