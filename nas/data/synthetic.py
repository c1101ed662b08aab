"""Seeded compositional scenes: the data set the harness embeds, so every stage runs without downloads.

Each scene is a grey, slightly noisy canvas holding 1-3 coloured shapes. Captions name each
object's size, colour and shape and state spatial relations between them ("a small red circle
left of a large blue square"), in several surface forms. Every relation a caption states is true
in the image by a clear margin, every word of every caption carries a role tag, and some
colour-shape combinations appear only in the test split (compositional generalisation probes).

What is written (`generate`), byte-identical for a given config:
  images/<split>/<split>_<index:05d>.png
  <split>.json          ALBEF pretraining format: a list of {"image": <relative path>, "caption": str}
  <split>_scenes.json   ground truth: objects, all true relations, captions with per-word roles
  manifest.json         counts, config, vocabulary, sha256 of every file above; written last
                        (atomically, once every image is fsync'd): no manifest, no complete data set

Randomness: every scene draws from its own numpy Generator seeded by (seed, split, index), so a
scene does not depend on how many scenes came before it, and changing n_train leaves val/test
unchanged. No global RNG is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from nas.atomic import atomic_write_text, fsync_dir
from nas.config.base import to_dict
from nas.config.synthetic import NUM_TEMPLATES, SHAPES, SPLITS, SyntheticConfig  # pure data, re-exported

FORMAT_VERSION = 1

# Word roles used in the per-word caption tags (read by NTA hard negatives and benchmark probes).
ROLES = ("det", "size", "colour", "shape", "relation", "conj")

# Canonical relations, read as "<subject> <relation> <object>"; the inverse swaps the two sides.
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# Caption templates. Each template fixes how a relation is phrased, whether the clause is said
# from the first object's side ("X left of Y") or the second's ("Y right of X"), and the
# determiner. Single-object scenes have no relation, so their templates differ by determiner.
_PLAIN_PHRASES = {"left of": "left of", "right of": "right of", "above": "above", "below": "below"}
_LONG_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "over",
    "below": "under",
}
_TEMPLATES = (
    {"phrases": _PLAIN_PHRASES, "inverted": False, "det": "a", "single_det": "a"},
    {"phrases": _PLAIN_PHRASES, "inverted": True, "det": "a", "single_det": "one"},
    {"phrases": _LONG_PHRASES, "inverted": False, "det": "the", "single_det": "the"},
    {"phrases": _LONG_PHRASES, "inverted": True, "det": "the", "single_det": "a single"},
)
# Every relation phrase the templates say -> its canonical relation, in template order: the one
# source for readers of captions (nas.evaluation.captioning parses generated captions with it).
RELATION_PHRASES = {
    phrase: relation for template in _TEMPLATES for relation, phrase in template["phrases"].items()
}

# Shapes are drawn at this many times the image size and box-averaged down, for soft edges that
# are still bit-exact (integer arithmetic in PIL's reduce).
_SUPERSAMPLE = 4


# ---------------------------------------------------------------------------------------------
# Geometry and relations


def relation_holds(subject: dict[str, Any], relation: str, obj: dict[str, Any], margin_px: int) -> bool:
    """Is "<subject> <relation> <obj>" true, comparing centres (image y grows downward)?"""
    dx = obj["x"] - subject["x"]
    dy = obj["y"] - subject["y"]
    if relation == "left of":
        return dx >= margin_px
    if relation == "right of":
        return -dx >= margin_px
    if relation == "above":
        return dy >= margin_px
    if relation == "below":
        return -dy >= margin_px
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def salient_relation(subject: dict[str, Any], obj: dict[str, Any]) -> str:
    """The relation along the axis where the two centres differ most (horizontal on a tie)."""
    dx = obj["x"] - subject["x"]
    dy = obj["y"] - subject["y"]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def true_relations(objects: list[dict[str, Any]], margin_px: int) -> list[dict[str, Any]]:
    """Every (subject, relation, object) that holds with the margin, over ordered object pairs."""
    found = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i == j:
                continue
            for relation in RELATIONS:
                if relation_holds(a, relation, b, margin_px):
                    found.append({"subject": i, "relation": relation, "object": j})
    return found


def _captioned_pairs(objects: list[dict[str, Any]]) -> list[tuple[int, int]]:
    # Captions chain consecutive objects: (0, 1) for two objects, (0, 1) and (1, 2) for three.
    return [(i, i + 1) for i in range(len(objects) - 1)]


# ---------------------------------------------------------------------------------------------
# Captions


def caption_for(scene: dict[str, Any], template_id: int) -> dict[str, Any]:
    """Caption `scene` (a dict with "objects") with template `template_id`.

    Returns {"text", "template", "words", "roles", "word_objects", "relations"}: `roles[k]` is the
    role of `words[k]` (one of ROLES), `word_objects[k]` the index of the object that word
    describes (None for relation and conjunction words), and `relations` the stated relations as
    {"subject", "relation", "object"} with canonical relation names. Works on any scene, so a probe
    can caption a counterfactual scene (swapped colours, moved objects) the same way.
    """
    if not 0 <= template_id < NUM_TEMPLATES:
        raise ValueError(f"template_id must be in 0..{NUM_TEMPLATES - 1}, got {template_id}")
    objects = scene["objects"]
    if not objects:
        raise ValueError("cannot caption a scene without objects")
    template = _TEMPLATES[template_id]
    words: list[str] = []
    roles: list[str] = []
    word_objects: list[int | None] = []

    def say_object(index: int, det: str) -> None:
        o = objects[index]
        for word, role in (
            *((d, "det") for d in det.split(" ")),
            (o["size"], "size"),
            (o["colour"], "colour"),
            (o["shape"], "shape"),
        ):
            words.append(word)
            roles.append(role)
            word_objects.append(index)

    if len(objects) == 1:
        say_object(0, template["single_det"])
        return _caption_record(template_id, words, roles, word_objects, [])

    stated = []
    for clause, (first, second) in enumerate(_captioned_pairs(objects)):
        if clause > 0:
            words.append("and")
            roles.append("conj")
            word_objects.append(None)
        relation = salient_relation(objects[first], objects[second])
        subject, obj = first, second
        if template["inverted"]:
            subject, obj, relation = second, first, INVERSE[relation]
        say_object(subject, template["det"])
        for word in template["phrases"][relation].split(" "):
            words.append(word)
            roles.append("relation")
            word_objects.append(None)
        say_object(obj, template["det"])
        stated.append({"subject": subject, "relation": relation, "object": obj})
    return _caption_record(template_id, words, roles, word_objects, stated)


def _caption_record(
    template_id: int,
    words: list[str],
    roles: list[str],
    word_objects: list[int | None],
    relations: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "text": " ".join(words),
        "template": template_id,
        "words": words,
        "roles": roles,
        "word_objects": word_objects,
        "relations": relations,
    }


# ---------------------------------------------------------------------------------------------
# Rendering


def _draw_circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, h: float, rgb: tuple[int, ...]) -> None:
    draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=rgb)


def _draw_square(draw: ImageDraw.ImageDraw, cx: float, cy: float, h: float, rgb: tuple[int, ...]) -> None:
    draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=rgb)


def _draw_triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, h: float, rgb: tuple[int, ...]) -> None:
    draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=rgb)


def _draw_cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, h: float, rgb: tuple[int, ...]) -> None:
    arm = 0.36 * h  # half-thickness of each bar: a plus sign, clearly not a square
    draw.rectangle([cx - h, cy - arm, cx + h, cy + arm], fill=rgb)
    draw.rectangle([cx - arm, cy - h, cx + arm, cy + h], fill=rgb)


def _draw_diamond(draw: ImageDraw.ImageDraw, cx: float, cy: float, h: float, rgb: tuple[int, ...]) -> None:
    draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=rgb)


_SHAPE_DRAWERS = {
    "circle": _draw_circle,
    "square": _draw_square,
    "triangle": _draw_triangle,
    "cross": _draw_cross,
    "diamond": _draw_diamond,
}
# The config (nas.config.synthetic) names the shapes and counts the templates without importing this module.
if tuple(_SHAPE_DRAWERS) != SHAPES or len(_TEMPLATES) != NUM_TEMPLATES:
    raise AssertionError("nas.config.synthetic.SHAPES / NUM_TEMPLATES disagree with nas.data.synthetic")


def render_scene(objects: list[dict[str, Any]], cfg: SyntheticConfig, noise_seed: int) -> Image.Image:
    """Draw `objects` (dicts with shape, colour, x, y, radius) on a noisy grey RGB canvas.

    Deterministic in (objects, cfg, noise_seed): rendering a scene record with its own
    "noise_seed" reproduces the written PNG exactly, and a counterfactual (say, two colours
    swapped) rendered with the same seed differs from it only where the objects are.
    """
    big = cfg.image_size * _SUPERSAMPLE
    level = cfg.background_level
    canvas = Image.new("RGB", (big, big), (level, level, level))
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        if o["shape"] not in _SHAPE_DRAWERS:
            raise ValueError(f"unknown shape {o['shape']!r}; expected one of {sorted(_SHAPE_DRAWERS)}")
        if o["colour"] not in cfg.colours:
            raise ValueError(f"unknown colour {o['colour']!r}; expected one of {sorted(cfg.colours)}")
        # Pixel (x, y) covers [x, x+1) in image coordinates; an object of radius r covers pixels
        # x-r .. x+r, i.e. a half-extent of r + 0.5 around the pixel centre.
        cx = (o["x"] + 0.5) * _SUPERSAMPLE
        cy = (o["y"] + 0.5) * _SUPERSAMPLE
        half = (o["radius"] + 0.5) * _SUPERSAMPLE - 0.5
        _SHAPE_DRAWERS[o["shape"]](draw, cx, cy, half, cfg.colours[o["colour"]])
    small = canvas.reduce(_SUPERSAMPLE)
    if cfg.noise_std == 0:
        return small
    noise = np.random.default_rng(noise_seed).normal(
        0.0, cfg.noise_std, size=(cfg.image_size, cfg.image_size, 3)
    )
    pixels = np.asarray(small, dtype=np.float64) + noise
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------------------------
# Scene sampling


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))


def _sample_descriptions(
    rng: np.random.Generator, cfg: SyntheticConfig, count: int, with_heldout: bool
) -> list[tuple[str, str, str]]:
    """(size, colour, shape) per object: distinct colours, distinct shapes, held-out combos only
    where asked (exactly one object of the scene then takes one)."""
    held = {tuple(c.split(" ")) for c in cfg.holdout}
    colours = list(cfg.colours)
    allowed = [(c, s) for c in colours for s in cfg.shapes if (c, s) not in held]
    chosen: list[tuple[str, str]] = []
    if with_heldout:
        heldout_sorted = sorted(held)
        chosen.append(heldout_sorted[int(rng.integers(len(heldout_sorted)))])
    while len(chosen) < count:
        used_colours = {c for c, _ in chosen}
        used_shapes = {s for _, s in chosen}
        candidates = [(c, s) for c, s in allowed if c not in used_colours and s not in used_shapes]
        if not candidates:
            raise ValueError(
                f"cannot pick {count} objects with distinct colours and shapes outside holdout {cfg.holdout}"
            )
        chosen.append(candidates[int(rng.integers(len(candidates)))])
    if with_heldout:  # the held-out object should not always be the first one named
        order = rng.permutation(len(chosen))
        chosen = [chosen[int(k)] for k in order]
    size_names = list(cfg.sizes)
    return [(size_names[int(rng.integers(len(size_names)))], c, s) for c, s in chosen]


def _boxes_clear(a: dict[str, Any], b: dict[str, Any], gap: int) -> bool:
    ax0, ay0, ax1, ay1 = a["bbox"]
    bx0, by0, bx1, by1 = b["bbox"]
    return ax1 + gap < bx0 or bx1 + gap < ax0 or ay1 + gap < by0 or by1 + gap < ay0


def _make_object(size: str, colour: str, shape: str, x: int, y: int, radius: int) -> dict[str, Any]:
    return {
        "shape": shape,
        "colour": colour,
        "size": size,
        "x": x,
        "y": y,
        "radius": radius,
        "bbox": [x - radius, y - radius, x + radius, y + radius],  # inclusive pixel corners
    }


def _place(
    rng: np.random.Generator, cfg: SyntheticConfig, descriptions: list[tuple[str, str, str]]
) -> list[dict[str, Any]] | None:
    """Rejection-sample positions: inside the image, boxes apart by min_gap, and every captioned
    pair separated by at least the relation margin along its salient axis. None if it fails."""
    objects: list[dict[str, Any]] = []
    for size, colour, shape in descriptions:
        r = cfg.radius_px(size)
        for _ in range(100):
            x = int(rng.integers(r, cfg.image_size - r))
            y = int(rng.integers(r, cfg.image_size - r))
            candidate = _make_object(size, colour, shape, x, y, r)
            if all(_boxes_clear(candidate, other, cfg.min_gap) for other in objects):
                objects.append(candidate)
                break
        else:
            return None
    for first, second in _captioned_pairs(objects):
        relation = salient_relation(objects[first], objects[second])
        if not relation_holds(objects[first], relation, objects[second], cfg.margin_px):
            return None
    return objects


def make_scene(cfg: SyntheticConfig, split: str, index: int) -> dict[str, Any]:
    """The ground-truth record of scene `index` of `split` (no image written)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = _scene_rng(cfg.seed, split, index)
    for _ in range(200):
        count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        with_heldout = split == "test" and bool(cfg.holdout) and rng.random() < cfg.test_heldout_fraction
        objects = _place(rng, cfg, _sample_descriptions(rng, cfg, count, with_heldout))
        if objects is not None:
            break
    else:
        raise RuntimeError(
            f"could not place objects for {split} scene {index} in 200 tries: image_size {cfg.image_size} "
            f"is too small for max_objects={cfg.max_objects} with sizes {cfg.sizes}"
        )
    templates = sorted(int(t) for t in rng.choice(NUM_TEMPLATES, size=cfg.captions_per_image, replace=False))
    scene: dict[str, Any] = {
        "image": f"images/{split}/{split}_{index:05d}.png",
        "split": split,
        "index": index,
        "image_size": cfg.image_size,
        "noise_seed": int(rng.integers(2**32)),
        "heldout": any(f"{o['colour']} {o['shape']}" in cfg.holdout for o in objects),
        "objects": objects,
        "relations": true_relations(objects, cfg.margin_px),
    }
    scene["captions"] = [caption_for(scene, t) for t in templates]
    return scene


