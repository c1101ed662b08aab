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
