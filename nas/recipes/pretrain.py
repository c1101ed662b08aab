"""Stages `pretrain_stage1` and `pretrain_stage2`: train one variant through the one Ignite engine.

The variant (ALBEF, +VD, NAS, ...) only changes params: which model the registry builds and which
objectives it returns. Stage 2 starts from the same variant's stage-1 checkpoint and takes over what
`init_objects` names (model with momentum copies, queues and VD; optimizer; lr schedule).

Pretraining replicates: one process trains one offset k of `study.seeds` (`--run seed=k`, a dvc.yaml
`matrix:` entry `<stage>@<variant>-<k>`), with seed `params.seed + k` (issue 12: the variance is in
pretraining); replicate k of stage 2 continues replicate k of stage 1. A new seed is a params edit with
outputs of its own; the other seeds' entries keep theirs.

Outputs (paths fixed so dvc.yaml can name them; an ad-hoc run, with `--set` or another `--params`,
writes the same tree under its own runs/adhoc/<tag>/ instead: nas.config.params.decide_output_root):
  checkpoints/<stage>/<variant>/seed<k>/<digest>/       resumable epoch checkpoints (DVC persist)
  runs/<stage>/<variant>/seed<k>/checkpoint.pt          the run's last.pt (a hard link), for the next stage
  runs/<stage>/<variant>/seed<k>/config.json            the resolved config the replicate used
  metrics/<stage>/<variant>/seed<k>.json                the replicate's epoch losses (report input)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.atomic import atomic_write_text
from nas.config import from_dict
from nas.config.data import DataConfig
from nas.config.params import PIPELINE_ROOT, input_root, output_root
from nas.config.stages import LoaderConfig, ModelSpec, TrainStageConfig
from nas.recipes.stage import Recorder, run_replicate_stage

STAGES = ("pretrain_stage1", "pretrain_stage2")


def stage_paths(stage: str, variant: str, root: Path = PIPELINE_ROOT) -> dict[str, Path]:
    """A training stage's outputs under the output root `root` (the repository root: the paths dvc.yaml
    names; an ad-hoc run's runs/adhoc/<tag>: the same tree there)."""
    return {
        "run": root / "runs" / stage / variant,
        "checkpoints": root / "checkpoints" / stage / variant,
        # TensorBoard events, one folder per replicate (`tensorboard --logdir runs/tensorboard`); not a DVC
        # output, so a rerun that resumes keeps the curves it had.
        "tensorboard": root / "runs" / "tensorboard" / stage / variant,
        "metrics": root / "metrics" / stage / variant,  # one <replicate>.json per seed
    }


def replicate_name(offset: int) -> str:
    """The folder/file stem of pretraining replicate `offset` under a stage's variant folders."""
    return f"seed{offset}"


def replicate_paths(paths: dict[str, Path], offset: int) -> dict[str, Path]:
    """One DVC matrix entry's outputs (`<stage>@<variant>-<offset>`) from its stage's variant folders
    (`stage_paths`, `build_vd_paths`): `<folder>/seed<k>`, and the metrics file `<metrics>/seed<k>.json`."""
    name = replicate_name(offset)
    return {key: folder / (f"{name}.json" if key == "metrics" else name) for key, folder in paths.items()}


def build_model(spec: ModelSpec, stage_overrides: dict[str, Any] | None = None):
    from nas.config import merge
    from nas.models.registry import create_model

    return create_model(spec.name, **merge(spec.overrides, stage_overrides or {}))


def has_dictionary(model) -> bool:
    return hasattr(model, "vd")


def build_train_loader(data: DataConfig, loader: LoaderConfig):
    from nas.data.loader import build_loader, make_collate
    from nas.data.tokenizer import load_tokenizer
    from nas.data.training_set import build_training_set
    from nas.data.transforms import build_train_transform

    dataset = build_training_set(data, build_train_transform(data.transform))
    collate = make_collate(load_tokenizer(), data.text_max_length, unk_only=data.unk_only_captions)
    return build_loader(dataset, loader, collate, shuffle=True)


def check_training_set(name: str, loader, data: DataConfig, seed: int) -> dict[str, Any]:
    """The pre-flight of a stage's training list (images decoded, captions counted) before step 1; every
    rank runs it (same sample), so a bad image stops every rank alike."""
    from nas.data.tokenizer import load_tokenizer
    from nas.data.training_set import preflight

    checked = preflight(loader.dataset, data, tokenizer=load_tokenizer(), seed=seed)
    print(f"{name} pre-flight: {checked}")
    return checked


