"""Model pair scorers: hand-checkable scores from a tiny fake model honouring the ALBEF evaluation
API, caching, eval mode, batching, and an end-to-end run on the synthetic probes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nas.data.probes import ProbeConfig, probe_benchmarks, write_probes
from nas.data.synthetic import SyntheticConfig, generate
from nas.evaluation.benchmarks import evaluate_benchmark
from nas.evaluation.model_scorers import (
    ITCScorer,
    ITMPlusITCScorer,
    ITMScorer,
    ScorerConfig,
    build_scorer,
    scorer_from_config,
)
from nas.evaluation.scorers import PairScorer

# Fake tokenizer: one id per colour word; [CLS] 1, [SEP] 2, [PAD] 0, anything else [UNK] 6.
VOCAB = {"red": 3, "green": 4, "blue": 5}


class FakeTokenizer:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts, *, padding, truncation, max_length, return_tensors):
        assert padding == "max_length" and truncation and return_tensors == "pt"
        self.calls.append(list(texts))
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            tokens = [1, *(VOCAB.get(w, 6) for w in text.split())][: max_length - 1] + [2]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class FakeModel(nn.Module):
    """Image = its mean RGB; text = counts of its colour words (red, green, blue).
    ITC cosine = cos(mean RGB, counts); ITM logits = [0, mean RGB . counts]."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))
        self.images_encoded = 0
        self.modes: list[tuple[bool, bool]] = []  # (training, grad enabled) at each call

    def encode_image(self, image: torch.Tensor):
        self.images_encoded += image.shape[0]
        self.modes.append((self.training, torch.is_grad_enabled()))
        rgb = image.mean(dim=(2, 3))
        return rgb[:, None, :], F.normalize(rgb, dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.modes.append((self.training, torch.is_grad_enabled()))
        colour = (input_ids - 3).clamp(min=0)
        is_colour = (input_ids >= 3) & (input_ids <= 5) & attention_mask.bool()
        counts = (F.one_hot(colour, 4)[..., :3] * is_colour[..., None]).sum(1).float()
        return counts[:, None, :], F.normalize(counts, dim=-1)

    def itm_logits(self, image_tokens, text_tokens, attention_mask):
        match = (image_tokens[:, 0] * text_tokens[:, 0]).sum(-1)
        return torch.stack([torch.zeros_like(match), match], dim=1)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def solid(rgb: tuple[int, int, int], path: str | None = None) -> Image.Image:
    image = Image.new("RGB", (4, 4), rgb)
    if path is not None:
        image.info["path"] = path
        image.info["box"] = None
    return image


RED, BLUE = (255, 0, 0), (0, 0, 255)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def scorer(kind: str, model: FakeModel, **kwargs):
    return build_scorer(kind, model, to_tensor, FakeTokenizer(), **kwargs)


def test_hand_checked_scores_for_each_kind(model: FakeModel) -> None:
    images = [solid(RED), solid(RED), solid(BLUE), solid(RED)]
    texts = ["red", "blue", "blue", "red red"]
    itm = scorer("itm", model).score(images, texts)
    itc = scorer("itc", model).score(images, texts)
    both = scorer("itm+itc", model).score(images, texts)
    np.testing.assert_allclose(itm, [sigmoid(1), 0.5, sigmoid(1), sigmoid(2)], rtol=1e-6)
    np.testing.assert_allclose(itc, [1.0, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(both, [2.0, 0.0, 2.0, 3.0], atol=1e-6)
    assert itm.dtype == np.float64 and itm.shape == (4,)


def test_names_kinds_and_the_protocol(model: FakeModel) -> None:
    made = {kind: scorer(kind, model) for kind in ("itm", "itc", "itm+itc")}
    assert [type(s) for s in made.values()] == [ITMScorer, ITCScorer, ITMPlusITCScorer]
    assert [s.name for s in made.values()] == ["itm_probability", "itc_cosine", "itm_logit+itc_cosine"]
    assert all(isinstance(s, PairScorer) for s in made.values())
    assert scorer("itm", model, name="nas-itm").name == "nas-itm"
    with pytest.raises(ValueError, match="unknown scorer kind 'cosine'"):
        scorer("cosine", model)
    via_config = scorer_from_config(ScorerConfig(kind="itc", batch_size=3), model, to_tensor, FakeTokenizer())
    assert isinstance(via_config, ITCScorer) and via_config.batch_size == 3


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        ScorerConfig(kind="itm2")
    with pytest.raises(ValueError, match="max_length"):
        ScorerConfig(max_length=1)
    with pytest.raises(ValueError, match="batch_size"):
        ITMScorer(FakeModel(), to_tensor, FakeTokenizer(), batch_size=0)


def test_texts_are_cleaned_like_albef_unless_switched_off(model: FakeModel) -> None:
    cleaned = scorer("itm", model).score([solid(RED)], ["Red."])
    raw = scorer("itm", model, max_words=0).score([solid(RED)], ["Red."])
    np.testing.assert_allclose([cleaned[0], raw[0]], [sigmoid(1), 0.5], rtol=1e-6)  # "Red." is [UNK] raw


def test_each_distinct_image_and_text_is_encoded_once_per_call(model: FakeModel) -> None:
    tokenizer = FakeTokenizer()
    itm = ITMScorer(model, to_tensor, tokenizer, batch_size=64)
    # two PIL objects of the same file and box are one image; an unnamed image is its own
    images = [solid(RED, "a.png"), solid(RED, "a.png"), solid(BLUE, "b.png"), solid(BLUE)]
    itm.score(images, ["red", "red", "blue", "red"])
    assert model.images_encoded == 3
    assert tokenizer.calls == [["red", "blue"]]


def test_batch_size_does_not_change_scores(model: FakeModel) -> None:
    rng = np.random.default_rng(0)
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(7)]
    images = [solid(c) for c in colours for _ in range(3)]
    texts = ["red", "green blue", "blue red red"] * 7
    for kind in ("itm", "itc", "itm+itc"):
        one = scorer(kind, model, batch_size=1).score(images, texts)
        many = scorer(kind, model, batch_size=64).score(images, texts)
        np.testing.assert_array_equal(one, many)


def test_scoring_runs_in_eval_mode_without_grad_and_restores_the_mode(model: FakeModel) -> None:
    model.train()
    scorer("itm", model).score([solid(RED)], ["red"])
    assert model.modes and all(mode == (False, False) for mode in model.modes)
    assert model.training
    model.eval()
    scorer("itc", model).score([solid(RED)], ["red"])
    assert not model.training


def test_misaligned_pairs_raise(model: FakeModel) -> None:
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        scorer("itm", model).score([solid(RED), solid(RED)], ["red"])
    assert scorer("itm", model).score([], []).shape == (0,)


def test_end_to_end_on_the_synthetic_probes(tmp_path: Path, model: FakeModel) -> None:
    generate(SyntheticConfig(seed=2, n_train=0, n_val=0, n_test=24), tmp_path / "data")
    sizes = ProbeConfig(
        vg_relation=4,
        vg_attribution=4,
        order_images=2,
        winoground=3,
        valse_per_instrument=2,
        sugarcrepe_per_file=2,
    )
    write_probes(tmp_path / "data", tmp_path / "probes", sizes)
    itm = scorer("itm", model)
    for name, spec in probe_benchmarks(tmp_path / "probes").items():
        result = evaluate_benchmark(
            name, spec["root"], itm, spec["config"], batch_size=8, **spec["load_options"]
        )
        assert result["scorer"] == "itm_probability"
        assert result["benchmark"] == name and result["n_cases"] > 0 and result["metrics"]
        for scores in result["scores"].values():
            assert all(0.0 < s < 1.0 for row in scores for s in row)


def test_the_real_albef_api_and_tokenizer() -> None:
    from nas.data.tokenizer import load_tokenizer
    from nas.data.transforms import TransformConfig, build_eval_transform
    from nas.models.registry import create_model

    torch.manual_seed(0)
    albef = create_model("albef_tiny").eval()
    transform = build_eval_transform(TransformConfig())
    tokenizer = load_tokenizer()
    images = [solid(RED).resize((64, 64)), solid(BLUE).resize((64, 64))]
    texts = ["a small red circle", "a large blue square left of a small red circle"]
    made = {
        kind: build_scorer(kind, albef, transform, tokenizer, max_length=32)
        for kind in ("itm", "itc", "itm+itc")
    }
    itm, itc, both = (made[k].score(images, texts) for k in ("itm", "itc", "itm+itc"))
    with torch.no_grad():
        image_tokens, image_feat = albef.encode_image(torch.stack([transform(im) for im in images]))
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
        text_tokens, text_feat = albef.encode_text(encoded["input_ids"], encoded["attention_mask"])
        logits = albef.itm_logits(image_tokens, text_tokens, encoded["attention_mask"]).double()
    np.testing.assert_allclose(itm, torch.softmax(logits, -1)[:, 1].numpy(), rtol=1e-5)
    np.testing.assert_allclose(itc, (image_feat * text_feat).sum(-1).double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both, logits[:, 1].numpy() + itc, rtol=1e-5, atol=1e-6)
