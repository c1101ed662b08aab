"""The UTA stages that train: the teacher, one student run (arm x seed: a compared arm's in `uta_pretrain`,
a context arm's in `uta_context`), one fine-tuning run (seed), and the reloaders of what they hand over.
Each run goes through `nas.engine.run.train_run` (seed, build, digest of what the run reads, `fit`, one
saved format) and comes back through `load_run`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from nas.config.base import ConfigError, to_dict
from nas.config.params import input_root, output_root
from nas.recipes.stage import Recorder
from nas.recipes.uta.card import effective_loader, effective_student
from nas.recipes.uta.data import Context, held_out, pair_loader, stage_context, write_json
from nas.recipes.uta.paths import (
    FINETUNE_RUN,
    METRICS,
    PRETRAIN_RUN,
    SUMMARY,
    TEACHER_CHECKPOINTS,
    TEACHER_RECORD,
    TEACHER_RUN,
    TENSORBOARD,
    finetune_checkpoints,
    finetune_run,
    student_checkpoints,
    student_run,
)

TEACHER_MODEL = "uta_clip_tiny"  # the registry's tiny CLIP, what `uta_teacher` trains
OPEN_CLIP_MODEL = "uta_open_clip"  # an open_clip CLIP by name (paper scale: its fine-tuned text tower;
# registered in nas/models/clip_teacher.py)


def _rank() -> int:
    import ignite.distributed as idist

    return idist.get_rank()


# ---- the teacher ------------------------------------------------------------------------------------------


def teacher_folder(ctx: Context) -> Path:
    """The `uta_teacher` output this run reads (its own ad-hoc folder's, else the pipeline's)."""
    return input_root(output_root(ctx.raw), TEACHER_RUN, "uta_teacher") / TEACHER_RUN


def teacher_record(ctx: Context) -> dict[str, Any]:
    """runs/uta_teacher/teacher.json: {"source": "trained", ...} (the run in that folder) or an EVA-CLIP."""
    path = teacher_folder(ctx) / TEACHER_RECORD.name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the `uta_teacher` stage first")
    return json.loads(path.read_text())


def load_stage_teacher(ctx: Context):
    """The frozen teacher `uta_teacher` handed over: its run (load_run), or the EVA-CLIP checkpoint."""
    from nas.engine.run import load_run
    from nas.models.clip_teacher import TeacherCheckpointError, load_teacher

    record = teacher_record(ctx)
    dim = effective_student(ctx.section.student.model)["teacher_dim"]
    if record["source"] != "trained":  # an external open_clip checkpoint, loaded as open_clip ships it
        return load_teacher(record["weights"], record["model"], expected_dim=dim)
    teacher, _ = load_run(teacher_folder(ctx))
    if teacher.embed_dim != dim:
        raise TeacherCheckpointError(
            f"{teacher_folder(ctx)}: the teacher's embedding width is {teacher.embed_dim}, but the student's "
            f"head projects to {dim} (uta.student.model.overrides.teacher_dim): wrong width"
        )
    return teacher.freeze()


def teacher_reads(ctx: Context) -> dict[str, Any]:
    """What a run that distils from / fine-tunes with the teacher reads of it: its params, and the
    digest of the trained teacher's run (a retrained teacher is another run for every student)."""
    run = None
    if ctx.section.teacher.checkpoint is None:
        config = teacher_folder(ctx) / "config.json"
        run = json.loads(config.read_text())["run"]["config_digest"] if config.is_file() else None
    return {"teacher": ctx.raw["uta"]["teacher"], "teacher_run": run}


def teacher_model_spec(ctx: Context) -> dict[str, Any]:
    """The registry spec ({"name", "overrides"}) that rebuilds the teacher (e.g. its fine-tuned text tower)."""
    spec = ctx.section.teacher
    if spec.pretrained:
        return {"name": OPEN_CLIP_MODEL, "overrides": {"model": spec.open_clip_model}}
    return {"name": TEACHER_MODEL, "overrides": to_dict(spec.model)}


