"""The official benchmark folders of a real download (`data.source: files`), listed in the probe
manifest format, so that `evaluate` scores the real ARO / Winoground / VALSE / SugarCrepe through
the same code as the synthetic probes (`nas.data.probes.probe_benchmarks` ->
`nas.evaluation.probe_suite.run_probe_suite` -> the official-format loaders).

The folders, relative to the data root, as nas/data/download.py lays them out from
nas/data/catalog.py (each archive is extracted into its `extract_to` folder):

  aro/          visual_genome_relation.json, visual_genome_attribution.json, images/
                (vgr_vga_images.zip)                               vg_relation, vg_attribution
  coco/         coco_karpathy_test.json, val2014/                   coco_order
  flickr30k/    flickr30k_test.json, flickr30k-images/ (manual)     flickr30k_order
  winoground/   examples.jsonl, images/ (gated)                     winoground
  valse/        the 11 JSONs (copied from the package), visual7w/, swig/, visdial/; plus
                coco/val2017/, coco/train2014/, coco/val2014/       valse
  sugarcrepe/   the 7 JSONs (copied from the package); images coco/val2017/   sugarcrepe

`write_benchmark_manifest(data_root, out_root, benchmarks)` checks each named benchmark's
annotation files and image folders (an error names the missing file or folder and where to get
it; with `missing="skip"` the benchmark is left out and listed under "skipped" instead), loads it
once with the official loader to count its cases (and, with `check_images`, to find every missing
image, the loaders' own check), and writes `out_root/manifest.json`:

  {"format_version": 1, "kind": "benchmark_folders",
   "source": {"data_root": <as given>},
   "config": {"benchmarks": [...], "missing": "error" | "skip", "check_images": bool, "configs": {...}},
   "counts": {name: cases},                  # as the loader counts them; Order: per seed
   "benchmarks": {name: {"root", "config", "load_options", "cases", ...}},
   "skipped": {name: "why"},
   "files": {<annotation file under the data root>: sha256}}

"root" is the benchmark's folder relative to the manifest's folder (`relative=False`: absolute);
"config" holds the layout keys its loader needs (file names, image folders, paths relative to the
root) and nothing of the protocol, which stays at the loader's defaults (the official one) unless
`configs` sets it. VALSE and SugarCrepe read their annotations from `<data root>/valse/` and
`<data root>/sugarcrepe/` (the downloader's copies of the shipped files, checksum-verified when
fetched); where none of the files is there, the loader's own shipped copy is used (no
"annotation_dir"; the manifest says `"annotations": "shipped"`). The Order benchmarks name the real
text tools (`"load_options": {"tagger": "spacy_tagger", "tokenizer": "nltk_tokenizer"}`: the loader's
defaults), which are checked here when `check_text_tools` is set.

    names = selected_benchmarks(["pretrain", "benchmarks"])   # the benchmarks a selection fetches
    write_benchmark_manifest("data/paper", "data/probes", names, overwrite=True)
    run_probe_suite(scorers, "data/probes")                    # as for the synthetic probes

The `data` stage (nas.recipes.data.prepare_real) ends with `write_benchmarks(data)`: the manifest of the
benchmarks its download selection fetched. It lives here, with the loaders it checks the folders with
(one file per benchmark in nas/evaluation/benchmarks).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nas.config.base import from_dict
from nas.config.data import DataConfig
from nas.data.probes import REAL_TAGGER, REAL_TOKENIZER
from nas.evaluation.benchmarks.common import MissingBenchmarkFileError, file_sha256

KIND = "benchmark_folders"
Missing = Literal["error", "skip"]
# load_options written for the Order benchmarks: the loader's own defaults (spaCy, NLTK).
REAL_TEXT_TOOLS = {"tagger": REAL_TAGGER, "tokenizer": REAL_TOKENIZER}


@dataclass(frozen=True)
class BenchmarkFolder:
    """Where one benchmark lives under the data root and what brings it into a download selection."""

    name: str
    group: str  # the catalogue group (nas/data/catalog.py) the benchmark belongs to
    keys: tuple[str, ...]  # catalogue resources it needs; a selection with all of them fetches it
    root: str  # relative to the data root
    hint: str  # how to get what is missing


def _shipped(group: str) -> tuple[str, ...]:
    from nas.data.catalog import catalog

    return tuple(
        key for key, res in catalog().items() if key.startswith(f"{group}.") and res.method == "shipped"
    )


def folders() -> dict[str, BenchmarkFolder]:
    """Every benchmark the harness's loaders know, with its folder (nas/data/catalog.py layout)."""
    fetch = "fetch it with the `data` stage (data.download.selection: benchmarks, or the catalogue key)"
    entries = (
        BenchmarkFolder(
            "vg_relation",
            "aro",
            ("aro.vg_relation", "aro.vgr_vga_images"),
            "aro",
            f"{fetch}: aro.vg_relation",
        ),
        BenchmarkFolder(
            "vg_attribution",
            "aro",
            ("aro.vg_attribution", "aro.vgr_vga_images"),
            "aro",
            f"{fetch}: aro.vg_attribution",
        ),
        # Its files come with the coco group (Karpathy test + val2014), which `aro` pulls in.
        BenchmarkFolder(
            "coco_order",
            "aro",
            ("coco.karpathy_test", "coco.val2014"),
            "coco",
            f"{fetch}: coco.karpathy_test",
        ),
        BenchmarkFolder(
            "flickr30k_order",
            "aro",
            ("aro.flickr30k_test", "aro.flickr30k_images"),
            "flickr30k",
            f"{fetch}: aro.flickr30k_test, aro.flickr30k_images (manual)",
        ),
        BenchmarkFolder(
            "winoground",
            "winoground",
            ("winoground.examples", "winoground.images"),
            "winoground",
            f"{fetch}: winoground (gated: HF_TOKEN)",
        ),
        # Images from five sources: its root is the data root itself.
        BenchmarkFolder(
            "valse",
            "valse",
            (
                *_shipped("valse"),
                "valse.visual7w_images",
                "valse.swig_images",
                "valse.visdial_val_images",
                "coco2017.val2017",
                "coco.train2014",
                "coco.val2014",
            ),
            ".",
            f"{fetch}: valse",
        ),
        BenchmarkFolder(
            "sugarcrepe",
            "sugarcrepe",
            (*_shipped("sugarcrepe"), "coco2017.val2017"),
            ".",
            f"{fetch}: sugarcrepe",
        ),
    )
    return {entry.name: entry for entry in entries}


