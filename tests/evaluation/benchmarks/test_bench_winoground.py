"""Winoground fixtures (BENCHMARKS.md §5.5): synthetic examples, generated images, official score file."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from bench_fakes import ConstantScorer, LookupScorer, assert_round_trip, write_image

from nas.evaluation.benchmarks import (
    BenchmarkDataError,
    MissingBenchmarkFileError,
    ScoreError,
    evaluate_benchmark,
    score_from_file,
)
from nas.evaluation.benchmarks.winoground import conditions, load_winoground, read_official_scores

TAGS = [
    ("Noun", "", "Object", 1),
    ("Verb", "Symbolic", "Relation", 2),
    ("Adjective-Color", "Symbolic, Series", "Both", 1),
]
# s(c_j, i_k) per example: (c0i0, c1i0, c0i1, c1i1)
SCORES = {
    0: (0.9, 0.1, 0.2, 0.8),  # text right, image right -> group
    1: (0.5, 0.5, 0.7, 0.4),  # s(c0,i0) == s(c1,i0): text false (so group false); image false
    2: (0.6, 0.5, 0.2, 0.3),  # text right, image wrong (c1: 0.3 on i1 < 0.5 on i0): catches swapped axes
}


def _record(example_id: int) -> dict:
    tag, secondary, collapsed, preds = TAGS[example_id]
    return {
        "id": example_id,
        "image_0": f"ex_{example_id}_img_0",
        "image_1": f"ex_{example_id}_img_1",
        "caption_0": f"caption zero of {example_id}",
        "caption_1": f"caption one of {example_id}",
        "tag": tag,
        "secondary_tag": secondary,
        "num_main_preds": preds,
        "collapsed_tag": collapsed,
    }


def _write_examples(root: Path, records: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    # like the hub file: no newline after the last line
    (root / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")


@pytest.fixture
def wino_root(tmp_path: Path) -> Path:
    _write_examples(tmp_path, [_record(i) for i in range(3)])
    modes = {(0, 1): "RGBA", (1, 0): "P"}
    for example_id in range(3):
        for k in (0, 1):
            write_image(
                tmp_path / "images" / f"ex_{example_id}_img_{k}.png",
                (8, 8),
                modes.get((example_id, k), "RGB"),
            )
    return tmp_path


def _table() -> dict[tuple[str, str], float]:
    table = {}
    for example_id, (c0i0, c1i0, c0i1, c1i1) in SCORES.items():
        c0, c1 = f"caption zero of {example_id}", f"caption one of {example_id}"
        i0, i1 = f"ex_{example_id}_img_0.png", f"ex_{example_id}_img_1.png"
        table.update({(i0, c0): c0i0, (i0, c1): c1i0, (i1, c0): c0i1, (i1, c1): c1i1})
    return table


def _write_official(path: Path, scores: dict[int, tuple]) -> Path:
    lines = []
    for example_id, (c0i0, c1i0, c0i1, c1i1) in scores.items():
        for label, score in (("c0_i0", c0i0), ("c1_i0", c1i0), ("c0_i1", c0i1), ("c1_i1", c1i1)):
            lines.append(json.dumps({"label": f"{example_id}_{label}", "score": score}))
    random.Random(0).shuffle(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_conditions_on_hand_built_examples() -> None:
    import numpy as np

    def matrix(c0i0, c1i0, c0i1, c1i1):
        return np.array([[c0i0, c1i0], [c0i1, c1i1]])  # rows = images, columns = captions

    assert [conditions(matrix(*SCORES[i])) for i in range(3)] == [
        (True, True, True),
        (False, False, False),
        (True, False, False),
    ]


def test_loader_reads_every_field_and_builds_image_paths(wino_root: Path) -> None:
    cases = load_winoground(wino_root)
    assert [c.case_id for c in cases] == ["0", "1", "2"]
    assert cases[1].texts == ("caption zero of 1", "caption one of 1")
    assert [im.path.name for im in cases[1].images] == ["ex_1_img_0.png", "ex_1_img_1.png"]
    assert cases[2].meta["secondary_tag"] == "Symbolic, Series" and cases[1].meta["num_main_preds"] == 2


def test_images_score_and_official_file_agree(wino_root: Path, tmp_path: Path) -> None:
    result = evaluate_benchmark("winoground", wino_root, LookupScorer(_table()))
    metrics = result["metrics"]
    assert (metrics["text"], metrics["image"], metrics["group"]) == pytest.approx((200 / 3, 100 / 3, 100 / 3))
    from_file = score_from_file("winoground", wino_root, _write_official(tmp_path / "model.jsonl", SCORES))
    assert from_file["metrics"] == metrics and from_file["scorer"] == "model"


def test_breakdowns_use_exact_equality_and_report_sizes(wino_root: Path) -> None:
    breakdowns = evaluate_benchmark("winoground", wino_root, LookupScorer(_table()))["metrics"]["breakdowns"]
    assert breakdowns["secondary_tag"]["Symbolic"] == {"text": 0.0, "image": 0.0, "group": 0.0, "n": 1}
    assert breakdowns["secondary_tag"]["Symbolic, Series"]["n"] == 1  # not in "Symbolic"
    assert breakdowns["collapsed_tag"]["Both"] == {"text": 100.0, "image": 0.0, "group": 0.0, "n": 1}
    assert breakdowns["num_main_preds"]["1"]["n"] == 2


def test_constant_and_oracle(wino_root: Path) -> None:
    constant = evaluate_benchmark("winoground", wino_root, ConstantScorer())["metrics"]
    assert (constant["text"], constant["image"], constant["group"]) == (0.0, 0.0, 0.0)
    oracle_table = {(i, c): float(i.endswith(f"img_{0 if 'zero' in c else 1}.png")) for i, c in _table()}
    oracle = evaluate_benchmark("winoground", wino_root, LookupScorer(oracle_table))["metrics"]
    assert (oracle["text"], oracle["image"], oracle["group"]) == (100.0, 100.0, 100.0)


def test_chance_over_the_24_orderings(tmp_path: Path) -> None:
    orderings = list(itertools.permutations((1, 2, 3, 4)))
    _write_examples(tmp_path, [_record(i % 3) | {"id": i} for i in range(24)])
    # (c0i0, c0i1, c1i0, c1i1) run through the 24 permutations; our tuple order is (c0i0, c1i0, c0i1, c1i1)
    scores = {i: (p[0], p[2], p[1], p[3]) for i, p in enumerate(orderings)}
    metrics = score_from_file("winoground", tmp_path, _write_official(tmp_path / "chance.jsonl", scores))[
        "metrics"
    ]
    assert (metrics["text"], metrics["image"], metrics["group"]) == pytest.approx((25.0, 25.0, 100 * 4 / 24))


def test_score_file_errors(wino_root: Path, tmp_path: Path) -> None:
    path = _write_official(tmp_path / "s.jsonl", SCORES)
    lines = path.read_text().splitlines()
    (tmp_path / "short.jsonl").write_text("\n".join(line for line in lines if '"1_c1_i1"' not in line))
    with pytest.raises(ScoreError, match=r"example 1 lacks labels \['1_c1_i1'\]"):
        read_official_scores(tmp_path / "short.jsonl")
    (tmp_path / "nan.jsonl").write_text(lines[0].rsplit(":", 1)[0] + ": NaN}\n")
    with pytest.raises(ScoreError, match=r"nan\.jsonl, line 1: non-finite number NaN"):
        read_official_scores(tmp_path / "nan.jsonl")
    partial = {key: value for key, value in SCORES.items() if key != 2}
    with pytest.raises(ScoreError, match=r"1 missing \(e\.g\. \['2'\]\)"):
        score_from_file("winoground", wino_root, _write_official(tmp_path / "two.jsonl", partial))


def test_missing_files_say_where_to_get_them(wino_root: Path, tmp_path: Path) -> None:
    with pytest.raises(
        MissingBenchmarkFileError, match=r"examples\.jsonl.*huggingface\.co/datasets/facebook/winoground"
    ):
        load_winoground(tmp_path / "empty")
    (wino_root / "images" / "ex_2_img_1.png").unlink()
    with pytest.raises(MissingBenchmarkFileError, match=r"case '2'.*ex_2_img_1\.png"):
        load_winoground(wino_root)


def test_bad_record_names_line(tmp_path: Path) -> None:
    bad = _record(1) | {"num_main_preds": "2"}
    _write_examples(tmp_path, [_record(0), bad])
    with pytest.raises(
        BenchmarkDataError, match=r"examples\.jsonl, line 2: field 'num_main_preds' should be int"
    ):
        load_winoground(tmp_path, check_images=False)


@pytest.mark.parametrize("file_format", ["harness", "winoground"])
def test_score_file_round_trip(wino_root: Path, tmp_path: Path, file_format: str) -> None:
    path = tmp_path / "scores.jsonl"
    assert_round_trip("winoground", wino_root, LookupScorer(_table()), None, path, file_format)
    if file_format == "winoground":  # the official file: 4 labelled lines per example
        labels = {json.loads(line)["label"] for line in path.read_text().splitlines()}
        assert len(labels) == 12 and "2_c1_i0" in labels
