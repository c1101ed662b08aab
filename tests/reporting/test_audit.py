"""The hyperparameter audit: the paper profile passes, the tiny default fails on purpose, and [A]'s
values are labelled as known differences."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

import nas.recipes  # noqa: F401  (registers every recipe's card with the audit, as `nas audit` does)
from nas.config.base import merge
from nas.config.params import load_params, resolve
from nas.reporting.audit import (
    ABLATION,
    DEVIATION,
    MATCH,
    NOT_APPLICABLE,
    AuditError,
    audit,
    audit_run,
    exit_code,
    load_run_config,
    main,
    render,
    to_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "profiles" / "paper" / "params.yaml"
DEFAULT = ROOT / "params.yaml"


def rows_by_path(rows):
    return {row.path: row for row in rows if row.path}


def resolve_fresh(params, variant, overrides=()):
    """`resolve` with overrides writes into the nested dicts of the params it is given: resolve a copy, so
    one test's overrides never reach the next."""
    return resolve(copy.deepcopy(params), variant, overrides)


@pytest.fixture(scope="module")
def paper_params():
    return load_params(PAPER)


def test_paper_profile_audits_clean_for_every_variant(paper_params):
    for variant in paper_params["variants"]:
        rows = audit(resolve_fresh(paper_params, variant))
        assert exit_code(rows) == 0, [r for r in rows if r.verdict == DEVIATION]
    nas = audit(resolve_fresh(paper_params, "nas"))
    assert {r.verdict for r in nas} == {MATCH, "unchecked"}  # NAS itself: nothing off, nothing n/a


def test_ablation_variants_are_labelled_not_failed(paper_params):
    albef = rows_by_path(audit(resolve_fresh(paper_params, "albef")))
    assert albef["model.overrides.vd"].verdict == ABLATION
    assert albef["pretrain_stage2.model_overrides.nva_enabled"].verdict == ABLATION
    vd = audit(resolve_fresh(paper_params, "vd"))
    by_path = rows_by_path(vd)
    assert by_path["model.overrides.vd"].verdict == MATCH
    assert by_path["pretrain_stage2.model_overrides.nva_enabled"].verdict == ABLATION
    assert by_path["model.overrides.vd.num_codes"].verdict == MATCH
    assert {r.key for r in vd if r.verdict == NOT_APPLICABLE} >= {"nva_score", "nva_token_form"}


def test_default_profile_reports_its_departures(tmp_path):
    rows = audit(resolve(load_params(DEFAULT), "albef"))
    assert exit_code(rows) == 1
    by_path = rows_by_path(rows)
    # The tiny profile departs on purpose; its exact values are the lead's to tune, so only the verdicts
    # (and the two values that define "tiny") are pinned here.
    for path in [
        "pretrain_stage1.train.epochs",
        "pretrain_stage1.train.schedule.warmup_steps",
        "pretrain_stage1.train.schedule.lr",
        "model.overrides.queue_size",
        "model.overrides.vision.img_size",
        "model.overrides.text.num_text_layers",
        "pretrain_stage1.train.launch.nproc_per_node",
        "evaluate.retrieval.k_test",
    ]:
        assert by_path[path].verdict == DEVIATION, path
    assert by_path["data.source"].run_value == "synthetic" and by_path["data.source"].verdict == DEVIATION
    assert by_path["model.overrides.text.pretrained"].run_value == "null"  # random init, not BERT-base
    assert by_path["loader.batch_size_per_gpu"].verdict == MATCH  # 64 per GPU, as in the paper
    text = to_markdown(rows)
    assert "**deviation**" in text and "Audit FAILED" in text


