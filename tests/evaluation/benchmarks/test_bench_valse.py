"""VALSE fixtures (BENCHMARKS.md §5.6): real records from the shipped files, generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import ConstantScorer, FunctionScorer, assert_round_trip, write_image, write_json
from sklearn.metrics import roc_auc_score

from nas.evaluation.benchmarks import (
    BenchmarkCase,
    MissingBenchmarkFileError,
    ValseConfig,
    evaluate_benchmark,
    resource_path,
    score_from_file,
    write_score_file,
)
from nas.evaluation.benchmarks.valse import VALSE_FILES, auroc, load_valse, valse_metrics

SUBSETS = {
    "existence": [
        "existence_visual7w_2371044",  # valid
        "existence_visual7w_2393805",  # valid
        "existence_visual7w_2326438",  # caption == foil, mturk.caption 0: filtered
        "existence_visual7w_2379993",  # mturk.caption 1: filtered
    ],
    "action-replacement": ["actions_test_0"],
    "actant-swap": ["actions_test_0"],  # same key, other file: a distinct sample
    "plurals": ["plurals:coco2017:215792"],  # classes_foil is the bool false
    "coreference-hard": ["coref_test_0"],  # no dataset_idx
    "foil-it": ["1283539"],  # numeric-string key, int dataset_idx
}


@pytest.fixture
def valse_root(tmp_path: Path) -> Path:
    for stem, keys in SUBSETS.items():
        records = json.loads(resource_path("valse", f"{stem}.json").read_text(encoding="utf-8"))
        subset = {key: records[key] for key in keys}
        write_json(tmp_path / "annotations" / f"{stem}.json", subset)
        for record in subset.values():
            write_image(tmp_path / "images" / record["image_file"], (8, 8))
    return tmp_path


def _config(root: Path, **overrides) -> ValseConfig:
    return ValseConfig(
        annotation_dir=str(root / "annotations"), files=tuple(overrides.pop("files", SUBSETS)), **overrides
    )


def test_valid_filter_and_keys(valse_root: Path) -> None:
    cases = load_valse(valse_root, _config(valse_root))
    counts = {stem: sum(c.meta["instrument"] == stem for c in cases) for stem in SUBSETS}
    assert counts == {stem: 1 for stem in SUBSETS} | {"existence": 2}
    ids = [c.case_id for c in cases]
    assert "action-replacement/actions_test_0" in ids and "actant-swap/actions_test_0" in ids
    foils = {c.case_id: c.texts[1] for c in cases}
    assert foils["action-replacement/actions_test_0"] == "A man lifts his torso."
    assert foils["actant-swap/actions_test_0"] == "A torso exercises for a man."
    unfiltered = load_valse(valse_root, _config(valse_root, valid_only=False))
    assert len(unfiltered) == len(cases) + 2


def test_macro_differs_from_micro(valse_root: Path) -> None:
    plurals = "Numerous head of a number of cattle are grazing in the grass."

    def fn(image: str, text: str) -> float:
        return 0.0 if text == plurals else (1.0 if "no " in text else 0.5)  # existence captions say "no ..."

    config = _config(valse_root, files=("existence", "plurals"))
    metrics = evaluate_benchmark("valse", valse_root, FunctionScorer(fn), config)["metrics"]
    assert metrics["instruments"]["existence"]["acc_r"] == 100.0
    assert metrics["instruments"]["plurals"]["acc_r"] == 0.0
    assert metrics["macro"]["acc_r"] == pytest.approx(50.0)
    assert metrics["micro"]["acc_r"] == pytest.approx(100 * 2 / 3)


def test_pieces_average_their_instruments(valse_root: Path) -> None:
    def fn(image: str, text: str) -> float:
        return {"A man lifts his torso.": 2.0, "A torso exercises for a man.": 0.0}.get(text, 1.0)

    metrics = evaluate_benchmark("valse", valse_root, FunctionScorer(fn), _config(valse_root))["metrics"]
    assert metrics["instruments"]["action-replacement"]["acc_r"] == 0.0
    assert metrics["instruments"]["actant-swap"]["acc_r"] == 100.0
    assert metrics["pieces"]["Actions"]["instruments"] == ["action-replacement", "actant-swap"]
    assert metrics["pieces"]["Actions"]["acc_r"] == 50.0  # mean of its two instruments
    assert metrics["pieces"]["Existence"]["acc_r"] == metrics["instruments"]["existence"]["acc_r"]


def test_itm_metrics_with_threshold_ties() -> None:
    captions, foils = (
        [0.9, 0.5, 0.7, 0.2],
        [0.5, 0.1, 0.8, 0.3],
    )  # caption at 0.5 does not fit; foil at 0.5 detected
    cases = [BenchmarkCase(f"existence/{i}", (), ("c", "f"), {"instrument": "existence"}) for i in range(4)]
    scores = {f"existence/{i}": np.array([[c, f]]) for i, (c, f) in enumerate(zip(captions, foils))}
    row = valse_metrics(cases, scores, ValseConfig(files=("existence",), match_threshold=0.5))["instruments"][
        "existence"
    ]
    assert row == {
        "n": 4,
        "acc_r": 50.0,
        "n_ties": 0,
        "auroc": pytest.approx(100 * 10.5 / 16),
        "p_c": 50.0,
        "p_f": 75.0,
        "acc": 62.5,
        "min_p_c_p_f": 50.0,
    }


def test_constant_itm_probability_half(valse_root: Path) -> None:
    metrics = evaluate_benchmark(
        "valse", valse_root, ConstantScorer(0.5), _config(valse_root, match_threshold=0.5)
    )["metrics"]
    assert metrics["micro"]["acc_r"] == 0.0
    assert (metrics["micro"]["p_c"], metrics["micro"]["p_f"], metrics["micro"]["acc"]) == (0.0, 100.0, 50.0)
    assert metrics["macro"]["auroc"] == 50.0


def test_auroc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    positives = rng.integers(0, 6, size=40).astype(float)  # many ties on purpose
    negatives = rng.integers(0, 5, size=33).astype(float)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(33)], np.r_[positives, negatives])
    assert auroc(positives, negatives) == pytest.approx(100 * expected)


def test_missing_image_names_file_and_sources(valse_root: Path) -> None:
    (valse_root / "images" / "v7w_2393805.jpg").unlink()
    with pytest.raises(
        MissingBenchmarkFileError, match=r"existence/existence_visual7w_2393805.*visual7w_images\.zip"
    ):
        load_valse(valse_root, _config(valse_root))


def test_image_folder_per_dataset(valse_root: Path) -> None:
    config = _config(valse_root, image_dirs_by_dataset={"SWiG": "swig"})
    with pytest.raises(MissingBenchmarkFileError, match=r"swig/exercising_255\.jpg"):
        load_valse(valse_root, config)


def test_all_shipped_files_counts_and_the_24_identical_pairs() -> None:
    everything = load_valse(None, ValseConfig(valid_only=False), check_images=False)
    valid = load_valse(None, ValseConfig(), check_images=False)
    assert (len(everything), len(valid)) == (8782, 7702)
    identical = [c for c in everything if c.texts[0] == c.texts[1]]
    assert len(identical) == 24 and not any(c.meta["valid"] for c in identical)
    # Any scorer gives a caption == foil pair equal scores: a tie, so wrong.
    scores = {c.case_id: np.full((1, 2), float(len(c.texts[0]))) for c in identical}
    stems = tuple(sorted({c.meta["instrument"] for c in identical}))
    assert (
        valse_metrics(identical, scores, ValseConfig(files=stems, valid_only=False))["micro"]["acc_r"] == 0.0
    )


def test_fge_running_ids() -> None:
    # Facts read from FGE's released outputs/VALSE/albef_4m/albef_4m.jsonl (e-bug/fine-grained-evals):
    # ids 0-2 and 4 are actant-swap, 3/28/35 are absent (filtered), 1092 is action-replacement and
    # 2014 coreference-standard.
    cases = {c.meta["position"]: c.meta["instrument"] for c in load_valse(None, check_images=False)}
    assert [cases[i] for i in (0, 1, 2, 4)] == ["actant-swap"] * 4
    assert not {3, 28, 35} & set(cases)
    assert (cases[1092], cases[2014]) == ("action-replacement", "coreference-standard")
    assert len(VALSE_FILES) == 11


def test_harness_score_file_round_trip(valse_root: Path, tmp_path: Path) -> None:
    scorer = FunctionScorer(lambda image, text: float(len(text) % 7), "length")
    assert_round_trip(
        "valse", valse_root, scorer, _config(valse_root, match_threshold=3.0), tmp_path / "v.jsonl"
    )


def test_fge_score_file_round_trip_on_the_shipped_files(tmp_path: Path) -> None:
    cases = load_valse(None, check_images=False)
    scores = {c.case_id: np.array([[len(c.texts[0]) % 5 / 4, len(c.texts[1]) % 5 / 4]]) for c in cases}
    path = tmp_path / "fge.jsonl"
    write_score_file(path, "valse", cases, scores, "length", "fge")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["label"] == "0_c" and first["instrument"] == "actant-swap" and first["piece"] == "actions"
    result = score_from_file("valse", None, path, {"match_threshold": 0.5})  # auto: no header -> FGE
    expected = valse_metrics(cases, scores, ValseConfig(match_threshold=0.5))
    assert result["metrics"] == expected and result["scorer"] == "fge"
    assert result["metrics"]["micro"]["n"] == 7702
