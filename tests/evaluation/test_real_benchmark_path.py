"""The real-benchmark path end to end: a data root laid out as the downloader leaves it (nas/data/
catalog.py), with subsets of the SHIPPED VALSE and SugarCrepe files in their official format and a
handful of generated images at the paths those records name; its probe manifest
(`write_benchmark_manifest`), read by `probe_benchmarks` exactly as the synthetic one, and scored by
`run_probe_suite` with a tiny untrained ALBEF, as the evaluate stage scores the probes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data.probes import probe_benchmarks
from nas.evaluation.benchmark_folders import folders, selected_benchmarks, write_benchmark_manifest
from nas.evaluation.benchmarks import MissingBenchmarkFileError, resource_path
from nas.evaluation.benchmarks.valse import MIN_CAPTION_VOTES

# VALSE: one file per image source of the layout (visual7w, COCO 2017, COCO val2014 by prefix,
# COCO train2014 + val2014 under one `dataset`, VisDial val by prefix); `n` valid records each.
VALSE_PICK = {
    "existence": 2,  # visual7w -> valse/visual7w/images
    "plurals": 1,  # coco2017 -> coco/val2017
    "foil-it": 1,  # FOIL dataset, COCO_val2014_* -> coco/val2014
    "coreference-hard": 1,  # VisDial_v1.0, VisualDialog_val2018_* -> valse/visdial/VisualDialog_val2018
}
INVALID_EXISTENCE = "existence_visual7w_2379993"  # mturk.caption 1: in the file, filtered by the loader
# coreference-standard: one record of each COCO 2014 folder (the same `dataset`, VisDial_v1.0).
COREF_PREFIXES = ("COCO_train2014_", "COCO_val2014_")
SUGARCREPE_PICK = {"swap_obj": ("0", "107", "109"), "add_att": ("0",)}  # "108" is the gap (§4)
VALSE_FOLDERS = {
    "visual7w": "valse/visual7w/images",
    "coco2017": "coco/val2017",
    "FOIL dataset": "coco/val2014",
    "COCO_train2014_": "coco/train2014",
    "COCO_val2014_": "coco/val2014",
    "VisualDialog_val2018_": "valse/visdial/VisualDialog_val2018",
}


def _shipped(benchmark: str, stem: str) -> dict:
    return json.loads(resource_path(benchmark, f"{stem}.json").read_text(encoding="utf-8"))


def _valid(record: dict) -> bool:
    return record["mturk"]["caption"] >= MIN_CAPTION_VOTES and record["caption"] != record["foil"]


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _valse_folder(record: dict) -> str:
    for prefix in ("COCO_train2014_", "COCO_val2014_", "VisualDialog_val2018_"):
        if record["image_file"].startswith(prefix):
            return VALSE_FOLDERS[prefix]
    return VALSE_FOLDERS[record["dataset"]]


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1), encoding="utf-8")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """<tmp>/data as the downloader lays it out, with subset annotation files (official format)."""
    root = tmp_path / "data"
    seed = 0
    for stem, n in VALSE_PICK.items():
        records = _shipped("valse", stem)
        subset = {k: r for k, r in records.items() if _valid(r)}
        subset = dict(list(subset.items())[:n])
        if stem == "existence":
            subset[INVALID_EXISTENCE] = records[INVALID_EXISTENCE]
        _write(root / "valse" / f"{stem}.json", subset)
    records = _shipped("valse", "coreference-standard")
    subset = {}
    for prefix in COREF_PREFIXES:
        key = next(k for k, r in records.items() if _valid(r) and r["image_file"].startswith(prefix))
        subset[key] = records[key]
    _write(root / "valse" / "coreference-standard.json", subset)
    for path in (root / "valse").glob("*.json"):
        for record in json.loads(path.read_text()).values():
            seed += 1
            _image(root / _valse_folder(record) / record["image_file"], seed)
    for stem, keys in SUGARCREPE_PICK.items():
        records = _shipped("sugarcrepe", stem)
        subset = {key: records[key] for key in keys}
        _write(root / "sugarcrepe" / f"{stem}.json", subset)
        for record in subset.values():
            seed += 1
            _image(root / "coco" / "val2017" / record["filename"], seed)
    return root


VALSE_FILES = [*VALSE_PICK, "coreference-standard"]
CONFIGS = {"valse": {"files": VALSE_FILES}, "sugarcrepe": {"files": list(SUGARCREPE_PICK)}}
N_VALSE = sum(VALSE_PICK.values()) + len(COREF_PREFIXES)  # the invalid record is filtered
N_SUGARCREPE = sum(len(keys) for keys in SUGARCREPE_PICK.values())


def test_selection_names_the_benchmarks_it_fetches_whole() -> None:
    assert selected_benchmarks(["pretrain", "benchmarks"]) == tuple(folders())
    assert len(folders()) == 7
    assert selected_benchmarks(["pretrain"]) == ()  # COCO alone does not make COCO-Order
    assert selected_benchmarks(["sugarcrepe"]) == ("sugarcrepe",)
    assert selected_benchmarks(["aro"]) == ("vg_relation", "vg_attribution", "coco_order", "flickr30k_order")
    assert selected_benchmarks(["aro.vg_relation"]) == ()  # its images are not selected


def test_manifest_of_real_folders_is_read_like_the_synthetic_one(data_root: Path, tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    manifest = write_benchmark_manifest(data_root, probes, ["valse", "sugarcrepe"], configs=CONFIGS)
    assert manifest == json.loads((probes / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["kind"] == "benchmark_folders"
    assert manifest["counts"] == {"valse": N_VALSE, "sugarcrepe": N_SUGARCREPE}
    assert manifest["skipped"] == {}
    valse = manifest["benchmarks"]["valse"]
    assert valse["root"] == "../data"  # relative to the manifest's folder
    assert valse["annotations"] == "folder"
    assert valse["config"]["annotation_dir"] == "valse"
    folders_used = {**valse["config"]["image_dirs_by_dataset"], **valse["config"]["image_dirs_by_prefix"]}
    assert folders_used == {
        "visual7w": "valse/visual7w/images",
        "coco2017": "coco/val2017",
        "COCO_train2014_": "coco/train2014",
        "COCO_val2014_": "coco/val2014",
        "VisualDialog_val2018_": "valse/visdial/VisualDialog_val2018",
    }
    assert manifest["benchmarks"]["sugarcrepe"]["config"] == {
        "annotation_dir": "sugarcrepe",
        "image_dir": "coco/val2017",
        "files": list(SUGARCREPE_PICK),
    }
    assert sorted(manifest["files"]) == sorted(
        [f"valse/{stem}.json" for stem in VALSE_FILES]
        + [f"sugarcrepe/{stem}.json" for stem in SUGARCREPE_PICK]
    )
    suite = probe_benchmarks(probes)
    assert suite["valse"]["root"] == data_root.resolve()
    assert suite["valse"]["config"]["annotation_dir"] == str(data_root.resolve() / "valse")
    assert suite["valse"]["load_options"] == suite["sugarcrepe"]["load_options"] == {}
    # Written again: the same bytes (no time stamps); a non-empty folder needs overwrite=True.
    before = (probes / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_benchmark_manifest(data_root, probes, ["valse"], configs={"valse": CONFIGS["valse"]})
    write_benchmark_manifest(data_root, probes, ["valse", "sugarcrepe"], configs=CONFIGS, overwrite=True)
    assert (probes / "manifest.json").read_bytes() == before


def test_run_probe_suite_scores_the_real_folders_with_a_tiny_model(data_root: Path, tmp_path: Path) -> None:
    from nas.data.tokenizer import load_tokenizer
    from nas.data.transforms import TransformConfig, build_eval_transform
    from nas.evaluation.model_scorers import build_scorer
    from nas.evaluation.probe_suite import run_probe_suite
    from nas.models.registry import create_model

    probes = tmp_path / "probes"
    write_benchmark_manifest(data_root, probes, ["valse", "sugarcrepe"], configs=CONFIGS)
    torch.manual_seed(0)
    model = create_model("albef_tiny").eval()  # untrained: the scores only have to be real numbers
    transform, tokenizer = build_eval_transform(TransformConfig()), load_tokenizer()
    scorers = [build_scorer(kind, model, transform, tokenizer, max_length=32) for kind in ("itm", "itc")]

    def config_for(scorer, name):  # as experiments/evaluate.py: p_c / p_f for the ITM probability
        return {"match_threshold": 0.5} if name == "valse" and scorer.name == "itm_probability" else {}

    outcomes: dict = {}
    scores_dir = tmp_path / "scores"
    results = run_probe_suite(scorers, probes, (), scores_dir, config_for, outcomes=outcomes)
    assert sorted(results) == ["sugarcrepe", "valse"]
    for scorer in scorers:
        valse, sugarcrepe = results["valse"][scorer.name], results["sugarcrepe"][scorer.name]
        assert valse["n_cases"] == N_VALSE and sugarcrepe["n_cases"] == N_SUGARCREPE
        assert valse["root"] == str(data_root.resolve())
        metrics = valse["metrics"]
        assert {"instruments", "pieces", "macro", "micro", "n_instruments", "valid_only"} <= set(metrics)
        assert sorted(metrics["instruments"]) == sorted(VALSE_FILES)
        assert metrics["n_instruments"] == len(VALSE_FILES) and metrics["valid_only"] is True
        assert {"acc_r", "auroc"} <= set(metrics["micro"])
        if scorer.name == "itm_probability":
            assert {"p_c", "p_f", "acc", "min_p_c_p_f"} <= set(metrics["micro"])
        assert metrics["instruments"]["existence"]["n"] == VALSE_PICK["existence"]
        metrics = sugarcrepe["metrics"]
        assert {"files", "categories", "mean_of_files", "pooled"} <= set(metrics)
        assert {stem: row["n"] for stem, row in metrics["files"].items()} == {
            stem: len(keys) for stem, keys in SUGARCREPE_PICK.items()
        }
        assert sorted(metrics["categories"]) == ["Add", "Swap"]
        for figure in (valse["metrics"]["micro"]["acc_r"], sugarcrepe["metrics"]["pooled"]["accuracy"]):
            assert math.isfinite(figure) and 0.0 <= figure <= 100.0
        for name, n in (("valse", N_VALSE), ("sugarcrepe", N_SUGARCREPE)):
            assert len(outcomes[name][scorer.name]["outcomes"]) == n
            lines = (scores_dir / f"{name}.{scorer.name}.jsonl").read_text().splitlines()
            entries = [json.loads(line) for line in lines[1:]]  # after the header
            assert len(entries) == n
            values = np.array([entry["scores"] for entry in entries], dtype=float)
            assert values.shape == (n, 1, 2) and np.isfinite(values).all()
    assert results["sugarcrepe"]["itm_probability"]["config"]["files"] == list(SUGARCREPE_PICK)


def test_missing_files_are_named_or_skipped_and_counted(data_root: Path, tmp_path: Path) -> None:
    gone = next((data_root / "coco" / "val2017").iterdir())
    gone.unlink()
    with pytest.raises(MissingBenchmarkFileError, match=f"image file.*{gone.name}"):
        write_benchmark_manifest(data_root, tmp_path / "a", ["valse", "sugarcrepe"], configs=CONFIGS)
    assert not (tmp_path / "a").exists()  # nothing written before every benchmark is checked
    manifest = write_benchmark_manifest(
        data_root, tmp_path / "b", ["valse", "sugarcrepe"], configs=CONFIGS, missing="skip"
    )
    assert set(manifest["counts"]) | set(manifest["skipped"]) == {"valse", "sugarcrepe"}
    assert len(manifest["skipped"]) == 1 and gone.name in next(iter(manifest["skipped"].values()))
    assert sorted(probe_benchmarks(tmp_path / "b")) == sorted(manifest["counts"])

    (data_root / "valse" / "plurals.json").unlink()  # the other VALSE files are there
    with pytest.raises(MissingBenchmarkFileError, match="plurals.json"):
        write_benchmark_manifest(data_root, tmp_path / "c", ["valse"], configs={"valse": CONFIGS["valse"]})
    shutil.rmtree(data_root / "valse" / "visdial")
    with pytest.raises(MissingBenchmarkFileError, match="visdial/VisualDialog_val2018"):
        write_benchmark_manifest(
            data_root,
            tmp_path / "c",
            ["valse"],
            configs={"valse": {"files": ["coreference-hard"]}},
        )
    with pytest.raises(MissingBenchmarkFileError, match="visual_genome_relation.json"):
        write_benchmark_manifest(data_root, tmp_path / "c", ["vg_relation"])
    with pytest.raises(ValueError, match="data root"):
        write_benchmark_manifest(data_root, data_root, ["sugarcrepe"], configs={"sugarcrepe": {}})
    with pytest.raises(ValueError, match="unknown benchmarks"):
        write_benchmark_manifest(data_root, tmp_path / "c", ["sugar_crepe"])


def test_the_data_stage_writes_the_manifest_for_its_selection(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nas.config import from_dict
    from nas.config.data import DataConfig
    from nas.data import download
    from nas.recipes.data import prepare_real as prepare_files

    monkeypatch.setattr(download, "fetch", lambda *args, **kwargs: download.FetchReport())
    probes = tmp_path / "probes"

    def data(selection: list[str]) -> DataConfig:
        fields = {"source": "files", "root": str(data_root), "probes_root": str(probes)}
        return from_dict(DataConfig, {**fields, "download": {"selection": selection}}, "data")

    lines: list[str] = []
    assert "probe_valse_cases" not in prepare_files(data(["weights"]), echo=lines.append)
    assert not probes.exists() and "no benchmark" in lines[-1]
    # The whole SugarCrepe (7 files, 7,511 records): the subset folder holds 2 files, so it is an error.
    with pytest.raises(MissingBenchmarkFileError, match="replace_obj.json"):
        prepare_files(data(["sugarcrepe"]), echo=lines.append)
