"""Profiles (nas.config.profiles): the paper scale and any other run from profiles/<name>/ without editing a
tracked file, with a dvc.yaml that is the root's but for `code`, and outputs in the profile's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas.config import profiles

ROOT = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")


def test_every_profile_dvc_yaml_is_the_root_one_but_for_code():
    assert "paper" in profiles.list_profiles(ROOT)
    assert profiles.sync_profiles(ROOT, check=True) == [], "run `nas profile sync`"
    root = (ROOT / "dvc.yaml").read_text()
    paper = (ROOT / "profiles" / "paper" / "dvc.yaml").read_text()
    differ = [(a, b) for a, b in zip(root.splitlines(), paper.splitlines()) if a != b]
    assert len(differ) == 1 and "code: ../.." in differ[0][1]


def test_dvc_yaml_names_no_data_folder_by_hand():
    """Data paths follow the params (${data.root}, ${data.probes_root}), code paths follow `code`."""
    text = (ROOT / "dvc.yaml").read_text()
    assert "data/synthetic" not in text and "data/probes" not in text
    stages = yaml.safe_load(text)["stages"]
    for name, stage in stages.items():
        for dep in stage.get("do", stage).get("deps", []):
            if dep.split("/")[0] in ("nas", "experiments"):
                pytest.fail(f"{name}: code dependency {dep} does not start with ${{code}}/")


def test_new_profile_copies_params_and_renders_dvc_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    folder = profiles.new_profile("small", repo=tmp_path)
    assert (folder / "params.yaml").read_text() == (tmp_path / "params.yaml").read_text()
    assert "  - code: ../.." in (folder / "dvc.yaml").read_text()
    assert profiles.list_profiles(tmp_path) == ["embedded", "small"]
    with pytest.raises(profiles.ProfileError, match="exists already"):
        profiles.new_profile("small", repo=tmp_path)
    with pytest.raises(profiles.ProfileError, match="no profile 'nope'"):
        profiles.new_profile("other", source="nope", repo=tmp_path)
    with pytest.raises(profiles.ProfileError, match="not a usable profile name"):
        profiles.new_profile("../escape", repo=tmp_path)
    # the root dvc.yaml changes: sync finds and rewrites the stale copy
    (tmp_path / "dvc.yaml").write_text((tmp_path / "dvc.yaml").read_text() + "\n# edited\n")
    assert profiles.sync_profiles(tmp_path, check=True) == ["small"]
    assert profiles.sync_profiles(tmp_path) == ["small"]
    assert profiles.sync_profiles(tmp_path, check=True) == []


def test_render_refuses_a_dvc_yaml_without_code():
    with pytest.raises(profiles.ProfileError, match="`code` variable"):
        profiles.render_dvc_yaml("stages: {}\n", "../..")


@pytest.mark.skipif(not DVC.exists(), reason="dvc is not installed next to this python")
def test_dvc_reads_the_paper_profile_in_its_own_folder():
    """DVC resolves the paper profile's stages with its params: the data stage writes the download root the
    profile names, under the profile's folder (the embedded default's data/synthetic is not touched)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [str(DVC), "stage", "list", "--name-only", "dvc.yaml"],
        cwd=ROOT / "profiles" / "paper",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 and "not a DVC repository" in proc.stderr:
        pytest.skip("not inside the DVC repository")
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert "data" in names and "evaluate@nas" in names and "report" in names
    paper = yaml.safe_load((ROOT / "profiles" / "paper" / "params.yaml").read_text())
    proc = subprocess.run(
        [str(DVC), "stage", "list", "dvc.yaml:data"],
        cwd=ROOT / "profiles" / "paper",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert paper["data"]["root"] in proc.stdout and "synthetic" not in proc.stdout
