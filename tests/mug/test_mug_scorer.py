"""The caption-likelihood pair scorer: mean per-token log-likelihood given the unmasked image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data.bpe_tokenizer import BpeTokenizer, EmptyCaptionError
from nas.evaluation.caption_scorer import CaptionLikelihoodScorer
from nas.evaluation.scorers import PairScorer
from nas.models.registry import create_model
from nas.objectives.mug import mean_token_log_likelihood, teacher_forcing

TEXTS = ["a red circle", "a blue square left of a red circle", "a red square"]


@pytest.fixture(scope="module")
def setup():
    tokenizer = BpeTokenizer(context_length=10)
    torch.manual_seed(0)
    model = create_model(
        "mug_tiny",
        vision={"embed_dim": 24, "depth": 1, "num_heads": 2},
        decoder={"embed_dim": 16, "depth": 1},
        caption={"width": 16, "context_length": 10, "corpus_slots": 32},
    )
    encoded = tokenizer.encode(TEXTS)
    model.set_vocabulary(encoded.input_ids[encoded.attention_mask.bool()].tolist())
    model.eval()

    def transform(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    rng = np.random.default_rng(0)
    images = []
    for k in range(2):
        image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        image.info["path"] = f"img{k}.png"
        images.append(image)
    return model, tokenizer, transform, images


def test_score_is_the_mean_token_log_likelihood_given_the_full_image(setup):
    model, tokenizer, transform, images = setup
    scorer = CaptionLikelihoodScorer(model, transform, tokenizer, batch_size=2)
    assert isinstance(scorer, PairScorer) and scorer.name == "caption-ll"
    pairs = [(images[0], TEXTS[0]), (images[1], TEXTS[1]), (images[0], TEXTS[2]), (images[1], TEXTS[0])]
    scores = scorer.score([p[0] for p in pairs], [p[1] for p in pairs])
    assert scores.dtype == np.float64 and scores.shape == (4,) and np.all(scores < 0)
    for (image, text), score in zip(pairs, scores):
        enc = tokenizer.encode([text])
        with torch.no_grad():
            latent = model.encode(transform(image)[None])
            inputs, labels, mask = teacher_forcing(model.to_local(enc.input_ids), enc.attention_mask)
            expected = mean_token_log_likelihood(model.caption_logits(latent, inputs), labels, mask)
        assert score == pytest.approx(expected.item(), abs=1e-5)
    # a pair's score does not depend on the batch it arrives in
    alone = scorer.score([pairs[2][0]], [pairs[2][1]])
    assert alone[0] == pytest.approx(scores[2], abs=1e-6)


def test_each_distinct_image_is_encoded_once(setup):
    model, tokenizer, transform, images = setup
    calls = []
    handle = model.encoder.blocks.register_forward_hook(lambda mod, args, out: calls.append(len(args[0])))
    try:
        CaptionLikelihoodScorer(model, transform, tokenizer, batch_size=8).score(
            [images[0], images[1], images[0], images[0]], TEXTS + [TEXTS[0]]
        )
    finally:
        handle.remove()
    assert calls == [2]


def test_empty_texts_are_named_and_long_ones_counted(setup):
    model, tokenizer, transform, images = setup
    scorer = CaptionLikelihoodScorer(model, transform, tokenizer)
    with pytest.raises(EmptyCaptionError, match="empty or whitespace-only"):
        scorer.score([images[0]], ["   "])
    scorer.score([images[0]], ["a red circle " * 10])  # 30 tokens into a 10-token context
    assert scorer.truncated == 1
    with pytest.raises(ValueError, match="row-aligned"):
        scorer.score(images, TEXTS)
    assert scorer.score([], []).shape == (0,)
