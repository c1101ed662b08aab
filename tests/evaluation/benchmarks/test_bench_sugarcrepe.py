"""SugarCrepe fixtures (BENCHMARKS.md §5.7): real records from the shipped files, generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_fakes import ConstantScorer, FunctionScorer, assert_round_trip, write_image, write_json

from nas.evaluation.benchmarks import (
    MissingBenchmarkFileError,
    ScoreError,
    SugarCrepeConfig,
    evaluate_benchmark,
    resource_path,
)
from nas.evaluation.benchmarks.sugarcrepe import SUGARCREPE_FILES, load_sugarcrepe


def _shipped(stem: str) -> dict:
    return json.loads(resource_path("sugarcrepe", f"{stem}.json").read_text(encoding="utf-8"))


@pytest.fixture
def sc_root(tmp_path: Path) -> Path:
    swap_obj = _shipped("swap_obj")
    assert "108" not in swap_obj  # removed upstream (PR #6): the keys have a gap
    subsets = {
        "swap_obj": {k: swap_obj[k] for k in ("0", "107", "109")},
        "swap_att": {"5": _shipped("swap_att")["5"]},
    }
    for stem, records in subsets.items():
        write_json(tmp_path / "annotations" / f"{stem}.json", records)
        for record in records.values():
            write_image(tmp_path / "val2017" / record["filename"], (8, 8))
    return tmp_path


def _config(root: Path) -> SugarCrepeConfig:
    return SugarCrepeConfig(annotation_dir=str(root / "annotations"), files=("swap_obj", "swap_att"))


def test_loader_iterates_items_across_the_key_gap(sc_root: Path) -> None:
    cases = load_sugarcrepe(sc_root, _config(sc_root))
    assert [c.case_id for c in cases] == ["swap_obj/0", "swap_obj/107", "swap_obj/109", "swap_att/5"]
    assert cases[0].texts == (
        "A cat sits on its hind legs, and swats at the plant.",
        "A cat sits on the plant, and swats at its hind legs.",
    )
    assert cases[0].images[0].path == sc_root / "val2017" / "000000222235.jpg"


def test_category_is_pooled_not_the_mean_of_files(sc_root: Path) -> None:
    cases = load_sugarcrepe(sc_root, _config(sc_root))
    positives = {c.texts[0] for c in cases}
    tie_text = cases[1].texts  # swap_obj/107: caption and negative tie -> wrong

    def fn(image: str, text: str) -> float:
        if text in tie_text:
            return 0.5
        if text in cases[3].texts:
            return float(text == cases[3].texts[1])  # swap_att/5: the negative wins
        return 1.0 if text in positives else 0.0

    metrics = evaluate_benchmark("sugarcrepe", sc_root, FunctionScorer(fn), _config(sc_root))["metrics"]
    assert metrics["files"]["swap_obj"] == {"accuracy": pytest.approx(200 / 3), "n": 3, "n_ties": 1}
    assert metrics["files"]["swap_att"] == {"accuracy": 0.0, "n": 1, "n_ties": 0}
    assert metrics["categories"] == {"Swap": {"accuracy": 50.0, "n": 4}}  # 2 of 4 pooled
    assert metrics["mean_of_files"] == pytest.approx((200 / 3 + 0) / 2)


def test_constant_and_oracle(sc_root: Path) -> None:
    constant = evaluate_benchmark("sugarcrepe", sc_root, ConstantScorer(), _config(sc_root))["metrics"]
    assert constant["categories"]["Swap"]["accuracy"] == 0.0
    positives = {c.texts[0] for c in load_sugarcrepe(sc_root, _config(sc_root))}
    oracle = FunctionScorer(lambda image, text: float(text in positives), "oracle")
    assert (
        evaluate_benchmark("sugarcrepe", sc_root, oracle, _config(sc_root))["metrics"]["mean_of_files"]
        == 100.0
    )


def test_missing_image_names_file_and_source(sc_root: Path) -> None:
    (sc_root / "val2017" / "000000222235.jpg").unlink()
    with pytest.raises(MissingBenchmarkFileError, match=r"swap_obj/0.*000000222235\.jpg.*val2017\.zip"):
        load_sugarcrepe(sc_root, _config(sc_root))


def test_all_shipped_files() -> None:
    cases = load_sugarcrepe(None, check_images=False)  # checks SHA256SUMS on the way
    counts = {stem: sum(c.case_id.startswith(f"{stem}/") for c in cases) for stem in SUGARCREPE_FILES}
    assert counts == {
        "replace_obj": 1652,
        "replace_att": 788,
        "replace_rel": 1406,
        "swap_obj": 245,
        "swap_att": 666,
        "add_obj": 2062,
        "add_att": 692,
    }
    assert len(cases) == 7511


def test_score_file_round_trip(sc_root: Path, tmp_path: Path) -> None:
    scorer = FunctionScorer(lambda image, text: float(len(text)), "length")
    assert_round_trip("sugarcrepe", sc_root, scorer, _config(sc_root), tmp_path / "sc.jsonl")


def test_nan_names_benchmark_and_sample(sc_root: Path) -> None:
    scorer = FunctionScorer(lambda image, text: float("nan") if "plant, and" in text else 1.0, "nan")
    with pytest.raises(ScoreError, match=r"sugarcrepe: scorer 'nan' returned NaN for case 'swap_obj/0'"):
        evaluate_benchmark("sugarcrepe", sc_root, scorer, _config(sc_root))