def test_a_value_of_a_is_a_known_difference_and_passes(paper_params):
    rows = audit(resolve_fresh(paper_params, "nas", ["pretrain_stage1.train.epochs=30"]))
    row = rows_by_path(rows)["pretrain_stage1.train.epochs"]
    assert row.verdict == "known difference ([A])" and "checkpoint_29" in row.note
    assert exit_code(rows) == 0
    rows = audit(resolve_fresh(paper_params, "nas", ["pretrain_stage1.train.epochs=31"]))
    assert rows_by_path(rows)["pretrain_stage1.train.epochs"].verdict == DEVIATION and exit_code(rows) == 1


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("pretrain_stage1.train.schedule.warmup_steps=2000", "pretrain_stage1.train.schedule.warmup_steps"),
        ("model.overrides.nva.token_form=raw_code", "pretrain_stage2.model_overrides.nva.token_form"),
        ("model.overrides.vd.init=random", "model.overrides.vd.init"),
        ("model.overrides.nva.score=cosine", "finetune.model_overrides.nva.score"),
    ],
)
def test_other_known_differences(paper_params, override, path):
    rows = audit(resolve_fresh(paper_params, "nas", [override]))
    assert rows_by_path(rows)[path].verdict.startswith("known difference") and exit_code(rows) == 0


def test_a_queue_is_frozen_in_pretraining_only(paper_params):
    # [A] never updated the queue in pretraining (a known difference) but did in fine-tuning: freezing it
    # everywhere is a fine-tuning deviation; reproducing [A] means switching it back on for fine-tuning.
    rows = rows_by_path(audit(resolve_fresh(paper_params, "nas", ["model.overrides.queue_update=false"])))
    assert rows["model.overrides.queue_update"].verdict == "known difference ([A])"
    assert rows["finetune.model_overrides.queue_update"].verdict == DEVIATION
    fixed = ["model.overrides.queue_update=false", "finetune.model_overrides.queue_update=true"]
    rows = audit(resolve_fresh(paper_params, "nas", fixed))
    assert exit_code(rows) == 0
    assert rows_by_path(rows)["finetune.model_overrides.queue_update"].verdict == MATCH


# ---- fine-tuning (NAS_METHOD §5, §6) ------------------------------------------------------------------

FINETUNE_KEYS = {
    "finetune_resolution",
    "finetune_init",
    "finetune_epochs",
    "finetune_lr",
    "finetune_weight_decay",
    "finetune_batch",
    "finetune_text_length",
    "finetune_objectives",
    "finetune_alpha",
    "finetune_queue",
    "finetune_vd_frozen",
    "finetune_nva",
    "finetune_nva_detach",
}


def test_fine_tuning_rows_for_every_variant(paper_params):
    expected = {
        "nas": {"finetune_nva": MATCH, "finetune_nva_detach": MATCH, "finetune_vd_frozen": MATCH},
        # +VD: NVA off in fine-tuning as in stage 2 (checked), its detach row does not apply.
        "vd": {"finetune_nva": MATCH, "finetune_nva_detach": NOT_APPLICABLE, "finetune_vd_frozen": MATCH},
        # ALBEF has neither a dictionary nor NVA: n/a, not failures.
        "albef": {
            "finetune_nva": NOT_APPLICABLE,
            "finetune_nva_detach": NOT_APPLICABLE,
            "finetune_vd_frozen": NOT_APPLICABLE,
        },
    }
    for variant, verdicts in expected.items():
        rows = audit(resolve_fresh(paper_params, variant))
        assert {r.key for r in rows} >= FINETUNE_KEYS, variant
        by_key = {r.key: r for r in rows if r.key in verdicts}
        assert {k: r.verdict for k, r in by_key.items()} == verdicts, variant
        checked = {r.path: r for r in rows if r.key in FINETUNE_KEYS and r.verdict == MATCH}
        assert {r.source[:3] for r in checked.values()} <= {"[P]", "[A]", "[B]", "[D]"}
        for path, value in [
            ("finetune.image_size", "384"),
            ("finetune.model_overrides.vision.img_size", "384"),
            ("finetune.train.schedule.lr", "1e-05"),
            ("finetune.train.schedule.min_lr", "1e-06"),
            ("finetune.train.optim.weight_decay", "0.02"),
            ("finetune.train.epochs", "5"),
            ("finetune.mlm_weight", "0"),
            ("finetune.model_overrides.queue_update", "true"),
        ]:
            assert checked[path].run_value == value, (variant, path)
    vd = rows_by_path(audit(resolve_fresh(paper_params, "vd")))
    assert vd["finetune.model_overrides.nva_enabled"].run_value == "false"


