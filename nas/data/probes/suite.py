"""The whole probe suite: every benchmark's cases planned and checked before anything is written,
the probe folder written (each benchmark by its own module) with its provenance and manifest, and a
manifest read back as `{benchmark: loader arguments}`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.config.base import to_dict
from nas.data.nta import NTAConfig
from nas.data.probes.aro import _vg_cases, _write_aro
from nas.data.probes.aro_order import _order_cases, _order_entries, _order_options, _write_order
from nas.data.probes.common import (
    BENCHMARK_FOLDERS,
    FORMAT_VERSION,
    ProbeConfig,
    ProbeError,
    _prepare,
    _read_source,
    _refuse_non_empty,
    _scene_name,
    _sha256,
    _Source,
    _write_json,
)
from nas.data.probes.sugarcrepe import SUGARCREPE_FILES, _sugarcrepe_records, _write_sugarcrepe
from nas.data.probes.valse import VALSE_INSTRUMENTS, _valse_records, _write_valse
from nas.data.probes.winoground import _winoground_examples, _write_winoground
from nas.data.synthetic import SyntheticConfig, fsync_dir, synced_sha256


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
            counts[name] = _order_cases(cases)
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


def probe_benchmarks(out_root: str | Path) -> dict[str, dict[str, Any]]:
    """`{benchmark: {"root", "config", "load_options"}}` for `evaluate_benchmark`, from the manifest
    of a probe folder (write_probes) or of real benchmark folders
    (nas.evaluation.benchmark_folders.write_benchmark_manifest): config paths resolved, the Order tagger
    and tokenizer built. A root is relative to the manifest's folder (a root with `..` is resolved
    through the real paths) or absolute; an "annotation_dir" is relative to its root."""
    out = Path(out_root)
    path = out / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: write the probes with write_probes (data.source: synthetic), or the real "
            "benchmark folders' manifest with nas.evaluation.benchmark_folders.write_benchmark_manifest (the "
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
