from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas import cli


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()]
    assert [*cli.STAGES, *cli.TOOLS] == [name for name in listed if name in {*cli.STAGES, *cli.TOOLS}]
    assert {"mug", "uta", "pretrain"} <= set(cli.STAGES)
    for stage in [*cli.STAGES["mug"].stages, *cli.STAGES["uta"].stages, *cli.STAGES["pretrain"].stages]:
        assert stage in out  # the --stage choices of each multi-stage command


def test_the_stage_table_is_the_recipes_one_and_help_lists_mug_and_uta(capsys):
    from nas.recipes.commands import STAGE_COMMANDS

    assert cli.STAGES is STAGE_COMMANDS
    assert cli.main(["--help"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")}
    assert set(STAGE_COMMANDS) <= listed and {"mug", "uta"} <= listed


def _dvc_stages() -> dict[str, str]:
    """dvc.yaml stage name -> its command (a `foreach` stage's `do.cmd`)."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (spec.get("do") or spec)["cmd"] for name, spec in stages.items()}


def test_every_dvc_stage_has_a_nas_command():
    """Each dvc.yaml command `python -m <module> [--stage <stage>] [--variant ${key}]` is the command
    of the `nas` subcommand that runs that stage, with the same --stage and --variant."""
    from nas.recipes.stage import command_of

    seen = set()
    for name, cmd in _dvc_stages().items():
        words = cmd.split()
        assert words[:2] == ["python", "-m"], cmd
        if words[2] == "nas.config.params":  # variant_params: writes a variant's overlay chain, no stage
            assert name == "variant_params", cmd
            continue
        command = cli.STAGES[command_of(name)]
        assert words[2] == command.module, (name, cmd)
        if len(command.stages) > 1:
            assert words[words.index("--stage") + 1] == name, cmd
        else:
            assert "--stage" not in words and command.stage_names == (name,)
        assert ("--variant" in words) == command.needs_variant, cmd
        seen.add(name)
    assert seen == {stage for command in cli.STAGES.values() for stage in command.stages}


@pytest.mark.parametrize(
    "module, command",
    [
        ("nas.recipes.pretrain", "pretrain"),
        ("nas.recipes.mug.stages", "mug"),
        ("nas.recipes.uta.stages", "uta"),
    ],
)
def test_the_stage_choices_are_the_modules_stages(module, command):
    assert tuple(importlib.import_module(module).STAGES) == cli.STAGES[command].stage_names


@pytest.mark.parametrize("command", list(cli.STAGES))
def test_every_stage_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    usage = out.split("\n\n")[0]
    assert usage.startswith(f"usage: nas {command} [-h]") and "--set" in out
    stages = cli.STAGES[command].stages
    if len(stages) > 1:
        assert f"[--stage {{{','.join(stages)}}}]" in " ".join(usage.split())
    else:
        assert "--stage" not in out
    assert ("--variant VARIANT" in usage) == cli.STAGES[command].needs_variant
    for stage in stages:
        assert stage in out


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["pretrain", "--help"], "usage: nas pretrain [-h] [--stage {pretrain_stage1,pretrain_stage2}]"),
        (["mug", "--help"], "usage: nas mug [-h] [--stage {mug_vocabulary,mug_pretrain,mug_evaluate}]"),
        (
            ["uta", "--help"],
            "usage: nas uta [-h] [--stage {uta_teacher,uta_pretrain,uta_context,uta_finetune,uta_evaluate}]",
        ),
    ],
)
def test_multi_stage_usage_names_the_subcommand_and_stage(argv, usage, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert " ".join(capsys.readouterr().out.split()).startswith(usage)


def test_the_module_entry_point_has_the_same_usage(capsys):
    """`python -m experiments.uta --help` (what dvc.yaml runs) is `nas uta --help`."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments.uta", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    module_help = done.stdout
    with pytest.raises(SystemExit):
        cli.main(["uta", "--help"])
    assert capsys.readouterr().out == module_help


def test_stage_help_and_usage_errors_import_no_torch():
    """`nas <stage command> --help` and a wrong --stage are answered before the experiment module (and
    torch) is imported: in a fresh process, nothing heavy is loaded afterwards."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from nas import cli\n"
        "codes = []\n"
        "for argv in [[c, '--help'] for c in cli.STAGES] + [['uta', '--stage', 'uta_nope']]:\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code)\n"
        "heavy = ('torch', 'numpy', 'timm', 'transformers', 'ignite', 'sacred')\n"
        "print(codes, sorted(m for m in sys.modules if m.split('.')[0] in heavy), file=sys.__stderr__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stderr.splitlines()[-1] == f"{[0] * len(cli.STAGES) + [2]} []", done.stderr
    assert "invalid choice: 'uta_nope'" in done.stderr and "usage: nas uta" in done.stderr


def test_config_command_resolves_variant_and_rejects_unknown_variant(capsys):
    assert cli.main(["config", "--variant", "albef", "--set", "loader.batch_size_per_gpu=8"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["variant"] == "albef" and resolved["loader"]["batch_size_per_gpu"] == 8
    assert cli.main(["config", "--variant", "nope"]) == 2
    assert capsys.readouterr().err == (
        "nas config: error: unknown variant 'nope'; params.yaml defines: ['albef', 'nas', 'vd']\n"
    )


def test_config_command_refuses_an_unknown_key_in_one_line(capsys):
    assert cli.main(["config", "--set", "pretrain_stage1.train.epoch=2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(
        "nas config: error: --set pretrain_stage1.train.epoch=2: unknown config key "
        "'pretrain_stage1.train.epoch' (did you mean 'pretrain_stage1.train.epochs'?); TrainConfig accepts: "
    )


def test_models_command_lists_registry(capsys):
    assert cli.main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert "albef_tiny" in names and "albef_base" in names


def test_unknown_param_key_is_an_error_naming_it(tmp_path, monkeypatch, capsys):
    from nas.recipes.stage import run_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 1\ndata: {root: d, synthetic: {n_trian: 5}}\n")
    from nas.recipes.data import stage

    with pytest.raises(SystemExit) as exit_info:
        run_stage("data", stage, ["--runs-dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "nas data: error: params.yaml: unknown config key 'data.synthetic.n_trian' "
        "(did you mean 'data.synthetic.n_train'?)"
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "d").exists()


# ---- user errors of a stage: one line on stderr, exit 2, no Sacred run ----------------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    """A working folder with the shipped params.yaml and nothing else (no data: a stage that got past
    its checks would fail on the missing data, after starting a Sacred run)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def _stage_error(module: str, argv: list[str], tmp_path: Path, capsys) -> str:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--params", str(tmp_path / "params.yaml"), "--runs-dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    # No Sacred run folder: the stage never started (a params check that passed is remembered, e.g. before
    # a `--run seed=` the params do not list is refused).
    runs = tmp_path / "runs"
    assert not runs.exists() or [p.name for p in runs.iterdir()] == ["checked-params"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "runs") == ["params.yaml"]
    return err.rstrip("\n")


PRETRAIN = ["--stage", "pretrain_stage1", "--variant", "albef", "--run", "seed=0"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [*PRETRAIN, "--set", "pretrain_stag1.train.epochs=5"],
            "nas pretrain_stage1: error: --set pretrain_stag1.train.epochs=5: unknown config key "
            "'pretrain_stag1' (did you mean 'pretrain_stage1'?); a params file holds: ",
        ),
        (
            [*PRETRAIN, "--set", "finetune.trian.epochs=1"],  # a section pretraining does not read
            "nas pretrain_stage1: error: --set finetune.trian.epochs=1: unknown config key 'finetune.trian' "
            "(did you mean 'finetune.train'?); FinetuneConfig accepts: ",
        ),
        (
            [*PRETRAIN, "--set", "loader=5"],
            "nas pretrain_stage1: error: --set loader=5: loader must be a mapping of loader settings, got 5 (int)",
        ),
        (
            [*PRETRAIN, "--set", "seed=1.5"],
            "nas pretrain_stage1: error: --set seed=1.5: seed must be an integer (the run seed; rank r uses "
            "seed + r), got 1.5 (float)",
        ),
        (
            [*PRETRAIN, "--set", "loader.batch_size_per_gpu=5000"],
            "nas pretrain_stage1: error: --set loader.batch_size_per_gpu=5000: loader.batch_size_per_gpu=5000 "
            "is larger than the synthetic training set, 3600 pairs (data.synthetic.n_train=1800 x "
            "captions_per_image=2)",
        ),
        (
            ["--stage", "pretrain_stage1", "--variant", "nsa", "--run", "seed=0"],
            "nas pretrain_stage1: error: unknown variant 'nsa' (did you mean 'nas'?); ",
        ),
        (
            [*PRETRAIN, "--set", "nonsense"],
            "nas pretrain_stage1: error: --set nonsense: an override must look like",
        ),
        (  # one matrix entry: a seed offset study.seeds lists
            ["--stage", "pretrain_stage1", "--variant", "albef", "--run", "seed=7"],
            "nas pretrain_stage1: error: --run seed=7: not among study.seeds ([0, 1, 2])",
        ),
        (
            ["--stage", "pretrain_stage1", "--variant", "albef"],
            "nas pretrain_stage1: error: pretrain_stage1 takes --run seed=..., got []",
        ),
    ],
)
def test_a_stage_refuses_bad_params_in_one_line_before_it_starts(stage_dir, capsys, argv, message):
    assert _stage_error("nas.recipes.pretrain", argv, stage_dir, capsys).startswith(message)