def test_nva_off_in_fine_tuning_is_a_named_deviation(paper_params):
    # Issue 15 item 4: with NVA off in fine-tuning the audit said "passed".
    config = resolve_fresh(paper_params, "nas", ["finetune.model_overrides.nva_enabled=false"])
    rows = audit(config)
    assert exit_code(rows) == 1
    deviations = [r for r in rows if r.verdict == DEVIATION]
    assert [(r.key, r.path) for r in deviations] == [("finetune_nva", "finetune.model_overrides.nva_enabled")]
    assert deviations[0].run_value == "false" and deviations[0].note == "expected true (as in stage 2)"
    text, code = render(config)
    assert code == 1 and "`finetune.model_overrides.nva_enabled`" in text and "Audit FAILED" in text
    # The ablations must stay without NVA in fine-tuning too.
    rows = audit(resolve_fresh(paper_params, "vd", ["finetune.model_overrides.nva_enabled=true"]))
    assert [r.path for r in rows if r.verdict == DEVIATION] == ["finetune.model_overrides.nva_enabled"]


def test_nva_off_in_an_edited_paper_profile_fails_on_the_command_line(tmp_path, capsys):
    params = yaml.safe_load(PAPER.read_text())
    params["variants"]["nas"]["finetune"]["model_overrides"]["nva_enabled"] = False
    edited = tmp_path / "paper.yaml"
    edited.write_text(yaml.safe_dump(params))
    assert main(["--params", str(edited), "--variant", "nas"]) == 1
    out = capsys.readouterr().out
    assert "| NVA negatives in fine-tuning | `finetune.model_overrides.nva_enabled` |" in out
    assert "**deviation** | expected true (as in stage 2)" in out and "Audit FAILED" in out


@pytest.mark.parametrize(
    ("override", "path", "value"),
    [
        ("finetune.model_overrides.nva.detach=true", "finetune.model_overrides.nva.detach", "true"),
        ("finetune.model_overrides.vd.frozen=false", "finetune.model_overrides.vd.frozen", "false"),
        ("finetune.model_overrides={}", "finetune.model_overrides.vd.frozen", "false"),
        ("finetune.image_size=256", "finetune.image_size", "256"),
        ("finetune.mlm_weight=1.0", "finetune.mlm_weight", "1"),
        ("finetune.train.schedule.lr=1e-4", "finetune.train.schedule.lr", "0.0001"),
        ("finetune.train.schedule.min_lr=1e-5", "finetune.train.schedule.min_lr", "1e-05"),
        ("finetune.train.optim.weight_decay=0.05", "finetune.train.optim.weight_decay", "0.05"),
        ("finetune.train.epochs=10", "finetune.train.epochs", "10"),
        ("finetune.init_from=pretrain_stage1", "finetune.init_from", "pretrain_stage1"),
    ],
)
def test_fine_tuning_deviations(paper_params, override, path, value):
    rows = audit(resolve_fresh(paper_params, "nas", [override]))
    row = rows_by_path(rows)[path]
    assert (row.verdict, row.run_value) == (DEVIATION, value) and exit_code(rows) == 1


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("loader.batch_size_per_gpu=32", "loader.batch_size_per_gpu"),  # [A]'s 32 per GPU
        ("data.text_max_length=30", "data.text_max_length"),  # [A]'s text length 30
    ],
)
def test_fine_tuning_known_differences_of_a(paper_params, override, path):
    # The fine-tuning row labels [A]'s value; the shared pretraining row still counts it as a deviation.
    rows = [r for r in audit(resolve_fresh(paper_params, "nas", [override])) if r.path == path]
    verdicts = {r.key: r.verdict for r in rows}
    assert any(k.startswith("finetune_") and v == "known difference ([A])" for k, v in verdicts.items())
    assert DEVIATION in verdicts.values()


