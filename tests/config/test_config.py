from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


# ---- the whole params file, checked before any stage work (nas.config.schema) ---------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped():
    import nas.recipes.stage  # noqa: F401  (registers the sections typed in experiment modules)

    return load_params(ROOT / "params.yaml")


def _error(params, *overrides, variant=None, source="params.yaml") -> str:
    from nas.config.schema import check_params

    with pytest.raises(ConfigError) as info:
        check_params(params, variant, list(overrides), source=source)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/paper/params.yaml"])
def test_shipped_params_validate_clean_for_every_variant(profile, shipped):
    from nas.config.schema import check_params

    params = load_params(ROOT / profile)
    for variant in [None, *params["variants"]]:
        resolved = check_params(params, variant, source=profile)
        assert resolved.get("variant") == variant


def test_the_params_check_reads_the_model_registry():
    """No shadow table: `model_config` types a params model spec through nas.models.registry."""
    from nas.config.base import to_dict
    from nas.config.schema import model_config
    from nas.models.registry import list_models, resolve_config

    for name in list_models("mug"):
        got = model_config(name, {"vision": {"depth": 2}}, family="mug", path="mug.model")
        assert to_dict(got) == to_dict(resolve_config(name, vision={"depth": 2}))
    with pytest.raises(ConfigError, match=r"mug.model.name: 'albef_tiny' is a nas model"):
        model_config("albef_tiny", {}, family="mug", path="mug.model")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["pretrain_stag1.train.epochs=5"],
            "--set pretrain_stag1.train.epochs=5: unknown config key 'pretrain_stag1' (did you mean "
            "'pretrain_stage1'?); a params file holds: ",
        ),
        (
            ["finetune.trian.epochs=1"],
            "--set finetune.trian.epochs=1: unknown config key 'finetune.trian' (did you mean 'finetune.train'?)",
        ),
        (
            ["pretrain_stage1.train.epoch=2"],
            "--set pretrain_stage1.train.epoch=2: unknown config key 'pretrain_stage1.train.epoch' "
            "(did you mean 'pretrain_stage1.train.epochs'?)",
        ),
        (["loader=5"], "--set loader=5: loader must be a mapping of loader settings, got 5 (int)"),
        (
            ["seed=1.5"],
            "--set seed=1.5: seed must be an integer (the run seed; rank r uses seed + r), got 1.5 (float)",
        ),
        (["seed=abc"], "got 'abc' (str)"),
        (
            ["data.transform=[1, 2]"],
            "data.transform: expected a mapping of TransformConfig settings, got [1, 2] (list)",
        ),
        (["report=null"], "--set report=null: report must be a mapping of report settings, got null"),
        (
            ["data.source=synthetc"],
            "data.source: 'synthetc' is not one of ['synthetic', 'files'] (did you mean 'synthetic'?)",
        ),
        (
            ["model.name=albef_tiy"],
            "model.name: 'albef_tiy' is not a registered model (did you mean 'albef_tiny'?)",
        ),
        (["model.name=mug_tiny"], "model.name: 'mug_tiny' is a mug model; model builds one of"),
        (
            ["model.overrides.vison.patch_size=8"],
            "unknown config key 'model.overrides.vison' (did you mean 'model.overrides.vision'?); ALBEFConfig",
        ),
        (
            ["pretrain_stage2.model_overrides.vd.frozen=true"],
            "unknown config key 'pretrain_stage2.model_overrides.vd'; ALBEFConfig",
        ),
        (
            ["finetune.image_size=65"],
            "--set finetune.image_size=65: finetune.model_overrides.vision: img_size (65) must be a multiple",
        ),
        (["pretrain_stage1.train.seed=3"], "pretrain_stage1.train.seed: the stage sets the training seed"),
        (
            ["finetune.init_from=pretrain_stag2"],
            "finetune.init_from: 'pretrain_stag2' is not an earlier stage with a checkpoint (did you mean 'pretrain_stage2'?)",
        ),
        (
            ["pretrain_stage1.init_from=pretrain_stage2"],
            "pretrain_stage1.init_from: 'pretrain_stage2' is not an earlier stage",
        ),
        (
            ["evaluate.checkpoint_stages=[finetun]"],
            "evaluate.checkpoint_stages[0]: 'finetun' is not a stage with a model to score (did you mean 'finetune'?)",
        ),
        (
            ["mug.arms.mug.cap_wieght=1"],
            "unknown config key 'mug.arms.mug.cap_wieght' (did you mean 'mug.arms.mug.cap_weight'?)",
        ),
        (
            ["mug.loader.batch_sise=2"],
            "unknown config key 'mug.loader.batch_sise' (did you mean 'mug.loader.batch_size_per_gpu'?)",
        ),
        (
            ["uta.student.model.overrides.depht=2"],
            "unknown config key 'uta.student.model.overrides.depht' (did you mean",
        ),
        (["uta.arms.none.sheme=none"], "unknown config key 'uta.arms.none.sheme'"),
        (["data.download.path_anchors={a.b: c}"], "data.download.path_anchors: key 'a.b' has a '.'"),
        (["seed.x=1"], "--set seed.x=1: seed is 42 (int), not a mapping, so 'seed.x' cannot be set"),
        (["nonsense"], "--set nonsense: an override must look like key.path=value"),
        (["a..b=1"], "--set a..b=1: 'a..b' is not a dotted key path"),
        (["a=[1,"], "--set a=[1,: the value '[1,' is not valid YAML"),
        (
            ["variants.nas.model.name=x"],
            "--set variants.nas.model.name=x: an override applies to the params the variant sees",
        ),
        (["variant=x"], "--set variant=x: 'variant' is not a params key (a run sets it from --variant)"),
        (["pretrain_stage1.train.max_steps_per_epoch=abc"], "expected an integer, got 'abc' (str) (or null)"),
    ],
)
def test_every_key_and_value_shape_is_checked_whatever_the_stage(shipped, overrides, message):
    assert message in _error(shipped, *overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["loader.batch_size_per_gpu=5000"],
            "--set loader.batch_size_per_gpu=5000: loader.batch_size_per_gpu=5000 is larger than the synthetic "
            "training set, 3600 pairs (data.synthetic.n_train=1800 x captions_per_image=2): with "
            "loader.drop_last=true, pretrain_stage1, pretrain_stage2 and finetune would have no batch to train "
            "on; lower the batch size or enlarge the data set",
        ),
        (
            ["data.synthetic.n_train=10"],
            "--set data.synthetic.n_train=10: loader.batch_size_per_gpu=64 is larger than the synthetic training "
            "set, 20 pairs (data.synthetic.n_train=10 x captions_per_image=2)",
        ),
        (
            ["pretrain_stage1.train.launch.nproc_per_node=2", "loader.batch_size_per_gpu=1801"],
            "loader.batch_size_per_gpu=1801 is larger than the 1800 pairs per process of the synthetic training "
            "set, 3600 pairs (data.synthetic.n_train=1800 x captions_per_image=2) over 2 processes "
            "(pretrain_stage1.train.launch.nproc_per_node=2): with loader.drop_last=true, pretrain_stage1 would",
        ),
        (
            ["uta.student.loader.batch_size_per_gpu=4000"],
            "uta.student.loader.batch_size_per_gpu=4000 is larger than the synthetic training set, 3600 pairs",
        ),
    ],
)
def test_a_batch_larger_than_the_synthetic_data_names_both_values(shipped, overrides, message):
    assert message in _error(shipped, *overrides)


