"""Synthetic fine-grained probes, written in the official on-disk formats of ARO, Winoground, VALSE
and SugarCrepe (BENCHMARKS.md §1.2, §2.2, §3.2, §4), so that the harness's own benchmark loaders
read them exactly as they read the real benchmarks.

Made from the held-out (test) scenes of the embedded synthetic data (nas.data.synthetic). Every
positive text is checked "true" and every negative "false" against the scene's ground truth
(`nas.data.nta.caption_truth`, built on `true_relations`), and a ProbeError stops the run
otherwise. Layout under `out_root`:

  aro/           visual_genome_relation.json, visual_genome_attribution.json, images/
  coco_order/    coco_karpathy_test.json, val2014/, caption_tags.json (the Order tagger's tags)
  winoground/    examples.jsonl, images/ex_<id>_img_<k>.png
  valse/         existence.json, counting-small-quant.json, plurals.json, relations.json,
                 attributes.json, images/
  sugarcrepe/    the 7 SugarCrepe files, val2017/
  provenance.json  per benchmark and test case: source scene, edit kind, held-out combination
  manifest.json    counts, config, how to load each benchmark, sha256 of every file; written last
                   (atomically, once every file is fsync'd): no manifest, no complete probe folder

    count_cases(scenes, SyntheticConfig(), ProbeConfig())  # sizes a test split, nothing written
    manifest = write_probes("data/synthetic", "data/probes", ProbeConfig())
    for name, spec in probe_benchmarks("data/probes").items():
        evaluate_benchmark(name, spec["root"], scorer, spec["config"], **spec["load_options"])

Randomness: each benchmark (and VALSE instrument, SugarCrepe file) draws from its own
`np.random.Generator` seeded by (seed, its name), so changing one size leaves the others alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.config.base import from_dict, to_dict
from nas.data.nta import (
    NTAConfig,
    all_edits,
    caption_truth,
    mention_objects,
    parse_caption,
    split_clauses,
)
from nas.data.synthetic import SPLITS, SyntheticConfig, fsync_dir, render_scene, synced_sha256

FORMAT_VERSION = 1

# Penn Treebank tags for the word roles of synthetic captions, standing in for spaCy's. The ARO
# Order perturbations only tell nouns and adjectives from the rest (f1 shuffles nouns, then
# adjectives; f2 everything else; BENCHMARKS.md §1.4), so shapes are nouns, sizes and colours
# adjectives, and every relation word (even the "the" of "to the left of") is "other".
ROLE_TAGS = {"det": "DT", "size": "JJ", "colour": "JJ", "shape": "NN", "relation": "IN", "conj": "CC"}

VALSE_INSTRUMENTS = ("existence", "counting-small-quant", "plurals", "relations", "attributes")
SUGARCREPE_FILES = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
# Winoground kinds: (NTA edit that makes caption 1, tag, collapsed_tag). Winoground files adjective
# swaps under "Relation" (its example 0, "Adjective-Age") and noun / noun-phrase swaps under
# "Object" (BENCHMARKS.md §2.2).
WINOGROUND_KINDS = {
    "colour": ("swap_colours", "Adjective-Color", "Relation"),
    "shape": ("swap_shapes", "Noun", "Object"),
    "position": ("swap_relation_args", "Noun Phrase", "Object"),
}
# Rendered shapes are drawings, which Winoground tags "Symbolic" (its secondary tag for
# non-photographic images).
WINOGROUND_SECONDARY_TAG = "Symbolic"


class ProbeError(RuntimeError):
    """A probe text is not what it claims for its scene (a bug), or the source data is unusable."""


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


# ---------------------------------------------------------------------------------------------
# The source scenes


@dataclass(frozen=True)
class _Source:
    root: Path
    split: str
    scenes: list[dict[str, Any]]
    by_name: dict[str, dict[str, Any]]  # scene name (image stem, e.g. "test_00012") -> scene
    synthetic: SyntheticConfig
    sha256: str
    nta: NTAConfig  # the data's own vocabularies


def _read_source(data_root: Path, split: str) -> _Source:
    manifest_path = data_root / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} not found: {data_root} is not a synthetic data set; write one with "
            "nas.data.synthetic.generate (the `data` stage) first"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    synthetic = from_dict(SyntheticConfig, manifest.get("config"), f"{manifest_path}:config")
    if manifest.get("relation_margin_px", synthetic.margin_px) != synthetic.margin_px:
        raise ProbeError(f"{manifest_path}: relation_margin_px disagrees with its config")
    scenes_path = data_root / f"{split}_scenes.json"
    if not scenes_path.is_file():
        raise FileNotFoundError(f"{scenes_path} not found: the synthetic data set has no {split} scenes file")
    scenes = json.loads(scenes_path.read_text(encoding="utf-8"))
    if not isinstance(scenes, list) or not scenes:
        raise ProbeError(f"{scenes_path}: expected a non-empty JSON list of scenes")
    for number, scene in enumerate(scenes):
        missing = [k for k in ("image", "index", "noise_seed", "objects", "captions") if k not in scene]
        if missing:
            raise ProbeError(f"{scenes_path}, scene {number}: missing keys {missing}")
        if not (data_root / scene["image"]).is_file():
            raise FileNotFoundError(
                f"{scenes_path}, scene {number}: image {data_root / scene['image']} not found"
            )
    nta = NTAConfig(colours=tuple(synthetic.colours), shapes=synthetic.shapes)
    by_name = {_scene_name(scene): scene for scene in scenes}
    return _Source(data_root, split, scenes, by_name, synthetic, manifest.get("sha256", ""), nta)


def _rng(seed: int, name: str) -> np.random.Generator:
    # crc32, not hash(): stable across processes.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),)))


def _shuffled(scenes: list[dict[str, Any]], rng: np.random.Generator) -> list[dict[str, Any]]:
    return [scenes[int(k)] for k in rng.permutation(len(scenes))]


def _pick(items: Sequence[Any], rng: np.random.Generator) -> Any:
    return items[int(rng.integers(len(items)))]


def _scene_name(scene: dict[str, Any]) -> str:
    return Path(scene["image"]).stem


def _provenance(scene: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"scene": _scene_name(scene), "kind": kind, "heldout": bool(scene.get("heldout", False))}


def _require_supply(source: _Source, name: str, size_key: str, count: int, got: int) -> None:
    """Each case of a benchmark has a scene of its own (drawn without replacement): fewer usable
    scenes than `count` is an error, never repeated cases."""
    if got >= count:
        return
    n = len(source.scenes)
    estimate = f"about {math.ceil(count * n / got)}" if got else "more"
    raise ProbeError(
        f"{name}: probes.{size_key} asks for {count} cases, but only {got} of the {n} {source.split} "
        f"scenes of {source.root} can make a {name} case, and each case takes a scene of its own: "
        f"generate {estimate} {source.split} scenes (data.synthetic.n_{source.split}; the other "
        f"splits do not change) or lower probes.{size_key}"
    )


def _require_distinct(name: str, origins: Sequence[dict[str, Any]]) -> None:
    """No scene serves two cases of one benchmark (so no case repeats)."""
    repeated = [scene for scene, k in Counter(o["scene"] for o in origins).items() if k > 1]
    if repeated:
        raise ProbeError(
            f"{name}: {len(repeated)} scenes serve two cases or more, e.g. {repeated[0]} (a bug)"
        )


def _require(
    source: _Source, scene: dict[str, Any], objects: list[dict[str, Any]], record: dict[str, Any], want: str
) -> None:
    """The probe's promise: positives true, negatives false, by the scene's ground truth."""
    got = caption_truth(record["words"], record["roles"], objects, source.synthetic.margin_px)
    if got != want:
        raise ProbeError(
            f"scene {_scene_name(scene)}: {' '.join(record['words'])!r} should be {want} for its image, "
            f"the ground truth says {got}"
        )


def _relation_clause(scene: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    """One clause with a relation from one of the scene's captions, or None (single object)."""
    caption = _pick(scene["captions"], rng)
    clauses = [c for c in split_clauses(caption) if c["relation"] is not None]
    return _pick(clauses, rng) if clauses else None