def test_a_top_level_typo_in_the_params_file_stops_every_stage(stage_dir, capsys):
    path = stage_dir / "params.yaml"
    path.write_text(path.read_text() + "\npretrain_stag1:\n  train: {epochs: 5}\n")
    expected = f"{path}: unknown config key 'pretrain_stag1' (did you mean 'pretrain_stage1'?)"
    err = _stage_error("nas.recipes.data", [], stage_dir, capsys)
    assert err.startswith(f"nas data: error: {expected}")
    err = _stage_error("nas.recipes.finetune", ["--variant", "nas", "--run", "seed=0"], stage_dir, capsys)
    assert err.startswith(f"nas finetune: error: {expected}")


def test_a_missing_params_file_is_one_line(stage_dir, capsys):
    (stage_dir / "params.yaml").unlink()
    main = importlib.import_module("nas.recipes.report").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", "missing.yaml", "--runs-dir", str(stage_dir / "runs")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "nas report: error: params file not found: missing.yaml (run from the repository root)\n"
    )
    assert not any(stage_dir.iterdir())
    (stage_dir / "params.yaml").write_text("seed: 1\ndata: [1, 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs-dir", str(stage_dir / "runs")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("nas report: error: params.yaml: not valid YAML: while parsing a flow sequence")


def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    args = ["pretrain", "--variant", "albef", "--run", "seed=0", "--set", "pretrain_stag1.train.epochs=5"]
    args += ["--runs-dir", "runs"]
    done = subprocess.run(
        [sys.executable, "-m", "nas.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(
        "nas pretrain_stage1: error: --set pretrain_stag1.train.epochs=5: unknown config key 'pretrain_stag1'"
    )
    assert done.stderr.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_score_help_lists_benchmarks_and_formats(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["score", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: nas score" in out and "--annotations" in out and "--format" in out
    from nas.evaluation.benchmarks import BENCHMARKS

    for name in [*BENCHMARKS, "harness", "winoground", "fge"]:
        assert name in out


def test_top_level_help_stays_lazy():
    import subprocess
    import sys

    code = (
        "import sys; from nas import cli; cli.main(['--help']); "
        "print(sorted(m for m in sys.modules if m.startswith(('nas.evaluation', 'torch', 'numpy'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_score_command_rescores_and_exits_2_on_a_bad_file(tmp_path, capsys):
    good = tmp_path / "model.jsonl"
    labels = [f"{e}_c{j}_i{k}" for e in range(2) for j in (0, 1) for k in (0, 1)]
    scores = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]  # both examples right under every condition
    good.write_text("".join(json.dumps({"label": lab, "score": s}) + "\n" for lab, s in zip(labels, scores)))
    assert cli.main(["score", "winoground", str(good)]) == 0
    out = capsys.readouterr().out
    assert "text   100.00" in out and "group  100.00" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text().replace('"score": 0.0}', '"score": -Infinity}', 1))
    assert cli.main(["score", "winoground", str(bad)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"nas score: error: {bad}, line 2: non-finite number -Infinity (NaN and ±Infinity are refused: a score must be finite)\n"
    )


def test_a_passed_params_check_is_remembered_and_a_failed_one_is_not(tmp_path, monkeypatch):
    """load_config(memo_dir=...): the same params file, variant, overrides and code give the remembered
    check back without checking again; any change checks again; an error is never remembered."""
    import nas.recipes.stage as stage
    from nas.config.base import ConfigError

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())  # mug.arms, variants: not in sorted order
    memo = tmp_path / "runs" / stage.CHECKED_PARAMS
    first = stage.load_config(params, "nas", ["seed=3"], memo_dir=memo)
    assert first["seed"] == 3 and len(list(memo.glob("*.json"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("checked again")

    monkeypatch.setattr(stage, "check_params", refuse)
    again = stage.load_config(params, "nas", ["seed=3"], memo_dir=memo)
    assert json.dumps(again) == json.dumps(first)  # the same values, in the same order
    for variant, overrides in [("vd", ["seed=3"]), ("nas", ["seed=4"]), ("nas", [])]:
        with pytest.raises(AssertionError, match="checked again"):
            stage.load_config(params, variant, overrides, memo_dir=memo)
    params.write_text(params.read_text() + "\n")  # the file's bytes changed
    with pytest.raises(AssertionError, match="checked again"):
        stage.load_config(params, "nas", ["seed=3"], memo_dir=memo)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="nope"):
        stage.load_config(params, "nas", ["nope=1"], memo_dir=memo)
    assert len(list(memo.glob("*.json"))) == 1


@pytest.mark.parametrize("module", ["pretrain", "finetune", "build_vd", "data", "report", "mug", "uta"])
def test_a_stage_module_starts_without_torch_and_without_warnings(module):
    """A stage process reaches run_stage having imported no heavy package (torch, timm, ... are imported
    by the stage functions that need them) and with no warning at import time. (experiments.evaluate:
    its params section types ScorerConfig and RetrievalConfig, which nas.evaluation defines next to torch.)"""
    import subprocess
    import sys

    heavy = ("torch", "timm", "transformers", "ignite", "open_clip", "torchvision", "sacred")
    code = (
        f"import sys, experiments.{module}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        (
            "nas.recipes.mug.stages",
            ["--stage", "mug_pretrain", "--run", "arm=mug", "--run", "seed=9"],
            "nas mug_pretrain: error: --run seed=9: not among mug.seeds ([0, 1, 2])",
        ),
        (
            "nas.recipes.mug.stages",
            ["--stage", "mug_pretrain", "--run", "arm=nope", "--run", "seed=0"],
            "nas mug_pretrain: error: --run arm=nope: not among mug.arms (['mae_only', 'caption_only', 'mug'])",
        ),
        (
            "nas.recipes.uta.stages",
            ["--stage", "uta_context", "--run", "arm=random", "--run", "seed=0"],
            "nas uta_context: error: --run seed=0: not among uta.context_seeds ([])",
        ),
        (
            "nas.recipes.uta.stages",
            ["--stage", "uta_pretrain", "--run", "arm=random", "--run", "seed=0"],
            "nas uta_pretrain: error: --run arm=random: not among uta.arms (['none', 'reversed_blockwise'])",
        ),
    ],
)
def test_a_swept_stage_refuses_a_run_its_params_do_not_list_before_it_starts(
    stage_dir, capsys, module, argv, message
):
    """A matrix entry's `--run` values must be listed by the params (MUG's and UTA's as NAS's seeds): one
    line on stderr, exit status 2, and no Sacred run folder."""
    assert _stage_error(module, argv, stage_dir, capsys) == message
