"""NTA hard negatives: every edit is false for its scene, checked by the module's own judge and by
an independent reading of the caption written here (vocabulary + phrase table + centre geometry)."""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nas.config.base import ConfigError, from_dict
from nas.data.nta import (
    EDIT_KINDS,
    NTAConfig,
    NTADependencyError,
    all_edits,
    caption_truth,
    hard_negative,
    hard_negative_caption,
    mention_objects,
    opposite_phrase,
    parse_caption,
    relation_phrase_tables,
    spacy_hard_negative,
    split_clauses,
)
from nas.data.synthetic import SyntheticConfig, make_scene

CFG = SyntheticConfig(seed=11, n_train=0, n_val=0, n_test=64)
MARGIN = CFG.margin_px

# ---------------------------------------------------------------------------------------------
# An independent judge: the test's own phrase table (as in test_synthetic_scenes.py) and geometry.

# phrase -> (axis, sign): "<subject> <phrase> <object>" holds iff sign * (object - subject) >= margin
PHRASE_GEOMETRY = {
    "to the left of": ("x", 1),
    "to the right of": ("x", -1),
    "left of": ("x", 1),
    "right of": ("x", -1),
    "above": ("y", 1),
    "over": ("y", 1),
    "below": ("y", -1),
    "under": ("y", -1),
}
_CLAUSE = re.compile(r"^(.*?) (" + "|".join(PHRASE_GEOMETRY) + r") (.*)$")  # longest phrases first


def _named_object(mention: str, objects: list[dict[str, Any]]) -> int | None:
    words = mention.split()
    said = {
        "size": [w for w in words if w in CFG.sizes],
        "colour": [w for w in words if w in CFG.colours],
        "shape": [w for w in words if w in CFG.shapes],
    }
    assert len(said["shape"]) == 1, mention
    found = [i for i, o in enumerate(objects) if all(o[k] == v[0] for k, v in said.items() if v)]
    return found[0] if len(found) == 1 else None


def independent_truth(text: str, objects: list[dict[str, Any]], margin: int = MARGIN) -> str:
    verdict = "true"
    for clause in text.split(" and "):
        match = _CLAUSE.match(clause)
        mentions = [match.group(1), match.group(3)] if match else [clause]
        found = [_named_object(m, objects) for m in mentions]
        if any(f is None for f in found):
            return "false"  # every mention names a shape, and shapes are unique in a scene
        if match:
            axis, sign = PHRASE_GEOMETRY[match.group(2)]
            offset = sign * (objects[found[1]][axis] - objects[found[0]][axis])
            if offset <= -margin:
                return "false"
            if offset < margin:
                verdict = "unclear"
    return verdict


# ---------------------------------------------------------------------------------------------
# A hand-made scene: small red circle at x=10, large blue square at x=50, same height.

HAND_OBJECTS = [
    {"shape": "circle", "colour": "red", "size": "small", "x": 10, "y": 30, "radius": 6},
    {"shape": "square", "colour": "blue", "size": "large", "x": 50, "y": 30, "radius": 11},
]
HAND = {
    "text": "a small red circle left of a large blue square",
    "template": 0,
    "words": ["a", "small", "red", "circle", "left", "of", "a", "large", "blue", "square"],
    "roles": ["det", "size", "colour", "shape", "relation", "relation", "det", "size", "colour", "shape"],
}


def _record(text: str, roles: list[str]) -> dict[str, Any]:
    return {"text": text, "words": text.split(), "roles": roles}


def test_phrase_tables_come_from_the_templates() -> None:
    tables = relation_phrase_tables()
    assert {"left of": "left of", "right of": "right of", "above": "above", "below": "below"} in tables
    assert {
        "left of": "to the left of",
        "right of": "to the right of",
        "above": "over",
        "below": "under",
    } in tables
    assert opposite_phrase("to the left of") == "to the right of"
    assert opposite_phrase("over") == "under"
    with pytest.raises(ValueError, match="unknown relation phrase 'beside'"):
        opposite_phrase("beside")


def test_parse_caption_finds_mentions_and_relations() -> None:
    clauses = parse_caption(HAND["words"], HAND["roles"])
    assert len(clauses) == 1
    (clause,) = clauses
    assert clause.relation == "left of"
    assert clause.phrase == (4, 6)
    assert [(m.start, m.end) for m in clause.mentions] == [(0, 4), (6, 10)]
    assert clause.mentions[1].attributes == {"size": 7, "colour": 8, "shape": 9}
    two_dets = parse_caption(
        ["a", "single", "large", "blue", "circle"], ["det", "det", "size", "colour", "shape"]
    )
    assert two_dets[0].mentions[0].attributes == {"size": 2, "colour": 3, "shape": 4}


