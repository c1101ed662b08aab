"""The `uta:` params section (typed, bad values named) and its paper card (profiles/paper/params.yaml passes)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from nas.config.base import ConfigError, from_dict
from nas.config.card import MISSING
from nas.config.params import load_params, resolve
from nas.recipes.uta.card import CARD, UTASection, read_section, uta_view

ROOT = Path(__file__).resolve().parents[2]


def _lookup(view, path):
    node = view
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def test_the_paper_profile_matches_every_check_of_the_card():
    view = uta_view(resolve(load_params(ROOT / "profiles" / "paper" / "params.yaml")))
    failures = [
        (path, _lookup(view, path))
        for entry in CARD
        for path, expected in entry.checks
        if not expected.matches(_lookup(view, path))
    ]
    assert failures == []
    assert view["uta"]["student"]["model"]["overrides"]["embed_dim"] == 768  # uta_base's defaults filled in


def test_the_default_profile_is_the_tiny_one():
    resolved = resolve(load_params(ROOT / "params.yaml"))
    section = read_section(resolved)
    # The claims' arms train every seed; the context arms are shown by their masks only (no DVC entry).
    assert list(section.arms) == ["none", "reversed_blockwise"] and section.main_arm == "reversed_blockwise"
    assert list(section.context_arms) == ["random", "blockwise"] and section.context_seeds == ()
    assert section.trained_arms == ["none", "reversed_blockwise"]
    assert section.untrained_arms == ["random", "blockwise"]
    assert section.arm_masking("blockwise").scheme == "blockwise"
    assert len(section.seeds) >= 3 and section.teacher.checkpoint is None
    view = uta_view(resolved)
    deviations = [
        path for entry in CARD for path, expected in entry.checks if not expected.matches(_lookup(view, path))
    ]
    assert "uta.student.train.epochs" in deviations and "uta.teacher.checkpoint" in deviations


@pytest.mark.parametrize(
    "section, pattern",
    [
        ({"main_arm": "mae"}, r"main_arm 'mae' is not among arms"),
        ({"arms": {"bad name": {}}}, r"arms: 'bad name' must be letters"),
        ({"arms": {"x": {"scheme": "checkerboard"}}}, r"uta\.arms\.x.*'checkerboard' is not one of"),
        ({"seeds": [1, 1]}, r"seeds must be a non-empty list of distinct"),
        ({"teacher": {"open_clip_model": "EVA02-E-14"}}, r"open_clip_model and checkpoint go together"),
        ({"finetune": {"temperature": 0}}, r"uta\.finetune.*temperature must be > 0"),
        (
            {"finetune": {"train": {"optim": {"layer_decay": 1.5}}}},
            r"uta\.finetune\.train\.optim.*layer_decay",
        ),
        ({"masking": {"ratio": 1.0}}, r"uta\.masking.*ratio \(the mask ratio\) must be in \(0, 1\)"),
        # An arm is compared (uta.arms, every seed) or context (uta.context_arms), not both.
        ({"context_arms": {"none": {"scheme": "none"}}}, r"uta: context_arms: \['none'\] also in arms"),
        (
            {"arms": {"none": {}}, "context_arms": {"reversed_blockwise": {}}},
            r"main_arm 'reversed_blockwise' must train every seed: it is in context_arms",
        ),
        ({"context_arms": {"x": {"scheme": "checkerboard"}}}, r"uta\.context_arms\.x.*'checkerboard'"),
        ({"context_arms": {"bad name": {}}}, r"context_arms: 'bad name' must be letters"),
        ({"context_arms": ["random"]}, r"uta\.context_arms: expected a mapping"),  # the old shape
        ({"context_seeds": 1}, r"uta\.context_seeds: expected a list"),  # the old shape: a count
        ({"context_seeds": [0, 0]}, r"context_seeds must be a list of distinct non-negative integers"),
        ({"context_seeds": [-1]}, r"context_seeds must be a list of distinct non-negative integers"),
        ({"context_seeds": [True]}, r"uta\.context_seeds\[0\]: expected an integer"),
    ],
)
def test_bad_values_name_their_param(section, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(UTASection, section, "uta")


@pytest.mark.parametrize("context_seeds", [[], [0], [2, 0], [7]])
def test_context_seeds_are_any_distinct_non_negative_integers(context_seeds):
    """A context arm trains exactly `context_seeds` (not necessarily among `seeds`: no claim pairs it);
    the compared arms train `seeds`, whatever `context_seeds` holds."""
    section = from_dict(UTASection, {"context_seeds": context_seeds}, "uta")
    assert section.arm_seeds("random") == section.arm_seeds("blockwise") == tuple(context_seeds)
    assert section.arm_seeds("none") == section.arm_seeds("reversed_blockwise") == (0, 1, 2)
    trained = ["none", "reversed_blockwise"] + (["random", "blockwise"] if context_seeds else [])
    assert section.trained_arms == trained
    assert section.untrained_arms == ([] if context_seeds else ["random", "blockwise"])


def test_the_paper_profile_trains_every_arm_on_every_seed():
    section = read_section(resolve(load_params(ROOT / "profiles" / "paper" / "params.yaml")))
    assert set(section.arms) == {"none", "random", "blockwise", "reversed_blockwise"}
    assert section.context_arms == {} and section.untrained_arms == []


def test_loader_overrides_and_the_student_grid_are_checked_where_they_are_read():
    params = load_params(ROOT / "params.yaml")
    broken = copy.deepcopy(params)
    broken["uta"]["student"]["loader"] = {"batch_size": 3}
    with pytest.raises(ConfigError, match=r"uta\.student\.loader.*batch_size"):
        uta_view(resolve(broken))
    broken = copy.deepcopy(params)
    broken["uta"]["student"]["model"]["overrides"] = {"image_size": 64, "patch_size": 14}
    with pytest.raises(ConfigError, match=r"image_size=64 with patch_size=14 leaves no valid token grid"):
        uta_view(resolve(broken))


def test_a_student_resolution_unlike_the_loaders_names_both_params():
    from nas.recipes.uta.data import read_context

    params = load_params(ROOT / "params.yaml")
    params["uta"]["student"]["model"]["overrides"] = {"image_size": 32}
    with pytest.raises(ValueError, match=r"image_size=32 differs from data\.transform\.image_size=64"):
        read_context(resolve(params))