def test_default_profile_fine_tuning_departs_from_the_paper():
    rows = audit(resolve(load_params(DEFAULT), "nas"))
    assert exit_code(rows) == 1
    by_path = rows_by_path(rows)
    for path in ["finetune.image_size", "finetune.train.schedule.lr", "finetune.train.epochs"]:
        assert by_path[path].verdict == DEVIATION, path
    # The NAS switches of the default profile are the paper's.
    for path in [
        "finetune.model_overrides.nva_enabled",
        "finetune.model_overrides.nva.detach",
        "finetune.model_overrides.vd.frozen",
        "finetune.mlm_weight",
    ]:
        assert by_path[path].verdict == MATCH, path


def finetune_run_config(params, variant, seed=0):
    """A config.json as experiments/finetune.py records it for one replicate: the EFFECTIVE model
    overrides (the stage's merged in) and the fine-tuning image size."""
    config = resolve_fresh(params, variant) | {"stage": "finetune"}
    section = config["finetune"]
    section["seeds"] = [seed]
    config["seed"] += seed
    stage = merge(
        section["model_overrides"],
        {"mlm_weight": section["mlm_weight"], "vision": {"img_size": section["image_size"]}},
    )
    config["model"]["overrides"] = merge(config["model"]["overrides"], stage)
    config["data"].setdefault("transform", {})["image_size"] = section["image_size"]
    return json.loads(json.dumps(config))


def test_a_recorded_fine_tuning_run_is_audited_through_the_fine_tuning_card(paper_params, tmp_path):
    run = tmp_path / "runs" / "finetune" / "nas" / "seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(finetune_run_config(paper_params, "nas")))
    lines: list[str] = []
    # The recorded model is the fine-tuned one: NVA on, not detached, 384 px, no MLM. Read as pretraining
    # values those would be deviations (NVA in stage 1, ...); they are n/a here, and the audit passes.
    assert audit_run(run, echo=lines.append) == 0
    assert "stage finetune variant nas" in lines[0] and "a fine-tuning run's config" in lines[0]
    rows = audit(load_run_config(run))
    by_path = rows_by_path(rows)
    for path in [
        "pretrain_stage1.model_overrides.nva_enabled",
        "pretrain_stage1.model_overrides.vd.frozen",
        "pretrain_stage2.model_overrides.nva.detach",
        "model.overrides.mlm_weight",
        "model.overrides.vision.img_size",
        "data.transform.image_size",
    ]:
        assert by_path[path].verdict == NOT_APPLICABLE, path
    assert by_path["data.transform.image_size"].run_value == "384"
    # What stage 2 set itself still says what stage 2 ran.
    assert by_path["pretrain_stage2.model_overrides.nva_enabled"].verdict == MATCH
    assert by_path["pretrain_stage2.model_overrides.vd.frozen"].verdict == MATCH
    for key in FINETUNE_KEYS:
        assert all(r.verdict == MATCH for r in rows if r.key == key), key
    assert by_path["finetune.model_overrides.nva_enabled"].run_value == "true"

    # A replicate that fine-tuned without NVA (or with NVA detached) fails, named.
    for edit, path in [
        ({"nva_enabled": False}, "finetune.model_overrides.nva_enabled"),
        ({"nva": {"detach": True}}, "finetune.model_overrides.nva.detach"),
        ({"vd": {"frozen": False}}, "finetune.model_overrides.vd.frozen"),
    ]:
        config = finetune_run_config(paper_params, "nas")
        config["finetune"]["model_overrides"] = merge(config["finetune"]["model_overrides"], edit)
        config["model"]["overrides"] = merge(config["model"]["overrides"], edit)
        rows = audit(config)
        assert [r.path for r in rows if r.verdict == DEVIATION] == [path]
    # The ablations' replicates pass too.
    for variant in ("albef", "vd"):
        assert exit_code(audit(finetune_run_config(paper_params, variant))) == 0, variant


