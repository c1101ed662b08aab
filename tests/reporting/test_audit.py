"""The hyperparameter audit: the paper profile passes, the tiny default fails on purpose, and [A]'s
values are labelled as known differences."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

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
PAPER = ROOT / "params" / "paper.yaml"
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
        ("model.overrides.queue_update=false", "model.overrides.queue_update"),
        ("pretrain_stage1.train.schedule.warmup_steps=2000", "pretrain_stage1.train.schedule.warmup_steps"),
        ("model.overrides.nva.token_form=raw_code", "pretrain_stage2.model_overrides.nva.token_form"),
        ("model.overrides.vd.init=random", "model.overrides.vd.init"),
    ],
)
def test_other_known_differences(paper_params, override, path):
    rows = audit(resolve_fresh(paper_params, "nas", [override]))
    assert rows_by_path(rows)[path].verdict.startswith("known difference") and exit_code(rows) == 0


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
