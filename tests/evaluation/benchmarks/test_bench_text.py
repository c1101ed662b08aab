"""pre_caption vectors (BENCHMARKS.md §1.5) and the four Order perturbations (§1.4, §5.4)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from bench_fakes import fake_tagger, fake_tokenizer
from hypothesis import given
from hypothesis import strategies as st

from nas.evaluation.benchmarks.text import (
    ADJECTIVE_TAGS,
    NOUN_TAGS,
    MissingTextToolError,
    nltk_tokenizer,
    order_options,
    pre_caption,
    shuffle_all_but_nouns_and_adjectives,
    shuffle_nouns_and_adjectives,
    shuffle_trigrams,
    shuffle_within_trigrams,
    spacy_tagger,
    trigram_chunks,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "A man with a red helmet on a small moped on a dirt road. ",
            "a man with a red helmet on a small moped on a dirt road",
        ),
        ('The "big" dog (left): barks!  Loudly;  at #3 ~cats*.', "the big dog left barks loudly at 3 cats"),
        ("A child's toy, on the floor.\n", "a child's toy, on the floor"),
        ("a\tb  c", "a\tb c"),
        (" ".join(f"w{i}" for i in range(35)), " ".join(f"w{i}" for i in range(30))),
        ("Keep? these-words/too", "keep? these-words/too"),
    ],
)
def test_pre_caption_vectors(raw: str, expected: str) -> None:
    assert pre_caption(raw, max_words=30) == expected


def test_pre_caption_rejects_nonpositive_max_words() -> None:
    with pytest.raises(ValueError, match="max_words"):
        pre_caption("a", max_words=0)


TAGS = st.sampled_from(["NN", "NNS", "NNP", "NNPS", "JJ", "JJR", "JJS", "DT", "VBZ", "IN", ".", "POS"])
TAGGED = st.lists(st.tuples(st.sampled_from(list("abcdefgh")), TAGS), min_size=0, max_size=9)


@given(tagged=TAGGED, seed=st.integers(0, 2**16))
def test_f1_moves_nouns_among_nouns_and_adjectives_among_adjectives(tagged, seed) -> None:
    out = shuffle_nouns_and_adjectives(tagged, np.random.RandomState(seed)).split(" ") if tagged else []
    assert len(out) == len(tagged)
    for positions in (
        [i for i, (_, t) in enumerate(tagged) if t in NOUN_TAGS],
        [i for i, (_, t) in enumerate(tagged) if t in ADJECTIVE_TAGS],
    ):
        assert Counter(out[i] for i in positions) == Counter(tagged[i][0] for i in positions)
    for i, (token, tag) in enumerate(tagged):
        if tag not in NOUN_TAGS | ADJECTIVE_TAGS:
            assert out[i] == token


@given(tagged=TAGGED, seed=st.integers(0, 2**16))
def test_f2_keeps_nouns_and_adjectives_and_permutes_the_rest(tagged, seed) -> None:
    out = (
        shuffle_all_but_nouns_and_adjectives(tagged, np.random.RandomState(seed)).split(" ") if tagged else []
    )
    rest = [i for i, (_, t) in enumerate(tagged) if t not in NOUN_TAGS | ADJECTIVE_TAGS]
    assert Counter(out[i] for i in rest) == Counter(tagged[i][0] for i in rest)
    for i, (token, tag) in enumerate(tagged):
        if tag in NOUN_TAGS | ADJECTIVE_TAGS:
            assert out[i] == token


TOKENS = st.lists(st.sampled_from(list("abcdefghij")), min_size=1, max_size=10)


@given(tokens=TOKENS, seed=st.integers(0, 2**16))
def test_f3_permutes_inside_each_run_of_three(tokens, seed) -> None:
    out = shuffle_within_trigrams(tokens, random.Random(seed)).split(" ")
    assert len(out) == len(tokens)
    for start in range(0, len(tokens), 3):
        assert Counter(out[start : start + 3]) == Counter(tokens[start : start + 3])


@given(tokens=TOKENS, seed=st.integers(0, 2**16))
def test_f4_reorders_intact_chunks(tokens, seed) -> None:
    out = shuffle_trigrams(tokens, random.Random(seed))
    chunks = trigram_chunks(tokens)
    assert all(1 <= len(c) <= 3 for c in chunks) and all(len(c) == 3 for c in chunks[:-1])
    # The output is the chunks in some order: find that order greedily by trying each permutation prefix.
    remaining = [" ".join(c) for c in chunks]
    rest = out
    while remaining:
        head = next(c for c in remaining if rest == c or rest.startswith(c + " "))
        remaining.remove(head)
        rest = rest[len(head) + 1 :]
    assert rest == ""


def test_trigram_chunks_last_chunk_holds_the_remainder() -> None:
    assert trigram_chunks(list("abcdefgh")) == [["a", "b", "c"], ["d", "e", "f"], ["g", "h"]]
    assert trigram_chunks(list("abcd")) == [["a", "b", "c"], ["d"]]
    assert trigram_chunks([]) == []


def test_permutation_draws_match_numpys_array_permutation() -> None:
    # The official code calls np.random.permutation on the token array; ours permutes positions.
    tagged = [(w, "NN") for w in ["w0", "w1", "w2", "w3", "w4", "w5"]]
    expected = " ".join(np.random.RandomState(7).permutation(np.array([w for w, _ in tagged])))
    assert shuffle_nouns_and_adjectives(tagged, np.random.RandomState(7)) == expected


CAPTION = "A brown dog chases a red ball near the old tree."


def _options(caption: str, seed: int) -> tuple[str, ...]:
    return order_options(
        caption,
        fake_tagger(caption),
        fake_tokenizer(caption),
        np.random.RandomState(seed),
        random.Random(seed),
        max_words=30,
    )


def test_options_are_normalised_and_option_zero_is_the_original() -> None:
    options = _options(CAPTION, 1)
    assert len(options) == 5 and options[0] == pre_caption(CAPTION)
    for option in options:
        assert option == pre_caption(option)  # already normalised: no capitals, no '.', no double space
        assert Counter(option.split(" ")) == Counter(options[0].split(" "))


def test_same_seed_same_options_other_seed_other_options() -> None:
    assert _options(CAPTION, 3) == _options(CAPTION, 3)
    assert _options(CAPTION, 3) != _options(CAPTION, 4)


def test_one_word_caption_gives_five_equal_options() -> None:
    assert set(_options("Dog.", 1)) == {"dog"}


def test_tokeniser_artefacts_appear_in_perturbed_options_only() -> None:
    options = _options("A child's toy, on the floor.", 1)
    assert options[0] == "a child's toy, on the floor"
    for option in options[1:]:
        tokens = option.split(" ")
        assert "'s" in tokens and "," in tokens


def test_missing_text_tools_are_reported_clearly() -> None:
    # Whether or not spaCy/NLTK are installed: either a working tool or an error saying what to do.
    for build in (spacy_tagger, nltk_tokenizer):
        try:
            tool = build()
        except MissingTextToolError as exc:
            assert "pass tagger=" in str(exc) or "pass tokenizer=" in str(exc)
        else:
            assert callable(tool)


def _real_tools():
    try:
        return spacy_tagger(), nltk_tokenizer()
    except MissingTextToolError as exc:
        pytest.skip(f"real tagger/tokenizer unavailable: {exc}")


def test_regression_with_real_spacy_and_nltk() -> None:
    tagger, tokenizer = _real_tools()
    caption = "A brown dog chases a red ball."
    # The pinned options below assume en_core_web_sm tags the caption like this.
    assert [tag for _, tag in tagger(caption)] == ["DT", "JJ", "NN", "VBZ", "DT", "JJ", "NN", "."]
    assert list(tokenizer(caption)) == ["A", "brown", "dog", "chases", "a", "red", "ball", "."]
    options = order_options(
        caption, tagger(caption), tokenizer(caption), np.random.RandomState(1), random.Random(1), 30
    )
    assert options == (
        "a brown dog chases a red ball",
        "a brown dog chases a red ball",
        "a brown dog chases red ball a",
        "brown dog a red chases a ball",
        "a brown dog ball chases a red",
    )