def test_sacred_record_of_the_fine_tuning_stage_is_read_as_params(paper_params):
    # Sacred records the stage's input (model.overrides without the fine-tuning overlay): nothing is
    # n/a, the pretraining rows are checked as for a params file.
    config = resolve_fresh(paper_params, "nas") | {"stage": "finetune"}
    rows = audit(config)
    assert exit_code(rows) == 0 and NOT_APPLICABLE not in {r.verdict for r in rows}
    assert "a fine-tuning run's config" not in render(config)[0]
    config["pretrain_stage1"]["model_overrides"] = {"nva_enabled": True}
    row = rows_by_path(audit(config))["pretrain_stage1.model_overrides.nva_enabled"]
    assert row.verdict == DEVIATION


def test_an_invalid_fine_tuning_section_is_an_audit_error(paper_params):
    config = resolve_fresh(paper_params, "nas", ["finetune.train.epochz=5"])
    with pytest.raises(AuditError, match="finetune.train.*epochz"):
        audit(config)


def test_stage_overrides_are_read_as_the_stage_builds_the_model(paper_params):
    # NVA switched on in stage 1 is a deviation (NAS runs it in stage 2 only).
    rows = audit(resolve_fresh(paper_params, "nas", ["pretrain_stage1.model_overrides={nva_enabled: true}"]))
    row = rows_by_path(rows)["pretrain_stage1.model_overrides.nva_enabled"]
    assert (row.verdict, row.run_value) == (DEVIATION, "true")


def test_a_missing_section_is_a_deviation_not_a_crash(paper_params):
    config = resolve_fresh(paper_params, "nas")
    del config["evaluate"]
    row = rows_by_path(audit(config))["evaluate.retrieval.k_test"]
    assert row.verdict == DEVIATION and "not in the run config" in row.note


def test_invalid_sections_and_unknown_models(paper_params):
    config = resolve_fresh(paper_params, "nas", ["loader.batch_size_per_gpuu=64"])
    with pytest.raises(AuditError, match="section 'loader'.*batch_size_per_gpuu"):
        audit(config)
    # A model the audit cannot fill defaults for: said so, and its unset fields count as deviations.
    text, code = render(resolve_fresh(paper_params, "albef", ["model.name=my_model"]))
    assert code == 1 and "'my_model' is unknown to the audit" in text


def test_audit_run_reads_run_folders_and_prints_a_table(paper_params, tmp_path):
    config = resolve_fresh(paper_params, "nas") | {"stage": "pretrain_stage1"}
    stage_dir = tmp_path / "runs" / "pretrain_stage1" / "nas"
    stage_dir.mkdir(parents=True)
    (stage_dir / "config.json").write_text(json.dumps(config))
    lines: list[str] = []
    assert audit_run(stage_dir, echo=lines.append) == 0
    assert "stage pretrain_stage1 variant nas" in lines[0] and "| stage 1 epochs |" in lines[0]
    assert audit_run(stage_dir / "config.json", echo=lines.append) == 0
    with pytest.raises(FileNotFoundError, match="Sacred run folder"):
        load_run_config(tmp_path / "nowhere")
    (tmp_path / "broken.json").write_text("[1, 2]")
    with pytest.raises(AuditError, match="expected a JSON object"):
        load_run_config(tmp_path / "broken.json")


def test_command_line_returns_the_exit_code_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "audit.json"
    assert main(["--params", str(PAPER), "--variant", "nas", "--output", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["exit_code"] == 0 and all(r["verdict"] != DEVIATION for r in written["rows"])
    md = tmp_path / "audit.md"
    assert main(["--params", str(DEFAULT), "--variant", "nas", "--output", str(md)]) == 1
    assert "Audit FAILED" in md.read_text() and "Audit FAILED" in capsys.readouterr().out
