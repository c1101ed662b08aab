"""Synthetic probes: official formats read back by the harness's own loaders, ground truth checked
independently of the generator, deterministic output, sizes the test split can supply.

Measured at the defaults (~1,000 cases a benchmark) from 1,600 test scenes (seed 0, 64 px, the
params.yaml data set otherwise), on 2 CPU cores and a disk shared with running experiments:
write_probes 2.7-14.5 s (building and checking the cases 1.2 s, rendering Winoground's second
images ~1 s, the rest creating and fsync-ing 5,095 files); the probe folder 45.3 MB (winoground
17.0 MB for its 2,000 images, aro 9.2, valse 6.9, sugarcrepe 6.6, coco_order 4.6, manifest +
provenance 1.1). The former defaults wrote 370 files, 3.1 MB, in 0.3 s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_nta import independent_truth

from nas.config.base import ConfigError, from_dict
from nas.data.probes import (
    ROLE_TAGS,
    SUGARCREPE_FILES,
    VALSE_INSTRUMENTS,
    ProbeConfig,
    ProbeError,
    count_cases,
    order_tagger,
    probe_benchmarks,
    whitespace_tokenizer,
    write_probes,
)
from nas.data.synthetic import SyntheticConfig, generate, make_scene, render_scene
from nas.evaluation.benchmarks import evaluate_benchmark, pre_caption

CANONICAL = {
    "to the left of": "left of",
    "to the right of": "right of",
    "left of": "left of",
    "right of": "right of",
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
}
PHRASES = " (" + "|".join(CANONICAL) + ") "  # longest first

SYNTHETIC = SyntheticConfig(seed=5, n_train=0, n_val=0, n_test=40)
SMALL = ProbeConfig(
    seed=1,
    vg_relation=10,
    vg_attribution=8,
    order_images=5,
    winoground=9,
    valse_per_instrument=6,
    sugarcrepe_per_file=4,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(SYNTHETIC, root)
    return root


@pytest.fixture(scope="module")
def probes(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probes")
    write_probes(data_root, out, SMALL, overwrite=True)
    return out


def _scenes(data_root: Path) -> dict[str, dict[str, Any]]:
    scenes = json.loads((data_root / "test_scenes.json").read_text())
    return {Path(s["image"]).stem: s for s in scenes}


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


class TableScorer:
    """score = table[(image file name, text)], 0 for pairs not in the table."""

    def __init__(self, table: dict[tuple[str, str], float], name: str) -> None:
        self.table, self.name = table, name

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        return np.array(
            [self.table.get((Path(im.info["path"]).name, t), 0.0) for im, t in zip(images, texts)]
        )


def _oracle(probes: Path) -> TableScorer:
    """1 for each test case's known positive, read from the official files themselves."""
    table: dict[tuple[str, str], float] = {}
    for name in ("visual_genome_relation.json", "visual_genome_attribution.json"):
        for r in _read(probes / "aro" / name):
            table[(r["image_path"], r["true_caption"])] = 1.0
    for entry in _read(probes / "coco_order" / "coco_karpathy_test.json"):
        for caption in entry["caption"]:
            table[(Path(entry["image"]).name, pre_caption(caption))] = 1.0
    for line in (probes / "winoground" / "examples.jsonl").read_text().split("\n"):
        r = json.loads(line)
        for k in (0, 1):
            table[(f"{r[f'image_{k}']}.png", r[f"caption_{k}"])] = 1.0
    for path in (probes / "valse").glob("*.json"):
        for r in _read(path).values():
            table[(r["image_file"], r["caption"])] = 1.0
    for path in (probes / "sugarcrepe").glob("*.json"):
        for r in _read(path).values():
            table[(r["filename"], r["caption"])] = 1.0
    return TableScorer(table, "oracle")


def _evaluate_all(probes: Path, scorer) -> dict[str, dict[str, Any]]:
    return {
        name: evaluate_benchmark(name, spec["root"], scorer, spec["config"], **spec["load_options"])
        for name, spec in probe_benchmarks(probes).items()
    }


