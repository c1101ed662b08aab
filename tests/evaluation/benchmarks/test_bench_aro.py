"""ARO fixtures (BENCHMARKS.md §5.2-§5.4): synthetic records, generated images, hand-set scores."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import (
    ConstantScorer,
    FunctionScorer,
    LookupScorer,
    assert_round_trip,
    fake_tagger,
    fake_tokenizer,
    write_image,
    write_json,
)

from nas.evaluation.benchmarks import (
    AroConfig,
    BenchmarkDataError,
    MissingBenchmarkFileError,
    OrderConfig,
    ScoreError,
    evaluate_benchmark,
    load_excluded_relations,
    pre_caption,
    score_from_file,
)
from nas.evaluation.benchmarks.aro import load_vg_relation
from nas.evaluation.benchmarks.aro_order import load_order


def test_exclusion_list_is_the_notebooks_157_names() -> None:
    names = load_excluded_relations()
    assert len(names) == 157 == len(set(names))
    assert names[0] == "adjusting" and names[-8:] == (
        "by",
        "of",
        "near",
        "next to",
        "with",
        "beside",
        "on the side of",
        "around",
    )


def _record(image: str, relation: str, box: tuple, index: int, **extra) -> dict:
    x, y, w, h = box
    return {
        "image_path": image,
        "bbox_x": x,
        "bbox_y": y,
        "bbox_w": w,
        "bbox_h": h,
        "relation_name": relation,
        "true_caption": f"true {index}",
        "false_caption": f"false {index}",
        **extra,
    }


@pytest.fixture
def vgr_root(tmp_path: Path) -> Path:
    for name in ("2315375.jpg", "2320541.jpg", "2400001.jpg"):
        write_image(tmp_path / "images" / name, (16, 12))
    records = [
        _record("2315375.jpg", "on", (2, 3, 6, 4), 0),  # inside the image; right
        _record("2320541.jpg", "on", (10, 8, 10, 10), 1),  # partly outside; wrong
        _record("2315375.jpg", "near", (1.4, 2.6, 5.2, 3.3), 2),  # excluded; right
        _record("2400001.jpg", "holding", (0, 0, 16, 12), 3),  # tie: wrong
        _record("2400001.jpg", "riding", (0, 0, 8, 8), 4, annotator="x", region_id=7),  # alone; right
        _record("2320541.jpg", "wearing", (0, 0, 4, 4), 5),  # wrong
    ]
    write_json(tmp_path / "visual_genome_relation.json", records)
    return tmp_path


VGR_SCORES = {
    "true 0": 0.9, "false 0": 0.1,
    "true 1": 0.2, "false 1": 0.8,
    "true 2": 0.7, "false 2": 0.3,
    "true 3": 0.5, "false 3": 0.5,
    "true 4": 0.6, "false 4": 0.4,
    "true 5": 0.0, "false 5": 1.0,
}  # fmt: skip


def vgr_lookup() -> FunctionScorer:
    return FunctionScorer(lambda image, text: VGR_SCORES[text], "lookup")


def test_vgr_loader_options_false_first_and_crops(vgr_root: Path) -> None:
    cases = load_vg_relation(vgr_root)
    assert [c.texts for c in cases[:2]] == [("false 0", "true 0"), ("false 1", "true 1")]
    assert [c.meta["group"] for c in cases] == ["on", "on", "near", "holding", "riding", "wearing"]
    assert cases[0].images[0].load().size == (6, 4)
    assert cases[1].images[0].load().size == (10, 10)  # partly outside: same size, zero-filled
    assert cases[2].images[0].box == (1.4, 2.6, 6.6, 5.9)


def test_vgr_macro_drops_excluded_relations_and_keeps_single_cases(vgr_root: Path) -> None:
    metrics = evaluate_benchmark("vg_relation", vgr_root, vgr_lookup())["metrics"]
    # kept: on 1/2, holding 0/1 (tie), riding 1/1, wearing 0/1; "near" excluded
    assert metrics["macro"] == pytest.approx((50 + 0 + 100 + 0) / 4)
    assert metrics["micro"] == pytest.approx(100 * 2 / 5)
    assert metrics["micro_all"] == pytest.approx(100 * 3 / 6)
    assert (metrics["n_groups"], metrics["n_groups_kept"], metrics["n_ties"]) == (5, 4, 1)
    near = next(row for row in metrics["groups"] if row["group"] == "near")
    assert near == {
        "group": "near",
        "count": 1,
        "correct": 1,
        "accuracy": 100.0,
        "kept": False,
        "dropped_because": "excluded",
    }


def test_vgr_options_no_exclusion_and_min_count(vgr_root: Path) -> None:
    plain = evaluate_benchmark("vg_relation", vgr_root, vgr_lookup(), {"exclude_relations": False})
    assert plain["metrics"]["macro"] == pytest.approx((50 + 100 + 0 + 100 + 0) / 5)
    counted = evaluate_benchmark("vg_relation", vgr_root, vgr_lookup(), AroConfig(relation_min_count=2))
    assert counted["metrics"]["macro"] == pytest.approx(50.0) and counted["metrics"]["n_groups_kept"] == 1


def test_vgr_constant_and_oracle(vgr_root: Path) -> None:
    assert evaluate_benchmark("vg_relation", vgr_root, ConstantScorer())["metrics"]["macro"] == 0.0
    oracle = FunctionScorer(lambda image, text: float(text.startswith("true")), "oracle")
    assert evaluate_benchmark("vg_relation", vgr_root, oracle)["metrics"]["macro"] == 100.0


def test_vgr_missing_image_names_file_and_source(vgr_root: Path) -> None:
    (vgr_root / "images" / "2400001.jpg").unlink()
    with pytest.raises(MissingBenchmarkFileError, match=r"2400001\.jpg.*1qaPlrwhGNMrR3a11iopZUT_GPP_LrgP9"):
        load_vg_relation(vgr_root)


def test_vgr_missing_json_names_file_and_drive_id(tmp_path: Path) -> None:
    with pytest.raises(
        MissingBenchmarkFileError, match=r"visual_genome_relation\.json.*1kX2iCHEv0CADL8dSO1nMdW"
    ):
        load_vg_relation(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox_w": "7"}, r"record 0: field 'bbox_w' should be int or float"),
        ({"bbox_h": 0}, r"record 0: bbox_w and bbox_h must be > 0"),
        ({"relation_name": None}, r"record 0: field 'relation_name' should be str"),
    ],
)
def test_vgr_bad_record_is_named(vgr_root: Path, change: dict, message: str) -> None:
    record = _record("2315375.jpg", "on", (2, 3, 6, 4), 0)
    record.update(change)
    write_json(vgr_root / "visual_genome_relation.json", [record])
    with pytest.raises(BenchmarkDataError, match=message):
        load_vg_relation(vgr_root)


def test_vga_keeps_ordered_pairs_with_at_least_25_cases(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "1.jpg", (8, 8))
    plan = [("white", "black", 25, 20), ("black", "white", 24, 24), ("red", "blue", 30, 12)]
    records, table = [], {}
    for a0, a1, count, right in plan:
        for i in range(count):
            true, false = f"{a0} {a1} true {i}", f"{a0} {a1} false {i}"
            records.append(
                {"image_path": "1.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 8, "bbox_h": 8,
                 "attributes": [a0, a1], "true_caption": true, "false_caption": false}
            )  # fmt: skip
            tie = (a0, i) == ("red", right)  # one tie among red_blue's wrong cases
            table[("1.jpg", true)] = 1.0 if i < right else (0.5 if tie else 0.0)
            table[("1.jpg", false)] = 0.5
    write_json(tmp_path / "visual_genome_attribution.json", records)
    metrics = evaluate_benchmark("vg_attribution", tmp_path, LookupScorer(table))["metrics"]
    kept = {row["group"]: row["accuracy"] for row in metrics["groups"] if row["kept"]}
    assert kept == {"white_black": 80.0, "red_blue": 40.0}  # black_white (24 < 25) dropped
    assert metrics["macro"] == pytest.approx(60.0)
    assert metrics["micro"] == pytest.approx(100 * 32 / 55)
    assert metrics["n_ties"] == 1


# --------------------------------------------------------------------------------------------- Order

THIRTY_FIVE = " ".join(f"w{i}" for i in range(35))
ENTRY_0 = [
    "A man with a red helmet on a small moped on a dirt road. ",
    'The "big" dog (left): barks!  Loudly;  at #3 ~cats*.',
    "A child's toy, on the floor.\n",
    "a\tb  c",
    THIRTY_FIVE,
    "A brown dog chases a red ball near the old tree.",
]
ENTRY_1 = ["Dog.", "A child's toy, on the floor."]


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg", (8, 8))
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000002.jpg", (8, 8))
    write_json(
        tmp_path / "coco_karpathy_test.json",
        [
            {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": ENTRY_0},
            {"image": "val2014/COCO_val2014_000000000002.jpg", "caption": ENTRY_1},
        ],
    )
    return tmp_path


def _load(root: Path, **config) -> list:
    return load_order(root, "coco", OrderConfig(**config), tagger=fake_tagger, tokenizer=fake_tokenizer)


def test_order_cases_one_per_caption_with_normalised_options(coco_root: Path) -> None:
    cases = _load(coco_root, seeds=(1,))
    assert len(cases) == 8  # 6 captions (more than 5 is legal) + 2
    assert [c.case_id for c in cases[:2]] == ["seed1/0_0", "seed1/0_1"]
    for case, raw in zip(cases, ENTRY_0 + ENTRY_1):
        assert case.texts[0] == pre_caption(raw)
        assert all(option == pre_caption(option) for option in case.texts)
        assert all(len(option.split(" ")) <= 30 for option in case.texts)
    assert cases[4].texts[0] == " ".join(f"w{i}" for i in range(30))
    assert set(cases[6].texts) == {"dog"}


@pytest.fixture
def restore_global_rngs():
    numpy_state, python_state = np.random.get_state(), random.getstate()
    yield
    np.random.set_state(numpy_state)
    random.setstate(python_state)


@pytest.mark.usefixtures("restore_global_rngs")
def test_order_seeds_and_rng_modes(coco_root: Path) -> None:
    np.random.seed(123)
    random.seed(123)
    numpy_state, python_state = np.random.get_state()[1].copy(), random.getstate()
    dedicated = _load(coco_root, seeds=(1, 2))
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)  # globals untouched
    assert random.getstate() == python_state
    assert [c.texts for c in dedicated] == [c.texts for c in _load(coco_root, seeds=(1, 2))]
    by_seed = {s: [c.texts for c in dedicated if c.meta["seed"] == s] for s in (1, 2)}
    assert by_seed[1][5] != by_seed[2][5]  # the caption with 3 nouns and 3 adjectives
    globally = _load(coco_root, seeds=(1, 2), rng_mode="global")
    assert [c.texts for c in globally] == [c.texts for c in dedicated]  # same draws, other generators
    assert not np.array_equal(np.random.get_state()[1], numpy_state)  # the global mode did draw


def test_order_ties_count_right(coco_root: Path) -> None:
    options = {"tagger": fake_tagger, "tokenizer": fake_tokenizer}
    result = evaluate_benchmark("coco_order", coco_root, ConstantScorer(), {"seeds": [1, 2]}, **options)
    assert result["metrics"]["precision_at_1"] == 100.0 and result["metrics"]["sd"] == 0.0
    assert result["chance"] == {"precision_at_1": 20.0}


def test_order_lookup_scorer_hand_computed(coco_root: Path) -> None:
    # Originals of captions 0, 2 and 6 ("Dog.") are preferred; for every other caption any
    # perturbation beats the original. "Dog." is right anyway (five equal options tie).
    preferred = {pre_caption(ENTRY_0[0]), pre_caption(ENTRY_0[2]), "dog"}
    originals = {pre_caption(c) for c in ENTRY_0 + ENTRY_1}

    def fn(image: str, text: str) -> float:
        if text in originals:
            return 1.0 if text in preferred else 0.0
        return 0.5

    scorer = FunctionScorer(fn, "lookup")
    options = {"tagger": fake_tagger, "tokenizer": fake_tokenizer}
    result = evaluate_benchmark("coco_order", coco_root, scorer, {"seeds": [1, 2, 3]}, **options)
    # right: 0_0, 0_2, 1_0 (dog), 1_1 (same text as 0_2) -> 4 of 8 per seed
    assert result["metrics"]["precision_at_1"] == pytest.approx(50.0)
    assert result["metrics"]["per_seed"]["3"] == {"precision_at_1": 50.0, "n_cases": 8, "n_ties": 1}


def test_order_missing_image_and_annotation(coco_root: Path, tmp_path: Path) -> None:
    (coco_root / "val2014" / "COCO_val2014_000000000002.jpg").unlink()
    with pytest.raises(MissingBenchmarkFileError, match=r"case 'seed1/1_0'.*val2014\.zip"):
        _load(coco_root, seeds=(1,))
    with pytest.raises(
        MissingBenchmarkFileError, match=r"flickr30k_test\.json.*sfr-vision-language-research"
    ):
        load_order(tmp_path / "nowhere", "flickr30k", tagger=fake_tagger, tokenizer=fake_tokenizer)


def test_order_rejects_train_format_captions(tmp_path: Path) -> None:
    write_json(tmp_path / "coco_karpathy_test.json", [{"image": "a.jpg", "caption": "one string"}])
    with pytest.raises(BenchmarkDataError, match=r"entry 0: field 'caption' should be list"):
        _load(tmp_path)


def test_vgr_score_file_round_trip(vgr_root: Path, tmp_path: Path) -> None:
    result = assert_round_trip("vg_relation", vgr_root, vgr_lookup(), None, tmp_path / "vgr.jsonl")
    assert result["scores"]["3"] == [[0.5, 0.5]] and result["scorer"] == "lookup"


def test_order_score_file_round_trip_checks_the_options(coco_root: Path, tmp_path: Path) -> None:
    options = {"tagger": fake_tagger, "tokenizer": fake_tokenizer}
    scorer = FunctionScorer(lambda image, text: float(len(text)), "length")
    path = tmp_path / "order.jsonl"
    assert_round_trip("coco_order", coco_root, scorer, {"seeds": [1, 2]}, path, **options)
    with pytest.raises(ScoreError, match=r"options of 'seed3/0_0' differ"):  # other seeds, other options
        score_from_file("coco_order", coco_root, _relabel_seed(path, 1, 3), {"seeds": [3, 2]}, **options)


def _relabel_seed(path: Path, old: int, new: int) -> Path:
    text = path.read_text(encoding="utf-8").replace(f'"id": "seed{old}/', f'"id": "seed{new}/')
    out = path.with_name("relabelled.jsonl")
    out.write_text(text, encoding="utf-8")
    return out