@pytest.mark.parametrize(
    ("words", "roles", "message"),
    [
        (["a", "red"], ["det", "colour"], "must end with a shape"),
        (
            ["a", "red", "circle", "beside", "a", "square"],
            ["det", "colour", "shape", "relation", "det", "shape"],
            "beside",
        ),
        (["a", "circle"], ["det"], "2 words but 1 roles"),
        (["a", "circle"], ["det", "noun"], "unknown roles"),
        (["left", "of", "a", "circle"], ["relation", "relation", "det", "shape"], "a clause must be"),
    ],
)
def test_parse_caption_rejects_malformed_captions_naming_them(words, roles, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_caption(words, roles)
    assert " ".join(words) in str(info.value)


def test_caption_truth_on_a_hand_made_scene() -> None:
    def truth(text: str, roles: list[str]) -> str:
        return caption_truth(text.split(), roles, HAND_OBJECTS, MARGIN)

    rel = HAND["roles"]
    assert truth(HAND["text"], rel) == "true"
    assert truth("a large blue square left of a small red circle", rel) == "false"  # arguments swapped
    assert truth("a small red circle right of a large blue square", rel) == "false"
    assert (
        truth("a small red circle above a large blue square", rel[:4] + ["relation"] + rel[6:]) == "unclear"
    )
    assert truth("a small green circle", ["det", "size", "colour", "shape"]) == "false"
    assert truth("a large red circle", ["det", "size", "colour", "shape"]) == "false"  # wrong size
    assert truth("a circle", ["det", "shape"]) == "true"  # an attribute left out is not a lie
    assert mention_objects(HAND["words"], HAND["roles"], HAND_OBJECTS) == [0, 1]


def test_every_edit_of_a_hand_caption_exactly() -> None:
    texts = {kind: [e["text"] for e in all_edits(HAND, kind)] for kind in EDIT_KINDS}
    assert texts["swap_colours"] == ["a small blue circle left of a large red square"]
    assert texts["swap_shapes"] == ["a small red square left of a large blue circle"]
    assert texts["replace_relation"] == ["a small red circle right of a large blue square"]
    assert texts["swap_relation_args"] == ["a large blue square left of a small red circle"]
    # 2 mentions x 5 other colours (6 colours), 2 mentions x 4 other shapes (5 shapes)
    assert len(texts["replace_colour"]) == 10 and len(set(texts["replace_colour"])) == 10
    assert len(texts["replace_shape"]) == 8
    assert "a small red circle left of a large blue diamond" in texts["replace_shape"]
    for kind in EDIT_KINDS:
        for edit in all_edits(HAND, kind):
            assert edit["kind"] == kind and len(edit["words"]) == len(edit["roles"])
            assert caption_truth(edit["words"], edit["roles"], HAND_OBJECTS, MARGIN) == "false"
            assert independent_truth(edit["text"], HAND_OBJECTS) == "false"


def test_longer_phrases_keep_their_wording() -> None:
    record = _record(
        "the small red circle to the left of the large blue square",
        ["det", "size", "colour", "shape", *["relation"] * 4, "det", "size", "colour", "shape"],
    )
    (edit,) = all_edits(record, "replace_relation")
    assert edit["text"] == "the small red circle to the right of the large blue square"
    (swap,) = all_edits(record, "swap_relation_args")
    assert swap["text"] == "the large blue square to the left of the small red circle"
    assert swap["roles"] == [
        "det",
        "size",
        "colour",
        "shape",
        *["relation"] * 4,
        "det",
        "size",
        "colour",
        "shape",
    ]


def test_shape_replacement_needs_the_colour_that_makes_it_false() -> None:
    # Without its colour, "a small triangle" could name another object; NTA leaves it alone.
    record = _record("a small circle", ["det", "size", "shape"])
    assert all_edits(record, "replace_shape") == []
    assert hard_negative_caption(record, np.random.default_rng(0)) is None


@given(index=st.integers(0, 63))
def test_every_edit_of_every_generated_caption_is_false(index: int) -> None:
    scene = make_scene(CFG, "test", index)
    objects = scene["objects"]
    for caption in scene["captions"]:
        assert caption_truth(caption["words"], caption["roles"], objects, MARGIN) == "true"
        assert independent_truth(caption["text"], objects) == "true"
        for kind in EDIT_KINDS:
            for edit in all_edits(caption, kind):
                assert edit["text"] != caption["text"]
                assert sorted(edit["roles"]) == sorted(caption["roles"])
                assert caption_truth(edit["words"], edit["roles"], objects, MARGIN) == "false", edit["text"]
                assert independent_truth(edit["text"], objects) == "false", edit["text"]
        for clause in split_clauses(caption):
            assert independent_truth(clause["text"], objects) == "true"


def test_hard_negative_is_seeded_and_uses_only_the_configured_kinds() -> None:
    scenes = [make_scene(CFG, "test", i) for i in range(12)]
    captions = [c for s in scenes for c in s["captions"]]
    first = [hard_negative_caption(c, np.random.default_rng(5)) for c in captions]
    assert first == [hard_negative_caption(c, np.random.default_rng(5)) for c in captions]
    assert first != [hard_negative_caption(c, np.random.default_rng(6)) for c in captions]
    only = NTAConfig(kinds=("replace_relation",))
    for caption in captions:
        negative = hard_negative(caption, np.random.default_rng(0), only)
        if caption["relations"]:
            assert negative is not None and negative["kind"] == "replace_relation"
        else:
            assert negative is None  # a single-object caption has no relation to replace


def test_all_kinds_are_drawn() -> None:
    three = next(s for s in (make_scene(CFG, "test", i) for i in range(64)) if len(s["objects"]) == 3)
    rng = np.random.default_rng(0)
    kinds = {hard_negative(three["captions"][0], rng)["kind"] for _ in range(200)}
    assert kinds == set(EDIT_KINDS)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="kinds"):
        NTAConfig(kinds=("swap_everything",))
    with pytest.raises(ValueError, match="colours"):
        NTAConfig(colours=("red",))
    with pytest.raises(ConfigError, match="nta.kind"):
        from_dict(NTAConfig, {"kind": ["swap_colours"]}, "nta")
    assert from_dict(NTAConfig, {"kinds": ["swap_shapes"]}).kinds == ("swap_shapes",)