# ---------------------------------------------------------------------------------------------
# ARO VG-Relation / VG-Attribution (BENCHMARKS.md §1.2). The box is the whole image.

Case = tuple[dict[str, Any], dict[str, Any]]  # (record in the official format, provenance)


def _vg_cases(source: _Source, seed: int, count: int, benchmark: str) -> list[Case]:
    """VG-R: false caption = subject and object swapped; VG-A: the two colours swapped."""
    rng = _rng(seed, benchmark)
    edit = "swap_relation_args" if benchmark == "vg_relation" else "swap_colours"
    cases: list[Case] = []
    for scene in _shuffled(source.scenes, rng):
        if len(cases) >= count:
            break
        clause = _relation_clause(scene, rng)
        negatives = all_edits(clause, edit, source.nta) if clause else []
        if not negatives:
            continue
        negative = _pick(negatives, rng)
        _require(source, scene, scene["objects"], clause, "true")
        _require(source, scene, scene["objects"], negative, "false")
        size = source.synthetic.image_size
        record: dict[str, Any] = {
            "image_path": f"{_scene_name(scene)}.png",
            "bbox_x": 0,
            "bbox_y": 0,
            "bbox_w": size,
            "bbox_h": size,
        }
        if benchmark == "vg_relation":
            record["relation_name"] = clause["relation"]
        else:  # ordered as in the true caption, like ARO's "white_black"
            mentions = parse_caption(clause["words"], clause["roles"])[0].mentions
            record["attributes"] = [clause["words"][m.attributes["colour"]] for m in mentions]
        record["true_caption"] = clause["text"]
        record["false_caption"] = negative["text"]
        cases.append((record, _provenance(scene, edit)))
    _require_supply(source, benchmark, benchmark, count, len(cases))
    _require_distinct(benchmark, [origin for _, origin in cases])
    return cases


