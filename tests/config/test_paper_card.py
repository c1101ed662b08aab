"""NAS's paper card as data (nas/recipes/paper_card.py, in the format of nas/config/card.py), and the paper profile (profiles/paper/params.yaml) that must satisfy it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas.config.card import (
    MISSING,
    CardEntry,
    Equals,
    KnownDifference,
    NotNull,
    Present,
    SameAs,
    card_paths,
    check_card,
    same_value,
    show,
)
from nas.config.params import load_params, resolve
from nas.recipes.paper_card import PAPER_CARD

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "profiles" / "paper" / "params.yaml"
DEFAULT = ROOT / "params.yaml"

# NAS_METHOD.md §1, one entry per table row.
SECTION_1 = {
    "pretraining_data",
    "text_encoder",
    "image_encoder",
    "stage1_epochs",
    "stage2_epochs",
    "global_batch",
    "weight_decay",
    "warmup",
    "lr_decay",
    "pretraining_crop",
    "finetune_resolution",
    "momentum",
    "queue_size",
    "alpha",
    "finetune_data",
    "hardware",
    "evaluation",
}


def test_card_covers_section_1_and_the_named_decisions():
    by_key = {entry.key: entry for entry in PAPER_CARD}
    assert len(by_key) == len(PAPER_CARD)
    assert set(by_key) >= SECTION_1
    assert all(by_key[k].kind == "paper" and by_key[k].source.startswith("[P]") for k in SECTION_1)
    checks = {path: expected for entry in PAPER_CARD for path, expected in entry.checks}
    # The paper's numbers, exactly where the params hold them.
    assert checks["pretrain_stage1.train.epochs"] == Equals(29)
    assert checks["pretrain_stage1.train.schedule.warmup_steps"] == Equals(1000)
    assert checks["pretrain_stage1.train.schedule.lr"] == Equals(1e-4)
    assert checks["pretrain_stage1.train.schedule.min_lr"] == Equals(1e-5)
    assert checks["loader.batch_size_per_gpu"] == Equals(64)
    assert checks["model.overrides.queue_size"] == Equals(65536)
    assert checks["model.overrides.momentum"] == Equals(0.995)
    # The method decisions named in NAS_METHOD §3-§6, keyed by their model param paths.
    assert checks["model.overrides.vd.num_codes"] == Equals(2048)
    assert checks["model.overrides.vd.gamma_start"] == Equals(0.2)
    assert checks["model.overrides.vd.freeze_fraction"] == Equals(0.9)
    assert checks["pretrain_stage2.model_overrides.nva.score"] == Equals("dot_l2norm")
    assert checks["pretrain_stage2.model_overrides.nva.token_form"] == Equals("straight_through")
    assert checks["pretrain_stage2.model_overrides.nva_enabled"] == Equals(True)
    for entry in PAPER_CARD:
        assert entry.source[:3] in {"[P]", "[A]", "[B]", "[D]"}, entry.key
        assert entry.checks or entry.note, f"{entry.key}: an unchecked entry must say why"


def test_card_checks_fine_tuning():
    """NAS_METHOD §1 (384 px), §5 (the recipe) and §6 (VD frozen, NVA on, not detached, queue updated)."""
    checks = {path: expected for entry in PAPER_CARD for path, expected in entry.checks}
    assert checks["finetune.image_size"] == Equals(384)
    assert checks["finetune.model_overrides.vision.img_size"] == Equals(384)
    assert checks["finetune.init_from"] == Equals("pretrain_stage2")
    assert checks["finetune.train.epochs"] == Equals(5)
    assert checks["finetune.train.schedule.lr"] == Equals(1e-5)
    assert checks["finetune.train.schedule.min_lr"] == Equals(1e-6)
    assert checks["finetune.train.optim.weight_decay"] == Equals(0.02)
    assert checks["finetune.mlm_weight"] == Equals(0.0)
    assert checks["finetune.model_overrides.queue_update"] == Equals(True)
    assert checks["finetune.model_overrides.vd.frozen"] == Equals(True)
    assert checks["finetune.model_overrides.nva.detach"] == Equals(False)
    # NVA in fine-tuning as in stage 2: on for NAS, off for the ablations.
    nva = checks["finetune.model_overrides.nva_enabled"]
    assert isinstance(nva, SameAs) and nva.path == "pretrain_stage2.model_overrides.nva_enabled"
    by_key = {entry.key: entry for entry in PAPER_CARD}
    assert by_key["finetune_vd_frozen"].requires == "vd" and by_key["finetune_nva"].requires == "vd"
    assert by_key["finetune_nva_detach"].requires == "nva"
    assert by_key["finetune_nva"].kind == "paper"  # off is a deviation, not an ablation
    # The NVA form of fine-tuning is checked as in stage 2.
    for name in ("score", "top_k", "num_candidates", "candidate_rule", "token_form"):
        assert f"finetune.model_overrides.nva.{name}" in checks
    for entry in PAPER_CARD:
        assert entry.checks or "fine-tuning has no params" not in entry.note, entry.key


def test_same_as_compares_with_the_value_filled_in():
    same = SameAs("a.b", "as in a")
    assert not same.matches(True) and str(same) == "as in a"  # nothing filled in: never a match
    filled = SameAs("a.b", "as in a", True)
    assert filled.matches(True) and not filled.matches(False) and not filled.matches(MISSING)
    assert str(filled) == "true (as in a)"


def test_known_differences_of_a_are_recorded_with_their_values():
    by_key = {entry.key: entry for entry in PAPER_CARD}
    assert by_key["stage1_epochs"].known_value("pretrain_stage1.train.epochs", 30).source == "[A]"
    assert by_key["warmup"].known_value("pretrain_stage1.train.schedule.warmup_steps", 2000) is not None
    assert by_key["queue_update"].known_value("model.overrides.queue_update", False) is not None
    assert by_key["nva_token_form"].known_value("pretrain_stage2.model_overrides.nva.token_form", "raw_code")
    assert by_key["vd_init"].known_value("model.overrides.vd.init", "random") is not None
    assert by_key["stage1_epochs"].known_value("pretrain_stage1.train.epochs", 31) is None
    # §6's notes without a comparable value are kept as notes.
    assert any("35" in d.note for d in by_key["stage2_epochs"].known_differences)
    # [A]'s fine-tuning (§6): 32 images per GPU and text length 30 are labelled; plain COCO captions,
    # the flat warm-up and same-image ITM negatives are notes.
    assert by_key["finetune_batch"].known_value("loader.batch_size_per_gpu", 32).source == "[A]"
    assert by_key["finetune_text_length"].known_value("data.text_max_length", 30).source == "[A]"
    notes = " ".join(d.note for e in PAPER_CARD if e.key.startswith("finetune") for d in e.known_differences)
    assert "plain COCO" in notes and "flat warm-up" in notes and "same image" in notes
    assert by_key["nva_token_form"].known_value("finetune.model_overrides.nva.token_form", "raw_code")


def test_card_validation_rejects_duplicates_and_stray_known_differences():
    entry = CardEntry("k", "h", "v", "[P]", (("a.b", Equals(1)),))
    with pytest.raises(ValueError, match="duplicate keys"):
        check_card([entry, entry])
    stray = CardEntry(
        "s",
        "h",
        "v",
        "[P]",
        (("a.b", Equals(1)),),
        known_differences=(KnownDifference("[A]", "n", "a.c", 2),),
    )
    with pytest.raises(ValueError, match="unchecked path 'a.c'"):
        check_card([stray])


def test_value_comparison_and_display():
    assert same_value(1e-4, 0.0001) and same_value([0.2, 1], (0.2, 1.0)) and same_value(65536, 65536.0)
    assert not same_value(True, 1) and not same_value(0, False) and not same_value([1, 2], [1, 2, 3])
    assert not same_value(1e-4, 1.0001e-4)
    assert Equals(None).matches(None) and not Equals(None).matches(MISSING)
    assert (
        NotNull("w").matches("x.pth") and not NotNull("w").matches(None) and not NotNull("w").matches(MISSING)
    )
    assert Present("vd").matches({}) and not Present("vd").matches(MISSING)
    assert [show(v) for v in (65536, 1e-5, True, None, (0.2, 1.0), MISSING)] == [
        "65,536",
        "1e-05",
        "true",
        "null",
        "[0.2, 1]",
        "(not set)",
    ]


def _key_tree(data, skip=("variants",), prefix=""):
    """Dotted keys of a params mapping, not descending into free-form override dicts nor into the named
    entries of a sweep (which arms a profile compares, and which it keeps as context, is its own choice)."""
    keys = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key in skip:
            continue
        keys.add(path)
        if (
            isinstance(value, dict)
            and path not in ("mug.arms", "uta.arms", "uta.context_arms")
            and key
            not in (
                "overrides",
                "model_overrides",
                "path_anchors",
                "stage1_of",
            )
        ):
            keys |= _key_tree(value, (), path + ".")
    return keys


def test_paper_profile_has_the_same_keys_as_the_default():
    paper, default = yaml.safe_load(PAPER.read_text()), yaml.safe_load(DEFAULT.read_text())
    assert _key_tree(paper) == _key_tree(default)
    assert set(paper["variants"]) == set(default["variants"])


def test_every_card_path_exists_in_the_resolved_paper_profile():
    from nas.reporting.audit import audit_view, lookup

    view, notes = audit_view(resolve(load_params(PAPER), "nas"))
    assert notes == []
    missing = [path for path in card_paths(PAPER_CARD) if lookup(view, path) is MISSING]
    assert missing == []