def test_a_batch_larger_than_the_data_is_fine_without_drop_last_or_with_other_data(shipped):
    from nas.config.schema import check_params

    check_params(shipped, None, ["loader.batch_size_per_gpu=5000", "loader.drop_last=false"])
    check_params(shipped, None, ["loader.batch_size_per_gpu=5000", "data.source=files"])


def test_errors_name_where_the_value_was_set(tmp_path, shipped):
    import copy

    params = copy.deepcopy(shipped)
    params["pretrain_stag1"] = {"train": {"epochs": 5}}
    assert _error(params, source="p.yaml").startswith(
        "p.yaml: unknown config key 'pretrain_stag1' (did you mean 'pretrain_stage1'?)"
    )
    params = copy.deepcopy(shipped)
    params["variants"]["nas"]["finetune"]["model_overrides"]["nva"] = {"detatch": False}
    message = _error(params, variant="nas", source="p.yaml")
    assert message.startswith(
        "p.yaml variants.nas: unknown config key 'finetune.model_overrides.nva.detatch'"
    )
    assert "did you mean 'finetune.model_overrides.nva.detach'" in message
    # The other variants (and the file alone) are not concerned.
    from nas.config.schema import check_params

    check_params(params, "vd")
    # Of several --set items, the ones touching the key are named.
    assert _error(shipped, "seed=1", "loader.num_workers=-1").startswith(
        "--set loader.num_workers=-1: loader: num_workers must be >= 0, got -1"
    )


@pytest.mark.parametrize(
    "params, message",
    [
        ({"seed": 1, "variant": "x"}, "p.yaml: 'variant' is not a params key (a run sets it from --variant)"),
        ({"seed": 1, "stage": "x"}, "p.yaml: 'stage' is not a params key"),
        (
            {"seed": 1, "variants": [1]},
            "p.yaml: variants must be a mapping of variant names to params overlays",
        ),
        (
            {"seed": 1, "variants": {"a": 5}},
            "p.yaml: variants.a must be a mapping (a params overlay), got 5 (int)",
        ),
        (
            {"seed": 1, "variants": {"a": {"stage": "x"}}},
            "p.yaml: variants.a.stage: an overlay holds params keys",
        ),
        ({"data": {}}, "p.yaml: missing required config key 'seed'"),
        ({"seed": True}, "p.yaml: seed must be an integer"),
        ({"seed": 1, 3: {}}, "p.yaml: unknown config key 3"),
    ],
)
def test_the_file_itself_is_checked(params, message, shipped):
    assert _error(params, source="p.yaml").startswith(message)


def test_unknown_variant_suggests_the_closest(shipped):
    assert _error(shipped, variant="nsa") == (
        "unknown variant 'nsa' (did you mean 'nas'?); params.yaml defines: ['albef', 'nas', 'vd']"
    )


def test_config_errors_carry_the_dotted_path_and_show_value_types():
    from nas.config.base import describe

    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"steps": "ten"}})
    assert info.value.path == "inner.steps" and str(info.value).endswith("got 'ten' (str)")
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"setps": 1}})
    assert info.value.path == "inner.setps"
    with pytest.raises(ConfigError, match=r"^path: expected a string, got 3 \(int\) \(or null\)$"):
        from_dict(Outer, {"path": 3})
    with pytest.raises(
        ConfigError, match=r"^<root>: expected a mapping of Outer settings, got \[1\] \(list\)$"
    ):
        from_dict(Outer, [1])
    assert (
        describe(None) == "null"
        and describe("x" * 100).endswith("... (str)")
        and len(describe("x" * 100)) < 90
    )