# ---------------------------------------------------------------------------------------------
# ARO COCO-Order (BENCHMARKS.md §1.2-§1.4): a Karpathy test JSON of the scenes' own captions


def _order_entries(source: _Source, seed: int, count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    rng = _rng(seed, "coco_order")
    entries = [
        (
            {"image": f"val2014/{_scene_name(scene)}.png", "caption": [c["text"] for c in scene["captions"]]},
            _provenance(scene, "order"),
        )
        for scene in _shuffled(source.scenes, rng)[:count]
    ]
    _require_supply(source, "coco_order", "order_images", count, len(entries))
    _require_distinct("coco_order", [origin for _, origin in entries])
    return entries


def _caption_tags(scenes: Sequence[dict[str, Any]]) -> dict[str, list[list[str]]]:
    tags: dict[str, list[list[str]]] = {}
    for scene in scenes:
        for caption in scene["captions"]:
            tags[caption["text"]] = [[w, ROLE_TAGS[r]] for w, r in zip(caption["words"], caption["roles"])]
    return tags


def whitespace_tokenizer(caption: str) -> list[str]:
    """The Order probes' tokenizer (NLTK's `word_tokenize` on real captions): synthetic captions
    have no punctuation, so their tokens are their words."""
    return caption.split()


def order_tagger(root: str | Path) -> Callable[[str], list[tuple[str, str]]]:
    """The Order probes' tagger (spaCy's on real captions): each caption's Penn tags from its own
    word roles, read from `<root>/caption_tags.json`. Unknown captions raise ValueError."""
    path = Path(root) / "caption_tags.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not an Order probe folder written by write_probes"
        )
    tags = json.loads(path.read_text(encoding="utf-8"))

    def tag(caption: str) -> list[tuple[str, str]]:
        if caption not in tags:
            raise ValueError(
                f"{path}: no tags for caption {caption!r} (the probe tagger knows only its captions)"
            )
        return [(word, pos) for word, pos in tags[caption]]

    return tag


# ---------------------------------------------------------------------------------------------
# Winoground (BENCHMARKS.md §2.2): two images, two captions with the same words in another order


def _fits(objects: Sequence[dict[str, Any]], cfg: SyntheticConfig) -> bool:
    """Every object inside the image and the boxes apart by min_gap (the generator's rules)."""
    for o in objects:
        x0, y0, x1, y1 = o["bbox"]
        if x0 < 0 or y0 < 0 or x1 >= cfg.image_size or y1 >= cfg.image_size:
            return False
    for a, o in enumerate(objects):
        for p in objects[a + 1 :]:
            ax0, ay0, ax1, ay1 = o["bbox"]
            bx0, by0, bx1, by1 = p["bbox"]
            gap = cfg.min_gap
            if not (ax1 + gap < bx0 or bx1 + gap < ax0 or ay1 + gap < by0 or by1 + gap < ay0):
                return False
    return True


def _counterfactual(
    objects: Sequence[dict[str, Any]], first: int, second: int, kind: str, cfg: SyntheticConfig
) -> list[dict[str, Any]] | None:
    """The scene with the two objects' colours, shapes or positions exchanged (None if the moved
    objects no longer fit)."""
    new = [dict(o) for o in objects]
    a, b = new[first], new[second]
    if kind == "position":
        (a["x"], a["y"]), (b["x"], b["y"]) = (b["x"], b["y"]), (a["x"], a["y"])
        for o in (a, b):
            o["bbox"] = [
                o["x"] - o["radius"],
                o["y"] - o["radius"],
                o["x"] + o["radius"],
                o["y"] + o["radius"],
            ]
        return new if _fits(new, cfg) else None
    a[kind], b[kind] = b[kind], a[kind]  # kind is "colour" or "shape"
    return new