def stage(cfg: dict[str, Any], record: Recorder, *, seed: int) -> None:
    """One variant's stage for pretraining replicate `seed` (an offset of `study.seeds`): its summary
    goes to metrics/<stage>/<variant>/seed<k>.json (the report gathers the seeds `study.seeds` lists)."""
    import ignite.distributed as idist

    from nas.config.stages import checked_offset, replicate_config

    name, variant = cfg["stage"], cfg["variant"]
    offset = checked_offset(cfg, seed)
    root = output_root(cfg)
    if name == "pretrain_stage1" and init_source(cfg, name) != variant:
        # study.stage1_of: this variant's stage 2 continues another variant's stage-1 run (checked there).
        if idist.get_rank() == 0:
            record_shared_stage(name, variant, init_source(cfg, name), offset, root)
        return
    summary = train_replicate(replicate_config(cfg, offset), offset, record)
    if idist.get_rank() != 0:
        return
    write_replicate_metrics(
        replicate_paths(stage_paths(name, variant, root), offset)["metrics"], summary, record
    )


def write_replicate_metrics(path: Path, summary: dict[str, Any], record: Recorder) -> None:
    """A replicate's summary (its `seed<k>.json`, atomic), recorded with the Sacred run."""
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    record.add_artifact(path, name="stage_metrics.json")


def record_shared_stage(name: str, variant: str, source: str, offset: int, root: Path) -> None:
    """The outputs dvc.yaml names for a replicate of a stage that `variant` shares with `source`: a note."""
    paths = replicate_paths(stage_paths(name, variant, root), offset)
    note = {"stage": name, "variant": variant, "shared_with": source, "seed_offset": offset}
    text = json.dumps(note, indent=2) + "\n"
    atomic_write_text(paths["run"] / "shared.json", text)
    atomic_write_text(paths["checkpoints"] / "shared.json", text)
    atomic_write_text(paths["metrics"], text)
    print(f"{name}[{variant} seed+{offset}]: shares {source}'s run (study.stage1_of); nothing to train")


def replicate_dir(stage: str, variant: str, offset: int, root: Path = PIPELINE_ROOT) -> Path:
    """Run folder of pretraining replicate `offset` (seed `params.seed + offset`)."""
    return replicate_paths(stage_paths(stage, variant, root), offset)["run"]


def init_source(cfg: dict[str, Any], init_from: str) -> str:
    """The variant whose `init_from` run this variant's stage starts from (`study.stage1_of`)."""
    from nas.config.stages import StudyConfig

    study = from_dict(StudyConfig, cfg.get("study") or {}, "study")
    return study.stage1_source(cfg["variant"]) if init_from == "pretrain_stage1" else cfg["variant"]


def init_run_dir(stage_cfg: TrainStageConfig, source: str, offset: int, root: Path) -> Path:
    """The run folder a stage starts from: `init_from` of variant `source`, same replicate."""
    init_in = input_root(root, stage_paths(stage_cfg.init_from, source)["run"], stage_cfg.init_from)
    return replicate_dir(stage_cfg.init_from, source, offset, init_in)


# The params a stage-1 run depends on: a variant may start stage 2 from another variant's stage 1 only if
# these agree (`study.stage1_of`).
STAGE1_KEYS = ("seed", "data", "model", "loader", "pretrain_stage1")


def check_shared_init(cfg: dict[str, Any], init_dir: Path) -> None:
    """A stage that starts from another variant's run: that run's recorded stage-1 params equal this one's."""
    recorded_file = init_dir / "config.json"
    if not recorded_file.is_file():
        raise FileNotFoundError(f"{recorded_file} is missing; run that variant's pretrain_stage1 first")
    recorded = json.loads(recorded_file.read_text())
    differing = [key for key in STAGE1_KEYS if recorded.get(key) != cfg.get(key)]
    if differing:
        raise ValueError(
            f"{cfg['stage']}[{cfg['variant']}]: study.stage1_of: {recorded.get('variant')!r} trained its stage 1 with "
            f"other {differing} than this variant's; a shared stage 1 must be the same run"
        )


# The params sections a pretraining run reads (its checkpoint digest covers these and nothing else): an
# edit to another recipe's section, the evaluation or the report keeps the digest, and a killed run resumes.
RUN_READS = ("seed", "data", "model", "loader")


