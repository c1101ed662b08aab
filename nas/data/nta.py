"""Negative Text Augmentation (NTA): hard negative captions that reuse a caption's words but say
something false about its image (NAS_METHOD.md §5 [D]: NegCLIP-style swaps and replacements of
nouns, adjectives and relations, the ARO perturbation families).

Two sources of captions:

- Synthetic captions (nas.data.synthetic) carry a role per word (det, size, colour, shape,
  relation, conj). `hard_negative_caption` edits them; each edit kind is false for the scene *by
  construction*, because every scene has distinct colours and distinct shapes and every stated
  relation holds with a margin (the argument is written next to each edit). `caption_truth`
  checks any role-tagged caption against a scene's ground truth, so probes and tests can verify
  that instead of trusting it.
- Real captions: `spacy_hard_negative` swaps two nouns, two adjectives or two verbs found by
  spaCy's tagger (`en_core_web_sm`, not on PyPI; installed with spaCy's own download command).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from nas.data.synthetic import (
    INVERSE,
    NUM_TEMPLATES,
    RELATIONS,
    ROLES,
    SyntheticConfig,
    caption_for,
    true_relations,
)

# Edit kinds on role-tagged synthetic captions (the ARO / NegCLIP families, NAS_METHOD §5).
EDIT_KINDS = (
    "swap_colours",  # two objects exchange their colours           (attribute binding)
    "swap_shapes",  # two objects exchange their shapes             (object binding)
    "replace_colour",  # one colour becomes another colour
    "replace_shape",  # one shape becomes another shape
    "replace_relation",  # a relation becomes its opposite ("left of" -> "right of")
    "swap_relation_args",  # subject and object of a relation trade places
)
# Swaps on real captions, by Penn Treebank tag (spaCy `token.tag_`).
SPACY_SWAP_TAGS = {
    "swap_nouns": frozenset({"NN", "NNS", "NNP", "NNPS"}),
    "swap_adjectives": frozenset({"JJ", "JJR", "JJS"}),
    "swap_verbs": frozenset({"VB", "VBD", "VBG", "VBN", "VBP", "VBZ"}),
}
SPACY_INSTALL = "pip install spacy && python -m spacy download {model}"
MENTION_ROLES = frozenset({"det", "size", "colour", "shape"})

Truth = Literal["true", "false", "unclear"]

_SYNTHETIC_DEFAULTS = SyntheticConfig()


@dataclass
class NTAConfig:
    """Which hard negatives NTA makes. The vocabularies must be the data set's own (defaults: the
    embedded synthetic data's); a replacement word comes from them."""

    kinds: tuple[str, ...] = EDIT_KINDS
    colours: tuple[str, ...] = tuple(_SYNTHETIC_DEFAULTS.colours)
    shapes: tuple[str, ...] = _SYNTHETIC_DEFAULTS.shapes
    spacy_kinds: tuple[str, ...] = tuple(SPACY_SWAP_TAGS)
    spacy_model: str = "en_core_web_sm"

    def __post_init__(self) -> None:
        for name, allowed in (("kinds", EDIT_KINDS), ("spacy_kinds", tuple(SPACY_SWAP_TAGS))):
            values = getattr(self, name)
            unknown = [k for k in values if k not in allowed]
            if not values or unknown or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct names from {list(allowed)}, got {list(values)}")
        for name in ("colours", "shapes"):
            values = getattr(self, name)
            if len(values) < 2 or len(set(values)) != len(values) or any(not v or " " in v for v in values):
                raise ValueError(f"{name} must hold at least 2 distinct one-word names, got {list(values)}")
        if not self.spacy_model:
            raise ValueError("spacy_model must name a spaCy pipeline, e.g. 'en_core_web_sm'")


# ---------------------------------------------------------------------------------------------
# Reading a role-tagged caption