def test_the_official_loaders_read_every_probe_and_the_oracle_scores_100(probes: Path) -> None:
    results = _evaluate_all(probes, _oracle(probes))
    manifest = _read(probes / "manifest.json")
    assert sorted(results) == sorted(
        ["vg_relation", "vg_attribution", "coco_order", "winoground", "valse", "sugarcrepe"]
    )
    assert manifest["counts"] == {
        "vg_relation": 10,
        "vg_attribution": 8,
        "coco_order": 5 * SYNTHETIC.captions_per_image,
        "winoground": 9,
        "valse": 5 * 6,
        "sugarcrepe": 7 * 4,
    }
    for name, result in results.items():
        # Order: every case once per perturbation seed the manifest names (ProbeConfig.order_seeds: one)
        seeds = len(manifest["benchmarks"]["coco_order"]["config"]["seeds"]) if name == "coco_order" else 1
        assert seeds == 1 and result["n_cases"] == manifest["counts"][name] * seeds, name
        assert result["scorer"] == "oracle"
    m = {name: r["metrics"] for name, r in results.items()}
    assert m["vg_relation"]["macro"] == m["vg_attribution"]["macro"] == 100.0
    assert m["vg_attribution"]["n_groups_kept"] == m["vg_attribution"]["n_groups"]  # no >= 25 filter
    assert m["coco_order"]["precision_at_1"] == 100.0
    assert (m["winoground"]["text"], m["winoground"]["image"], m["winoground"]["group"]) == (
        100.0,
        100.0,
        100.0,
    )
    assert m["valse"]["micro"]["acc_r"] == 100.0 and m["valse"]["n_instruments"] == 5
    assert m["sugarcrepe"]["mean_of_files"] == 100.0 and len(m["sugarcrepe"]["files"]) == 7


def test_a_constant_scorer_follows_each_official_tie_rule(probes: Path) -> None:
    m = {name: r["metrics"] for name, r in _evaluate_all(probes, TableScorer({}, "constant")).items()}
    assert m["vg_relation"]["macro"] == 0.0 and m["coco_order"]["precision_at_1"] == 100.0
    assert m["winoground"]["group"] == 0.0 and m["valse"]["micro"]["acc_r"] == 0.0
    assert m["sugarcrepe"]["mean_of_files"] == 0.0


def test_aro_records_are_true_and_false_for_their_scene(probes: Path, data_root: Path) -> None:
    scenes = _scenes(data_root)
    size = SYNTHETIC.image_size
    relation = _read(probes / "aro" / "visual_genome_relation.json")
    for r in relation:
        objects = scenes[Path(r["image_path"]).stem]["objects"]
        assert (r["bbox_x"], r["bbox_y"], r["bbox_w"], r["bbox_h"]) == (0, 0, size, size)
        assert independent_truth(r["true_caption"], objects) == "true"
        assert independent_truth(r["false_caption"], objects) == "false"
        phrase = re.search(PHRASES, r["true_caption"]).group(0).strip()
        assert r["relation_name"] == CANONICAL[phrase]
        assert Counter(r["true_caption"].split()) == Counter(r["false_caption"].split())
    for r in _read(probes / "aro" / "visual_genome_attribution.json"):
        objects = scenes[Path(r["image_path"]).stem]["objects"]
        assert independent_truth(r["true_caption"], objects) == "true"
        assert independent_truth(r["false_caption"], objects) == "false"
        a0, a1 = r["attributes"]
        # the colours appear in this order in the true caption and swapped in the false one
        assert r["true_caption"].index(a0) < r["true_caption"].index(a1)
        assert r["false_caption"].index(a1) < r["false_caption"].index(a0)
        assert (probes / "aro" / "images" / r["image_path"]).is_file()


