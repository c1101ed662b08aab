"""Pipeline runs write the paths dvc.yaml names; ad-hoc runs (`--set`, another `--params`) write under
runs/adhoc/<tag>/ and never a DVC output or dependency (nas.config.params.decide_output_root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nas.config import ConfigError
from nas.config.params import (
    ADHOC_DIR,
    PIPELINE_ROOT,
    adhoc_tag,
    decide_output_root,
    input_root,
    output_root,
    pipeline_run,
    resolve,
)

ROOT = Path(__file__).resolve().parents[2]


def run_kind(stage="pretrain_stage1", variant="nas", params="params.yaml", overrides=(), env=None, cwd=ROOT):
    return pipeline_run(stage, variant, params, list(overrides), environ=env or {}, cwd=cwd)


@pytest.mark.parametrize(
    "env, overrides, params, pipeline",
    [
        ({}, [], "params.yaml", True),  # by hand, as DVC would run it
        ({}, [], "./params.yaml", True),
        ({}, [], str(ROOT / "params.yaml"), True),
        ({}, ["pretrain_stage1.train.epochs=2"], "params.yaml", False),
        ({}, [], "profiles/paper/params.yaml", False),
        # DVC 3 sets DVC_STAGE (and DVC_ROOT) for every stage command: `<stage>@<foreach key>`.
        ({"DVC_STAGE": "pretrain_stage1@nas", "DVC_ROOT": str(ROOT)}, [], "params.yaml", True),
        ({"DVC_STAGE": "pretrain_stage1@nas"}, ["seed=1"], "params.yaml", True),  # the stage's own command
        ({"DVC_STAGE": "sub/dvc.yaml:pretrain_stage1@nas"}, [], "params.yaml", True),  # dvc.yaml elsewhere
        # A stage command that starts another stage by hand is not that stage.
        ({"DVC_STAGE": "pretrain_stage1@vd"}, [], "params.yaml", False),
        ({"DVC_STAGE": "report"}, [], "params.yaml", False),
        ({"DVC_ROOT": str(ROOT)}, ["seed=1"], "params.yaml", False),  # DVC_ROOT alone says nothing
    ],
)
def test_what_counts_as_a_pipeline_run(env, overrides, params, pipeline):
    assert run_kind(env=env, overrides=overrides, params=params)[0] is pipeline


def test_stages_without_a_variant_match_their_dvc_name():
    assert run_kind("mug_pretrain", None, env={"DVC_STAGE": "mug_pretrain"})[0]
    assert not run_kind("mug_pretrain", None, env={"DVC_STAGE": "mug_evaluate"})[0]


def test_the_reason_names_what_made_a_run_ad_hoc():
    assert run_kind(overrides=["a.b=1", "c=x y"])[1] == "--set a.b=1 --set 'c=x y'"
    assert run_kind(params="profiles/paper/params.yaml")[1] == "--params profiles/paper/params.yaml"
    assert "DVC_STAGE=report" in run_kind(env={"DVC_STAGE": "report"})[1]


def test_the_output_root_of_each_kind():
    pipeline = decide_output_root("build_vd", "nas", "params.yaml", [], environ={}, cwd=ROOT)
    assert pipeline.pipeline and pipeline.path == PIPELINE_ROOT == Path(".")
    assert "pipeline run" in pipeline.describe()
    adhoc = decide_output_root("build_vd", "nas", "params.yaml", ["seed=1"], environ={}, cwd=ROOT)
    assert not adhoc.pipeline and adhoc.path.parent == ADHOC_DIR == Path("runs/adhoc")
    assert adhoc.path.name == adhoc_tag("params.yaml", ["seed=1"], ROOT) and len(adhoc.path.name) == 10
    assert "dvc exp run -S" in adhoc.describe() and str(adhoc.path) in adhoc.describe()


def test_different_override_sets_get_different_folders():
    tag = lambda *overrides, params="params.yaml": adhoc_tag(params, list(overrides), ROOT)  # noqa: E731
    tags = {
        tag("seed=1"),
        tag("seed=2"),
        tag("seed=1", "loader.num_workers=1"),
        tag("seed=1", params="profiles/paper/params.yaml"),
        tag(params="profiles/paper/params.yaml"),
        tag("a={x: 1}", "a.y=2"),
        tag("a.y=2", "a={x: 1}"),  # the later item replaces the earlier: another result
    }
    assert len(tags) == 7
    # The same settings are the same exploration, however they are spelled or ordered.
    assert tag("seed=1", "loader.num_workers=1") == tag("loader.num_workers=1", "seed=1")
    assert (
        tag("seed=1")
        == tag("seed=1", params="./params.yaml")
        == tag("seed=1", params=str(ROOT / "params.yaml"))
    )

    assert tag("seed=1") == tag("seed=2", "seed=1") != tag("seed='1'")


def test_every_stage_and_variant_of_one_exploration_share_its_folder():
    where = [
        decide_output_root(stage, variant, "params.yaml", ["seed=7"], environ={}, cwd=ROOT).path
        for stage, variant in [
            ("build_vd", "nas"),
            ("pretrain_stage2", "nas"),
            ("evaluate", "vd"),
            ("mug_pretrain", None),
        ]
    ]
    assert len(set(where)) == 1


def test_the_root_travels_in_the_resolved_params_and_only_a_run_sets_it(shipped_params):
    assert output_root({"seed": 1}) == PIPELINE_ROOT  # pipeline runs, and stages called directly
    assert output_root({"output_root": "runs/adhoc/abc"}) == Path("runs/adhoc/abc")
    with pytest.raises(ConfigError, match="'output_root' is not a params key"):
        resolve({"seed": 1, "output_root": "x"})
    with pytest.raises(ConfigError, match="--set output_root=x: 'output_root' is not a params key"):
        resolve(shipped_params, "nas", ["output_root=x"])
    with pytest.raises(ConfigError, match=r"variants\.k\.output_root: an overlay holds params keys"):
        resolve({"seed": 1, "variants": {"k": {"output_root": "x"}}}, "k")
    from nas.config.schema import validate

    validate(resolve(shipped_params, "nas") | {"stage": "finetune", "output_root": "runs/adhoc/abc"})


@pytest.fixture(scope="module")
def shipped_params():
    import nas.recipes.stage  # noqa: F401  (registers the sections typed in experiment modules)
    from nas.config.params import load_params

    return load_params(ROOT / "params.yaml")


def test_an_ad_hoc_run_reads_upstream_outputs_from_its_folder_else_the_pipelines(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    stage1 = Path("runs/pretrain_stage1/nas")
    root = Path("runs/adhoc/abc")
    assert input_root(PIPELINE_ROOT, stage1, "pretrain_stage1") == PIPELINE_ROOT
    assert input_root(root, stage1, "pretrain_stage1") == PIPELINE_ROOT
    assert input_root(root, stage1, "pretrain_stage1") == PIPELINE_ROOT
    said = capsys.readouterr().out
    assert said.count("reading the pipeline's runs/pretrain_stage1/nas") == 1  # said once
    (root / stage1).mkdir(parents=True)
    assert input_root(root, stage1, "pretrain_stage1") == root


def test_dvc_sets_DVC_STAGE_for_its_stage_commands(tmp_path):
    """The detection rests on DVC's stage environment (dvc/stage/run.py: DVC_ROOT, DVC_STAGE): checked
    on a scratch repository with one `foreach` stage, as dvc.yaml's variant stages are."""
    dvc = Path(sys.executable).parent / "dvc"
    if not dvc.exists():
        pytest.skip("dvc is not installed beside this interpreter")
    (tmp_path / "params.yaml").write_text("variants:\n  nas: {}\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  pretrain_stage1:\n    foreach: ${variants}\n    do:\n"
        f"      cmd: {sys.executable} -c \"import os; open('out_${{key}}.txt', 'w').write(os.environ['DVC_STAGE'])\"\n"
        "      outs:\n        - out_${key}.txt\n"
    )
    env = {
        "DVC_NO_ANALYTICS": "1",
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    for command in (["git", "init", "-q"], [str(dvc), "init", "-q"], [str(dvc), "repro", "-q"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    address = (tmp_path / "out_nas.txt").read_text()
    assert address == "pretrain_stage1@nas"
    assert pipeline_run("pretrain_stage1", "nas", "params.yaml", [], environ={"DVC_STAGE": address})[0]