def train_teacher(cfg: dict[str, Any], record: Recorder) -> None:
    """Stage `uta_teacher`: train and freeze the tiny CLIP (or name the EVA-CLIP checkpoint), then record
    its zero-shot attribute accuracy in metrics/uta/teacher.json."""
    from nas.engine.run import RunSpec, summary_of, train_run
    from nas.models.clip_teacher import ClipTrainer, load_teacher
    from nas.models.registry import create_model
    from nas.recipes.uta.evaluate import teacher_zero_shot

    ctx = stage_context(cfg)
    root = output_root(cfg)
    spec = ctx.section.teacher
    dim = effective_student(ctx.section.student.model)["teacher_dim"]
    summary: dict[str, Any] = {"stage": "uta_teacher"}
    if spec.pretrained:
        teacher = load_teacher(spec.checkpoint, spec.open_clip_model, expected_dim=dim)
        handed = {"source": "open_clip checkpoint", "model": spec.open_clip_model, "weights": spec.checkpoint}
    else:
        if spec.model.embed_dim != dim:
            raise ValueError(
                f"uta.teacher.model.embed_dim={spec.model.embed_dim} differs from the student's head width "
                f"uta.student.model.overrides.teacher_dim={dim}"
            )
        model = teacher_model_spec(ctx)
        run = RunSpec(
            stage="uta_teacher",
            label="clip",
            seed=ctx.seed,
            reads={
                "data": cfg["data"],
                "loader": cfg.get("loader"),
                "teacher": cfg["uta"]["teacher"],
                "seed": ctx.seed,
                "memo": ctx.section.memoize_images,
            },
            train=replace(spec.train, seed=ctx.seed),
            checkpoints=root / TEACHER_CHECKPOINTS,
            run_dir=root / TEACHER_RUN,
            model=model,
            export="teacher",
            config=cfg,
            data_files=[ctx.data.path(ctx.data.train_file)],
            tensorboard_dir=root / TENSORBOARD / "uta_teacher",
        )

        def build():
            teacher = create_model(model["name"], **model["overrides"])
            loader = pair_loader(ctx, None, spec.loader, "uta.teacher.loader", spec.model.context_length)
            return ClipTrainer(teacher), loader

        result = train_run(run, build, record)
        if _rank() != 0:
            return
        teacher = result["model"].teacher.freeze()
        handed = {"source": "trained", "model": spec.model.open_clip_config()}
        summary |= summary_of(result, "config_digest", "resumed_from", "final", "epochs", "steps")
    if _rank() != 0:
        return
    write_json(root / TEACHER_RECORD, handed)
    summary["zero_shot"] = teacher_zero_shot(
        teacher, held_out(ctx, with_probe_images=False), ctx.section.evaluation.batch_size
    )
    for name, value in summary["zero_shot"].items():
        record.log_scalar(f"zero_shot.{name}", value["accuracy"])
    print("uta_teacher zero-shot:", {k: round(v["accuracy"], 1) for k, v in summary["zero_shot"].items()})
    write_json(root / METRICS / "teacher.json", summary)
    record.add_artifact(root / METRICS / "teacher.json", name="teacher_metrics.json")


# ---- one student run ----------------------------------------------------------------------------------------


def load_student(run_dir: Path):
    """The student of a `uta_pretrain` (or the fine-tuned one of a `uta_finetune`) hand-off folder."""
    from nas.engine.run import load_run

    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}/config.json is missing: run the stage that trains it first")
    return load_run(run_dir)[0]


def check_run(ctx: Context, arm: str | None, seed: int, context: bool = False) -> None:
    """A `--run` names an arm of `uta.arms` and a seed of `uta.seeds` (the axes of dvc.yaml's `uta_pretrain`
    and `uta_finetune`), or with `context` a context arm and seed (`uta_context`'s: `uta.context_arms`,
    `uta.context_seeds`)."""
    section = ctx.section
    arms, seeds = ("context_arms", "context_seeds") if context else ("arms", "seeds")
    if arm is not None and arm not in getattr(section, arms):
        raise ConfigError(
            f"--run arm={arm}: not among uta.{arms} {sorted(getattr(section, arms))}", path=f"uta.{arms}"
        )
    if seed not in getattr(section, seeds):
        raise ConfigError(
            f"--run seed={seed}: not among uta.{seeds} {list(getattr(section, seeds))}", path=f"uta.{seeds}"
        )