def test_winoground_examples_render_the_second_caption(probes: Path, data_root: Path) -> None:
    scenes = _scenes(data_root)
    provenance = _read(probes / "provenance.json")["winoground"]
    text = (probes / "winoground" / "examples.jsonl").read_text()
    assert not text.endswith("\n")  # as the official file
    records = [json.loads(line) for line in text.split("\n")]
    assert [r["id"] for r in records] == list(range(len(records)))
    assert Counter(provenance[str(r["id"])]["kind"] for r in records) == {
        "colour": 3,
        "shape": 3,
        "position": 3,
    }
    for r in records:
        assert len(r) == 9 and r["num_main_preds"] == 1 and r["collapsed_tag"] in ("Object", "Relation")
        scene = scenes[provenance[str(r["id"])]["scene"]]
        objects = scene["objects"]
        # the test's own counterfactual: exchange what the kind says between the two named objects
        named = [
            next(i for i, o in enumerate(objects) if f"{o['colour']} {o['shape']}" in mention)
            for mention in re.split(PHRASES, r["caption_0"])[::2]
        ]
        other = [dict(o) for o in objects]
        a, b = (other[i] for i in named)
        kind = provenance[str(r["id"])]["kind"]
        keys = {"colour": ("colour",), "shape": ("shape",), "position": ("x", "y")}[kind]
        for key in keys:
            a[key], b[key] = b[key], a[key]
        image_0 = np.asarray(Image.open(probes / "winoground" / "images" / f"{r['image_0']}.png"))
        image_1 = np.asarray(Image.open(probes / "winoground" / "images" / f"{r['image_1']}.png"))
        assert np.array_equal(image_0, np.asarray(Image.open(data_root / scene["image"])))
        assert np.array_equal(image_1, np.asarray(render_scene(other, SYNTHETIC, scene["noise_seed"])))
        assert Counter(r["caption_0"].split()) == Counter(r["caption_1"].split())
        assert independent_truth(r["caption_0"], objects) == "true"
        assert independent_truth(r["caption_1"], other) == "true"
        assert independent_truth(r["caption_0"], other) == "false"
        assert independent_truth(r["caption_1"], objects) == "false"


def _valse_truth(text: str, objects: list[dict[str, Any]]) -> bool:
    shapes = [o["shape"] for o in objects]
    if m := re.fullmatch(r"there is an? (\w+)", text):
        return m.group(1) in shapes
    if m := re.fullmatch(r"there is no (\w+)", text):
        return m.group(1) not in shapes
    if m := re.fullmatch(r"there are (\d+) shapes", text):
        return int(m.group(1)) == len(objects)
    if m := re.fullmatch(r"there is exactly one (\w+) (\w+)", text):
        return sum(o["colour"] == m.group(1) and o["shape"] == m.group(2) for o in objects) == 1
    if m := re.fullmatch(r"there are a number of (\w+) (\w+)", text):
        colour, plural = m.groups()
        return (
            sum(o["colour"] == colour and plural in (o["shape"] + "s", o["shape"] + "es") for o in objects)
            > 1
        )
    verdict = independent_truth(text, objects)
    assert verdict != "unclear", text
    return verdict == "true"


def test_valse_records_follow_the_official_schema_and_the_ground_truth(probes: Path, data_root: Path) -> None:
    scenes = _scenes(data_root)
    keys = {
        "dataset",
        "original_split",
        "dataset_idx",
        "linguistic_phenomena",
        "image_file",
        "caption",
        "foil",
    }
    for path in sorted((probes / "valse").glob("*.json")):
        records = _read(path)
        assert len(records) == 6
        for sample_id, r in records.items():
            assert keys | {"classes", "classes_foil", "mturk"} == set(r), sample_id
            assert r["mturk"]["caption"] >= 2 and sum(r["mturk"].values()) == 3  # kept by the official filter
            objects = scenes[Path(r["image_file"]).stem]["objects"]
            assert _valse_truth(r["caption"], objects), (sample_id, r["caption"])
            assert not _valse_truth(r["foil"], objects), (sample_id, r["foil"])
    existence = _read(probes / "valse" / "existence.json").values()
    assert {r["caption"].startswith("there is no") for r in existence} == {True, False}  # both directions


