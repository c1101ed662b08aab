"""Shipped resources, SHA256 checks, image references and the scoring loop."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import FunctionScorer, write_image
from PIL import Image

from nas.evaluation.benchmarks import ChecksumError, ImageRef, ScoreError, resource_path
from nas.evaluation.benchmarks.common import (
    BenchmarkCase,
    file_sha256,
    read_checksums,
    score_cases,
    verify_checksum,
)
from nas.evaluation.scorers import PairScorer

SHIPPED = {"valse": 11, "sugarcrepe": 7, "aro": 1}


@pytest.mark.parametrize("benchmark", sorted(SHIPPED))
def test_shipped_folders_carry_licence_readme_and_matching_sums(benchmark: str) -> None:
    folder = resource_path(benchmark)
    assert (folder / "LICENSE.txt").is_file() and (folder / "README.md").is_file()
    sums = read_checksums(folder)
    assert sums is not None and len(sums) == SHIPPED[benchmark]
    for name, expected in sums.items():
        assert file_sha256(folder / name) == expected
        verify_checksum(folder / name)  # the load-time check passes on the shipped copies


def test_tampered_copy_is_named_with_both_hashes(tmp_path: Path) -> None:
    copy = tmp_path / "aro"
    shutil.copytree(resource_path("aro"), copy)
    target = copy / "vgr_excluded_relations.json"
    target.chmod(0o644)
    expected = read_checksums(copy)["vgr_excluded_relations.json"]
    target.write_text('["on"]', encoding="utf-8")
    with pytest.raises(ChecksumError) as info:
        verify_checksum(target)
    message = str(info.value)
    assert "vgr_excluded_relations.json" in message and expected in message and file_sha256(target) in message


def test_file_missing_from_sums_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  other.json\n")
    (tmp_path / "new.json").write_text("[]")
    with pytest.raises(ChecksumError, match="new.json: not listed"):
        verify_checksum(tmp_path / "new.json")


def test_folder_without_sums_is_not_checked(tmp_path: Path) -> None:
    (tmp_path / "probe.json").write_text("[]")
    verify_checksum(tmp_path / "probe.json")


def test_crop_inside_the_image_keeps_pixel_values(tmp_path: Path) -> None:
    path = write_image(tmp_path / "1.png", (16, 12))  # PNG: lossless, so pixel values are exact
    crop = ImageRef(path, (2, 3, 8, 7)).load()
    assert crop.size == (6, 4) and crop.mode == "RGB"
    pixels = np.asarray(crop)
    assert tuple(pixels[0, 0]) == (20, 30, 7)  # source pixel (2, 3)
    assert tuple(pixels[-1, -1]) == (70, 60, 7)  # source pixel (7, 6)
    assert crop.info["path"] == str(path) and crop.info["box"] == (2, 3, 8, 7)


def test_crop_partly_outside_is_zero_filled_with_the_box_size(tmp_path: Path) -> None:
    path = write_image(tmp_path / "2.png", (16, 12))
    crop = np.asarray(ImageRef(path, (10, 8, 20, 18)).load())
    assert crop.shape == (10, 10, 3)
    assert tuple(crop[0, 0]) == (100, 80, 7)  # inside: source pixel (10, 8)
    assert not crop[4:, :].any() and not crop[:, 6:].any()  # rows y >= 12 and columns x >= 16


def test_crop_with_float_box_follows_pillow_rounding(tmp_path: Path) -> None:
    path = write_image(tmp_path / "3.png", (16, 12))
    crop = ImageRef(path, (1.4, 2.6, 6.6, 5.9)).load()
    assert crop.size == (6, 3)  # Pillow rounds the box: (1, 3, 7, 6)
    assert tuple(np.asarray(crop)[0, 0]) == (10, 30, 7)


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_rgba_and_palette_images_become_rgb(tmp_path: Path, mode: str) -> None:
    path = write_image(tmp_path / f"img_{mode}.png", (8, 8), mode)
    with Image.open(path) as stored:
        assert stored.mode == mode
    assert ImageRef(path).load().mode == "RGB"


def _cases(tmp_path: Path) -> list[BenchmarkCase]:
    a = ImageRef(write_image(tmp_path / "a.png", (4, 4)))
    b = ImageRef(write_image(tmp_path / "b.png", (4, 4)))
    return [
        BenchmarkCase("x", (a,), ("one", "two", "one")),
        BenchmarkCase("y", (a, b), ("two", "three")),
    ]


def test_score_cases_shapes_and_sends_each_distinct_pair_once(tmp_path: Path) -> None:
    sent: list[tuple[str, str]] = []

    def fn(image: str, text: str) -> float:
        sent.append((image, text))
        return {"one": 1.0, "two": 2.0, "three": 3.0}[text] + (10.0 if image == "b.png" else 0.0)

    scorer = FunctionScorer(fn)
    assert isinstance(scorer, PairScorer)
    scores = score_cases(_cases(tmp_path), scorer, benchmark="unit", batch_size=2)
    np.testing.assert_array_equal(scores["x"], [[1.0, 2.0, 1.0]])
    np.testing.assert_array_equal(scores["y"], [[2.0, 3.0], [12.0, 13.0]])
    assert sorted(sent) == sorted(set(sent)) and len(sent) == 5  # a-one, a-two, a-three, b-two, b-three
    assert scorer.calls == 3  # batches of 2


def test_score_cases_sends_all_pairs_of_an_image_in_one_call(tmp_path: Path) -> None:
    """Pairs go grouped by image, so a scorer that encodes a call's distinct images once encodes each
    image once per benchmark, however the cases interleave them; an image is split over calls only
    when its pairs alone exceed a call."""
    a = ImageRef(write_image(tmp_path / "a.png", (4, 4)))
    b = ImageRef(write_image(tmp_path / "b.png", (4, 4)))
    c = ImageRef(write_image(tmp_path / "c.png", (4, 4)))
    cases = [
        BenchmarkCase("1", (a,), ("one", "two")),
        BenchmarkCase("2", (b,), ("one", "two")),
        BenchmarkCase("3", (a, c), ("three",)),
        BenchmarkCase("4", (b,), ("three",)),
    ]
    calls: list[list[str]] = []

    class Recording:
        name = "recording"

        def score(self, images, texts):
            calls.append([f"{Path(im.info['path']).stem}-{t}" for im, t in zip(images, texts)])
            return np.arange(len(texts), dtype=float)

    scores = score_cases(cases, Recording(), benchmark="unit")
    assert calls == [["a-one", "a-two", "a-three", "b-one", "b-two", "b-three", "c-three"]]
    calls.clear()
    again = score_cases(cases, Recording(), benchmark="unit", batch_size=4)
    assert calls == [["a-one", "a-two", "a-three"], ["b-one", "b-two", "b-three", "c-three"]]
    calls.clear()
    score_cases(cases, Recording(), benchmark="unit", batch_size=2)
    assert calls == [["a-one", "a-two"], ["a-three"], ["b-one", "b-two"], ["b-three", "c-three"]]
    # the scores land on their cases whatever the grouping
    assert scores["3"].tolist() == [[2.0], [6.0]] and again["3"].tolist() == [[2.0], [3.0]]


def test_nan_score_names_benchmark_case_and_pair(tmp_path: Path) -> None:
    scorer = FunctionScorer(lambda image, text: float("nan") if image == "b.png" else 0.0, name="broken")
    with pytest.raises(ScoreError, match=r"unit: scorer 'broken' returned NaN for case 'y' \(image b.png"):
        score_cases(_cases(tmp_path), scorer, benchmark="unit")


def test_wrong_result_shape_is_an_error(tmp_path: Path) -> None:
    class Short:
        name = "short"

        def score(self, images, texts):
            return np.zeros(len(texts) - 1)

    with pytest.raises(ScoreError, match="shape"):
        score_cases(_cases(tmp_path), Short(), benchmark="unit")