def selected_benchmarks(selection: Iterable[str]) -> tuple[str, ...]:
    """The benchmarks a download selection fetches whole: every catalogue resource a benchmark needs
    is selected, and so is at least one of its own group (so "pretrain", which fetches COCO, does
    not bring in COCO-Order). In `folders()` order; e.g. ["pretrain", "benchmarks"] -> all seven."""
    from nas.data.catalog import select

    resources, _ = select(list(selection))
    keys = {res.key for res in resources}
    return tuple(
        name
        for name, folder in folders().items()
        if set(folder.keys) <= keys and any(key.startswith(f"{folder.group}.") for key in keys)
    )


# ---------------------------------------------------------------------------------------------
# One benchmark: its root, layout config and annotation files, after checking they exist


@dataclass
class _Resolved:
    root: Path  # absolute or relative to the cwd, as data_root
    config: dict[str, Any]  # layout keys + the caller's keys; paths relative to the root
    annotations: list[Path]  # files to hash
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # manifest entry extras
    load_options: dict[str, Any] = dataclasses.field(default_factory=dict)


def _missing(path: Path, what: str, hint: str) -> MissingBenchmarkFileError:
    return MissingBenchmarkFileError(f"{what} {path} not found; {hint}")


def _require_file(path: Path, name: str, hint: str) -> Path:
    if not path.is_file():
        raise _missing(path, f"{name}: annotation file", hint)
    return path


def _require_dir(path: Path, name: str, hint: str) -> Path:
    if not path.is_dir():
        raise _missing(path, f"{name}: image folder", hint)
    return path


def _config_type(name: str) -> type:
    from nas.evaluation.benchmarks.runner import BENCHMARKS

    return BENCHMARKS[name].config_type