def test_sugarcrepe_pairs_are_true_and_false(probes: Path, data_root: Path) -> None:
    scenes = _scenes(data_root)
    for path in sorted((probes / "sugarcrepe").glob("*.json")):
        records = _read(path)
        assert list(records) == [str(k) for k in range(len(records))]
        for r in records.values():
            assert set(r) == {"filename", "caption", "negative_caption"}
            objects = scenes[Path(r["filename"]).stem]["objects"]
            assert independent_truth(r["caption"], objects) == "true", r
            assert independent_truth(r["negative_caption"], objects) == "false", r
            if path.stem.startswith("add"):
                assert len(r["negative_caption"].split()) > len(r["caption"].split())
            if path.stem.startswith("swap"):
                assert Counter(r["caption"].split()) == Counter(r["negative_caption"].split())


def test_order_tagger_uses_the_word_roles(probes: Path, data_root: Path) -> None:
    tagger = order_tagger(probes / "coco_order")
    entries = _read(probes / "coco_order" / "coco_karpathy_test.json")
    by_text = {c["text"]: c for s in _scenes(data_root).values() for c in s["captions"]}
    for entry in entries:
        assert entry["image"].startswith("val2014/") and (probes / "coco_order" / entry["image"]).is_file()
        for caption in entry["caption"]:
            record = by_text[caption]
            assert tagger(caption) == [(w, ROLE_TAGS[r]) for w, r in zip(record["words"], record["roles"])]
            assert whitespace_tokenizer(caption) == record["words"]
    with pytest.raises(ValueError, match="no tags for caption 'a purple elephant'"):
        tagger("a purple elephant")
    assert ROLE_TAGS["shape"] == "NN" and ROLE_TAGS["colour"] == ROLE_TAGS["size"] == "JJ"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_probes(probes: Path, data_root: Path, tmp_path: Path) -> None:
    write_probes(data_root, tmp_path / "again", SMALL)
    assert _files(tmp_path / "again") == _files(probes)
    write_probes(data_root, tmp_path / "other", dataclasses.replace(SMALL, seed=2))
    theirs = _files(tmp_path / "other")
    assert theirs["aro/visual_genome_relation.json"] != _files(probes)["aro/visual_genome_relation.json"]


def test_manifest_hashes_every_file_and_a_zero_size_leaves_a_benchmark_out(
    probes: Path, data_root: Path, tmp_path: Path
) -> None:
    manifest = _read(probes / "manifest.json")
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((probes / name).read_bytes()).hexdigest() == digest
    only_valse = ProbeConfig(
        vg_relation=0,
        vg_attribution=0,
        order_images=0,
        winoground=0,
        valse_per_instrument=6,
        sugarcrepe_per_file=0,
    )
    written = write_probes(data_root, tmp_path / "valse_only", only_valse)
    assert list(written["benchmarks"]) == ["valse"]
    assert sorted(p.name for p in (tmp_path / "valse_only").iterdir()) == [
        "manifest.json",
        "provenance.json",
        "valse",
    ]


