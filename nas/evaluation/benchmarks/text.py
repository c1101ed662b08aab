"""Caption normalisation and the four ARO Order perturbations (BENCHMARKS.md §1.4-§1.5).

Written from the spec's description of `dataset_zoo/retrieval.py` (`pre_caption`, BLIP variant)
and `dataset_zoo/perturbations.py` (`TextShuffler`) in mertyg/vision-language-models-are-bows at
commit 81fdd20. The random draws mirror the official calls one for one, so that with the same
generator state the same options come out:
- f1: two legacy-NumPy `permutation` calls (nouns, then adjectives);
- f2: one legacy-NumPy `permutation` call (every other token);
- f3: one Python `shuffle` per trigram chunk, in chunk order;
- f4: one Python `shuffle` of the chunk list.
(`RandomState.permutation(n)` draws exactly what `permutation(array of n)` draws.)

The tagger (spaCy `en_core_web_sm`, fine-grained `tag_`) and tokenizer (NLTK `word_tokenize`) are
injected, so tests need neither; `spacy_tagger()` / `nltk_tokenizer()` build the real ones and
say clearly what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

# Penn Treebank tags the official code treats as nouns and adjectives (§1.4).
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
ADJECTIVE_TAGS = frozenset({"JJ", "JJR", "JJS"})

Tagger = Callable[[str], Sequence[tuple[str, str]]]
"""caption -> [(token text, fine-grained Penn tag), ...] (spaCy `token.text`, `token.tag_`)."""

Tokenizer = Callable[[str], Sequence[str]]
"""caption -> tokens (NLTK `word_tokenize`)."""


class PermutationSource(Protocol):
    """`np.random.RandomState` or the `np.random` module (global legacy state)."""

    def permutation(self, x: int) -> np.ndarray: ...


class ShuffleSource(Protocol):
    """`random.Random` or the `random` module (global state)."""

    def shuffle(self, x: list) -> None: ...


class MissingTextToolError(RuntimeError):
    """spaCy's model or NLTK's Punkt data is not installed (and cannot be downloaded offline)."""


# ---------------------------------------------------------------------------------------------
# pre_caption, ARO/BLIP variant (§1.5). Not ALBEF's own pre_caption, which deletes more.

_PUNCTUATION_TO_SPACE = re.compile(r"[.!\"()*#:;~]")
_WHITESPACE_RUN = re.compile(r"\s{2,}")  # a lone tab or newline stays


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Lowercase; `. ! " ( ) * # : ; ~` -> space; runs of >= 2 whitespace -> one space; strip
    trailing newlines then spaces; keep the first `max_words` space-separated pieces."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    text = _PUNCTUATION_TO_SPACE.sub(" ", caption.lower())
    text = _WHITESPACE_RUN.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


# ---------------------------------------------------------------------------------------------
# The four perturbations. Each returns the tokens joined by single spaces, as the official code.


def _permute_in_place(tokens: list[str], positions: list[int], rng: PermutationSource) -> None:
    # Same draws and result as `tokens[positions] = rng.permutation(tokens[positions])`.
    order = rng.permutation(len(positions))
    values = [tokens[p] for p in positions]
    for position, source in zip(positions, order):
        tokens[position] = values[source]


def shuffle_nouns_and_adjectives(tagged: Sequence[tuple[str, str]], rng: PermutationSource) -> str:
    """f1: nouns permuted among noun positions, then adjectives among adjective positions."""
    tokens = [text for text, _ in tagged]
    _permute_in_place(tokens, [i for i, (_, tag) in enumerate(tagged) if tag in NOUN_TAGS], rng)
    _permute_in_place(tokens, [i for i, (_, tag) in enumerate(tagged) if tag in ADJECTIVE_TAGS], rng)
    return " ".join(tokens)


def shuffle_all_but_nouns_and_adjectives(tagged: Sequence[tuple[str, str]], rng: PermutationSource) -> str:
    """f2: every token that is neither noun nor adjective is permuted among those positions."""
    tokens = [text for text, _ in tagged]
    kept = NOUN_TAGS | ADJECTIVE_TAGS
    _permute_in_place(tokens, [i for i, (_, tag) in enumerate(tagged) if tag not in kept], rng)
    return " ".join(tokens)


def trigram_chunks(tokens: Sequence[str]) -> list[list[str]]:
    """Consecutive chunks of 3 from the start; the last one may hold 1 or 2 tokens."""
    return [list(tokens[i : i + 3]) for i in range(0, len(tokens), 3)]


def shuffle_within_trigrams(tokens: Sequence[str], rng: ShuffleSource) -> str:
    """f3: shuffle inside each chunk (one shuffle per chunk, in order); chunk order kept."""
    chunks = trigram_chunks(tokens)
    for chunk in chunks:
        rng.shuffle(chunk)
    return " ".join(" ".join(chunk) for chunk in chunks)


def shuffle_trigrams(tokens: Sequence[str], rng: ShuffleSource) -> str:
    """f4: shuffle the list of chunks once; each chunk stays intact."""
    chunks = trigram_chunks(tokens)
    rng.shuffle(chunks)
    return " ".join(" ".join(chunk) for chunk in chunks)


def order_options(
    caption: str,
    tagged: Sequence[tuple[str, str]],
    tokens: Sequence[str],
    permutations: PermutationSource,
    shuffles: ShuffleSource,
    max_words: int = 30,
) -> tuple[str, str, str, str, str]:
    """`[P(c), P(f1(c)), P(f2(c)), P(f3(c)), P(f4(c))]` (§1.3): the perturbations act on the raw
    caption (`tagged`/`tokens` are its tagging and tokenisation); each result then goes through
    `pre_caption`. Draw order f1, f2, f3, f4 as in the official dataset constructor."""
    perturbed = (
        shuffle_nouns_and_adjectives(tagged, permutations),
        shuffle_all_but_nouns_and_adjectives(tagged, permutations),
        shuffle_within_trigrams(tokens, shuffles),
        shuffle_trigrams(tokens, shuffles),
    )
    return tuple(pre_caption(text, max_words) for text in (caption, *perturbed))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# The real tagger and tokenizer (optional dependencies; §1.8 pitfall 11)


def spacy_tagger(model: str = "en_core_web_sm") -> Tagger:
    """spaCy tagger returning `(token.text, token.tag_)`; a clear error if spaCy or the model is absent."""
    try:
        import spacy
    except ImportError as exc:
        raise MissingTextToolError(
            "ARO Order perturbations f1/f2 need spaCy (`pip install spacy`), or pass tagger=..."
        ) from exc
    try:
        nlp = spacy.load(model)
    except OSError as exc:
        raise MissingTextToolError(
            f"spaCy model {model!r} is not installed; install it with `python -m spacy download {model}` "
            "(it is not a normal PyPI dependency), or pass tagger=..."
        ) from exc

    def tag(caption: str) -> list[tuple[str, str]]:
        return [(token.text, token.tag_) for token in nlp(caption)]

    return tag


def nltk_tokenizer() -> Tokenizer:
    """NLTK `word_tokenize`; a clear error if NLTK or its Punkt data (`punkt_tab`/`punkt`) is absent."""
    try:
        import nltk
    except ImportError as exc:
        raise MissingTextToolError(
            "ARO Order perturbations f3/f4 need NLTK (`pip install nltk`), or pass tokenizer=..."
        ) from exc
    for resource in ("tokenizers/punkt_tab", "tokenizers/punkt"):
        try:
            nltk.data.find(resource)
            break
        except LookupError:
            continue
    else:
        raise MissingTextToolError(
            "NLTK Punkt data is missing; run `python -m nltk.downloader punkt_tab punkt` "
            "on a machine with network access, or pass tokenizer=..."
        )
    return nltk.word_tokenize