def _typed(name: str, config: Mapping[str, Any]) -> Any:
    return from_dict(_config_type(name), dict(config), f"benchmarks.{name}")


def _resolve_vg(name: str, data_root: Path, folder: BenchmarkFolder, extra: Mapping[str, Any]) -> _Resolved:
    from nas.evaluation.benchmarks import aro

    root = data_root / folder.root
    config = dict(extra)
    typed = _typed(name, config)
    file_key = "relation_file" if name == "vg_relation" else "attribution_file"
    hint = f"{aro.RELATION_HINT if name == 'vg_relation' else aro.ATTRIBUTION_HINT} Or {folder.hint}."
    annotation = _require_file(root / getattr(typed, file_key), name, hint)
    _require_dir(root / typed.image_dir, name, f"{aro.IMAGES_HINT} Or {folder.hint}.")
    return _Resolved(root, config, [annotation])


def _resolve_order(
    name: str, data_root: Path, folder: BenchmarkFolder, extra: Mapping[str, Any]
) -> _Resolved:
    from nas.evaluation.benchmarks import aro_order

    dataset = "coco" if name == "coco_order" else "flickr30k"
    root = data_root / folder.root
    config = dict(extra)
    typed = _typed(name, config)
    file_name = typed.coco_file if dataset == "coco" else typed.flickr_file
    hint = f"{aro_order.ANNOTATION_HINTS[dataset]} Or {folder.hint}."
    annotation = _require_file(root / file_name, name, hint)
    images = "val2014" if dataset == "coco" else "flickr30k-images"  # the Karpathy JSONs' image prefix
    _require_dir(root / images, name, f"{aro_order.IMAGE_HINTS[dataset]} Or {folder.hint}.")
    return _Resolved(root, config, [annotation], load_options=dict(REAL_TEXT_TOOLS))


def _resolve_winoground(
    name: str, data_root: Path, folder: BenchmarkFolder, extra: Mapping[str, Any]
) -> _Resolved:
    from nas.evaluation.benchmarks import winoground

    root = data_root / folder.root
    config = dict(extra)
    typed = _typed(name, config)
    annotation = _require_file(root / typed.examples_file, name, f"{winoground.HINT} Or {folder.hint}.")
    _require_dir(root / typed.image_dir, name, f"{winoground.HINT} Or {folder.hint}.")
    return _Resolved(root, config, [annotation])


def _annotation_dir(
    name: str, data_root: Path, subfolder: str, files: Sequence[str], hint: str
) -> tuple[str | None, list[Path]]:
    """(annotation_dir relative to the data root, or None for the shipped copy; files to hash)."""
    from nas.evaluation.benchmarks.common import resource_path

    here = [data_root / subfolder / f"{stem}.json" for stem in files]
    present = [path.is_file() for path in here]
    if all(present):
        return subfolder, here
    if not any(present):
        return None, [resource_path(name, f"{stem}.json") for stem in files]
    absent = [str(path) for path, ok in zip(here, present, strict=True) if not ok]
    raise MissingBenchmarkFileError(
        f"{name}: annotation file(s) {', '.join(absent)} not found, though {data_root / subfolder} holds the "
        f"others; {hint}"
    )


# VALSE image sources (BENCHMARKS.md §3.1) under the data root: (record's `dataset` or image-file
# prefix) -> candidate folders, the first holding the source's first image wins (the archives'
# top-level folder is images/, images_512/, VisualDialog_val2018/).
VALSE_DATASET_FOLDERS: dict[str, tuple[str, ...]] = {
    "visual7w": ("valse/visual7w/images", "valse/visual7w"),
    "SWiG": ("valse/swig/images_512", "valse/swig"),
    "coco2017": ("coco/val2017",),
    "coco_2017": ("coco/val2017",),
}
VALSE_PREFIX_FOLDERS: dict[str, tuple[str, ...]] = {
    "COCO_train2014_": ("coco/train2014",),  # coreference-standard (VisDial_v1.0)
    "COCO_val2014_": ("coco/val2014",),  # coreference-standard, foil-it
    "VisualDialog_val2018_": ("valse/visdial/VisualDialog_val2018", "valse/visdial"),  # coreference-hard
}