def _winoground_examples(
    source: _Source, seed: int, count: int
) -> list[tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]]:
    """(record, counterfactual objects, provenance); kinds rotate colour -> shape -> position."""
    rng = _rng(seed, "winoground")
    kinds = list(WINOGROUND_KINDS)
    examples: list[tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = []
    for scene in _shuffled(source.scenes, rng):
        if len(examples) >= count:
            break
        clause = _relation_clause(scene, rng)
        if clause is None:
            continue
        objects = scene["objects"]
        first, second = mention_objects(clause["words"], clause["roles"], objects)
        if first is None or second is None:
            raise ProbeError(
                f"scene {_scene_name(scene)}: {clause['text']!r} does not name two of its objects"
            )
        turn = len(examples) % len(kinds)
        for kind in kinds[turn:] + kinds[:turn]:
            edit, tag, collapsed = WINOGROUND_KINDS[kind]
            edits = all_edits(clause, edit, source.nta)
            other = _counterfactual(objects, first, second, kind, source.synthetic)
            if not edits or other is None:
                continue
            caption_1 = _pick(edits, rng)
            if Counter(caption_1["words"]) != Counter(clause["words"]):
                raise ProbeError(
                    f"winoground: {caption_1['text']!r} does not reuse the words of {clause['text']!r}"
                )
            _require(source, scene, objects, clause, "true")
            _require(source, scene, other, caption_1, "true")
            _require(source, scene, other, clause, "false")
            _require(source, scene, objects, caption_1, "false")
            example_id = len(examples)
            record = {
                "id": example_id,
                "image_0": f"ex_{example_id}_img_0",
                "image_1": f"ex_{example_id}_img_1",
                "caption_0": clause["text"],
                "caption_1": caption_1["text"],
                "tag": tag,
                "secondary_tag": WINOGROUND_SECONDARY_TAG,
                "num_main_preds": 1,  # one relation per caption
                "collapsed_tag": collapsed,
            }
            examples.append((record, other, _provenance(scene, kind)))
            break
    _require_supply(source, "winoground", "winoground", count, len(examples))
    _require_distinct("winoground", [origin for _, _, origin in examples])
    return examples


# ---------------------------------------------------------------------------------------------
# VALSE (BENCHMARKS.md §3.2): caption and foil, one word (or quantifier phrase) apart


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _changed(before: Sequence[str], after: Sequence[str]) -> tuple[str, str]:
    """The words that differ between two captions of equal length (VALSE's classes / classes_foil)."""
    if len(before) != len(after):
        raise ProbeError(f"expected a same-length foil: {before!r} vs {after!r}")
    changed = [k for k, (a, b) in enumerate(zip(before, after)) if a != b]
    return " ".join(before[k] for k in changed), " ".join(after[k] for k in changed)


def _claim(holds: bool, want: bool, scene: dict[str, Any], text: str) -> None:
    if holds != want:
        raise ProbeError(f"scene {_scene_name(scene)}: {text!r} should be {'true' if want else 'false'}")


def _valse_item(
    source: _Source, instrument: str, scene: dict[str, Any], rng: np.random.Generator
) -> dict | None:
    """{caption, foil, classes, classes_foil, kind} for one scene, or None if it does not apply."""
    objects = scene["objects"]
    shapes_present = [o["shape"] for o in objects]
    if instrument == "existence":
        # Both directions, as VALSE ("there are no people" / "there are people").
        if rng.random() < 0.5:
            shape, present = _pick(shapes_present, rng), True
        else:
            shape, present = (
                _pick([s for s in source.synthetic.shapes if s not in shapes_present], rng),
                False,
            )
        some, none = f"there is {_article(shape)} {shape}", f"there is no {shape}"
        caption, foil = (some, none) if present else (none, some)
        _claim(shape in shapes_present, present, scene, caption)
        count = shapes_present.count(shape)
        return {
            "caption": caption,
            "foil": foil,
            "classes": count,
            "classes_foil": [1 - count],
            "kind": "existence",
        }
    if instrument == "counting-small-quant":
        if len(objects) < 2:  # "there is 1 shape" would change more than the number
            return None
        wrong = _pick([n for n in range(2, source.synthetic.max_objects + 2) if n != len(objects)], rng)
        caption, foil = f"there are {len(objects)} shapes", f"there are {wrong} shapes"
        _claim(len(objects) == wrong, False, scene, foil)
        return {
            "caption": caption,
            "foil": foil,
            "classes": len(objects),
            "classes_foil": wrong,
            "kind": "counting",
        }
    if instrument == "plurals":
        # Colours are distinct in a scene: exactly one object has a given colour and shape.
        o = _pick(objects, rng)
        matching = sum(p["colour"] == o["colour"] and p["shape"] == o["shape"] for p in objects)
        caption = f"there is exactly one {o['colour']} {o['shape']}"
        foil = f"there are a number of {o['colour']} {_plural(o['shape'])}"
        _claim(matching == 1, True, scene, caption)
        return {
            "caption": caption,
            "foil": foil,
            "classes": "exactly one",
            "classes_foil": "a number of",
            "kind": "plurals",
        }
    edit = {"relations": "replace_relation", "attributes": "replace_colour"}[instrument]
    caption = _pick(scene["captions"], rng)
    edits = all_edits(caption, edit, source.nta)
    if not edits:
        return None
    foil = _pick(edits, rng)
    _require(source, scene, objects, caption, "true")
    _require(source, scene, objects, foil, "false")
    classes, classes_foil = _changed(caption["words"], foil["words"])
    return {
        "caption": caption["text"],
        "foil": foil["text"],
        "classes": classes,
        "classes_foil": classes_foil,
        "kind": edit,
    }


def _valse_records(source: _Source, seed: int, instrument: str, count: int) -> list[tuple[str, dict, dict]]:
    """(sample id, record, provenance) in the official schema, valid by the official filter."""
    rng = _rng(seed, f"valse/{instrument}")
    phenomenon = {"counting-small-quant": "counting"}.get(instrument, instrument)
    out = []
    for scene in _shuffled(source.scenes, rng):
        if len(out) >= count:
            break
        item = _valse_item(source, instrument, scene, rng)
        if item is None:
            continue
        record = {
            "dataset": "synthetic",
            "original_split": source.split,
            "dataset_idx": int(scene["index"]),
            "linguistic_phenomena": phenomenon,
            "image_file": f"{_scene_name(scene)}.png",
            "caption": item["caption"],
            "foil": item["foil"],
            "classes": item["classes"],
            "classes_foil": item["classes_foil"],
            # Ground truth stands in for the three annotators: all chose the caption, so the
            # official filter (mturk.caption >= 2) keeps every probe.
            "mturk": {"foil": 0, "caption": 3, "other": 0},
        }
        out.append((f"{instrument}_synthetic_{scene['index']}", record, _provenance(scene, item["kind"])))
    _require_supply(source, f"valse/{instrument}", "valse_per_instrument", count, len(out))
    _require_distinct(f"valse/{instrument}", [origin for _, _, origin in out])
    return out


# ---------------------------------------------------------------------------------------------
# SugarCrepe (BENCHMARKS.md §4): positive and negative caption per image


def _with_mention(record: dict[str, Any], words: list[str], roles: list[str]) -> dict[str, Any]:
    return {"text": " ".join(words), "words": words, "roles": roles, "template": record.get("template")}


def _sugarcrepe_item(
    source: _Source, name: str, scene: dict[str, Any], rng: np.random.Generator
) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """(positive record, negative record, kind) for one scene, or None if it does not apply."""
    objects = scene["objects"]
    caption = _pick(scene["captions"], rng)
    words, roles = list(caption["words"]), list(caption["roles"])
    edits = {
        "replace_obj": "replace_shape",
        "replace_att": "replace_colour",
        "replace_rel": "replace_relation",
        "swap_obj": "swap_shapes",
        "swap_att": "swap_colours",
    }
    if name in edits:
        negatives = all_edits(caption, edits[name], source.nta)
        return (caption, _pick(negatives, rng), edits[name]) if negatives else None
    if name == "add_obj":
        # "... and a small green cross" where the scene has no cross: the added object is absent.
        absent = [s for s in source.synthetic.shapes if s not in {o["shape"] for o in objects}]
        shape = _pick(absent, rng)
        size, colour = _pick(list(source.synthetic.sizes), rng), _pick(list(source.synthetic.colours), rng)
        added = [_article(size), size, colour, shape]
        negative = _with_mention(
            caption, [*words, "and", *added], [*roles, "conj", "det", "size", "colour", "shape"]
        )
        return caption, negative, "add_object"
    # add_att: the positive drops one mention's colour; the negative puts a wrong colour there.
    colour_positions = [k for k, r in enumerate(roles) if r == "colour"]
    position = _pick(colour_positions, rng)
    wrong = _pick([c for c in source.synthetic.colours if c != words[position]], rng)
    positive = _with_mention(
        caption, words[:position] + words[position + 1 :], roles[:position] + roles[position + 1 :]
    )
    negative = _with_mention(caption, words[:position] + [wrong] + words[position + 1 :], roles)
    return positive, negative, "add_colour"


def _sugarcrepe_records(source: _Source, seed: int, name: str, count: int) -> list[tuple[str, dict, dict]]:
    rng = _rng(seed, f"sugarcrepe/{name}")
    out = []
    for scene in _shuffled(source.scenes, rng):
        if len(out) >= count:
            break
        item = _sugarcrepe_item(source, name, scene, rng)
        if item is None:
            continue
        positive, negative, kind = item
        _require(source, scene, scene["objects"], positive, "true")
        _require(source, scene, scene["objects"], negative, "false")
        record = {
            "filename": f"{_scene_name(scene)}.png",
            "caption": positive["text"],
            "negative_caption": negative["text"],
        }
        out.append((str(len(out)), record, _provenance(scene, kind)))
    _require_supply(source, f"sugarcrepe/{name}", "sugarcrepe_per_file", count, len(out))
    _require_distinct(f"sugarcrepe/{name}", [origin for _, _, origin in out])
    return out


# ---------------------------------------------------------------------------------------------
# Writing


BENCHMARK_FOLDERS = ("aro", "coco_order", "winoground", "valse", "sugarcrepe")
TOP_FILES = ("manifest.json", "provenance.json")


def _write_json(path: Path, payload: Any) -> None:
    _write_text(path, json.dumps(payload, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Atomically (temporary file, fsync, os.replace): a reader never sees half a file."""
    from nas.atomic import atomic_write_text

    atomic_write_text(path, text)


def _copy_scene_image(source: _Source, origin: dict[str, Any], folder: Path, name: str | None = None) -> None:
    """Copy the PNG of the scene a provenance entry names (bytes unchanged) into `folder`."""
    target = folder / (name or f"{origin['scene']}.png")
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.root / source.by_name[origin["scene"]]["image"], target)


def _group_of(record: dict[str, Any]) -> str:
    # the loaders' grouping keys: relation_name, or the ordered attribute pair "<a0>_<a1>"
    return record["relation_name"] if "relation_name" in record else "_".join(record["attributes"])


def _plan(source: _Source, cfg: ProbeConfig) -> dict[str, Any]:
    """Every case of every benchmark whose size is > 0, checked against the ground truth, before
    anything is written: a size the scenes cannot supply stops here (ProbeError)."""
    plan: dict[str, Any] = {}
    for benchmark in ("vg_relation", "vg_attribution"):
        if getattr(cfg, benchmark) > 0:
            plan[benchmark] = _vg_cases(source, cfg.seed, getattr(cfg, benchmark), benchmark)
    if cfg.order_images > 0:
        plan["coco_order"] = _order_entries(source, cfg.seed, cfg.order_images)
    if cfg.winoground > 0:
        plan["winoground"] = _winoground_examples(source, cfg.seed, cfg.winoground)
    if cfg.valse_per_instrument > 0:
        plan["valse"] = {
            instrument: _valse_records(source, cfg.seed, instrument, cfg.valse_per_instrument)
            for instrument in VALSE_INSTRUMENTS
        }
    if cfg.sugarcrepe_per_file > 0:
        plan["sugarcrepe"] = {
            name: _sugarcrepe_records(source, cfg.seed, name, cfg.sugarcrepe_per_file)
            for name in SUGARCREPE_FILES
        }
    return plan


def _counts(plan: dict[str, Any]) -> dict[str, int]:
    """Cases behind each headline, as the loaders count them (ProbeConfig); Order: per seed."""
    counts = {}
    for name, cases in plan.items():
        if name == "coco_order":
            counts[name] = sum(len(entry["caption"]) for entry, _ in cases)
        elif name in ("valse", "sugarcrepe"):
            counts[name] = sum(len(records) for records in cases.values())
        else:
            counts[name] = len(cases)
    return counts


def count_cases(
    scenes: Sequence[dict[str, Any]], synthetic: SyntheticConfig, cfg: ProbeConfig | None = None
) -> dict[str, int]:
    """`{benchmark: cases}` that write_probes would write (its manifest's "counts") from these
    ground-truth scenes of `cfg.split` (`make_scene` records; no image is read or written), every
    case checked against the ground truth. Raises ProbeError as write_probes does, naming the
    benchmark the scenes cannot supply: a cheap way to size `n_test` for a ProbeConfig."""
    cfg = cfg or ProbeConfig()
    scenes = list(scenes)
    if not scenes:
        raise ProbeError("count_cases needs at least one scene")
    nta = NTAConfig(colours=tuple(synthetic.colours), shapes=synthetic.shapes)
    by_name = {_scene_name(scene): scene for scene in scenes}
    source = _Source(Path("<in memory>"), cfg.split, scenes, by_name, synthetic, "", nta)
    return _counts(_plan(source, cfg))


def _write_aro(source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict) -> None:
    for benchmark, file_name in (
        ("vg_relation", "visual_genome_relation.json"),
        ("vg_attribution", "visual_genome_attribution.json"),
    ):
        if benchmark not in plan:
            continue
        cases = plan[benchmark]
        for _record, origin in cases:
            _copy_scene_image(source, origin, out / "aro" / "images")
        _write_json(out / "aro" / file_name, [record for record, _ in cases])
        specs[benchmark] = {
            "root": "aro",
            # ~1,000 cases over 30 ordered colour pairs (~33 each): the official >= 25 filter of
            # VG-A would drop the smaller groups and their cases, so the probes keep them all [D].
            "config": {} if benchmark == "vg_relation" else {"attribution_min_count": 0},
            "cases": len(cases),
            "groups": dict(sorted(Counter(_group_of(record) for record, _ in cases).items())),
        }
        provenance[benchmark] = {str(k): origin for k, (_, origin) in enumerate(cases)}


def _write_order(source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict) -> None:
    entries = plan["coco_order"]
    root = out / "coco_order"
    for _entry, origin in entries:
        _copy_scene_image(source, origin, root / "val2014")
    _write_json(root / "coco_karpathy_test.json", [entry for entry, _ in entries])
    _write_json(root / "caption_tags.json", _caption_tags([source.by_name[o["scene"]] for _, o in entries]))
    specs["coco_order"] = {
        "root": "coco_order",
        "config": {},
        "load_options": {"tagger": "caption_tags.json (order_tagger)", "tokenizer": "whitespace_tokenizer"},
        # per seed; OrderConfig.seeds multiplies them
        "cases": _counts({"coco_order": entries})["coco_order"],
        "entries": len(entries),
    }
    provenance["coco_order"] = {
        f"{e}_{c}": origin for e, (entry, origin) in enumerate(entries) for c in range(len(entry["caption"]))
    }


def _write_winoground(
    source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict
) -> None:
    examples = plan["winoground"]
    root = out / "winoground"
    images = root / "images"
    for record, other, origin in examples:
        _copy_scene_image(source, origin, images, f"{record['image_0']}.png")
        # Same noise seed: the second image differs from the first only where the objects changed.
        noise_seed = source.by_name[origin["scene"]]["noise_seed"]
        render_scene(other, source.synthetic, noise_seed).save(
            images / f"{record['image_1']}.png", format="PNG"
        )
    # The official file has no newline after its last line (BENCHMARKS.md §2.1).
    lines = [json.dumps(record) for record, _, _ in examples]
    _write_text(root / "examples.jsonl", "\n".join(lines))
    specs["winoground"] = {
        "root": "winoground",
        "config": {},
        "cases": len(examples),
        "collapsed_tags": dict(sorted(Counter(r["collapsed_tag"] for r, _, _ in examples).items())),
        "kinds": dict(sorted(Counter(o["kind"] for _, _, o in examples).items())),
    }
    provenance["winoground"] = {str(r["id"]): origin for r, _, origin in examples}


def _write_valse(source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict) -> None:
    root = out / "valse"
    counts, origins = {}, {}
    for instrument, records in plan["valse"].items():
        for sample_id, _record, origin in records:
            _copy_scene_image(source, origin, root / "images")
            origins[f"{instrument}/{sample_id}"] = origin
        _write_json(root / f"{instrument}.json", {sample_id: record for sample_id, record, _ in records})
        counts[instrument] = len(records)
    specs["valse"] = {
        "root": "valse",
        # Paths in a probe config are relative to its root; probe_benchmarks() resolves them.
        "config": {"annotation_dir": ".", "files": list(counts), "image_dir": "images"},
        "cases": sum(counts.values()),
        "files": counts,
    }
    provenance["valse"] = origins


def _write_sugarcrepe(
    source: _Source, plan: dict[str, Any], out: Path, specs: dict, provenance: dict
) -> None:
    root = out / "sugarcrepe"
    counts, origins = {}, {}
    for name, records in plan["sugarcrepe"].items():
        for key, _record, origin in records:
            _copy_scene_image(source, origin, root / "val2017")
            origins[f"{name}/{key}"] = origin
        _write_json(root / f"{name}.json", {key: record for key, record, _ in records})
        counts[name] = len(records)
    specs["sugarcrepe"] = {
        "root": "sugarcrepe",
        "config": {"annotation_dir": ".", "files": list(counts), "image_dir": "val2017"},
        "cases": sum(counts.values()),
        "files": counts,
    }
    provenance["sugarcrepe"] = origins


def _refuse_non_empty(out: Path, overwrite: bool) -> None:
    if not overwrite and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to rewrite the probes there")


def _prepare(out: Path, overwrite: bool) -> None:
    _refuse_non_empty(out, overwrite)
    if out.exists() and any(out.iterdir()):
        for name in TOP_FILES:  # the manifest first: without it the folder is never taken as complete
            (out / name).unlink(missing_ok=True)
        for folder in BENCHMARK_FOLDERS:
            shutil.rmtree(out / folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_probes(
    data_root: str | Path, out_root: str | Path, cfg: ProbeConfig | None = None, *, overwrite: bool = False
) -> dict[str, Any]:
    """Write every probe benchmark from `<data_root>/<cfg.split>_scenes.json` into `out_root` and
    return the manifest (also written to `out_root/manifest.json`). Byte-identical for the same
    data and config. `out_root` must be absent or empty unless `overwrite` is set; then only what
    this function writes is replaced. Every case is built and checked before `out_root` is
    touched: a size the scenes cannot supply (ProbeConfig) raises ProbeError naming the benchmark
    and leaves an existing probe folder as it was."""
    cfg = cfg or ProbeConfig()
    source = _read_source(Path(data_root), cfg.split)
    out = Path(out_root)
    _refuse_non_empty(out, overwrite)
    plan = _plan(source, cfg)
    _prepare(out, overwrite)
    specs: dict[str, dict[str, Any]] = {}
    provenance: dict[str, dict[str, Any]] = {}
    _write_aro(source, plan, out, specs, provenance)
    writers = (
        ("coco_order", _write_order),
        ("winoground", _write_winoground),
        ("valse", _write_valse),
        ("sugarcrepe", _write_sugarcrepe),
    )
    for name, writer in writers:
        if name in plan:
            writer(source, plan, out, specs, provenance)
    if "coco_order" in specs:
        specs["coco_order"]["config"]["seeds"] = list(cfg.order_seeds)
    _write_json(out / "provenance.json", provenance)
    written = [p for folder in BENCHMARK_FOLDERS for p in (out / folder).rglob("*")]
    files = sorted(str(p.relative_to(out)) for p in written if p.is_file())
    # Every file durable (the images were written without fsync) before the manifest lists it.
    digests = {name: synced_sha256(out / name) for name in files}
    for folder in [*(p for p in written if p.is_dir()), *(out / f for f in BENCHMARK_FOLDERS), out]:
        fsync_dir(folder)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": {
            "data_root": str(data_root),
            "split": cfg.split,
            "scenes": len(source.scenes),
            "synthetic_sha256": source.sha256,
        },
        "config": to_dict(cfg),
        "counts": {name: spec["cases"] for name, spec in specs.items()},
        "benchmarks": specs,
        "files": {**digests, "provenance.json": _sha256(out / "provenance.json")},
    }
    _write_json(out / "manifest.json", manifest)  # last: the mark of a complete probe folder
    return manifest


# The Order text tools a manifest's "load_options" may name: the synthetic probes' own (built from the
# probe folder), or the real ones (spaCy, NLTK), which the loader builds itself when none is passed.
SYNTHETIC_TAGGER = "caption_tags.json (order_tagger)"
SYNTHETIC_TOKENIZER = "whitespace_tokenizer"
REAL_TAGGER, REAL_TOKENIZER = "spacy_tagger", "nltk_tokenizer"


def _order_options(path: Path, name: str, root: Path, named: dict[str, Any]) -> dict[str, Any]:
    # Unnamed: the synthetic probes' for coco_order (as write_probes has always named them), else the real.
    synthetic = name == "coco_order"
    tagger = named.get("tagger", SYNTHETIC_TAGGER if synthetic else REAL_TAGGER)
    tokenizer = named.get("tokenizer", SYNTHETIC_TOKENIZER if synthetic else REAL_TOKENIZER)
    options: dict[str, Any] = {}
    if tagger == SYNTHETIC_TAGGER:
        options["tagger"] = order_tagger(root)
    elif tagger != REAL_TAGGER:
        raise ProbeError(
            f"{path}: {name}: unknown tagger {tagger!r} ({SYNTHETIC_TAGGER!r} or {REAL_TAGGER!r})"
        )
    if tokenizer == SYNTHETIC_TOKENIZER:
        options["tokenizer"] = whitespace_tokenizer
    elif tokenizer != REAL_TOKENIZER:
        raise ProbeError(
            f"{path}: {name}: unknown tokenizer {tokenizer!r} ({SYNTHETIC_TOKENIZER!r} or {REAL_TOKENIZER!r})"
        )
    return options


def probe_benchmarks(out_root: str | Path) -> dict[str, dict[str, Any]]:
    """`{benchmark: {"root", "config", "load_options"}}` for `evaluate_benchmark`, from the manifest
    of a probe folder (write_probes) or of real benchmark folders
    (nas.data.benchmark_folders.write_benchmark_manifest): config paths resolved, the Order tagger
    and tokenizer built. A root is relative to the manifest's folder (a root with `..` is resolved
    through the real paths) or absolute; an "annotation_dir" is relative to its root."""
    out = Path(out_root)
    path = out / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: write the probes with write_probes (data.source: synthetic), or the real "
            "benchmark folders' manifest with nas.data.benchmark_folders.write_benchmark_manifest (the "
            "`data` stage with data.source: files and benchmarks in data.download.selection) first"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ProbeError(
            f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    suite = {}
    for name, spec in manifest["benchmarks"].items():
        root = out / spec["root"]
        if ".." in Path(spec["root"]).parts:
            root = root.resolve()
        config = dict(spec["config"])
        if "annotation_dir" in config:
            config["annotation_dir"] = str(root / config["annotation_dir"])
        options: dict[str, Any] = {}
        if name in ("coco_order", "flickr30k_order"):
            options = _order_options(path, name, root, dict(spec.get("load_options") or {}))
        suite[name] = {"root": root, "config": config, "load_options": options}
    return suite
