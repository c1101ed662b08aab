"""Ground-truth attributes of a synthetic scene: the labels of linear probes, zero-shot
classification and caption exact match (MUG_UTA.md §1 "linear probes per scene attribute").

Every label is a function of the rendered image alone. The generator's object order is not: objects
never overlap, so drawing them in any order gives the same pixels (tested over the generator in
tests/evaluation/test_scene_attributes_determinable.py), and no label may depend on it. An attribute
a scene does not determine is None (the probes drop those rows):

- count: the number of objects (1-3).
- colour, shape: of the *main* object, the unique largest one (a single object is its scene's main
  object). Two or more objects of the largest size leave the scene without a main object: None.
- size: the sizes present, "small" / "large" when every object has that size, "mixed" otherwise (a
  single object's size, so the single-object rows agree with the zero-shot size classes).
- relation: two-object scenes only; the salient relation ("left of", "right of", "above", "below":
  the axis where the centres differ most) of the object whose colour comes first in the palette
  (`SyntheticConfig.colours` order) to the other one. Every caption of such a scene states the
  relation of this pair, in one direction or the other.
- hpos, vpos: the main object's centre in image thirds.

Caption-described attributes are those a caption states in words: every caption names each object's
size, colour and shape (so the count too) and the relation between the two objects of a two-object
scene. Pixel-only attributes appear in no caption: the main object's absolute position. (MUG_UTA.md
§1: MUG should beat MAE on the first kind, and match caption-only training on the second.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.data.synthetic import RELATIONS, SyntheticConfig, salient_relation
from nas.jsonfile import read_json_file

ATTRIBUTES = ("count", "colour", "shape", "size", "relation", "hpos", "vpos")
CAPTION_ATTRIBUTES = ("count", "colour", "shape", "size", "relation")
PIXEL_ATTRIBUTES = ("hpos", "vpos")
# Attributes about where things are: probed on features that keep position (linear_probe "grid").
SPATIAL_ATTRIBUTES = ("relation", "hpos", "vpos")
KIND = {name: "caption" if name in CAPTION_ATTRIBUTES else "pixel" for name in ATTRIBUTES}
_THIRDS = {"hpos": ("left", "centre", "right"), "vpos": ("top", "middle", "bottom")}
# The fields of an object record the pixels show: what it is and where it is drawn. Anything else
# (its index in the list, a bounding box derived from these) must not change a label.
VISIBLE_FIELDS = ("shape", "colour", "size", "x", "y", "radius")


def main_object(scene: dict[str, Any]) -> dict[str, Any] | None:
    """The unique largest object (by drawn radius), or None when the largest size is shared."""
    objects = scene.get("objects")
    if not objects:
        raise ValueError(f"scene {scene.get('image', '?')!r} has no objects")
    largest = max(o["radius"] for o in objects)
    biggest = [o for o in objects if o["radius"] == largest]
    return biggest[0] if len(biggest) == 1 else None


def sizes_present(objects: list[dict[str, Any]]) -> str:
    sizes = {o["size"] for o in objects}
    return sizes.pop() if len(sizes) == 1 else "mixed"


def pair_relation(objects: list[dict[str, Any]], palette: tuple[str, ...]) -> str | None:
    """Two objects: the salient relation of the palette-first colour's object to the other; else None."""
    if len(objects) != 2:
        return None
    rank = {name: k for k, name in enumerate(palette)}
    first, second = sorted(objects, key=lambda o: rank.get(o["colour"], len(rank)))
    if first["colour"] == second["colour"]:  # cannot happen in generated scenes (distinct colours)
        return None
    return salient_relation(first, second)


def _third(coordinate: float, image_size: int, names: tuple[str, str, str]) -> str:
    return names[min(2, int(3 * coordinate / image_size))]


def scene_attributes(scene: dict[str, Any], palette: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """{attribute: label or None} for one scene record of `<split>_scenes.json`. `palette`: the colour
    order that picks a relation's subject (default: the generator's `SyntheticConfig().colours`)."""
    palette = tuple(SyntheticConfig().colours) if palette is None else tuple(palette)
    try:
        objects = scene["objects"]
        obj = main_object(scene)
        size = int(scene["image_size"])
        return {
            "count": str(len(objects)),
            "colour": None if obj is None else obj["colour"],
            "shape": None if obj is None else obj["shape"],
            "size": sizes_present(objects),
            "relation": pair_relation(objects, palette),
            "hpos": None if obj is None else _third(obj["x"], size, _THIRDS["hpos"]),
            "vpos": None if obj is None else _third(obj["y"], size, _THIRDS["vpos"]),
        }
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"scene {scene.get('image', '?')!r}: malformed record ({exc!r})") from exc


def load_split_attributes(
    data_root: str | Path, split: str, palette: tuple[str, ...] | None = None
) -> tuple[list[str], dict[str, list[str | None]]]:
    """(image paths relative to data_root, {attribute: per-image labels}) for one split. The palette
    (relation subjects) is the data set's own colour order, read from its manifest when there is one."""
    path = Path(data_root) / f"{split}_scenes.json"
    scenes = read_json_file(path, expect=list, missing="scene ground truth: run the `data` stage")
    if palette is None:
        manifest = Path(data_root) / "manifest.json"
        if manifest.is_file():
            colours = read_json_file(manifest, expect=dict).get("config", {}).get("colours")
            palette = tuple(colours) if colours else None
    paths: list[str] = []
    labels: dict[str, list[str | None]] = {name: [] for name in ATTRIBUTES}
    for k, scene in enumerate(scenes):
        try:
            attributes = scene_attributes(scene, palette)
            paths.append(str(scene["image"]))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}: record {k}: {exc}") from exc
        for name in ATTRIBUTES:
            labels[name].append(attributes[name])
    return paths, labels


def zero_shot_prompts(attribute: str, cfg: SyntheticConfig | None = None) -> dict[str, list[str]]:
    """Prompt ensembles in the captions' own words, CLIP-style: a class's text embedding is the
    mean over its prompts (CLIP's prompt ensembling), every other attribute varied over its values
    so that no single colour or shape biases the class. Defined for the attributes a caption names
    about one object (colour, shape, size); zero-shot figures are meant for single-object scenes,
    where "the object" is unambiguous."""
    cfg = cfg or SyntheticConfig()
    colours, shapes, sizes = sorted(cfg.colours), sorted(cfg.shapes), sorted(cfg.sizes)
    if attribute == "colour":
        return {c: [f"a {s} {c} {sh}" for s in sizes for sh in shapes] for c in colours}
    if attribute == "shape":
        return {sh: [f"a {s} {c} {sh}" for s in sizes for c in colours] for sh in shapes}
    if attribute == "size":
        return {s: [f"a {s} {c} {sh}" for c in colours for sh in shapes] for s in sizes}
    raise ValueError(
        f"no zero-shot prompts for attribute {attribute!r}; defined for colour, shape, size "
        f"(relations {RELATIONS} need two objects)"
    )