def train_student(cfg: dict[str, Any], record: Recorder, *, arm: str, seed: int) -> None:
    """Stage `uta_pretrain`, one run: the student of masking arm `arm` and seed `seed`, aligned to the
    frozen teacher on its unmasked tokens (equal steps for every arm: `uta.student.train`)."""
    ctx = stage_context(cfg)
    check_run(ctx, arm, seed)
    _train_student(ctx, cfg, record, arm, seed)


def train_context(cfg: dict[str, Any], record: Recorder, *, arm: str, seed: int) -> None:
    """Stage `uta_context`, one run: the student of context arm `arm` (`uta.context_arms`) and seed `seed`
    (`uta.context_seeds`), trained as `uta_pretrain` trains one (the same run: same identity and folders)."""
    ctx = stage_context(cfg)
    check_run(ctx, arm, seed, context=True)
    _train_student(ctx, cfg, record, arm, seed)


def _train_student(ctx: Context, cfg: dict[str, Any], record: Recorder, arm: str, seed: int) -> None:
    """One student run, whichever stage runs it: its digest covers what it reads (the arm's masking, not
    which of `arms` / `context_arms` names it), its outputs are runs/uta_pretrain/<arm>/seed<k>."""
    from nas.engine.run import RunSpec, summary_of, train_run
    from nas.models.registry import create_model
    from nas.models.uta import UTAPretrainer

    root = output_root(cfg)
    section = ctx.section
    run_dir, checkpoints = student_run(arm, seed, root), student_checkpoints(arm, seed, root)
    teacher = load_stage_teacher(ctx)
    student = section.student
    loader = pair_loader(
        ctx, student.train_file, student.loader, "uta.student.loader", teacher.context_length
    )
    masking = section.arm_masking(arm)
    # Memoized images never change, so neither do the frozen teacher's tokens: one forward per image.
    token_cache: dict[int, Any] | None = {} if section.memoize_images else None
    model = to_dict(student.model)
    run = RunSpec(
        stage="uta_pretrain",  # a context arm's run too: the identity and folders of any student run
        label=f"{arm}/seed{seed}",
        seed=seed,
        reads={
            "data": cfg["data"],
            "loader": cfg.get("loader"),
            **teacher_reads(ctx),
            "student": cfg["uta"]["student"],
            "masking": to_dict(masking),
            "seed": seed,
            "memo": section.memoize_images,
        },
        train=replace(student.train, seed=seed),
        checkpoints=checkpoints,
        run_dir=run_dir,
        model=model,
        export="student",
        config=cfg,
        data_files=[ctx.data.path(student.train_file or ctx.data.train_file)],
        tensorboard_dir=root / TENSORBOARD / "uta_pretrain" / arm / f"seed{seed}",
    )

    def build():
        return UTAPretrainer(
            create_model(model["name"], **model["overrides"]), teacher, masking, token_cache
        ), loader

    result = train_run(run, build, record)
    if _rank() == 0:
        write_json(
            run_dir / SUMMARY, summary_of(result, "config_digest", "resumed_from", "final", "epochs", "steps")
        )
        record.add_artifact(run_dir / SUMMARY, name="summary.json")


# ---- one contrastive fine-tuning run ------------------------------------------------------------------------


def loader_batch(ctx: Context, overrides: dict[str, Any]) -> int:
    """The global batch of a UTA part's loader (per-process batch x processes)."""
    import ignite.distributed as idist

    return effective_loader(ctx.raw, overrides, "uta.finetune.loader").batch_size_per_gpu * max(
        1, idist.get_world_size()
    )


def convergence(run: dict[str, Any], batch: int) -> dict[str, Any]:
    """The convergence guard of a contrastive run: its last logged loss must be below chance, ln(batch)
    (the loss of a model that ranks the batch's captions at random), and below its first logged loss
    (falling). A run that fails is reported as diverged and left out of the fine-tuned averages,
    never averaged in."""
    import math

    chance = math.log(batch)
    first = run.get("first_logged_loss")
    last = (
        run.get("last_logged_loss")
        if run.get("last_logged_loss") is not None
        else run.get("final_epoch_loss")
    )
    converged = first is not None and last is not None and last < chance and last < first
    return {"chance_loss": chance, "converged": bool(converged)}