def run_reads(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    """The sections of `cfg` a run of `stage` reads: RUN_READS and the stage's own section."""
    return {key: cfg.get(key) for key in (*RUN_READS, stage)}


def train_replicate(cfg: dict[str, Any], offset: int, record: Recorder) -> dict[str, Any] | None:
    """Train replicate `offset` of the stage (`cfg`: its params, `replicate_config`); its summary on rank 0."""
    import ignite.distributed as idist

    from nas.engine.run import RunSpec, summary_of, train_run

    name, variant = cfg["stage"], cfg["variant"]
    label = f"{variant} seed+{offset}"
    data = from_dict(DataConfig, cfg["data"], "data")
    loader_cfg = from_dict(LoaderConfig, cfg["loader"], "loader")
    spec = from_dict(ModelSpec, cfg["model"], "model")
    section = dict(cfg[name])
    section["train"] = {**section.get("train", {}), "seed": cfg["seed"]}  # one seed: params `seed`
    stage_cfg = from_dict(TrainStageConfig, section, name)
    root = output_root(cfg)
    paths = replicate_paths(stage_paths(name, variant, root), offset)

    vd_file = None
    if stage_cfg.init_from is None:
        from nas.recipes.build_vd import build_vd_paths

        built_in = input_root(root, build_vd_paths(variant)["run"], "build_vd")
        vd_file = replicate_paths(build_vd_paths(variant, built_in), offset)["run"] / "vd_init.pt"
    init_checkpoint = None
    if stage_cfg.init_from is not None:
        source = init_source(cfg, stage_cfg.init_from)
        init_dir = init_run_dir(stage_cfg, source, offset, root)
        init_checkpoint = init_dir / "checkpoint.pt"
        if not init_checkpoint.is_file():
            raise FileNotFoundError(
                f"{name}: init_from={stage_cfg.init_from!r} needs {init_checkpoint}; run that stage first"
            )
        if source != variant:
            check_shared_init(cfg, init_dir)

    checked: dict[str, Any] = {}
    uses_dictionary: list[bool] = []

    def build():
        model = build_model(spec, stage_cfg.model_overrides)
        loader = build_train_loader(data, loader_cfg)
        checked.update(check_training_set(f"{name}[{label}]", loader, data, cfg["seed"]))
        uses_dictionary.append(has_dictionary(model))
        if has_dictionary(model) and stage_cfg.init_from is None:
            # Stage 1 of a VD variant: start from the build_vd artifact; γ ramps over this stage's steps.
            from nas.engine.fit import epoch_length_of
            from nas.models.vd_build import load_initial_dictionary

            built = load_initial_dictionary(model, vd_file)
            print(f"{name}[{label}]: initial dictionary ({built['init']}) health {built['health']}")
            steps = epoch_length_of(loader, stage_cfg.train.max_steps_per_epoch)
            model.set_total_steps(stage_cfg.train.epochs * steps)
        return model, loader

    # The VD artifact a stage 1 starts from is part of what the run is, like an init checkpoint.
    data_files = [data.path(data.train_file)]
    if vd_file is not None and vd_file.is_file():
        data_files.append(vd_file)
    run = RunSpec(
        stage=name,
        label=f"{variant}/seed{offset}",
        seed=cfg["seed"],
        reads=run_reads(cfg, name),
        train=stage_cfg.train,
        checkpoints=paths["checkpoints"],
        run_dir=paths["run"],
        model=cfg["model"],  # what evaluation rebuilds (the stage's model_overrides change training only)
        config=cfg,
        data_files=data_files,
        init_checkpoint=init_checkpoint,
        init_objects=stage_cfg.init_objects,
        tensorboard_dir=paths["tensorboard"],
        step_inputs=stage_cfg.distillation.step_inputs,  # α each step; `<stage>.distillation` is in reads
    )
    result = train_run(run, build, record)
    if idist.get_rank() != 0:
        return None
    record.add_artifact(paths["run"] / "config.json", name=f"resolved_config_seed{offset}.json")
    summary = {
        "stage": name,
        "variant": variant,
        "seed_offset": offset,
        "seed": cfg["seed"],
        "config_digest": result["config_digest"],
        "identity": result["identity"],
        "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint),
        "preflight": checked,
    } | summary_of(result, "resumed_from", "final", "epochs", "steps")
    model = result["model"]
    if uses_dictionary and uses_dictionary[0]:
        health = model.dictionary_health()
        print(f"{name}[{label}] dictionary health after training (EMA counts): {health}")
        for key, value in health.items():
            record.log_scalar(f"vd.seed{offset}.{key}", value)
        summary["dictionary_health"] = health
    return summary


def main(argv=None) -> None:
    run_replicate_stage("pretrain", stage, argv)  # --stage: one of STAGES; --run seed=<offset>


if __name__ == "__main__":
    main()
