"""Batched, non-repeating probe scoring (issue 18): the batched scorers give the scores of one-by-one
scoring, and within one model's probe suite each distinct image, text and pair is computed once, across
calls, benchmarks and scorers (nas.evaluation.encoding_cache)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nas.data.probes import ProbeConfig, write_probes
from nas.data.synthetic import SyntheticConfig, generate
from nas.data.tokenizer import pre_caption
from nas.evaluation.encoding_cache import EncodingCache, shared_encodings
from nas.evaluation.model_scorers import build_scorer
from nas.evaluation.probe_suite import run_probe_suite

VOCAB = {"red": 3, "green": 4, "blue": 5}


class Tokenizer:
    def __call__(self, texts, *, padding, truncation, max_length, return_tensors):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            tokens = [1, *(VOCAB.get(w, 6 + len(w) % 50) for w in text.split())][: max_length - 1] + [2]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class CountingModel(nn.Module):
    """Image = its mean RGB; text = counts of its colour words; ITM logits = [0, image . text]. Counts
    the rows each encoder receives."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))
        self.rows = {"encode_image": 0, "encode_text": 0, "itm_logits": 0}

    def encode_image(self, image: torch.Tensor):
        self.rows["encode_image"] += image.shape[0]
        rgb = image.mean(dim=(2, 3))
        return rgb[:, None, :], F.normalize(rgb, dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.rows["encode_text"] += input_ids.shape[0]
        colour = (input_ids - 3).clamp(min=0, max=3)
        is_colour = (input_ids >= 3) & (input_ids <= 5) & attention_mask.bool()
        counts = (F.one_hot(colour, 4)[..., :3] * is_colour[..., None]).sum(1).float() + 0.1
        return counts[:, None, :], F.normalize(counts, dim=-1)

    def itm_logits(self, image_tokens, text_tokens, attention_mask):
        self.rows["itm_logits"] += image_tokens.shape[0]
        match = (image_tokens[:, 0] * text_tokens[:, 0]).sum(-1)
        return torch.stack([torch.zeros_like(match), match], dim=1)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probes")
    generate(SyntheticConfig(seed=3, n_train=0, n_val=0, n_test=24), root / "data")
    sizes = ProbeConfig(
        vg_relation=4,
        vg_attribution=4,
        order_images=2,
        winoground=3,
        valse_per_instrument=2,
        sugarcrepe_per_file=2,
    )
    write_probes(root / "data", root / "probes", sizes)
    return root / "probes"


def suite_pairs(probes: Path) -> tuple[list[Image.Image], list[str]]:
    """Every (image, text) option pair of the probe suite, row-aligned."""
    from nas.data.probes import probe_benchmarks
    from nas.evaluation.benchmarks.runner import BENCHMARKS, _config

    images, texts = [], []
    for name, spec in sorted(probe_benchmarks(probes).items()):
        definition = BENCHMARKS[name]
        root = None if spec["root"] is None else Path(spec["root"])
        cases = definition.load(
            root, _config(definition, spec["config"]), check_images=True, **spec["load_options"]
        )
        for case in cases:
            for ref in case.images:
                for text in case.texts:
                    images.append(ref.load())
                    texts.append(text)
    return images, texts


def test_the_real_albef_batched_scores_are_the_one_by_one_scores(probes: Path) -> None:
    from nas.data.tokenizer import load_tokenizer
    from nas.data.transforms import TransformConfig, build_eval_transform
    from nas.models.registry import create_model

    torch.manual_seed(0)
    albef = create_model("albef_tiny").eval()
    transform, tokenizer = build_eval_transform(TransformConfig()), load_tokenizer()
    images, texts = suite_pairs(probes)
    images, texts = images[::7], texts[::7]  # ~60 pairs of every benchmark, texts of varied length
    for kind in ("itm", "itc", "itm+itc"):
        batched = build_scorer(kind, albef, transform, tokenizer, batch_size=16).score(images, texts)
        single = build_scorer(kind, albef, transform, tokenizer, batch_size=1)
        one_by_one = np.array([single.score([image], [text])[0] for image, text in zip(images, texts)])
        np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-5)
    # and the scores of the full `max_length` padding the scorer no longer computes
    with torch.no_grad():
        image_tokens, image_feat = albef.encode_image(torch.stack([transform(im) for im in images]))
        encoded = tokenizer(
            [pre_caption(t, 30) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=32,
            return_tensors="pt",
        )
        text_tokens, text_feat = albef.encode_text(encoded["input_ids"], encoded["attention_mask"])
        logits = albef.itm_logits(image_tokens, text_tokens, encoded["attention_mask"]).double()
    itm = build_scorer("itm", albef, transform, tokenizer).score(images, texts)
    itc = build_scorer("itc", albef, transform, tokenizer).score(images, texts)
    np.testing.assert_allclose(itm, torch.softmax(logits, -1)[:, 1].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        itc, (image_feat.double() * text_feat.double()).sum(-1).numpy(), rtol=0, atol=1e-5
    )


def test_the_suite_encodes_each_distinct_image_text_and_pair_once(probes: Path, tmp_path: Path) -> None:
    model = CountingModel()
    tokenizer = Tokenizer()
    scorers = [
        build_scorer("itm", model, to_tensor, tokenizer, batch_size=5),
        build_scorer("itm+itc", model, to_tensor, tokenizer, batch_size=5, name="both"),
        build_scorer("itc", model, to_tensor, tokenizer, batch_size=5),
    ]
    results = run_probe_suite(scorers, probes, scores_dir=tmp_path / "scores")
    assert all(scorer.cache is None for scorer in scorers)  # the suite's cache is dropped afterwards

    images, texts = suite_pairs(probes)
    cache = EncodingCache()
    distinct_images = {cache.image_key(image) for image in images}
    cleaned = [pre_caption(text, 30) for text in texts]
    distinct_pairs = {(cache.image_key(image), text) for image, text in zip(images, cleaned)}
    assert model.rows["encode_image"] == len(distinct_images)  # across benchmarks and scorers
    assert model.rows["encode_text"] == len(set(cleaned))
    assert model.rows["itm_logits"] == len(distinct_pairs)  # itm and itm+itc share each pair's logits
    assert len(results) == 6 and all(len(by_scorer) == 3 for by_scorer in results.values())

    # the same scores as scoring each benchmark alone, without the shared cache
    alone = CountingModel()
    fresh = [build_scorer(s.kind, alone, to_tensor, Tokenizer(), batch_size=64, name=s.name) for s in scorers]
    for scorer in fresh:
        for name in results:
            from nas.data.probes import probe_benchmarks
            from nas.evaluation.benchmarks import evaluate_benchmark

            spec = probe_benchmarks(probes)[name]
            direct = evaluate_benchmark(name, spec["root"], scorer, spec["config"], **spec["load_options"])
            assert direct["metrics"] == results[name][scorer.name]["metrics"]
    assert alone.rows["encode_image"] > model.rows["encode_image"]  # the repeats the cache removed


def test_an_image_file_copied_elsewhere_is_encoded_once(tmp_path: Path) -> None:
    source = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(source)
    shutil.copy(source, tmp_path / "b.png")
    images = []
    for name in ("a.png", "b.png", "a.png"):
        with Image.open(tmp_path / name) as opened:
            image = opened.convert("RGB")
        image.info.update(path=str(tmp_path / name), box=None)
        images.append(image)
    model = CountingModel()
    scorer = build_scorer("itm", model, to_tensor, Tokenizer())
    with shared_encodings([scorer]) as caches:
        first = scorer.score(images, ["red", "red", "blue"])
        second = scorer.score(images[:1], ["blue"])  # a later call: nothing new to encode
    assert model.rows == {"encode_image": 1, "encode_text": 2, "itm_logits": 2}
    assert second[0] == first[2]
    (cache,) = caches.values()
    assert cache.stats["texts hit"] >= 1 and cache.stats["itm_logits hit"] >= 1


def test_a_small_cache_evicts_and_scores_the_same(probes: Path) -> None:
    images, texts = suite_pairs(probes)
    scores = {}
    for max_bytes in (4 << 30, 2_000):
        model = CountingModel()
        scorer = build_scorer("itm+itc", model, to_tensor, Tokenizer(), batch_size=8)
        with shared_encodings([scorer], max_bytes=max_bytes) as caches:
            scores[max_bytes] = np.concatenate(
                [scorer.score(images[i : i + 40], texts[i : i + 40]) for i in range(0, len(texts), 40)]
            )
        (cache,) = caches.values()
        assert cache.bytes <= max(max_bytes, 1 << 12)
    np.testing.assert_allclose(scores[2_000], scores[4 << 30], rtol=0, atol=1e-12)


def test_the_caption_and_cosine_scorers_keep_their_encodings_across_calls() -> None:
    from nas.evaluation.uta_scorer import CosinePairScorer

    calls = {"images": 0, "texts": 0}

    def encode_image(pixels):
        calls["images"] += len(pixels)
        return F.normalize(pixels.mean(dim=(2, 3)), dim=-1)

    class BpeLike:
        def encode(self, texts):
            class Batch:
                input_ids = torch.tensor([[len(t), t.count("r") + 1, 1] for t in texts], dtype=torch.float32)

            return Batch()

    def encode_text(ids):
        calls["texts"] += len(ids)
        return F.normalize(ids, dim=-1)

    scorer = CosinePairScorer("uta", encode_image, encode_text, to_tensor, BpeLike(), batch_size=2)
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    alone = scorer.score([red, blue], ["red", "blue"])
    assert calls == {"images": 2, "texts": 2}
    with shared_encodings([scorer]):
        scorer.score([red, blue], ["red", "blue"])
        again = scorer.score([blue, red], ["blue", "red"])
    assert calls == {"images": 4, "texts": 4}  # once more for the suite's cache, then never
    np.testing.assert_array_equal(again, alone[::-1])


def test_retrieval_reranks_with_the_per_query_itm_scores() -> None:
    from nas.data.tokenizer import load_tokenizer
    from nas.evaluation.retrieval import RetrievalConfig, retrieval_scores
    from nas.models.registry import create_model

    torch.manual_seed(0)
    albef = create_model("albef_tiny").eval()
    tokenizer = load_tokenizer()
    images = torch.rand(6, 3, 64, 64)
    texts = [
        "a red circle",
        "a small blue square left of a green triangle",
        "green",
        "a large red square",
    ] * 2
    cfg = RetrievalConfig(batch_size=5, k_test=3)
    scores = retrieval_scores(
        albef, images, texts, n_images=6, n_texts=8, tokenizer=tokenizer, max_length=32, cfg=cfg
    )
    with torch.no_grad():
        image_tokens, _ = albef.encode_image(images)
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
        text_tokens, _ = albef.encode_text(enc["input_ids"], enc["attention_mask"])
        itc = scores["itc"]
        for name, matrix, n_cols in (("i2t", itc, 8), ("t2i", itc.T, 6)):
            expected = torch.full_like(matrix, -100.0)
            top_sim, top_idx = matrix.topk(3, dim=1)
            for row in range(matrix.shape[0]):
                for sim, col in zip(top_sim[row], top_idx[row]):
                    image, text = (row, col) if name == "i2t" else (col, row)
                    logit = albef.itm_logits(
                        image_tokens[image : image + 1],
                        text_tokens[text : text + 1],
                        enc["attention_mask"][text : text + 1],
                    )[0, 1]
                    expected[row, col] = logit + sim
            assert scores[name].shape == (matrix.shape[0], n_cols)
            np.testing.assert_allclose(scores[name].numpy(), expected.numpy(), rtol=0, atol=1e-5)