@functools.cache
def relation_phrase_tables() -> tuple[dict[str, str], ...]:
    """The distinct {relation: phrase} tables of the caption templates, read off `caption_for`
    (two objects placed so that each relation is stated once per template)."""
    tables: list[dict[str, str]] = []
    offsets = ((20, 0), (-20, 0), (0, 20), (0, -20))
    for template in range(NUM_TEMPLATES):
        table: dict[str, str] = {}
        for dx, dy in offsets:
            objects = [
                {"shape": "circle", "colour": "red", "size": "small", "x": 32, "y": 32},
                {"shape": "square", "colour": "blue", "size": "small", "x": 32 + dx, "y": 32 + dy},
            ]
            record = caption_for({"objects": objects}, template)
            phrase = " ".join(w for w, r in zip(record["words"], record["roles"]) if r == "relation")
            table[record["relations"][0]["relation"]] = phrase
        if set(table) != set(RELATIONS):
            raise RuntimeError(f"template {template} does not phrase every relation: {table}")
        if table not in tables:
            tables.append(table)
    return tuple(tables)


@functools.cache
def _phrase_to_relation() -> dict[str, str]:
    mapping: dict[str, str] = {}
    for table in relation_phrase_tables():
        for relation, phrase in table.items():
            if mapping.setdefault(phrase, relation) != relation:
                raise RuntimeError(f"phrase {phrase!r} means both {mapping[phrase]!r} and {relation!r}")
    return mapping


def opposite_phrase(phrase: str) -> str:
    """The phrase of the inverse relation in the same wording ("to the left of" -> "to the right of")."""
    relation = relation_of(phrase)
    for table in relation_phrase_tables():
        if table[relation] == phrase:
            return table[INVERSE[relation]]
    raise AssertionError("unreachable: relation_of found the phrase")


def relation_of(phrase: str) -> str:
    """Canonical relation ("left of", "right of", "above", "below") of a caption phrase."""
    mapping = _phrase_to_relation()
    if phrase not in mapping:
        raise ValueError(f"unknown relation phrase {phrase!r}; known: {sorted(mapping)}")
    return mapping[phrase]


@dataclass(frozen=True)
class Mention:
    """One object mention: words [start, end) and the position of its size/colour/shape words."""

    start: int
    end: int
    attributes: dict[str, int] = field(default_factory=dict)  # role -> word position


@dataclass(frozen=True)
class Clause:
    """`mention` or `mention relation mention`; `phrase` is the relation's word span."""

    mentions: tuple[Mention, ...]
    relation: str | None = None
    phrase: tuple[int, int] | None = None


def parse_caption(words: Sequence[str], roles: Sequence[str]) -> list[Clause]:
    """Clauses of a role-tagged caption (clauses are separated by `conj` words). Raises ValueError
    naming the caption when it does not follow `mention [relation mention]` per clause, or a
    mention lacks its shape word."""
    text = " ".join(words)
    if len(words) != len(roles):
        raise ValueError(f"caption {text!r}: {len(words)} words but {len(roles)} roles")
    unknown = sorted({r for r in roles if r not in ROLES})
    if unknown:
        raise ValueError(f"caption {text!r}: unknown roles {unknown}; expected {list(ROLES)}")
    # Runs of words of one kind: a mention, a relation phrase, or a conjunction. Two mentions
    # never touch in a well-formed caption, so a run of mention words is one mention
    # (`_mention` rejects a run that holds two).
    runs: list[tuple[str, int, int]] = []
    for position, role in enumerate(roles):
        kind = "mention" if role in MENTION_ROLES else role
        if runs and runs[-1][0] == kind != "conj":
            runs[-1] = (kind, runs[-1][1], position + 1)
        else:
            runs.append((kind, position, position + 1))
    clauses: list[Clause] = []
    current: list[tuple[str, int, int]] = []
    for run in [*runs, ("conj", len(words), len(words))]:
        if run[0] != "conj":
            current.append(run)
            continue
        kinds = [k for k, _, _ in current]
        if kinds not in (["mention"], ["mention", "relation", "mention"]):
            raise ValueError(
                f"caption {text!r}: a clause must be 'mention' or 'mention relation mention', got {kinds}"
            )
        mentions = tuple(
            _mention(words, roles, start, end, text) for kind, start, end in current if kind == "mention"
        )
        if len(current) == 3:
            _, start, end = current[1]
            try:
                relation = relation_of(" ".join(words[start:end]))
            except ValueError as exc:
                raise ValueError(f"caption {text!r}: {exc}") from None
            clauses.append(Clause(mentions, relation, (start, end)))
        else:
            clauses.append(Clause(mentions))
        current = []
    return clauses


