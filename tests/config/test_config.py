from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from nas.config import ConfigError, from_dict, merge, to_dict
from nas.config.params import load_params, parse_override, resolve


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)
    path: str | None = None


def test_round_trip_and_yaml_number_strings():
    cfg = from_dict(Outer, {"inner": {"lr": "1e-5", "steps": 3.0}, "sizes": [4, 5]})
    assert cfg.inner.lr == 1e-5 and cfg.inner.steps == 3 and cfg.sizes == (4, 5)
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_names_full_path_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.setps'.*did you mean 'inner\.steps'"):
        from_dict(Outer, {"inner": {"setps": 3}})


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"inner": {"steps": "ten"}}, r"inner\.steps: expected an integer"),
        ({"inner": {"steps": True}}, r"inner\.steps: expected an integer"),
        ({"inner": {"mode": "c"}}, r"inner\.mode: 'c' is not one of"),
        ({"sizes": [1, "x"]}, r"sizes\[1\]: expected an integer"),
        ({"name": 3}, r"name: expected a string"),
        ({"inner": 5}, r"inner: expected a mapping"),
    ],
)
def test_wrong_types_name_the_key(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Outer, data)


def test_merge_and_resolve_variants(tmp_path):
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    params = {"train": {"lr": 1.0, "epochs": 2}, "variants": {"nas": {"train": {"epochs": 5}}, "albef": {}}}
    cfg = resolve(params, "nas", ["train.lr=0.5", "extra.flag=true"])
    assert cfg == {"train": {"lr": 0.5, "epochs": 5}, "variant": "nas", "extra": {"flag": True}}
    with pytest.raises(ConfigError, match="unknown variant 'vd'"):
        resolve(params, "vd")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("nonsense")
    bad = tmp_path / "p.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="p.yaml: not valid YAML"):
        load_params(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_params(tmp_path / "missing.yaml")


def test_the_run_digest_covers_the_harness_code(monkeypatch):
    import nas.config.stages as stages

    assert len(stages.code_digest()) == 64 and stages.code_digest() == stages.code_digest()
    before = stages.config_digest({"seed": 1})
    assert stages.config_digest({"seed": 1}) == before and stages.config_digest({"seed": 2}) != before
    monkeypatch.setattr(stages, "code_digest", lambda: "other code")
    assert stages.config_digest({"seed": 1}) != before  # a model-code change never resumes a stale run
