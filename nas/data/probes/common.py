"""What the probe writers share: the probe config (`ProbeConfig`, defined with the params in
nas.config.synthetic), the source scenes they draw from, the seeded draws, the ground-truth checks every case
passes, and atomic file writing.

Names with a leading underscore are private to the `nas.data.probes` package (its writers import them).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.config.base import from_dict
from nas.config.synthetic import ProbeConfig  # noqa: F401  (the `data.probes` params block, re-exported)
from nas.data.nta import NTAConfig, caption_truth, split_clauses
from nas.data.synthetic import SyntheticConfig

FORMAT_VERSION = 1


class ProbeError(RuntimeError):
    """A probe text is not what it claims for its scene (a bug), or the source data is unusable."""


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


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


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


def _write_keyed_files(
    benchmark: str,
    groups: dict[str, list[tuple[str, dict, dict]]],
    source: _Source,
    out: Path,
    image_dir: str,
    specs: dict,
    provenance: dict,
) -> None:
    """A benchmark whose official layout is one JSON file per group ({case key: record}) beside an image
    folder (VALSE's instruments, SugarCrepe's files): the files, the images, its spec and provenance."""
    root = out / benchmark
    counts, origins = {}, {}
    for name, records in groups.items():
        for key, _record, origin in records:
            _copy_scene_image(source, origin, root / image_dir)
            origins[f"{name}/{key}"] = origin
        _write_json(root / f"{name}.json", {key: record for key, record, _ in records})
        counts[name] = len(records)
    specs[benchmark] = {
        "root": benchmark,
        # Paths in a probe config are relative to its root; probe_benchmarks() resolves them.
        "config": {"annotation_dir": ".", "files": list(counts), "image_dir": image_dir},
        "cases": sum(counts.values()),
        "files": counts,
    }
    provenance[benchmark] = origins


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