def _mention(words: Sequence[str], roles: Sequence[str], start: int, end: int, text: str) -> Mention:
    attributes: dict[str, int] = {}
    for position in range(start, end):
        role = roles[position]
        if role == "det":
            if attributes:
                raise ValueError(f"caption {text!r}: determiner {words[position]!r} after an attribute")
            continue
        if role in attributes:
            raise ValueError(f"caption {text!r}: two {role} words in one mention")
        attributes[role] = position
    if attributes.get("shape") != end - 1:
        raise ValueError(
            f"caption {text!r}: the mention {' '.join(words[start:end])!r} must end with a shape"
        )
    return Mention(start, end, attributes)


def split_clauses(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per clause: its text, words, roles, the caption's template, and `relation` (the
    clause's canonical relation, None for a lone mention)."""
    words, roles = record["words"], record["roles"]
    out = []
    for clause in parse_caption(words, roles):
        start, end = clause.mentions[0].start, clause.mentions[-1].end
        out.append(
            {
                "text": " ".join(words[start:end]),
                "template": record.get("template"),
                "words": list(words[start:end]),
                "roles": list(roles[start:end]),
                "relation": clause.relation,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Truth of a caption against a scene's ground truth


def _matches(words: Sequence[str], mention: Mention, objects: Sequence[dict[str, Any]]) -> list[int]:
    said = {role: words[position] for role, position in mention.attributes.items()}
    return [i for i, o in enumerate(objects) if all(o[role] == value for role, value in said.items())]


def mention_objects(
    words: Sequence[str], roles: Sequence[str], objects: Sequence[dict[str, Any]]
) -> list[int | None]:
    """Per mention (caption order), the index of the one object with every stated attribute, or
    None when no object (or more than one) has them."""
    found: list[int | None] = []
    for clause in parse_caption(words, roles):
        for mention in clause.mentions:
            matches = _matches(words, mention, objects)
            found.append(matches[0] if len(matches) == 1 else None)
    return found


def caption_truth(
    words: Sequence[str], roles: Sequence[str], objects: Sequence[dict[str, Any]], margin_px: int
) -> Truth:
    """ "true" if every mention names exactly one object of the scene and every stated relation is
    among `true_relations` (it holds with the margin); "false" if some mention names no object or
    some relation's inverse holds with the margin; otherwise "unclear" (an ambiguous mention, or a
    relation too close to call). Probe negatives must be "false", positives "true"."""
    holds = {(t["subject"], t["relation"], t["object"]) for t in true_relations(list(objects), margin_px)}
    verdict: Truth = "true"
    for clause in parse_caption(words, roles):
        matches = [_matches(words, mention, objects) for mention in clause.mentions]
        if any(not found for found in matches):
            return "false"  # nothing in the scene looks like this mention
        if any(len(found) > 1 for found in matches):
            verdict = "unclear"
        elif clause.relation is not None:
            (subject,), (obj,) = matches
            if (subject, INVERSE[clause.relation], obj) in holds:
                return "false"
            if (subject, clause.relation, obj) not in holds:
                verdict = "unclear"
    return verdict


# ---------------------------------------------------------------------------------------------
# Edits of role-tagged captions. Each lists every negative of its kind; the falsity argument
# assumes a scene with distinct colours and distinct shapes (SyntheticConfig enforces both) and
# a caption whose relations hold with the margin (true for every generated caption).


def _swaps(words: list[str], clauses: list[Clause], role: str, needs: str) -> list[list[str]]:
    # Mention A gets B's value and B gets A's. False: A keeps its `needs` attribute, which only A
    # has, and A's `role` value differs from B's. (Swapped colours: the only object with A's shape
    # has A's colour, not B's. Swapped shapes: the only object with A's colour has A's shape.)
    mentions = [m for c in clauses for m in c.mentions if role in m.attributes and needs in m.attributes]
    out = []
    for a in range(len(mentions)):
        for b in range(a + 1, len(mentions)):
            i, j = mentions[a].attributes[role], mentions[b].attributes[role]
            if words[i] != words[j]:
                edited = list(words)
                edited[i], edited[j] = edited[j], edited[i]
                out.append(edited)
    return out


def _replacements(
    words: list[str], clauses: list[Clause], role: str, needs: str, vocabulary: Sequence[str]
) -> list[list[str]]:
    # Mention A's `role` word becomes another value. False: the only object with A's `needs`
    # attribute (unique in the scene) has A's original value.
    out = []
    for mention in (m for c in clauses for m in c.mentions):
        if role in mention.attributes and needs in mention.attributes:
            position = mention.attributes[role]
            for value in vocabulary:
                if value != words[position]:
                    edited = list(words)
                    edited[position] = value
                    out.append(edited)
    return out


def _relation_replacements(
    words: list[str], roles: list[str], clauses: list[Clause]
) -> list[tuple[list, list]]:
    # "A r B" -> "A inverse(r) B". False: r holds with a margin, so its inverse cannot hold.
    out = []
    for clause in clauses:
        if clause.phrase is not None:
            start, end = clause.phrase
            new = opposite_phrase(" ".join(words[start:end])).split(" ")
            out.append(
                (words[:start] + new + words[end:], roles[:start] + ["relation"] * len(new) + roles[end:])
            )
    return out


def _argument_swaps(words: list[str], roles: list[str], clauses: list[Clause]) -> list[tuple[list, list]]:
    # "A r B" -> "B r A". False for the same reason as the inverse relation.
    out = []
    for clause in clauses:
        if clause.phrase is not None:
            first, second = clause.mentions
            order = [
                *range(first.start),
                *range(second.start, second.end),
                *range(first.end, second.start),
                *range(first.start, first.end),
                *range(second.end, len(words)),
            ]
            out.append(([words[k] for k in order], [roles[k] for k in order]))
    return out


def all_edits(record: dict[str, Any], kind: str, cfg: NTAConfig | None = None) -> list[dict[str, Any]]:
    """Every hard negative of `kind` for a role-tagged caption record, in a fixed order."""
    cfg = cfg or NTAConfig()
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown NTA edit kind {kind!r}; expected one of {list(EDIT_KINDS)}")
    words, roles = list(record["words"]), list(record["roles"])
    clauses = parse_caption(words, roles)
    if kind == "swap_colours":
        results = [(w, roles) for w in _swaps(words, clauses, "colour", "shape")]
    elif kind == "swap_shapes":
        results = [(w, roles) for w in _swaps(words, clauses, "shape", "colour")]
    elif kind == "replace_colour":
        results = [(w, roles) for w in _replacements(words, clauses, "colour", "shape", cfg.colours)]
    elif kind == "replace_shape":
        results = [(w, roles) for w in _replacements(words, clauses, "shape", "colour", cfg.shapes)]
    elif kind == "replace_relation":
        results = _relation_replacements(words, roles, clauses)
    else:
        results = _argument_swaps(words, roles, clauses)
    return [
        {
            "text": " ".join(w),
            "words": list(w),
            "roles": list(r),
            "template": record.get("template"),
            "kind": kind,
        }
        for w, r in results
        if w != words
    ]


def hard_negative(
    record: dict[str, Any], rng: np.random.Generator, cfg: NTAConfig | None = None
) -> dict[str, Any] | None:
    """A random hard negative (kind uniform over the applicable `cfg.kinds`, then one of that
    kind's negatives uniformly), as a record with words, roles and kind; None if no kind applies."""
    cfg = cfg or NTAConfig()
    options = [edits for edits in (all_edits(record, kind, cfg) for kind in cfg.kinds) if edits]
    if not options:
        return None
    edits = options[int(rng.integers(len(options)))]
    return edits[int(rng.integers(len(edits)))]


def hard_negative_caption(
    caption_record: dict[str, Any], rng: np.random.Generator, cfg: NTAConfig | None = None
) -> str | None:
    """Text of `hard_negative` for a synthetic caption record (from `<split>_scenes.json`)."""
    negative = hard_negative(caption_record, rng, cfg)
    return None if negative is None else negative["text"]


# ---------------------------------------------------------------------------------------------
# Real captions: spaCy


class NTADependencyError(RuntimeError):
    """spaCy or its English pipeline is missing; the message says how to install them."""


class TaggedToken(Protocol):
    """What NTA reads from a spaCy token."""

    text: str
    tag_: str
    whitespace_: str


def load_spacy(model: str = "en_core_web_sm") -> Callable[[str], Iterable[TaggedToken]]:
    """spaCy's pipeline `model`, or an NTADependencyError saying how to install it."""
    install = SPACY_INSTALL.format(model=model)
    try:
        import spacy
    except ImportError as exc:
        raise NTADependencyError(
            f"NTA on real captions needs spaCy, which is not installed: {install}"
        ) from exc
    try:
        return spacy.load(model)
    except OSError as exc:
        raise NTADependencyError(
            f"NTA on real captions needs the spaCy pipeline {model!r}, which is not installed: {install}"
        ) from exc


def _recase(word: str, sentence_start: bool, proper: bool) -> str:
    # Only the first word of a sentence is capitalised by position; proper nouns keep theirs.
    if sentence_start:
        return word[:1].upper() + word[1:]
    return word if proper else word[:1].lower() + word[1:]


def spacy_hard_negative(
    text: str,
    nlp: Callable[[str], Iterable[TaggedToken]] | None,
    rng: np.random.Generator,
    cfg: NTAConfig | None = None,
) -> str | None:
    """Swap two different nouns, adjectives or verbs of a real caption (kind uniform over the
    applicable `cfg.spacy_kinds`, then a pair uniformly); None when no kind applies. `nlp`: a
    spaCy pipeline or anything returning tokens with `text`, `tag_` and `whitespace_`; None loads
    `cfg.spacy_model`. Spacing is kept; a capital moves with the sentence start."""
    cfg = cfg or NTAConfig()
    if nlp is None:
        nlp = load_spacy(cfg.spacy_model)
    tokens = list(nlp(text))
    options = []
    for kind in cfg.spacy_kinds:
        positions = [i for i, token in enumerate(tokens) if token.tag_ in SPACY_SWAP_TAGS[kind]]
        pairs = [
            (i, j)
            for a, i in enumerate(positions)
            for j in positions[a + 1 :]
            if tokens[i].text.lower() != tokens[j].text.lower()
        ]
        if pairs:
            options.append(pairs)
    if not options:
        return None
    pairs = options[int(rng.integers(len(options)))]
    i, j = pairs[int(rng.integers(len(pairs)))]
    words = [token.text for token in tokens]
    capitalised = bool(words) and words[0][:1].isupper()
    words[i], words[j] = tokens[j].text, tokens[i].text
    if capitalised:
        for position, source in ((i, tokens[j]), (j, tokens[i])):
            words[position] = _recase(words[position], position == 0, source.tag_ in {"NNP", "NNPS"})
    return "".join(word + token.whitespace_ for word, token in zip(words, tokens))