def _valse_sources(
    annotation_dir: Path, files: Sequence[str], valid_only: bool
) -> dict[tuple[str, str], str]:
    """(kind, key) -> the first image file of the scored records that come from that source."""
    import json

    from nas.evaluation.benchmarks.valse import MIN_CAPTION_VOTES

    sources: dict[tuple[str, str], str] = {}
    for stem in files:
        records = json.loads((annotation_dir / f"{stem}.json").read_text(encoding="utf-8"))
        for record in records.values() if isinstance(records, dict) else ():
            if not isinstance(record, dict):
                continue  # the loader names a malformed record
            votes = (record.get("mturk") or {}).get("caption", 0)
            if valid_only and isinstance(votes, int) and votes < MIN_CAPTION_VOTES:
                continue
            image, dataset = str(record.get("image_file", "")), str(record.get("dataset", ""))
            prefixes = [p for p in VALSE_PREFIX_FOLDERS if image.startswith(p)]
            key = ("prefix", max(prefixes, key=len)) if prefixes else ("dataset", dataset)
            sources.setdefault(key, image)
    return sources


def _resolve_valse(
    name: str, data_root: Path, folder: BenchmarkFolder, extra: Mapping[str, Any]
) -> _Resolved:
    from nas.evaluation.benchmarks.common import resource_path
    from nas.evaluation.benchmarks.valse import IMAGES_HINT

    typed = _typed(name, extra)
    subfolder, annotations = _annotation_dir(name, data_root, "valse", typed.files, folder.hint)
    config: dict[str, Any] = {} if subfolder is None else {"annotation_dir": subfolder}
    if not any(k in extra for k in ("image_dir", "image_dirs_by_dataset", "image_dirs_by_prefix")):
        by_dataset: dict[str, str] = {}
        by_prefix: dict[str, str] = {}
        source_dir = data_root / subfolder if subfolder else resource_path("valse")
        for (kind, key), image in _valse_sources(source_dir, typed.files, typed.valid_only).items():
            table = VALSE_PREFIX_FOLDERS if kind == "prefix" else VALSE_DATASET_FOLDERS
            if key not in table:
                raise MissingBenchmarkFileError(
                    f"{name}: no known image folder for records of dataset {key!r} (e.g. {image}); "
                    "give one with configs={'valse': {'image_dirs_by_dataset': {...}}}"
                )
            candidates = table[key]
            chosen = next((c for c in candidates if (data_root / c / image).is_file()), None)
            if chosen is None:
                chosen = next((c for c in candidates if (data_root / c).is_dir()), None)
            if chosen is None:
                where = " or ".join(str(data_root / c) for c in candidates)
                raise MissingBenchmarkFileError(
                    f"{name}: image folder {where} (the images of {key!r}, e.g. {image}) not found; "
                    f"{IMAGES_HINT} Or {folder.hint}."
                )
            (by_prefix if kind == "prefix" else by_dataset)[key] = chosen
        config["image_dirs_by_dataset"] = dict(sorted(by_dataset.items()))
        config["image_dirs_by_prefix"] = dict(sorted(by_prefix.items()))
    config.update(extra)
    annotations_kind = "shipped" if subfolder is None else "folder"
    return _Resolved(data_root / folder.root, config, annotations, {"annotations": annotations_kind})


def _resolve_sugarcrepe(
    name: str, data_root: Path, folder: BenchmarkFolder, extra: Mapping[str, Any]
) -> _Resolved:
    from nas.evaluation.benchmarks.sugarcrepe import IMAGES_HINT

    typed = _typed(name, extra)
    subfolder, annotations = _annotation_dir(name, data_root, "sugarcrepe", typed.files, folder.hint)
    config: dict[str, Any] = {} if subfolder is None else {"annotation_dir": subfolder}
    if "image_dir" not in extra:
        config["image_dir"] = "coco/val2017"
        _require_dir(data_root / "coco/val2017", name, f"{IMAGES_HINT} Or {folder.hint}.")
    config.update(extra)
    annotations_kind = "shipped" if subfolder is None else "folder"
    return _Resolved(data_root / folder.root, config, annotations, {"annotations": annotations_kind})


