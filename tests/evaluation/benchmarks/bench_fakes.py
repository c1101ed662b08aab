"""Test scorers and image helpers for the benchmark tests (BENCHMARKS.md §5.1).

Scorers identify an image by its file name, which the loaders put in `image.info["path"]`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def image_name(image: Image.Image) -> str:
    assert image.mode == "RGB", "loaders must hand RGB images to the scorer"
    return Path(image.info["path"]).name


class ConstantScorer:
    """The same number for every pair: every comparison is a tie."""

    name = "constant"

    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        return np.full(len(texts), self.value)


class FunctionScorer:
    """score = fn(image file name, text)."""

    def __init__(self, fn: Callable[[str, str], float], name: str = "function") -> None:
        self.fn = fn
        self.name = name
        self.calls = 0

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([self.fn(image_name(im), t) for im, t in zip(images, texts)], dtype=np.float64)


class LookupScorer(FunctionScorer):
    """(image file name, text) -> score from a table written in the test; unknown pairs fail loudly."""

    def __init__(self, table: dict[tuple[str, str], float], name: str = "lookup") -> None:
        super().__init__(lambda image, text: table[(image, text)], name)


def write_image(path: Path, size: tuple[int, int] = (16, 12), mode: str = "RGB") -> Path:
    """A small image whose pixel (x, y) is (10x, 10y, 7) in RGB: crops can be checked by value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = (np.arange(width) * 10)[None, :]
    pixels[..., 1] = (np.arange(height) * 10)[:, None]
    pixels[..., 2] = 7
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("P")
    image.save(path)
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# A stand-in for spaCy's tagger / NLTK's tokenizer: splits off "'s" and punctuation like they do.
_TOKEN = re.compile(r"\w+(?='s)|'s|\w+|[^\w\s]")

FAKE_TAGS = {
    "dog": "NN",
    "ball": "NN",
    "tree": "NN",
    "man": "NN",
    "helmet": "NN",
    "moped": "NN",
    "road": "NN",
    "child": "NN",
    "toy": "NN",
    "floor": "NN",
    "cats": "NNS",
    "brown": "JJ",
    "red": "JJ",
    "old": "JJ",
    "small": "JJ",
    "dirt": "NN",
    "big": "JJ",
    "'s": "POS",
}


def fake_tokenizer(caption: str) -> list[str]:
    return _TOKEN.findall(caption)


def fake_tagger(caption: str) -> list[tuple[str, str]]:
    return [(token, FAKE_TAGS.get(token.lower(), "XX")) for token in fake_tokenizer(caption)]


def assert_round_trip(
    name: str, root: Path | None, scorer, config, path: Path, file_format: str = "harness", **options
):
    """Scores written during a run and read back give the same metrics and scores."""
    from nas.evaluation.benchmarks import evaluate_benchmark, score_from_file

    result = evaluate_benchmark(
        name, root, scorer, config, score_file=path, score_file_format=file_format, **options
    )
    again = score_from_file(name, root, path, config, scorer_name=scorer.name, **options)  # format: auto
    assert again["metrics"] == result["metrics"]
    assert again["scores"] == result["scores"]
    assert again["scorer"] == scorer.name
    return result
