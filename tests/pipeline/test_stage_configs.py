"""Stage-level config decisions: fine-tuning replicates and the evaluation input size."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.config import ConfigError, from_dict
from nas.config.data import DataConfig
from nas.recipes.evaluate import data_as_trained, model_runs
from nas.recipes.finetune import FinetuneConfig


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1]])
def test_study_seeds_must_be_distinct_non_negative(seeds):
    from nas.config.stages import StudyConfig

    with pytest.raises((ValueError, ConfigError), match="seeds"):
        from_dict(StudyConfig, {"seeds": seeds}, "study")


def test_a_shared_stage_1_must_name_a_variant_that_trains_its_own():
    from nas.config.stages import StudyConfig

    with pytest.raises((ValueError, ConfigError), match="stage1_of"):
        from_dict(StudyConfig, {"stage1_of": {"nas": "vd", "vd": "albef"}}, "study")
    assert from_dict(StudyConfig, {"stage1_of": {"nas": "vd"}}, "study").stage1_source("nas") == "vd"


def test_replicate_k_runs_with_seed_plus_k_and_an_identity_blind_to_the_other_seeds():
    from nas.config.stages import replicate_config

    cfg = {"seed": 42, "study": {"seeds": [0, 1, 2], "level": 0.95}}
    assert replicate_config(cfg, 2) == {"seed": 44, "study": {"seeds": [2], "level": 0.95}}
    assert cfg["study"]["seeds"] == [0, 1, 2]  # not mutated


def test_evaluate_scores_every_pretraining_replicate_of_every_stage():
    cfg = {"study": {"seeds": [0, 2]}}
    for stage in ("finetune", "pretrain_stage2"):
        assert model_runs(stage, "nas", cfg) == [
            Path(f"runs/{stage}/nas/seed0"),
            Path(f"runs/{stage}/nas/seed2"),
        ]


def test_evaluation_input_size_comes_from_the_recorded_run_not_the_params():
    data = from_dict(DataConfig, {"transform": {"image_size": 64}}, "data")
    assert data_as_trained(data, {"data": {"transform": {"image_size": 96}}}).transform.image_size == 96
    assert data_as_trained(data, {}).transform.image_size == 64
    assert data.transform.image_size == 64  # the params' config is not mutated


def test_the_experiment_sections_are_checked_with_every_run():
    """`finetune` and `evaluate` are typed in experiment modules; nas.recipes.stage registers them, so
    a pretraining run refuses a bad fine-tuning or evaluation setting before it starts."""
    from nas.config.params import load_params
    from nas.config.schema import SECTIONS, check_params
    from nas.recipes.evaluate import EvaluateConfig

    assert SECTIONS["finetune"].dataclass() is FinetuneConfig
    assert SECTIONS["evaluate"].dataclass() is EvaluateConfig
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    cases = {
        "finetune.model_overrides.mlm_weight=0.5": "finetune: model_overrides must not set mlm_weight",
        "study.seeds=[0,0]": "study: seeds must be distinct non-negative offsets",
        "finetune.model_overrides.nva_enabled=true": "unknown config key 'finetune.model_overrides.nva_enabled'",
        "evaluate.retrieval.k_tset=4": "unknown config key 'evaluate.retrieval.k_tset'",
        "evaluate.checkpoint_stages=[pretrain_stage2,finetuned]": "evaluate.checkpoint_stages[1]: 'finetuned'",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as info:
            check_params(params, "albef", [override])
        assert str(info.value).startswith(f"--set {override}: ") and message in str(info.value)
    # NVA is a NAS model switch: on the NAS variant the same fine-tuning override is fine.
    check_params(params, "nas", ["finetune.model_overrides.nva_enabled=true"])


# ---- where a stage writes: the pipeline's paths, or an ad-hoc run's own folder ---------------------------

ROOT = Path(__file__).resolve().parents[2]
ADHOC = Path("runs/adhoc/0123456789")


def dvc_paths(params: dict | None = None) -> dict[str, set[Path]]:
    """Every path dvc.yaml names (outs, metrics, plots, deps) -> by stage, `foreach` (variants) and `matrix`
    (arms x seeds) stages expanded to their entries, named as DVC names them (params: params.yaml's)."""
    import itertools

    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    if params is None:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def lookup(text: str):
        node = params
        for key in text.removeprefix("${").removesuffix("}").split("."):
            node = node[key]
        return list(node)  # a dict axis gives its keys, as DVC's

    named: dict[str, set[Path]] = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            entries = [(key, {"${key}": key}) for key in params["variants"]]
            body = stage["do"]
        elif "matrix" in stage:
            axes = {axis: lookup(v) if isinstance(v, str) else list(v) for axis, v in stage["matrix"].items()}
            entries = [
                ("-".join(map(str, values)), {f"${{item.{a}}}": str(v) for a, v in zip(axes, values)})
                for values in itertools.product(*axes.values())
            ]
            body = stage
        else:
            entries, body = [(None, {})], stage
        for key, substitutions in entries:
            for field in ("outs", "metrics", "plots", "deps"):
                for entry in body.get(field, []):
                    path = next(iter(entry)) if isinstance(entry, dict) else entry
                    for pattern, value in substitutions.items():
                        path = path.replace(pattern, value)
                    path = path.replace("${uta.main_arm}", str(params["uta"].get("main_arm", "")))
                    named.setdefault(name if key is None else f"{name}@{key}", set()).add(Path(path))
    return named


def stage_outputs(root: Path) -> dict[str, list[Path]]:
    """What each stage writes under `root`, from the stages' own path helpers."""
    from nas.recipes.build_vd import build_vd_paths
    from nas.recipes.evaluate import evaluate_paths
    from nas.recipes.finetune import replicate_dir
    from nas.recipes.mug import paths as mug
    from nas.recipes.pretrain import replicate_paths, stage_paths
    from nas.recipes.uta import paths as uta

    out: dict[str, list[Path]] = {}
    for v in ("albef", "vd", "nas"):
        for k in (0, 2):  # matrix entries <stage>@<variant>-<seed offset>
            out[f"build_vd@{v}-{k}"] = list(replicate_paths(build_vd_paths(v, root), k).values())
            for s in ("pretrain_stage1", "pretrain_stage2", "finetune"):
                out[f"{s}@{v}-{k}"] = list(replicate_paths(stage_paths(s, v, root), k).values())
        out[f"finetune@{v}-2"].append(replicate_dir(v, 2, root))
        out[f"evaluate@{v}"] = list(evaluate_paths(v, root).values())
    out["mug_vocabulary"] = [
        root / mug.VOCABULARY_DIR / mug.VOCABULARY,
        root / mug.VOCABULARY_DIR / mug.CAPTIONS,
    ]
    out["mug_pretrain@mug-0"] = [mug.run_dir("mug", 0, root), mug.run_checkpoints("mug", 0, root)]
    out["mug_evaluate"] = [
        root / mug.EVAL_DIR,
        root / mug.FINE_GRAINED,
        root / mug.METRICS / "evaluate.json",
        root / mug.METRICS / "pretrain.json",
    ]
    out["uta_teacher"] = [
        root / uta.TEACHER_RUN,
        root / uta.TEACHER_CHECKPOINTS,
        root / uta.METRICS / "teacher.json",
    ]
    out["uta_pretrain@none-1"] = [
        uta.student_run("none", 1, root),
        uta.student_checkpoints("none", 1, root),
    ]
    out["uta_finetune@2"] = [uta.finetune_run(2, root), uta.finetune_checkpoints(2, root)]
    out["uta_evaluate"] = [
        root / uta.EVAL_RUN,
        root / uta.FINE_GRAINED,
        root / uta.METRICS / "evaluate.json",
        root / uta.METRICS / "pretrain.json",
        root / uta.METRICS / "finetune.json",
    ]
    return out


TENSORBOARD = Path("runs/tensorboard")


def within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def test_a_pipeline_run_writes_the_paths_dvc_yaml_names():
    named = dvc_paths()
    for stage, paths in stage_outputs(Path(".")).items():
        for path in paths:
            if within(path, TENSORBOARD):  # by design no DVC output: a rerun that resumes keeps its curves
                continue
            assert any(within(path, declared) for declared in named[stage]), (stage, path)
    from nas.recipes.pretrain import replicate_paths, stage_paths

    assert replicate_paths(stage_paths("pretrain_stage1", "nas"), 1) == {
        "run": Path("runs/pretrain_stage1/nas/seed1"),
        "checkpoints": Path("checkpoints/pretrain_stage1/nas/seed1"),
        "metrics": Path("metrics/pretrain_stage1/nas/seed1.json"),
        "tensorboard": TENSORBOARD / "pretrain_stage1/nas/seed1",
    }


def test_the_uta_matrices_have_no_idle_entry():
    """uta_pretrain: the compared arms x uta.seeds; uta_context: the context arms x uta.context_seeds (none
    by default), in the folders uta_evaluate reads; each entry's params are the arm's own overlay."""
    import yaml

    from nas.recipes.uta import paths as uta

    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def entries(named, stage):
        return {name for name in named if name.startswith(f"{stage}@")}

    pretrain = {f"uta_pretrain@{arm}-{seed}" for arm in ("none", "reversed_blockwise") for seed in (0, 1, 2)}
    named = dvc_paths(params)
    assert entries(named, "uta_pretrain") == pretrain and entries(named, "uta_context") == set()
    params["uta"]["context_seeds"] = [0]
    named = dvc_paths(params)
    assert entries(named, "uta_pretrain") == pretrain
    assert entries(named, "uta_context") == {"uta_context@random-0", "uta_context@blockwise-0"}
    for arm in ("random", "blockwise"):
        declared = named[f"uta_context@{arm}-0"]
        for path in (uta.student_run(arm, 0, Path(".")), uta.student_checkpoints(arm, 0, Path("."))):
            assert any(within(path, d) for d in declared), (arm, path)
        assert any(within(d, uta.PRETRAIN_RUN) for d in declared)  # uta_evaluate depends on that folder
    assert uta.PRETRAIN_RUN in named["uta_evaluate"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {p for p in stages["uta_pretrain"]["params"] if p.startswith("uta.")} == {
        "uta.teacher",
        "uta.student",
        "uta.masking",
        "uta.arms.${item.arm}",
        "uta.memoize_images",
        "uta.torch_threads",
    }
    assert {p for p in stages["uta_context"]["params"] if p.startswith("uta.")} == {
        "uta.teacher",
        "uta.student",
        "uta.masking",
        "uta.context_arms.${item.arm}",
        "uta.memoize_images",
        "uta.torch_threads",
    }


def test_an_ad_hoc_run_writes_no_path_dvc_tracks():
    """Issue 16 item 4: `nas build-vd --variant nas --set ...` rewrote runs/build_vd/nas and
    metrics/build_vd/nas.json, and the next `dvc repro` reran everything downstream."""
    tracked = {path for paths in dvc_paths().values() for path in paths}
    for stage, paths in stage_outputs(ADHOC).items():
        for path in paths:
            assert within(path, ADHOC), (stage, path)
            assert not any(within(path, t) or within(t, path) for t in tracked), (stage, path)


def test_evaluate_scores_the_models_of_its_own_folder_else_the_pipelines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = {"study": {"seeds": [0, 2]}, "output_root": str(ADHOC)}
    assert model_runs("finetune", "nas", cfg) == [
        Path("runs/finetune/nas/seed0"),
        Path("runs/finetune/nas/seed2"),
    ]
    assert "reading the pipeline's runs/finetune/nas" in capsys.readouterr().out
    (ADHOC / "runs/finetune/nas").mkdir(parents=True)
    assert model_runs("finetune", "nas", cfg) == [
        ADHOC / "runs/finetune/nas/seed0",
        ADHOC / "runs/finetune/nas/seed2",
    ]
    assert model_runs("pretrain_stage2", "nas", cfg) == [
        Path("runs/pretrain_stage2/nas/seed0"),
        Path("runs/pretrain_stage2/nas/seed2"),
    ]


def test_an_ad_hoc_stage_run_writes_under_its_folder_only(tmp_path, monkeypatch):
    from nas.config.params import load_params, resolve
    from nas.recipes.build_vd import stage
    from nas.recipes.stage import Recorder

    cfg = resolve(load_params(ROOT / "params.yaml"), "albef") | {
        "stage": "build_vd",
        "output_root": str(ADHOC),
    }
    monkeypatch.chdir(tmp_path)
    seeds = cfg["study"]["seeds"]
    for k in seeds:  # one matrix entry each
        stage(cfg, Recorder(), seed=k)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"{ADHOC}/metrics/build_vd/albef/seed{k}.json" for k in seeds] + [
        f"{ADHOC}/runs/build_vd/albef/seed{k}/vd_init.json" for k in seeds
    ]


def test_each_dvc_stage_runs_the_stage_of_its_name():
    """DVC_STAGE (`<stage>@<variant>`) is compared with the stage a command runs: every dvc.yaml stage's
    command runs the stage of that name (`--stage`, else the module's one stage)."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        words = (stage["do"] if "foreach" in stage else stage)["cmd"].split()
        if not words[2].startswith("experiments."):
            continue  # not a stage module (e.g. a helper command)
        runs = words[words.index("--stage") + 1] if "--stage" in words else words[2].rsplit(".", 1)[-1]
        assert runs == name, (name, words)