_RESOLVERS: dict[str, Callable[[str, Path, BenchmarkFolder, Mapping[str, Any]], _Resolved]] = {
    "vg_relation": _resolve_vg,
    "vg_attribution": _resolve_vg,
    "coco_order": _resolve_order,
    "flickr30k_order": _resolve_order,
    "winoground": _resolve_winoground,
    "valse": _resolve_valse,
    "sugarcrepe": _resolve_sugarcrepe,
}


def _count_cases(name: str, resolved: _Resolved, check_images: bool) -> int:
    """Load the benchmark once with its official loader: annotation errors and (with `check_images`)
    missing images surface here, as the evaluate stage would meet them. Order: the cases of one
    seed, built with whitespace stand-ins for the text tools (the options are not needed here)."""
    from nas.evaluation.benchmarks.runner import BENCHMARKS

    definition = BENCHMARKS[name]
    config = dict(resolved.config)
    if "annotation_dir" in config:
        config["annotation_dir"] = str(resolved.root / config["annotation_dir"])
    typed = _typed(name, config)
    options: dict[str, Any] = {}
    if name in ("coco_order", "flickr30k_order"):
        typed = dataclasses.replace(typed, seeds=typed.seeds[:1])
        options = {"tagger": lambda text: [(w, "X") for w in text.split()], "tokenizer": str.split}
    return len(definition.load(resolved.root, typed, check_images=check_images, **options))


def _check_text_tools() -> None:
    from nas.evaluation.benchmarks.text import nltk_tokenizer, spacy_tagger

    spacy_tagger()
    nltk_tokenizer()


def _manifest_path(target: Path, out: Path, relative: bool) -> str:
    """`target` as the manifest stores it: absolute, or relative to the manifest's folder. A `..`
    there walks up from `out`'s real folder: where `out` is reached through a symlink, both paths are
    taken through their real folders, else as given (symlinks on the target's side kept)."""
    if not relative:
        return Path(os.path.abspath(target)).as_posix()
    base, there = os.path.abspath(out), os.path.abspath(target)
    if os.path.realpath(base) != base:
        base, there = os.path.realpath(base), os.path.realpath(there)
    return Path(os.path.relpath(there, base)).as_posix()


def _refuse_overlap(data_root: Path, out: Path) -> None:
    """`out_root` gets its probe folders cleared (nas.data.probes): never the data root itself nor a
    folder inside a benchmark's folder."""
    data, here = Path(os.path.realpath(data_root)), Path(os.path.realpath(out))
    benchmark_folders = {"aro", "coco", "flickr30k", "winoground", "valse", "sugarcrepe"}
    inside = here == data or (
        here.is_relative_to(data) and here.relative_to(data).parts[0] in benchmark_folders
    )
    if inside:
        raise ValueError(
            f"out_root {out} is the data root {data_root} or inside one of its benchmark folders: give the "
            "manifest a folder of its own (data.probes_root, e.g. data/probes)"
        )