# ---------------------------------------------------------------------------------------------
# Writing


def _write_json(path: Path, payload: Any) -> None:
    """Atomically (temporary file, fsync, os.replace): a reader never sees half a JSON file."""

    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def synced_sha256(path: Path) -> str:
    """`_sha256` of a file written without fsync (an image), flushed to disk on the way."""
    with path.open("rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
        os.fsync(handle.fileno())
    return digest


def vocabulary(cfg: SyntheticConfig) -> dict[str, list[str]]:
    """Every word a caption can use, by role."""
    dets = sorted({w for t in _TEMPLATES for d in (t["det"], t["single_det"]) for w in d.split(" ")})
    relation_words = sorted({w for t in _TEMPLATES for p in t["phrases"].values() for w in p.split(" ")})
    return {
        "det": dets,
        "size": sorted(cfg.sizes),
        "colour": sorted(cfg.colours),
        "shape": sorted(cfg.shapes),
        "relation": relation_words,
        "conj": ["and"],
    }


def generate(cfg: SyntheticConfig, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the data set described by `cfg` into `out_dir` and return its manifest.

    `out_dir` must be absent or empty unless `overwrite` is set; then only what this function
    writes (images/ and the JSON files) is replaced.

    Order of writing, so that a run killed at any point never leaves a data set that looks complete:
    the old manifest and JSON files are removed before the old images; every image is written and
    fsync'd before any JSON file that lists it; the JSON files are written atomically, and the
    manifest (the mark of a complete data set) last.
    """
    out = Path(out_dir)
    written_names = ["manifest.json", *(f"{s}.json" for s in SPLITS), *(f"{s}_scenes.json" for s in SPLITS)]
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is not empty; pass overwrite=True to regenerate the synthetic data there"
            )
        for name in written_names:  # the manifest first
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    by_split: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        scenes: list[dict[str, Any]] = []
        for index in range(cfg.split_size(split)):
            scene = make_scene(cfg, split, index)
            render_scene(scene["objects"], cfg, scene["noise_seed"]).save(out / scene["image"], format="PNG")
            scenes.append(scene)
        by_split[split] = scenes
    # Every image durable (file and folder entries) before a file that lists it is written.
    digests = {scene["image"]: synced_sha256(out / scene["image"]) for s in by_split.values() for scene in s}
    for folder in [*(out / "images" / split for split in SPLITS), out / "images", out]:
        fsync_dir(folder)

    counts: dict[str, dict[str, int]] = {}
    for split, scenes in by_split.items():
        pairs = [
            {"image": scene["image"], "caption": c["text"]} for scene in scenes for c in scene["captions"]
        ]
        _write_json(out / f"{split}.json", pairs)
        _write_json(out / f"{split}_scenes.json", scenes)
        digests |= {name: _sha256(out / name) for name in (f"{split}.json", f"{split}_scenes.json")}
        counts[split] = {
            "images": len(scenes),
            "captions": len(pairs),
            "heldout_images": sum(s["heldout"] for s in scenes),
        }

    digests = dict(sorted(digests.items()))
    combined = hashlib.sha256("".join(f"{name}  {d}\n" for name, d in digests.items()).encode()).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION,
        "counts": counts,
        "config": to_dict(cfg),
        "relation_margin_px": cfg.margin_px,
        "vocabulary": vocabulary(cfg),
        "sha256": combined,
        "files": digests,
    }
    _write_json(out / "manifest.json", manifest)
    # Timing is returned, never written: the files must not depend on how fast the machine is.
    return {**manifest, "seconds": round(time.perf_counter() - start, 3)}
