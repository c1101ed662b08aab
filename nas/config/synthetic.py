"""The `data.synthetic` and `data.probes` sections of params.yaml: the embedded synthetic data set
(written by nas.data.synthetic) and the fine-grained probes written from its test scenes
(nas.data.probes). Pure data: nothing here imports numpy or PIL; both classes are re-exported from the
modules that use them (`nas.data.synthetic.SyntheticConfig`, `nas.data.probes.ProbeConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["NUM_TEMPLATES", "SHAPES", "SPLITS", "ProbeConfig", "SyntheticConfig"]

SPLITS = ("train", "val", "test")
# The shapes nas.data.synthetic can draw (one drawer each) and the number of its caption templates; it
# checks both against its drawers and templates when imported.
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
NUM_TEMPLATES = 4


def _default_colours() -> dict[str, tuple[int, int, int]]:
    # Six hues far apart from each other and from the grey background; each name is one
    # WordPiece token in the bert-base-uncased vocabulary.
    return {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 80, 230),
        "yellow": (240, 220, 40),
        "purple": (150, 60, 200),
        "orange": (250, 140, 20),
    }


def _default_sizes() -> dict[str, float]:
    # Half-extent of an object as a fraction of the image side: at 64 px, 6 px and 11 px.
    return {"small": 0.09, "large": 0.17}


@dataclass
class SyntheticConfig:
    """The embedded synthetic data set. Defaults are the harness's default (tiny) profile."""

    seed: int = 0
    image_size: int = 64
    n_train: int = 3000
    n_val: int = 200
    n_test: int = 1600  # what the ProbeConfig defaults need (~1,000 cases per benchmark)
    min_objects: int = 1
    max_objects: int = 3
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
    colours: dict[str, tuple[int, int, int]] = field(default_factory=_default_colours)
    sizes: dict[str, float] = field(default_factory=_default_sizes)
    # Distinct templates drawn per image (at most NUM_TEMPLATES); one JSON entry per caption.
    captions_per_image: int = 2
    # "colour shape" combinations that never occur in train/val; a share of test scenes holds one.
    holdout: tuple[str, ...] = ("red triangle", "blue circle")
    test_heldout_fraction: float = 0.3
    # A relation is stated only if the two centres differ by at least this fraction of the image
    # side along its axis, so "left of" / "above" are never a matter of a pixel.
    relation_margin: float = 0.12
    # Minimum empty pixels between object bounding boxes: objects never touch or overlap.
    min_gap: int = 2
    background_level: int = 118
    noise_std: float = 6.0

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"min_objects/max_objects must satisfy 1 <= min <= max, got {self.min_objects}/{self.max_objects}"
            )
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or not self.shapes or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"shapes must be distinct names from {sorted(SHAPES)}, got {self.shapes}")
        # Objects in one scene have distinct colours and distinct shapes, so that swapping any
        # attribute between two objects (an NTA / ARO-style negative) really changes the meaning.
        if self.max_objects > min(len(self.shapes), len(self.colours)):
            raise ValueError(
                f"max_objects={self.max_objects} exceeds the number of shapes ({len(self.shapes)}) "
                f"or colours ({len(self.colours)}); objects in a scene have distinct colours and shapes"
            )
        for name, rgb in self.colours.items():
            if " " in name or not name or any(not 0 <= c <= 255 for c in rgb):
                raise ValueError(f"colours[{name!r}] must be a one-word name with RGB values in 0..255")
        if set(self.sizes) & set(self.colours) or set(self.sizes) & set(self.shapes):
            raise ValueError("sizes, colours and shapes must use different words")
        for name, frac in self.sizes.items():
            if " " in name or not 0.02 <= frac <= 0.3:
                raise ValueError(f"sizes[{name!r}] must be a one-word name with a fraction in [0.02, 0.3]")
        if not 1 <= self.captions_per_image <= NUM_TEMPLATES:
            raise ValueError(
                f"captions_per_image must be in 1..{NUM_TEMPLATES}, got {self.captions_per_image}"
            )
        for combo in self.holdout:
            parts = combo.split(" ")
            if len(parts) != 2 or parts[0] not in self.colours or parts[1] not in self.shapes:
                raise ValueError(
                    f"holdout entry {combo!r} must be '<colour> <shape>' from colours and shapes"
                )
        if not 0.0 <= self.test_heldout_fraction <= 1.0:
            raise ValueError(f"test_heldout_fraction must be in [0, 1], got {self.test_heldout_fraction}")
        if not 0.0 < self.relation_margin < 0.5:
            raise ValueError(f"relation_margin must be in (0, 0.5), got {self.relation_margin}")
        if self.min_gap < 0:
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")
        if not 0 <= self.background_level <= 255:
            raise ValueError(f"background_level must be in 0..255, got {self.background_level}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    @property
    def margin_px(self) -> int:
        return math.ceil(self.relation_margin * self.image_size)

    def radius_px(self, size: str) -> int:
        return max(2, round(self.sizes[size] * self.image_size))

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


@dataclass
class ProbeConfig:
    """Probe sizes and seed [D], sized for the question: about 1,000 cases behind each benchmark's
    headline figure, so that its 95 % interval for one model is about +-3 points (1.96 *
    sqrt(p (1 - p) / 1000): +-3.1 points at p = 50 %, +-2.8 at 30 % or 70 %). A size of 0 leaves
    that benchmark out.

    One case is what the harness's loader (nas/evaluation/benchmarks) counts for the headline:

    - vg_relation, vg_attribution: one record (image, true caption, false caption); the headline
      is the macro accuracy over relation names / ordered colour pairs of those records.
    - coco_order (`order_images` entries): one caption of one Karpathy entry, so an entry holds
      `captions_per_image` cases (500 x 2 = 1,000). Precision@1 is averaged over OrderConfig.seeds,
      which perturb the same captions again and add no new cases.
    - winoground: one example (2 images x 2 captions); the group score is the share of examples
      whose text and image conditions both hold.
    - valse (`valse_per_instrument` records in each of the 5 instrument files): one record
      (caption, foil); the headline averages the 5 instruments, 5 x 200 = 1,000.
    - sugarcrepe (`sugarcrepe_per_file` records in each of the 7 files): one record (positive,
      negative caption); the headline is the mean of the 7 files, 7 x 143 = 1,001.

    Within a benchmark (a VALSE instrument, a SugarCrepe file) every case comes from its own test
    scene: the scenes are drawn without replacement, so no case repeats and no image serves two
    cases. When the scenes cannot supply a size, write_probes raises ProbeError naming the
    benchmark: the remedy is more test scenes (`data.synthetic.n_test`; training is unchanged),
    never repeated cases. Only scenes with 2-3 objects (about 65 % of them) give VG-R, VG-A,
    Winoground, VALSE counting / relations and SugarCrepe replace_rel / swap_*, so these defaults
    need n_test >= 1,600 (1,033 such scenes at seed 0, >= 1,000 for every synthetic seed 0-99);
    `count_cases` checks a split without rendering it.

    Cost, measured from 1,600 test scenes: each pair scorer scores ~26,300 distinct (image, text)
    pairs (VG-R, VG-A, VALSE, SugarCrepe ~2,000 each, Winoground 4,000, Order ~14,400 at 5 options x
    5 seeds, repeats scored once; ~2,900 at the default single seed), ~20x the ~1,300 of the former 16-48-case sizes. write_probes
    writes 45 MB in 5,095 files, Winoground's 2,000 images the largest part (17 MB), in 3-15 s:
    ~2.5 s of building, checking and rendering, the rest creating and fsync-ing the files (as
    busy as the disk is)."""

    seed: int = 0
    split: str = "test"  # the held-out scenes (with the held-out colour-shape combinations)
    vg_relation: int = 1000  # cases
    vg_attribution: int = 1000  # cases
    order_images: int = 500  # Karpathy entries; every caption of an entry is one case per seed
    # The Order perturbation seeds (OrderConfig.seeds; the authors average 5). Each seed re-scores the same
    # captions with another shuffle (no new cases) and costs ~4 s per model here; the intervals come from
    # the 1,000 cases, so the default profile scores one. [D]
    order_seeds: tuple[int, ...] = (1,)
    winoground: int = 1000  # examples, rotating over the 3 kinds
    valse_per_instrument: int = 200  # records per instrument file (5 files)
    sugarcrepe_per_file: int = 143  # records per file (7 files)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        for name in (
            "vg_relation",
            "vg_attribution",
            "order_images",
            "winoground",
            "valse_per_instrument",
            "sugarcrepe_per_file",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
