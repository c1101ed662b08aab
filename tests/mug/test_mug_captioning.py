"""Greedy and beam-search generation (stop at EOT, respect the max length) and the per-attribute
exact match of generated captions against the synthetic scene ground truth."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nas.data.synthetic import SyntheticConfig
from nas.evaluation.captioning import (
    CaptionVocabulary,
    GenerationConfig,
    attribute_matches,
    beam_generate,
    exact_match_rates,
    greedy_generate,
    parse_caption,
)

SOT, EOT, V = 0, 1, 6


def scripted(plan):
    """next_logits that emits plan[row][t] at step t (EOT once the plan runs out)."""

    def next_logits(prefix, rows):
        t = prefix.shape[1] - 1
        out = torch.full((len(rows), V), -5.0)
        for i, row in enumerate(rows.tolist()):
            token = plan[row][t] if t < len(plan[row]) else EOT
            out[i, token] = 5.0
        return out

    return next_logits


@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=4), max_length=st.integers(2, 10))
def test_greedy_stops_at_eot_and_respects_max_length(lengths, max_length):
    plan = [[2 + (i % 4) for i in range(n)] for n in lengths]
    out = greedy_generate(scripted(plan), len(plan), sot_id=SOT, eot_id=EOT, max_length=max_length)
    for row, n in enumerate(lengths):
        budget = max_length - 1  # tokens after SOT, EOT included
        assert len(out[row].tokens) == min(n, budget)
        assert out[row].finished == (n < budget)
        assert out[row].tokens == plan[row][: len(out[row].tokens)] and EOT not in out[row].tokens


def test_finished_rows_are_not_run_again():
    seen = []

    def next_logits(prefix, rows):
        seen.append(rows.tolist())
        return scripted([[EOT], [2, 3]])(prefix, rows)

    greedy_generate(next_logits, 2, sot_id=SOT, eot_id=EOT, max_length=8)
    assert seen == [[0, 1], [1], [1]]


@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=3), beam=st.integers(1, 4))
def test_beam_search_follows_a_confident_model_and_stops(lengths, beam):
    plan = [[2 + (i % 4) for i in range(n)] for n in lengths]
    out = beam_generate(scripted(plan), len(plan), sot_id=SOT, eot_id=EOT, max_length=6, beam_size=beam)
    for row, n in enumerate(lengths):
        assert out[row].tokens == plan[row][:5] and out[row].finished == (n < 5)


def test_beam_search_finds_what_greedy_misses():
    # step 0: token 2 (p .6) or 3 (p .4); after 2 the model is unsure (p .25 each of 4); after 3 it is sure of EOT
    def next_logits(prefix, rows):
        out = torch.full((len(rows), V), -30.0)
        for i, seq in enumerate(prefix.tolist()):
            if len(seq) == 1:
                out[i, 2], out[i, 3] = math.log(0.6), math.log(0.4)
            elif seq[-1] == 2:
                out[i, 2:6] = math.log(0.25)
            else:
                out[i, EOT] = 0.0
        return out

    greedy = greedy_generate(next_logits, 1, sot_id=SOT, eot_id=EOT, max_length=3)[0]
    beam = beam_generate(
        next_logits, 1, sot_id=SOT, eot_id=EOT, max_length=3, beam_size=2, length_penalty=0.0
    )[0]
    assert greedy.tokens[0] == 2 and not greedy.finished
    assert beam.tokens == [3] and beam.finished and beam.score == pytest.approx(math.log(0.4), abs=1e-6)


def test_banned_ids_are_never_generated():
    out = greedy_generate(scripted([[4, 4]]), 1, sot_id=SOT, eot_id=EOT, max_length=5, banned_ids=[4])
    assert 4 not in out[0].tokens
    with pytest.raises(ValueError, match="max_length"):
        GenerationConfig(max_length=1)


VOCAB = CaptionVocabulary.from_synthetic(SyntheticConfig())
SCENE = {
    "objects": [
        {"shape": "square", "colour": "purple", "size": "large"},
        {"shape": "diamond", "colour": "blue", "size": "small"},
        {"shape": "triangle", "colour": "red", "size": "small"},
    ],
    "relations": [
        {"subject": 0, "relation": "below", "object": 1},
        {"subject": 1, "relation": "above", "object": 0},
        {"subject": 1, "relation": "right of", "object": 2},
        {"subject": 2, "relation": "left of", "object": 1},
    ],
    "captions": [
        {
            "text": "the large purple square under the small blue diamond and the small blue diamond to the right of "
            "the small red triangle"
        }
    ],
}


def test_parse_caption_objects_and_relations():
    assert parse_caption("circle circle right right a red circle", VOCAB).objects == []  # incomplete mentions
    parsed = parse_caption(SCENE["captions"][0]["text"], VOCAB)
    assert parsed.objects == [
        ("large", "purple", "square"),
        ("small", "blue", "diamond"),
        ("small", "red", "triangle"),
    ]
    assert parsed.relations == [(0, "below", 1), (1, "right of", 2)]


def test_ground_truth_matches_everything_and_errors_are_per_attribute():
    assert all(attribute_matches(SCENE["captions"][0]["text"], SCENE, VOCAB).values())
    wrong = attribute_matches(
        "a large purple square left of a small blue diamond and a small blue diamond "
        "left of a small red circle",
        SCENE,
        VOCAB,
    )
    assert wrong == {
        "count": True,
        "colour": True,
        "shape": False,
        "size": True,
        "objects": False,
        "relation": False,
        "caption": False,
    }
    swapped = attribute_matches("a small purple square over a large blue diamond", SCENE, VOCAB)
    assert swapped["size"] is False and swapped["count"] is False and swapped["relation"] is False
    single = {
        "objects": [SCENE["objects"][0]],
        "relations": [],
        "captions": [{"text": "a large purple square"}],
    }
    assert attribute_matches("one large purple square", single, VOCAB)["relation"] is None


def test_exact_match_rates_count_defined_attributes():
    single = {
        "objects": [SCENE["objects"][0]],
        "relations": [],
        "captions": [{"text": "a large purple square"}],
    }
    rates = exact_match_rates(["a large purple square", "a large purple square"], [single, SCENE], VOCAB)
    assert rates["relation"] == {"accuracy": 0.0, "n": 1}
    assert rates["colour"] == {"accuracy": 50.0, "n": 2} and rates["all"]["accuracy"] == 50.0
    assert rates["caption"]["accuracy"] == 50.0
    with pytest.raises(ValueError, match="2 captions for 1 scenes"):
        exact_match_rates(["a", "b"], [SCENE], VOCAB)
