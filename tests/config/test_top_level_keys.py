"""Every top-level params key is a registered section, `seed` or `variants`: a typo is an error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.config.base import ConfigError
from nas.config.params import load_params
from nas.config.schema import SECTIONS, Section, check_params, register_section, validate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped():
    import nas.recipes.stage  # noqa: F401  (registers the sections typed by the recipes)

    return load_params(ROOT / "params.yaml")


def test_a_mistyped_top_level_key_set_on_the_command_line_is_an_error(shipped):
    with pytest.raises(
        ConfigError, match=r"--set seeed=1: unknown config key 'seeed' \(did you mean 'seed'\?\)"
    ):
        check_params(shipped, "albef", ["seeed=1"])


def test_a_mistyped_top_level_section_in_a_params_file_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown config key 'studdy' \(did you mean 'study'\?\)") as exc:
        validate({"seed": 1, "studdy": {"seeds": [0]}})
    assert exc.value.path == "studdy"


def test_the_known_top_level_keys_are_the_registered_sections(monkeypatch):
    with pytest.raises(ConfigError, match="unknown config key 'extra'") as exc:
        validate({"seed": 1, "extra": {}})
    assert all(name in str(exc.value) for name in ["seed", "variants", *SECTIONS])
    monkeypatch.setitem(SECTIONS, "extra", Section(dict))
    register_section("extra", Section("nas.config.stages:StudyConfig"))
    assert set(validate({"seed": 1, "extra": {"seeds": [0, 1]}})) == {"extra"}


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/paper/params.yaml"])
def test_the_shipped_params_pass(profile, shipped):
    params = load_params(ROOT / profile)
    for variant in [None, *params["variants"]]:
        check_params(params, variant, source=profile)
