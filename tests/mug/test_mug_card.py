"""MUG's paper card: the paper profile passes it, the default (tiny) profile does not, an ablation
arm reads as an ablation; the `mug` section is typed strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.config.base import ConfigError
from nas.config.card import MISSING, card_paths
from nas.config.params import load_params, resolve
from nas.recipes.mug.card import CARD, MUGEvaluateConfig, MUGSection, mug_view, read_section
from nas.reporting.audit import DEVIATION, audit, exit_code, lookup

ROOT = Path(__file__).resolve().parents[2]


def test_paper_profile_passes_and_every_card_path_exists():
    view = mug_view(resolve(load_params(ROOT / "profiles/paper/params.yaml"), None))
    assert [p for p in card_paths(CARD) if lookup(view, p) is MISSING] == []
    rows = audit(view, CARD)
    assert exit_code(rows) == 0, [r for r in rows if r.verdict == DEVIATION]
    assert {r.key for r in rows if r.verdict == "match"} >= {
        "epochs",
        "image_encoder",
        "mae_decoder",
        "batch_lr",
    }


def test_default_profile_deviates_and_arms_are_ablations():
    cfg = resolve(load_params(ROOT / "params.yaml"), None)
    rows = audit(mug_view(cfg), CARD)
    assert exit_code(rows) == 1
    deviating = {r.key for r in rows if r.verdict == DEVIATION}
    assert {"epochs", "image_encoder", "pretraining_data"} <= deviating
    arm = dict(cfg, mug={**cfg["mug"], "model": {"name": "mug_tiny", "overrides": {"cap_weight": 0.0}}})
    verdicts = {r.path: r.verdict for r in audit(mug_view(arm), CARD) if r.key == "objective"}
    assert verdicts == {
        "mug.model.overrides.recon_weight": "match",
        "mug.model.overrides.cap_weight": "ablation",
    }


def test_section_is_strict():
    assert read_section({"mug": {}}).arms.keys() == {"mae_only", "caption_only", "mug"}
    with pytest.raises(ConfigError, match="mug.train.epoch"):
        read_section({"mug": {"train": {"epoch": 3}}})
    with pytest.raises(ValueError, match="figure_arm"):
        MUGSection(arms={"mug": {}}, evaluate=MUGEvaluateConfig(figure_arm="mae_only"))
    with pytest.raises(ValueError, match="distinct"):
        MUGSection(seeds=(0, 0))
    with pytest.raises(ValueError, match="letters"):
        MUGSection(arms={"a/b": {}})
