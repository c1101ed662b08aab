"""Zero-shot attribute accuracy through a text tower, and the student-text cosine pair scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nas.evaluation.scene_attributes import zero_shot_prompts
from nas.evaluation.uta_scorer import CosinePairScorer
from nas.evaluation.zero_shot import build_classifier, mean_accuracy, single_object_rows, zero_shot_accuracy

COLOURS = sorted(zero_shot_prompts("colour"))


def _one_hot_text(texts: list[str]) -> torch.Tensor:
    # A "text tower" that embeds a prompt as the one-hot of the colour it names.
    rows = torch.zeros(len(texts), len(COLOURS))
    for i, text in enumerate(texts):
        rows[i, [j for j, c in enumerate(COLOURS) if f" {c} " in f" {text} "]] = 1.0
    return torch.nn.functional.normalize(rows, dim=-1)


def test_zero_shot_accuracy_by_hand():
    classifier = build_classifier(_one_hot_text, ["colour"])
    names, classes = classifier["colour"]
    assert names == COLOURS and torch.allclose(classes, torch.eye(len(COLOURS)))
    # images "look like" blue, red, red, green; the labels say blue, red, green, green; row 3 unlabelled
    embeddings = torch.eye(len(COLOURS))[[COLOURS.index(c) for c in ("blue", "red", "red", "green")]]
    labels = {"colour": ["blue", "red", "green", None]}
    result = zero_shot_accuracy(embeddings, labels, classifier)
    assert result["colour"]["accuracy"] == pytest.approx(200 / 3) and result["colour"]["n"] == 3
    assert result["colour"]["chance"] == pytest.approx(100 / 6) and result["colour"]["n_classes"] == 6
    assert zero_shot_accuracy(embeddings, labels, classifier, rows=[0, 1])["colour"]["accuracy"] == 100.0
    assert mean_accuracy(result) == pytest.approx(200 / 3)


def test_zero_shot_rejects_labels_without_prompts_and_empty_rows():
    classifier = build_classifier(_one_hot_text, ["colour"])
    with pytest.raises(ValueError, match=r"labels \['magenta'\] have no zero-shot prompt"):
        zero_shot_accuracy(torch.eye(6)[:1], {"colour": ["magenta"]}, classifier)
    with pytest.raises(ValueError, match="no single-object scene"):
        zero_shot_accuracy(torch.eye(6)[:1], {"colour": ["red"]}, classifier, rows=[])
    assert single_object_rows(["1", "2", None, "1"]) == [0, 3]


def _image(value: int, path: str) -> Image.Image:
    image = Image.new("RGB", (4, 4), (value, value, value))
    image.info["path"] = path
    return image


def test_the_cosine_scorer_scores_row_aligned_pairs_and_encodes_each_item_once():
    calls = {"images": 0, "texts": 0}

    def encode_image(pixels):
        calls["images"] += len(pixels)
        mean = pixels.mean(dim=(1, 2, 3))
        return torch.nn.functional.normalize(torch.stack([mean, torch.ones_like(mean)], dim=1), dim=-1)

    def encode_text(ids):
        calls["texts"] += len(ids)
        length = (ids > 0).sum(dim=1).float()
        return torch.nn.functional.normalize(torch.stack([length, torch.ones_like(length)], dim=1), dim=-1)

    class Tokenizer:
        def encode(self, texts):
            ids = torch.zeros(len(texts), 6, dtype=torch.long)
            for i, text in enumerate(texts):
                ids[i, : len(text.split())] = 1
            return type("Batch", (), {"input_ids": ids})

    transform = lambda image: torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255  # noqa: E731
    scorer = CosinePairScorer("uta", encode_image, encode_text, transform, Tokenizer(), batch_size=2)
    a, b = _image(0, "a.png"), _image(255, "b.png")
    texts = ["one", "one two three", "one"]
    scores = scorer.score([a, b, _image(0, "a.png")], texts)
    expected = [
        np.dot(np.array([0, 1]) / 1, np.array([1, 1]) / np.sqrt(2)),
        np.dot(np.array([1, 1]) / np.sqrt(2), np.array([3, 1]) / np.sqrt(10)),
        np.dot(np.array([0, 1]) / 1, np.array([1, 1]) / np.sqrt(2)),
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert scores.dtype == np.float64 and calls == {"images": 2, "texts": 2}  # distinct items only
    with pytest.raises(ValueError, match="row-aligned"):
        scorer.score([a], texts)
