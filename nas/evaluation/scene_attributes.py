"""Ground-truth attributes of a synthetic scene: the labels of linear probes, zero-shot
classification and caption exact match (MUG_UTA.md §1 "linear probes per scene attribute").

A scene holds 1-3 objects. The per-image attributes are those of its *main* object, the largest
one (the first on a tie), plus the object count and, with two or more objects, the salient relation
of the first object to the second (the pair every caption template states first). Positions are the
main object's centre in image thirds. An attribute that a scene does not define is None (the probes
drop those rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.data.synthetic import RELATIONS, SyntheticConfig, salient_relation
from nas.jsonfile import read_json_file

ATTRIBUTES = ("count", "colour", "shape", "size", "hpos", "vpos", "relation")
# The attributes a caption names in words, and those only pixels carry (MUG_UTA.md §1: MUG should
# beat MAE on the first kind and caption-only training on the second).
CAPTION_ATTRIBUTES = ("colour", "shape", "relation")
PIXEL_ATTRIBUTES = ("size", "hpos", "vpos", "count")
_THIRDS = {"hpos": ("left", "centre", "right"), "vpos": ("top", "middle", "bottom")}


def main_object(scene: dict[str, Any]) -> dict[str, Any]:
    objects = scene.get("objects")
    if not objects:
        raise ValueError(f"scene {scene.get('image', '?')!r} has no objects")
    return max(objects, key=lambda o: (o["radius"], -objects.index(o)))


def _third(coordinate: float, image_size: int, names: tuple[str, str, str]) -> str:
    return names[min(2, int(3 * coordinate / image_size))]


def scene_attributes(scene: dict[str, Any]) -> dict[str, str | None]:
    """{attribute: label or None} for one scene record of `<split>_scenes.json`."""
    try:
        obj = main_object(scene)
        size = int(scene["image_size"])
        objects = scene["objects"]
        relation = salient_relation(objects[0], objects[1]) if len(objects) >= 2 else None
        return {
            "count": str(len(objects)),
            "colour": obj["colour"],
            "shape": obj["shape"],
            "size": obj["size"],
            "hpos": _third(obj["x"], size, _THIRDS["hpos"]),
            "vpos": _third(obj["y"], size, _THIRDS["vpos"]),
            "relation": relation,
        }
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"scene {scene.get('image', '?')!r}: malformed record ({exc!r})") from exc


def load_split_attributes(data_root: str | Path, split: str) -> tuple[list[str], dict[str, list[str | None]]]:
    """(image paths relative to data_root, {attribute: per-image labels}) for one split."""
    path = Path(data_root) / f"{split}_scenes.json"
    scenes = read_json_file(path, expect=list, missing="scene ground truth: run the `data` stage")
    paths: list[str] = []
    labels: dict[str, list[str | None]] = {name: [] for name in ATTRIBUTES}
    for k, scene in enumerate(scenes):
        try:
            attributes = scene_attributes(scene)
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