def hand_over(result: dict[str, Any], run: Any, folder: Path, model: dict[str, Any], export: str) -> None:
    """A second hand-off folder over the same checkpoint (a hard link) for another module of the trained
    one: `load_run(folder)` rebuilds `model` and loads the weights under `export`."""
    from nas.atomic import atomic_link, atomic_write_text
    from nas.engine.run import CHECKPOINT_FILE, CONFIG_FILE, recorded_config

    config = recorded_config(replace(run, model=model, export=export), result["config_digest"])
    atomic_link(result["last_checkpoint"], folder / CHECKPOINT_FILE)
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")


def train_finetune(cfg: dict[str, Any], record: Recorder, *, seed: int) -> None:
    """Stage `uta_finetune`, one run (if `uta.finetune.enabled`): the main arm's student of `seed` and
    the teacher's text tower, contrastively, temperature fixed (optimizer: `uta.finetune.train.optim`,
    the paper's LAMB with layer-wise lr decay). Hands over `student/` and `text/`."""
    import ignite.distributed as idist

    from nas.engine.run import RunSpec, train_run
    from nas.models.uta import UTAContrastive

    ctx = stage_context(cfg)
    check_run(ctx, None, seed)
    section, ft = ctx.section, ctx.section.finetune
    root = output_root(cfg)
    folder, checkpoints = finetune_run(seed, root), finetune_checkpoints(seed, root)
    if not ft.enabled:
        if _rank() == 0:  # the entry's DVC outputs exist whether or not it trained
            checkpoints.mkdir(parents=True, exist_ok=True)
            write_json(folder / SUMMARY, {"enabled": False})
        print(f"uta_finetune[seed{seed}]: not run (uta.finetune.enabled is false)")
        return
    teacher = load_stage_teacher(ctx)
    loader = pair_loader(ctx, ft.train_file, ft.loader, "uta.finetune.loader", teacher.context_length)
    source = student_run(section.main_arm, seed, input_root(root, PRETRAIN_RUN, "uta_pretrain"))
    run = RunSpec(
        stage="uta_finetune",
        label=f"seed{seed}",
        seed=seed,
        reads={
            "data": cfg["data"],
            "loader": cfg.get("loader"),
            **teacher_reads(ctx),
            "student_model": cfg["uta"]["student"]["model"],
            "main_arm": section.main_arm,
            "finetune": cfg["uta"]["finetune"],
            "seed": seed,
            "memo": section.memoize_images,
        },
        train=replace(ft.train, seed=seed),
        checkpoints=checkpoints,
        run_dir=folder / "student",
        model=to_dict(section.student.model),
        export="student",
        config=cfg,
        data_files=[ctx.data.path(ft.train_file or ctx.data.train_file)],
        init_checkpoint=source / "checkpoint.pt",
        init_by_build=True,  # build() loads the pretrained student: the checkpoint only names the run
        tensorboard_dir=root / TENSORBOARD / "uta_finetune" / f"seed{seed}",
    )

    def build():
        student = load_student(source).train()
        return UTAContrastive(student, teacher, ft.temperature).to(idist.device()), loader

    result = train_run(run, build, record)
    if _rank() != 0:
        return
    hand_over(result, run, folder / "text", teacher_model_spec(ctx), "text")
    steps = [row["clip"] for row in result["steps"] if "clip" in row]
    history = result["epochs"]
    summary = {
        "first_logged_loss": steps[0] if steps else None,
        "last_logged_loss": steps[-1] if steps else None,
        "final_epoch_loss": history[-1]["clip"] if history else None,
        "steps": sum(epoch.get("steps", 0) for epoch in history),
        "config_digest": result["config_digest"],
        "resumed_from": result["resumed_from"],
    }
    summary |= convergence(summary, loader_batch(ctx, ft.loader))
    print(f"uta_finetune seed {seed}: {summary}")
    write_json(folder / SUMMARY, summary)
    record.add_artifact(folder / SUMMARY, name="summary.json")


def load_finetuned(ctx: Context, seed: int):
    """(student, text tower as a frozen ClipTeacher) of fine-tuning run `seed`."""
    from nas.engine.run import load_run

    root = output_root(ctx.raw)
    folder = finetune_run(seed, input_root(root, FINETUNE_RUN, "uta_finetune"))
    text, _ = load_run(folder / "text")
    return load_student(folder / "student"), text.freeze()
