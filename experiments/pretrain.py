"""Stages `pretrain_stage1` and `pretrain_stage2`: train one variant through the one Ignite engine.

The variant (ALBEF, +VD, NAS, ...) only changes params: which model the registry builds and which
objectives it returns. Stage 2 starts from the same variant's stage-1 checkpoint and takes over what
`init_objects` names (model with momentum copies, queues and VD; optimizer; lr schedule).

Outputs (paths fixed so dvc.yaml can name them; an ad-hoc run, with `--set` or another `--params`,
writes the same tree under its own runs/adhoc/<tag>/ instead: nas.config.params.decide_output_root):
  checkpoints/<stage>/<variant>/<config digest>/   resumable epoch checkpoints (DVC persist)
  runs/<stage>/<variant>/checkpoint.pt             the final complete checkpoint, for the next stage
  runs/<stage>/<variant>/config.json               the resolved config the run used
  metrics/<stage>/<variant>.json                   per-epoch and per-step losses (report input)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.common import Recorder, parse_stage_args, run_stage
from nas.config import from_dict
from nas.config.data import DataConfig
from nas.config.params import PIPELINE_ROOT, input_root, output_root
from nas.config.stages import LoaderConfig, ModelSpec, TrainStageConfig
from nas.engine.checkpoint import atomic_copy, atomic_write_text
from nas.engine.identity import identity_digest, run_identity

STAGES = ("pretrain_stage1", "pretrain_stage2")


def stage_paths(stage: str, variant: str, root: Path = PIPELINE_ROOT) -> dict[str, Path]:
    """A training stage's outputs under the output root `root` (the repository root: the paths dvc.yaml
    names; an ad-hoc run's runs/adhoc/<tag>: the same tree there)."""
    return {
        "run": root / "runs" / stage / variant,
        "checkpoints": root / "checkpoints" / stage / variant,
        "metrics": root / "metrics" / stage / f"{variant}.json",
    }


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


def training_callbacks(name: str, variant: str, record: Recorder):
    """(on_epoch_end, on_log_step) for `fit`: per-epoch means and per-step totals go to Sacred.
    (The metrics file takes its loss curves from fit's checkpointed history, which survives resume.)"""

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                record.log_scalar(f"train.{key}", value, epoch)
        print(
            f"{name}[{variant}] epoch {epoch}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        )

    def on_log_step(iteration: int, output: dict[str, Any]) -> None:
        record.log_scalar("step.total", float(output.get("total", float("nan"))), iteration)

    return on_epoch_end, on_log_step


def stage(cfg: dict[str, Any], record: Recorder) -> None:
    import ignite.distributed as idist
    from ignite.utils import manual_seed

    from nas.engine.fit import fit

    name, variant = cfg["stage"], cfg["variant"]
    data = from_dict(DataConfig, cfg["data"], "data")
    loader_cfg = from_dict(LoaderConfig, cfg["loader"], "loader")
    spec = from_dict(ModelSpec, cfg["model"], "model")
    section = dict(cfg[name])
    section["train"] = {**section.get("train", {}), "seed": cfg["seed"]}  # one seed: params `seed`
    stage_cfg = from_dict(TrainStageConfig, section, name)
    root = output_root(cfg)
    paths = stage_paths(name, variant, root)

    manual_seed(cfg["seed"] + idist.get_rank())
    model = build_model(spec, stage_cfg.model_overrides)
    loader = build_train_loader(data, loader_cfg)
    checked = check_training_set(f"{name}[{variant}]", loader, data, cfg["seed"])
    if has_dictionary(model) and stage_cfg.init_from is None:
        # Stage 1 of a VD variant: start from the build_vd artifact; γ ramps over this stage's steps.
        from experiments.build_vd import build_vd_paths
        from nas.models.vd_build import load_initial_dictionary

        built_in = input_root(root, build_vd_paths(variant)["run"], "build_vd")
        built = load_initial_dictionary(model, build_vd_paths(variant, built_in)["run"] / "vd_init.pt")
        print(f"{name}[{variant}]: initial dictionary ({built['init']}) health {built['health']}")
        from nas.engine.fit import epoch_length_of

        steps = epoch_length_of(loader, stage_cfg.train.max_steps_per_epoch)
        model.set_total_steps(stage_cfg.train.epochs * steps)
    init_checkpoint = None
    if stage_cfg.init_from is not None:
        init_in = input_root(root, stage_paths(stage_cfg.init_from, variant)["run"], stage_cfg.init_from)
        init_checkpoint = stage_paths(stage_cfg.init_from, variant, init_in)["run"] / "checkpoint.pt"
        if not init_checkpoint.is_file():
            raise FileNotFoundError(
                f"{name}: init_from={stage_cfg.init_from!r} needs {init_checkpoint}; run that stage first"
            )

    # Checkpoints are keyed by the run identity (params, harness code, training list, init checkpoint):
    # a changed param, loss or data never resumes a stale run, and old checkpoints stay on disk.
    identity = run_identity(
        {k: v for k, v in cfg.items() if k != "stage"} | {"stage": name},
        data_files=[data.path(data.train_file)],
        init_checkpoint=init_checkpoint,
    )
    digest = identity_digest(identity)
    output_dir = paths["checkpoints"] / digest
    on_epoch_end, on_log_step = training_callbacks(name, variant, record)

    result = fit(
        model,
        loader,
        stage_cfg.train,
        output_dir=output_dir,
        init_checkpoint=init_checkpoint,
        init_objects=stage_cfg.init_objects,
        on_epoch_end=on_epoch_end,
        on_log_step=on_log_step,
        identity=identity,
    )
    if idist.get_rank() != 0:
        return
    # The next stage reads these: written atomically (never a truncated copy beside an older config).
    atomic_copy(result["last_checkpoint"], paths["run"] / "checkpoint.pt")
    atomic_write_text(paths["run"] / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    history = result["history"]
    if has_dictionary(model):
        health = model.dictionary_health()
        print(f"{name}[{variant}] dictionary health after training (EMA counts): {health}")
        for key, value in health.items():
            record.log_scalar(f"vd.{key}", value)
    summary = {
        "stage": name,
        "variant": variant,
        "config_digest": digest,
        "identity": identity,
        "preflight": checked,
        "resumed_from": result["resumed_from"],
        "final": history[-1] if history else {},
        "epochs": history,
        "steps": result["steps"],
    }
    if has_dictionary(model):
        summary["dictionary_health"] = health
    atomic_write_text(paths["metrics"], json.dumps(summary, indent=2) + "\n")
    record.add_artifact(paths["run"] / "config.json", name="resolved_config.json")
    record.add_artifact(paths["metrics"], name="stage_metrics.json")


def main(argv=None) -> None:
    args = parse_stage_args("pretrain", argv)  # --stage: one of STAGES
    run_stage(args.stage, stage, args=args, nproc_key=(args.stage, "train", "launch"))


if __name__ == "__main__":
    main()