def test_bad_inputs_get_clear_errors(probes: Path, data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nas.data.synthetic.generate"):
        write_probes(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_probes(data_root, probes, SMALL)
    with pytest.raises(ValueError, match="vg_relation must be >= 0"):
        ProbeConfig(vg_relation=-1)
    with pytest.raises(ValueError, match="split"):
        ProbeConfig(split="holdout")
    with pytest.raises(ConfigError, match="probes.winogrund"):
        from_dict(ProbeConfig, {"winogrund": 3}, "probes")
    with pytest.raises(FileNotFoundError, match="write_probes"):
        probe_benchmarks(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# Sizes: ~1,000 cases per headline, one scene per case, more scenes rather than repeated cases

RECOMMENDED_N_TEST = 1600  # data.synthetic.n_test for the ProbeConfig defaults


def test_the_defaults_give_about_1000_cases_per_headline_from_the_recommended_test_split() -> None:
    synthetic = SyntheticConfig(seed=0, n_test=RECOMMENDED_N_TEST)  # params.yaml's synthetic seed
    assert SyntheticConfig().n_test == RECOMMENDED_N_TEST  # DataConfig's defaults agree
    scenes = [make_scene(synthetic, "test", i) for i in range(RECOMMENDED_N_TEST)]  # no images
    cfg = ProbeConfig()
    counts = count_cases(scenes, synthetic, cfg)
    # one case as the loaders count it (ProbeConfig's docstring)
    assert counts == {
        "vg_relation": cfg.vg_relation,
        "vg_attribution": cfg.vg_attribution,
        "coco_order": cfg.order_images * synthetic.captions_per_image,
        "winoground": cfg.winoground,
        "valse": cfg.valse_per_instrument * len(VALSE_INSTRUMENTS),
        "sugarcrepe": cfg.sugarcrepe_per_file * len(SUGARCREPE_FILES),
    }
    assert min(counts.values()) >= 950, counts
    # The arithmetic behind n_test: a relational case (VG-R, VG-A, Winoground, ...) needs a scene
    # of its own with 2+ objects; the recommended split has enough of them, with a margin.
    relational = sum(len(scene["objects"]) >= 2 for scene in scenes)
    assert 1000 <= relational < RECOMMENDED_N_TEST
    more = dataclasses.replace(cfg, winoground=relational + 1)
    with pytest.raises(ProbeError, match=rf"^winoground: .* only {relational} of the 1600 test scenes"):
        count_cases(scenes, synthetic, more)


def _case_keys(probes: Path) -> dict[str, list[tuple[str, ...]]]:
    """(image, texts) of every case, per benchmark file, read from the official files."""
    keys = {
        name: [(r["image_path"], r["true_caption"], r["false_caption"]) for r in _read(probes / "aro" / f)]
        for name, f in (
            ("vg_relation", "visual_genome_relation.json"),
            ("vg_attribution", "visual_genome_attribution.json"),
        )
    }
    keys["coco_order"] = [
        (e["image"], c)
        for e in _read(probes / "coco_order" / "coco_karpathy_test.json")
        for c in e["caption"]
    ]
    provenance = _read(probes / "provenance.json")["winoground"]
    lines = (probes / "winoground" / "examples.jsonl").read_text().split("\n")
    keys["winoground"] = [
        (provenance[str(r["id"])]["scene"], r["caption_0"], r["caption_1"]) for r in map(json.loads, lines)
    ]
    for path in sorted((probes / "valse").glob("*.json")):
        keys[f"valse/{path.stem}"] = [
            (r["image_file"], r["caption"], r["foil"]) for r in _read(path).values()
        ]
    for path in sorted((probes / "sugarcrepe").glob("*.json")):
        keys[f"sugarcrepe/{path.stem}"] = [
            (r["filename"], r["caption"], r["negative_caption"]) for r in _read(path).values()
        ]
    return keys


def test_every_usable_scene_once_and_no_repeated_case_when_the_sizes_exhaust_the_split(
    data_root: Path, tmp_path: Path
) -> None:
    scenes = _scenes(data_root)
    relational = {name for name, scene in scenes.items() if len(scene["objects"]) >= 2}
    assert 0 < len(relational) < len(scenes)
    edge = ProbeConfig(
        seed=3,
        vg_relation=len(relational),
        vg_attribution=len(relational),
        order_images=len(scenes),
        winoground=len(relational),
        valse_per_instrument=len(relational),  # counting and relations need 2+ objects
        sugarcrepe_per_file=len(relational),  # so do replace_rel, swap_obj and swap_att
    )
    write_probes(data_root, tmp_path / "edge", edge)
    keys = _case_keys(tmp_path / "edge")
    assert len(keys) == 2 + 1 + 1 + len(VALSE_INSTRUMENTS) + len(SUGARCREPE_FILES)
    for name, cases in keys.items():
        assert len(set(cases)) == len(cases), f"{name}: a repeated case"
        used = [Path(case[0]).stem for case in cases]
        if name == "coco_order":
            assert sorted(set(used)) == sorted(scenes) and len(used) == 2 * len(scenes)
            continue
        assert len(set(used)) == len(used), f"{name}: a scene serves two cases"
        needs_two = name.split("/")[-1] in {
            "vg_relation",
            "vg_attribution",
            "winoground",
            "counting-small-quant",
            "relations",
            "replace_rel",
            "swap_obj",
            "swap_att",
        }
        assert set(used) <= (relational if needs_two else set(scenes)), name
        if needs_two:
            assert set(used) == relational, f"{name}: a usable scene left out while drawing"


@pytest.mark.parametrize(
    ("size", "benchmark"),
    [
        ("vg_relation", "vg_relation"),
        ("vg_attribution", "vg_attribution"),
        ("order_images", "coco_order"),
        ("winoground", "winoground"),
        ("valse_per_instrument", "valse/counting-small-quant"),
        ("sugarcrepe_per_file", "sugarcrepe/replace_rel"),
    ],
)
def test_a_size_the_scenes_cannot_supply_names_the_benchmark_and_writes_nothing(
    data_root: Path, probes: Path, size: str, benchmark: str
) -> None:
    scenes = _scenes(data_root)
    relational = sum(len(s["objects"]) >= 2 for s in scenes.values())
    supply = len(scenes) if size == "order_images" else relational
    before = _files(probes)
    too_many = dataclasses.replace(SMALL, **{size: supply + 1})
    with pytest.raises(
        ProbeError, match=rf"^{benchmark}: probes\.{size} asks for {supply + 1} cases"
    ) as error:
        write_probes(data_root, probes, too_many, overwrite=True)
    assert "n_test" in str(error.value) and "each case takes a scene of its own" in str(error.value)
    assert _files(probes) == before  # checked before anything was removed or written
    with pytest.raises(ProbeError, match=rf"^{benchmark}: "):
        count_cases(list(scenes.values()), SYNTHETIC, too_many)
    assert count_cases(list(scenes.values()), SYNTHETIC, dataclasses.replace(SMALL, **{size: supply}))


def test_count_cases_agrees_with_the_written_manifest(probes: Path, data_root: Path) -> None:
    scenes = json.loads((data_root / "test_scenes.json").read_text())
    assert count_cases(scenes, SYNTHETIC, SMALL) == _read(probes / "manifest.json")["counts"]


# ---------------------------------------------------------------------------------------------
# The manifest's roots and text tools, as real benchmark folders (nas.data.benchmark_folders) use them


def test_manifest_roots_may_be_absolute_or_lead_out_of_its_folder_and_name_the_text_tools(
    probes: Path, tmp_path: Path
) -> None:
    import os

    manifest = _read(probes / "manifest.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    specs = manifest["benchmarks"]
    specs["valse"]["root"] = str((probes / "valse").resolve())  # absolute
    specs["sugarcrepe"]["root"] = os.path.relpath((probes / "sugarcrepe").resolve(), elsewhere.resolve())
    specs["vg_relation"]["root"] = "../missing"  # resolved, not checked here
    specs["coco_order"]["root"] = str(probes / "coco_order")
    (elsewhere / "manifest.json").write_text(json.dumps(manifest))
    suite = probe_benchmarks(elsewhere)
    assert specs["sugarcrepe"]["root"].startswith("..")
    assert suite["valse"]["root"] == (probes / "valse").resolve()
    assert suite["sugarcrepe"]["root"] == (probes / "sugarcrepe").resolve()
    assert suite["sugarcrepe"]["config"]["annotation_dir"] == str((probes / "sugarcrepe").resolve())
    assert suite["vg_relation"]["root"] == (tmp_path / "missing").resolve()
    oracle = _oracle(probes)
    for name in ("valse", "sugarcrepe"):
        moved = evaluate_benchmark(name, suite[name]["root"], oracle, suite[name]["config"])
        here = probe_benchmarks(probes)[name]
        assert moved["metrics"] == evaluate_benchmark(name, here["root"], oracle, here["config"])["metrics"]
    # The synthetic manifest names its own tools; real folders name spaCy / NLTK (the loader's defaults).
    assert set(suite["coco_order"]["load_options"]) == {"tagger", "tokenizer"}
    specs["coco_order"]["load_options"] = {"tagger": "spacy_tagger", "tokenizer": "nltk_tokenizer"}
    (elsewhere / "manifest.json").write_text(json.dumps(manifest))
    assert probe_benchmarks(elsewhere)["coco_order"]["load_options"] == {}
    specs["coco_order"]["load_options"] = {"tagger": "stanza"}
    (elsewhere / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ProbeError, match="unknown tagger 'stanza'"):
        probe_benchmarks(elsewhere)
