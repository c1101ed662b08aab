from __future__ import annotations

import json

import pytest

from nas import cli


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*cli.STAGES, *cli.TOOLS]:
        assert name in out


@pytest.mark.parametrize("command", sorted(cli.STAGES))
def test_every_stage_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: nas" in out and "--set" in out


def test_config_command_resolves_variant_and_rejects_unknown_variant(capsys):
    assert cli.main(["config", "--variant", "albef", "--set", "loader.batch_size_per_gpu=8"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["variant"] == "albef" and resolved["loader"]["batch_size_per_gpu"] == 8
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        cli.main(["config", "--variant", "nope"])


def test_models_command_lists_registry(capsys):
    assert cli.main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert "albef_tiny" in names and "albef_base" in names


def test_unknown_param_key_is_an_error_naming_it(tmp_path, monkeypatch):
    from experiments.common import run_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 1\ndata: {root: d, synthetic: {n_trian: 5}}\n")
    from experiments.data import stage

    with pytest.raises(
        ValueError, match=r"data\.synthetic\.n_trian.*did you mean 'data\.synthetic\.n_train'"
    ):
        run_stage("data", stage, ["--runs-dir", str(tmp_path / "runs")], needs_variant=False)


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