def write_benchmark_manifest(
    data_root: str | Path,
    out_root: str | Path,
    benchmarks: Sequence[str],
    *,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    missing: Missing = "error",
    check_images: bool = True,
    check_text_tools: bool = True,
    relative: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """List the real benchmark folders `benchmarks` under `data_root` in `out_root/manifest.json` (the
    probe manifest format: `nas.data.probes.probe_benchmarks` reads it) and return the manifest.

    `configs`: per benchmark, config keys of its loader merged over the layout's (e.g. VALSE `files`,
    Order `seeds`, a different `image_dir`), checked against the config type. A missing annotation
    file, image folder, image (`check_images`) or, for the Order benchmarks, text tool
    (`check_text_tools`: spaCy en_core_web_sm, NLTK Punkt) is a MissingBenchmarkFileError /
    MissingTextToolError naming it and where to get it; with `missing="skip"` that benchmark is left
    out and listed with the reason under "skipped" (malformed files are errors either way). Every
    benchmark is checked before `out_root` is touched; `out_root` must be absent or empty unless
    `overwrite`, and then only the probe files there are replaced (`nas.data.probes`' rule)."""
    from nas.data.probes import FORMAT_VERSION, _prepare, _refuse_non_empty, _write_json
    from nas.evaluation.benchmarks.text import MissingTextToolError

    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    known = folders()
    names = list(benchmarks)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; known: {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"benchmarks must be distinct, got {names}")
    configs = {name: dict(value) for name, value in (configs or {}).items()}
    stray = [name for name in configs if name not in names]
    if stray:
        raise ValueError(f"configs for {stray}, which are not among the benchmarks {names}")
    data, out = Path(data_root), Path(out_root)
    if not data.is_dir():
        raise MissingBenchmarkFileError(
            f"data root {data} not found: run the `data` stage (data.source: files)"
        )
    _refuse_overlap(data, out)
    _refuse_non_empty(out, overwrite)

    resolved: dict[str, _Resolved] = {}
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    tools_checked, tools_error = False, None  # spaCy / NLTK, checked once for both Order benchmarks
    for name in names:
        try:
            entry = _RESOLVERS[name](name, data, known[name], configs.get(name, {}))
            if name in ("coco_order", "flickr30k_order") and check_text_tools:
                if not tools_checked:
                    tools_checked = True
                    try:
                        _check_text_tools()
                    except MissingTextToolError as exc:
                        tools_error = exc
                if tools_error is not None:
                    raise MissingTextToolError(f"{name}: {tools_error}") from tools_error
            counts[name] = _count_cases(name, entry, check_images)
            resolved[name] = entry
        except (MissingBenchmarkFileError, MissingTextToolError) as exc:
            if missing == "error":
                raise
            skipped[name] = str(exc)

    files: dict[str, str] = {}  # under the data root, or "shipped:<benchmark>/<file>"
    for name, entry in resolved.items():
        for path in entry.annotations:
            key = (
                path.relative_to(data).as_posix()
                if path.is_relative_to(data)
                else f"shipped:{name}/{path.name}"
            )
            files.setdefault(key, file_sha256(path))
    _prepare(out, overwrite)
    specs = {
        name: {
            "root": _manifest_path(entry.root, out, relative),
            "config": entry.config,
            "load_options": entry.load_options,
            "cases": counts[name],
            **entry.extra,
        }
        for name, entry in resolved.items()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "source": {"data_root": str(data_root)},
        "config": {
            "benchmarks": names,
            "missing": missing,
            "check_images": check_images,
            "check_text_tools": check_text_tools,
            "configs": configs,
        },
        "counts": {name: counts[name] for name in resolved},
        "benchmarks": specs,
        "skipped": skipped,
        "files": dict(sorted(files.items())),
    }
    _write_json(out / "manifest.json", manifest)
    return manifest


def write_benchmarks(data: DataConfig, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """The probe manifest of the real benchmark folders the download selection fetches whole
    (`selected_benchmarks`), written into `data.probes_root`, so that `evaluate` scores them as it
    scores the synthetic probes. Every image must be on disk and, for
    the Order benchmarks, spaCy's en_core_web_sm and NLTK's Punkt installed: a missing one stops the
    stage, naming it. A selection without a whole benchmark writes no manifest. Returns
    `{"probe_<name>_cases": n}` for metrics/data.json."""
    names = selected_benchmarks(data.download.selection)
    if not names:
        earlier = Path(data.probes_root) / "manifest.json"
        left = f"; {earlier} from an earlier run is left as it is" if earlier.is_file() else ""
        echo(
            f"data: no benchmark in the selection {list(data.download.selection)}: no probe manifest written{left}"
        )
        return {}
    manifest = write_benchmark_manifest(data.root, data.probes_root, names, overwrite=True)
    echo(
        f"data: benchmark manifest {Path(data.probes_root) / 'manifest.json'}: "
        + ", ".join(f"{name} {n} cases" for name, n in manifest["counts"].items())
    )
    return {f"probe_{name}_cases": int(n) for name, n in manifest["counts"].items()}
