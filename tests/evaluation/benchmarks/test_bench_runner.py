"""The runner: names, configs, result layout and harness score-file checks (no images needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nas.config.base import ConfigError
from nas.evaluation.benchmarks import (
    BENCHMARKS,
    ScoreError,
    ScoreFileError,
    evaluate_benchmark,
    score_from_file,
    write_score_file,
)
from nas.evaluation.benchmarks.sugarcrepe import SugarCrepeConfig, load_sugarcrepe

SWAP_OBJ = {"files": ["swap_obj"]}


def _harness_file(tmp_path: Path) -> Path:
    cases = load_sugarcrepe(None, SugarCrepeConfig(files=("swap_obj",)), check_images=False)
    scores = {
        c.case_id: np.array([[1.0, 0.0]]) if i % 4 else np.array([[0.0, 0.0]]) for i, c in enumerate(cases)
    }
    path = tmp_path / "scores.jsonl"
    write_score_file(path, "sugarcrepe", cases, scores, "fixed")
    return path


def test_registry_names_and_chance_levels() -> None:
    assert sorted(BENCHMARKS) == sorted(
        [
            "vg_relation",
            "vg_attribution",
            "coco_order",
            "flickr30k_order",
            "winoground",
            "valse",
            "sugarcrepe",
        ]
    )
    assert BENCHMARKS["winoground"].chance == pytest.approx(
        {"text": 25.0, "image": 25.0, "group": 16.6667}, abs=1e-4
    )


def test_result_layout_from_a_harness_file(tmp_path: Path) -> None:
    result = score_from_file("sugarcrepe", None, _harness_file(tmp_path), SWAP_OBJ)
    assert set(result) == {
        "benchmark",
        "scorer",
        "unit",
        "chance",
        "metrics",
        "n_cases",
        "config",
        "root",
        "scores",
        "outcomes",
        "score_file",
    }
    assert result["score_file"] == {"path": str(tmp_path / "scores.jsonl"), "format": "harness"}
    assert (result["benchmark"], result["scorer"], result["unit"], result["n_cases"]) == (
        "sugarcrepe",
        "fixed",
        "percent",
        245,
    )
    assert result["config"]["files"] == ["swap_obj"]
    # every 4th record ties (0.0 vs 0.0) and is wrong: 245 records, indices 0, 4, ..., 244 -> 62 wrong
    assert result["metrics"]["files"]["swap_obj"] == {
        "accuracy": pytest.approx(100 * 183 / 245),
        "n": 245,
        "n_ties": 62,
    }
    # one outcome per record, a tie wrong, averaging to the pooled accuracy
    outcomes = result["outcomes"]
    assert (outcomes["metric"], outcomes["unit"]) == ("pooled.accuracy", "fraction")
    assert outcomes["case_ids"] == list(result["scores"])
    assert outcomes["outcomes"][:5] == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert result["metrics"]["pooled"] == {"accuracy": pytest.approx(100 * 183 / 245), "n": 245}


def test_unknown_benchmark_and_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'aro'"):
        score_from_file("aro", None, "x.jsonl")
    with pytest.raises(ConfigError, match=r"benchmarks\.valse\.match_treshold.*did you mean"):
        evaluate_benchmark("valse", None, object(), {"match_treshold": 0.5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rng_mode"):
        evaluate_benchmark("coco_order", None, object(), {"rng_mode": "local"})  # type: ignore[arg-type]


def test_harness_file_for_another_benchmark_is_refused(tmp_path: Path) -> None:
    path = _harness_file(tmp_path)
    with pytest.raises(ScoreError, match="scores are for 'sugarcrepe', not 'valse'"):
        score_from_file("valse", None, path, file_format="harness")


def test_harness_file_must_cover_the_cases(tmp_path: Path) -> None:
    lines = _harness_file(tmp_path).read_text(encoding="utf-8").splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(ScoreError, match=r"1 missing \(e\.g\. \['swap_obj/245'\]\)"):
        score_from_file("sugarcrepe", None, short, SWAP_OBJ)
    duplicated = tmp_path / "dup.jsonl"
    duplicated.write_text("\n".join([*lines, lines[1]]), encoding="utf-8")
    with pytest.raises(ScoreError, match=r"line 247: duplicate id 'swap_obj/0'"):
        score_from_file("sugarcrepe", None, duplicated, SWAP_OBJ)
    entry = json.loads(lines[1]) | {"scores": [[1.0, 0.0, 2.0]]}
    reshaped = tmp_path / "shape.jsonl"
    reshaped.write_text("\n".join([lines[0], json.dumps(entry), *lines[2:]]), encoding="utf-8")
    with pytest.raises(ScoreFileError, match=r"shape\.jsonl, line 2: 'swap_obj/0' has 2 texts but 3 score"):
        score_from_file("sugarcrepe", None, reshaped, SWAP_OBJ)
    del entry["texts"]  # without texts, the shape is checked against the loaded case
    reshaped.write_text("\n".join([lines[0], json.dumps(entry), *lines[2:]]), encoding="utf-8")
    with pytest.raises(
        ScoreError, match=r"case 'swap_obj/0': expected scores of shape \(1, 2\), got \(1, 3\)"
    ):
        score_from_file("sugarcrepe", None, reshaped, SWAP_OBJ)


def test_harness_file_with_other_options_is_refused(tmp_path: Path) -> None:
    lines = _harness_file(tmp_path).read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[2]) | {"texts": ["edited", "caption"]}
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([lines[0], lines[1], json.dumps(entry), *lines[3:]]), encoding="utf-8")
    with pytest.raises(ScoreError, match=r"line 3: the options of 'swap_obj/1' differ"):
        score_from_file("sugarcrepe", None, edited, SWAP_OBJ)


def test_images_are_required_to_run_a_scorer() -> None:
    with pytest.raises(ValueError, match="an image root is needed"):
        evaluate_benchmark("sugarcrepe", None, object(), SWAP_OBJ)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="winoground: a root folder"):
        evaluate_benchmark("winoground", None, object())  # type: ignore[arg-type]


def test_vg_annotations_are_required_to_rescore(tmp_path: Path) -> None:
    path = tmp_path / "vgr.jsonl"
    path.write_text(
        json.dumps({"format": "nas-benchmark-scores", "version": 1, "layout": "scores[image][text]"})
    )
    with pytest.raises(ValueError, match="vg_relation: a root folder"):
        score_from_file("vg_relation", None, path)
