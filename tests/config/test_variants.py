"""Variant overlays that inherit (`variants.<name>.base`), resolved recursively (nas.config.params)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from nas.config import ConfigError, merge
from nas.config.params import load_params, resolve, variant_chain, variant_lineage, variants_of

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ["params.yaml", "profiles/paper/params.yaml"]
SHIPPED = ("albef", "vd", "nas")
K32 = {"base": "nas", "model": {"overrides": {"vd": {"num_codes": 32}}}}


@pytest.fixture(scope="module")
def shipped():
    import nas.recipes.stage  # noqa: F401  (registers the sections typed in experiment modules)

    return load_params(ROOT / "params.yaml")


def flat(params, variant):
    """How a variant resolved before overlays could inherit: the params, its overlay merged on top."""
    base = copy.deepcopy({k: v for k, v in params.items() if k != "variants"})
    return merge(base, copy.deepcopy(params["variants"][variant] or {})) | {"variant": variant}


def with_k32(params):
    params = copy.deepcopy(params)
    params["variants"]["k32"] = copy.deepcopy(K32)
    return params


@pytest.mark.parametrize("profile", PROFILES)
def test_the_shipped_variants_resolve_as_before(profile):
    params = load_params(ROOT / profile)
    assert set(SHIPPED) <= set(params["variants"])
    for variant in SHIPPED:
        assert resolve(params, variant) == flat(params, variant)


def test_nas_config_prints_the_nas_variant_as_before(shipped, capsys):
    from nas.cli import main

    assert main(["config", "--variant", "nas"]) == 0
    assert json.loads(capsys.readouterr().out) == flat(shipped, "nas")


def test_a_variant_inherits_its_base(shipped):
    """Issue 16 item 4: `k32` (NAS with 32 codes) kept NVA in stage 2 and fine-tuning only by copying
    the whole `nas` overlay; with `base: nas` it names the one change."""
    from nas.config.schema import check_params

    params = with_k32(shipped)
    k32 = check_params(params, "k32")
    nas = resolve(params, "nas")
    assert k32["model"]["overrides"]["vd"] == {**nas["model"]["overrides"]["vd"], "num_codes": 32}
    assert k32["pretrain_stage2"]["model_overrides"]["nva_enabled"] is True
    assert k32["finetune"]["model_overrides"]["nva_enabled"] is True
    assert k32["finetune"]["model_overrides"]["nva"] == {"detach": False}
    expected = copy.deepcopy(nas) | {"variant": "k32"}
    expected["model"]["overrides"]["vd"]["num_codes"] = 32
    assert k32 == expected  # everything else is the NAS recipe
    assert "base" not in json.dumps(k32)  # `base` is an overlay key, never a params key
    assert resolve(params, "nas") == resolve(shipped, "nas")  # a new variant changes no other


def test_bases_resolve_recursively_and_the_child_wins():
    params = {
        "train": {"lr": 1.0, "epochs": 1, "tags": ["x"]},
        "variants": {
            "a": {"train": {"lr": 2.0, "tags": ["a"]}},
            "b": {"base": "a", "train": {"epochs": 3}},
            "c": {"base": "b", "train": {"lr": 4.0}, "extra": {"on": True}},
        },
    }
    before = copy.deepcopy(params)
    assert variant_chain(params["variants"], "c") == ["c", "b", "a"]
    assert resolve(params, "c") == {
        "train": {"lr": 4.0, "epochs": 3, "tags": ["a"]},
        "extra": {"on": True},
        "variant": "c",
    }
    assert resolve(params, "b", ["train.epochs=5"])["train"] == {"lr": 2.0, "epochs": 5, "tags": ["a"]}
    assert params == before  # the caller's params are never mutated
    assert variant_lineage(params, "c") == [
        {"variant": "a", "overlay": {"train": {"lr": 2.0, "tags": ["a"]}}},
        {"variant": "b", "overlay": {"train": {"epochs": 3}}},
        {"variant": "c", "overlay": {"train": {"lr": 4.0}, "extra": {"on": True}}},
    ]


@pytest.mark.parametrize(
    "variants, message, path",
    [
        (
            {"nas": {}, "k32": {"base": "nsa"}},
            "p.yaml: variants.k32.base: 'nsa' is not a variant (did you mean 'nas'?); "
            "p.yaml defines: ['k32', 'nas', 'ok']",
            "variants.k32.base",
        ),
        (
            {"a": {"base": "b"}, "b": {"base": "c"}, "c": {"base": "a"}},
            "p.yaml: variants.c.base: the bases form a cycle: a -> b -> c -> a",
            "variants.c.base",
        ),
        ({"a": {"base": "a"}}, "p.yaml: variants.a.base: the bases form a cycle: a -> a", "variants.a.base"),
        (
            {"a": {"base": 3}},
            "p.yaml: variants.a.base must name another variant (a string), got 3 (int)",
            "variants.a.base",
        ),
        (
            {"a": {"base": None}},
            "p.yaml: variants.a.base must name another variant (a string), got null",
            "variants.a.base",
        ),
    ],
)
def test_unknown_bases_and_cycles_are_errors_naming_them(variants, message, path):
    params = {"seed": 1, "variants": {"ok": {}, **variants}}
    for variant in (None, "ok"):  # the whole table is checked, whichever variant runs
        with pytest.raises(ConfigError) as info:
            resolve(params, variant, source="p.yaml")
        assert str(info.value) == message and info.value.path == path
    with pytest.raises(ConfigError, match="the bases form a cycle|is not a variant|must name another"):
        variants_of(params, "p.yaml")


def test_check_params_names_the_overlay_that_set_a_bad_value(shipped):
    from nas.config.schema import check_params

    params = with_k32(shipped)
    params["variants"]["k32"]["finetune"] = {"model_overrides": {"nva": {"detatch": False}}}
    with pytest.raises(ConfigError) as info:
        check_params(params, "k32", source="p.yaml")
    assert str(info.value).startswith(
        "p.yaml variants.k32: unknown config key 'finetune.model_overrides.nva.detatch'"
    )

    params = with_k32(shipped)
    params["variants"]["nas"]["pretrain_stage2"]["model_overrides"]["nva_enabeld"] = True
    with pytest.raises(ConfigError) as info:
        check_params(params, "k32", source="p.yaml")
    assert str(info.value).startswith(
        "p.yaml variants.nas (a base of variants.k32): unknown config key "
        "'pretrain_stage2.model_overrides.nva_enabeld'"
    )
    check_params(params, "vd")  # the other variants are not concerned

    # The merged overlay is what is validated: `vd` settings on a model without a dictionary are refused
    # even though the overlay that sets them is fine on its own base.
    params = with_k32(shipped)
    params["variants"]["k32"]["model"]["name"] = "albef_tiny"
    with pytest.raises(ConfigError, match=r"^p\.yaml variants\.k32: .*vd"):
        check_params(params, "k32", source="p.yaml")


def test_an_override_cannot_set_the_base(shipped):
    with pytest.raises(ConfigError, match="--set variants.k32.base=vd: an override applies to the params"):
        resolve(with_k32(shipped), "k32", ["variants.k32.base=vd"])


def test_nas_config_shows_k32_with_nva_in_stage_2_and_fine_tuning(tmp_path, shipped, capsys, monkeypatch):
    from nas.cli import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_k32(shipped)))
    monkeypatch.chdir(tmp_path)
    assert main(["config", "--variant", "k32"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["variant"] == "k32" and cfg["model"]["overrides"]["vd"]["num_codes"] == 32
    assert cfg["pretrain_stage2"]["model_overrides"]["nva_enabled"] is True
    assert cfg["finetune"]["model_overrides"]["nva_enabled"] is True


def test_the_lineage_file_changes_only_with_the_variant_or_its_bases(tmp_path, shipped):
    """What a variant's DVC stages can depend on instead of `variants.<name>` alone (see the module
    `main` of nas.config.params): adding k32 leaves nas's file as it was; editing nas changes k32's."""
    from nas.config.params import main

    def lineage_file(params, variant):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        out = tmp_path / f"{variant}.json"
        assert main(["--params", str(path), "--variant", variant, "--out", str(out)]) == 0
        return out.read_text()

    nas_before = lineage_file(shipped, "nas")
    params = with_k32(shipped)
    assert lineage_file(params, "nas") == nas_before
    k32_before = lineage_file(params, "k32")
    assert json.loads(k32_before)["lineage"][0] == {"variant": "nas", "overlay": shipped["variants"]["nas"]}
    params["variants"]["nas"]["model"]["overrides"]["vd"]["num_codes"] = 128
    assert lineage_file(params, "k32") != k32_before
    assert lineage_file(params, "albef") == lineage_file(shipped, "albef")
    assert main(["--params", str(tmp_path / "params.yaml"), "--variant", "k33"]) == 2


def test_dvc_runs_every_variant_of_the_params_table():
    """A new `variants.<name>` gets every variant stage: dvc.yaml's `foreach` (evaluation) and the variant
    axis of the training stages' `matrix:` (variant x study.seeds) are the params table itself."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    per_variant = {name for name, stage in stages.items() if "foreach" in stage}
    assert per_variant >= {"variant_params", "evaluate"}
    assert {stages[name]["foreach"] for name in per_variant} == {"${variants}"}
    for name in ("build_vd", "pretrain_stage1", "pretrain_stage2", "finetune"):
        assert stages[name]["matrix"] == {"variant": "${variants}", "seed": "${study.seeds}"}, name