# ---------------------------------------------------------------------------------------------
# spaCy variant, with an injected fake tagger


@dataclass
class FakeToken:
    text: str
    tag_: str
    whitespace_: str = " "


def fake_nlp(tags: dict[str, str]):
    def nlp(text: str) -> list[FakeToken]:
        pieces = re.findall(r"\w+|[^\w\s]", text)
        tokens = []
        for k, piece in enumerate(pieces):
            glued = k == len(pieces) - 1 or pieces[k + 1] == "."  # no space before the full stop
            tokens.append(FakeToken(piece, tags.get(piece.lower(), "XX"), "" if glued else " "))
        return tokens

    return nlp


TAGS = {
    "dog": "NN",
    "cat": "NN",
    "tree": "NN",
    "brown": "JJ",
    "big": "JJ",
    "chases": "VBZ",
    "dogs": "NNS",
    "cats": "NNS",
}


def test_spacy_swaps_are_the_expected_ones() -> None:
    text = "A dog chases a brown cat near the big tree."
    nlp = fake_nlp(TAGS)
    seen = {spacy_hard_negative(text, nlp, np.random.default_rng(seed)) for seed in range(60)}
    assert seen == {
        "A cat chases a brown dog near the big tree.",  # nouns
        "A tree chases a brown cat near the big dog.",
        "A dog chases a brown tree near the big cat.",
        "A dog chases a big cat near the brown tree.",  # adjectives
    }  # one verb only: no verb swap


def test_spacy_swap_moves_the_sentence_capital() -> None:
    out = spacy_hard_negative("Dogs chase cats.", fake_nlp(TAGS), np.random.default_rng(0))
    assert out == "Cats chase dogs."


def test_spacy_returns_none_when_nothing_can_be_swapped() -> None:
    assert spacy_hard_negative("A dog sleeps.", fake_nlp(TAGS), np.random.default_rng(0)) is None
    assert spacy_hard_negative("A dog and a dog.", fake_nlp(TAGS), np.random.default_rng(0)) is None


def test_missing_spacy_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(NTADependencyError) as info:
        spacy_hard_negative("A dog.", None, np.random.default_rng(0))
    assert "pip install spacy && python -m spacy download en_core_web_sm" in str(info.value)


def test_missing_spacy_model_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(name: str):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(load=load))
    with pytest.raises(NTADependencyError, match="pipeline 'en_core_web_sm'") as info:
        spacy_hard_negative("A dog.", None, np.random.default_rng(0))
    assert "python -m spacy download en_core_web_sm" in str(info.value)
