"""The `data` section of params.yaml: where the pairs live and how images/text are prepared."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nas.data.probes import ProbeConfig
from nas.data.synthetic import SyntheticConfig
from nas.data.transforms import TransformConfig


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
