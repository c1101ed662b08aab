"""Stages `uta_teacher`, `uta_pretrain`, `uta_finetune`, `uta_evaluate`: the UTA recipe (MUG_UTA.md §2).

`uta_teacher` trains the tiny open_clip CLIP on the synthetic pairs through the one Ignite engine and
freezes it (paper scale: loads an open_clip EVA-CLIP checkpoint from `uta.teacher.checkpoint`
instead), and records its zero-shot attribute accuracy. `uta_pretrain` trains the student of every
masking arm (`uta.arms`) for every seed (`uta.seeds`; a context arm, `uta.context_arms`, only its
first `uta.context_seeds`) in one process, equal steps, each run in its own resumable folder: a killed
stage resumes the run it was in and skips the finished ones. `uta_finetune` (optional,
`uta.finetune.enabled`) fine-tunes the main arm's students with the teacher's text tower contrastively
(fixed temperature, timm's LAMB with layer-wise lr decay) and marks each seed converged or diverged
(`convergence`). `uta_evaluate` measures the teacher, the untrained student of every seed (the
baseline) and every run: zero-shot attribute accuracy through the frozen text tower on the
single-object test scenes, linear probes per attribute on the test scenes, held-out 1 - cos (full
view, masked view, CLS, per grid position) and whether the CLS is aligned
(`uta.evaluation.alignment_threshold`), and the fine-grained probes under the student-text cosine
scorer; then judges the claims with intervals over seeds and scenes (`uta_findings`), writes the
per-case outcomes to runs/uta_evaluate/cases/ and the findings into metrics/uta/evaluate.json.

Outputs (fixed paths, named in dvc.yaml):
  checkpoints/uta_teacher/<config digest>/          the tiny CLIP's resumable checkpoints (persist)
  runs/uta_teacher/{teacher.json,teacher.pt}        the frozen teacher (teacher.json says where its weights are)
  checkpoints/uta/<arm>/seed<k>/<config digest>/    the students' resumable checkpoints (persist)
  runs/uta_pretrain/<arm>/seed<k>/student.pt        final student weights; runs/uta_pretrain/config.json
  runs/uta_finetune/seed<k>/{student.pt,text.pt}    fine-tuned student and text tower
  runs/uta_evaluate/scores/                         per-pair scores of the fine-grained probes
  metrics/uta/{teacher,pretrain,finetune,evaluate}.json, metrics/uta/figure.json (heatmaps, masks),
  metrics/fine_grained/uta.json                     rows for the shared fine-grained tables
An ad-hoc run (`--set`, another `--params`) writes the same tree under runs/adhoc/<tag>/ instead (the
paths above are relative to the run's output root, nas.config.params.output_root), and reads each
upstream stage's output from its own folder where it has it, else the pipeline's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from experiments.common import PrefixedRecorder, Recorder, parse_stage_args, run_stage
from nas.config.base import to_dict
from nas.config.params import PIPELINE_ROOT, input_root, output_root
from nas.config.uta_card import UTASection, effective_loader, effective_student, read_section

STAGES = ("uta_teacher", "uta_pretrain", "uta_finetune", "uta_evaluate")
TEACHER_RUN = Path("runs/uta_teacher")
PRETRAIN_RUN = Path("runs/uta_pretrain")
FINETUNE_RUN = Path("runs/uta_finetune")
EVAL_RUN = Path("runs/uta_evaluate")
TEACHER_CHECKPOINTS = Path("checkpoints/uta_teacher")
TENSORBOARD = Path("runs") / "tensorboard"  # training curves per stage, arm and seed
STUDENT_CHECKPOINTS = Path("checkpoints/uta")
FINETUNE_CHECKPOINTS = Path("checkpoints/uta_finetune")
METRICS = Path("metrics/uta")
FINE_GRAINED = Path("metrics/fine_grained/uta.json")


@dataclass
class Context:
    """What every UTA stage reads from the resolved params."""

    raw: dict[str, Any]
    data: Any  # DataConfig
    section: UTASection
    seed: int


def read_context(cfg: dict[str, Any]) -> Context:
    from nas.config import from_dict
    from nas.config.data import DataConfig

    data = from_dict(DataConfig, cfg["data"], "data")
    section = read_section(cfg)
    student = effective_student(section.student.model)
    if student["image_size"] != data.transform.image_size:
        raise ValueError(
            f"uta.student.model.overrides.image_size={student['image_size']} differs from "
            f"data.transform.image_size={data.transform.image_size} (the images the loader produces)"
        )
    return Context(cfg, data, section, int(cfg["seed"]))


def stage_context(cfg: dict[str, Any]) -> Context:
    """`read_context` for a stage: also sets torch's intra-op threads (uta.torch_threads)."""
    ctx = read_context(cfg)
    if ctx.section.torch_threads is not None:
        import torch

        torch.set_num_threads(ctx.section.torch_threads)
    return ctx


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON, written atomically (a later stage never reads half a file)."""
    from nas.engine.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


# ---- data -----------------------------------------------------------------------------------------


class MemoizedImages:
    """`CaptionDataset` items whose transformed image is decoded once per image and then kept
    (deterministic transform only: the evaluation resize). Same item layout as CaptionDataset."""

    def __init__(self, pairs: Any) -> None:
        self.pairs = pairs
        self.images: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        image_name, caption = self.pairs.pairs[index]
        image_id = self.pairs.image_ids[image_name]
        if image_id not in self.images:
            item = self.pairs[index]
            if item is None:  # a skipped bad image (counted by the collate)
                return None
            self.images[image_id] = item["image"]
        return {"image": self.images[image_id], "caption": caption, "index": index, "image_id": image_id}


def pair_loader(
    ctx: Context, train_file: str | None, loader_overrides: dict[str, Any], where: str, context: int
):
    """Shuffled (image, BPE caption) batches of `train_file` (default: data.train_file)."""
    from nas.data.bpe_tokenizer import BpeTokenizer, make_bpe_collate
    from nas.data.captions import CaptionDataset
    from nas.data.loader import build_loader
    from nas.data.transforms import build_eval_transform, build_train_transform

    data = ctx.data
    memoize = ctx.section.memoize_images
    transform = (build_eval_transform if memoize else build_train_transform)(data.transform)
    pairs = CaptionDataset(
        data.path(train_file or data.train_file),
        data.images,
        transform,
        skip_bad_images=data.skip_bad_images,
        max_words=data.max_words,
        allow_outside_root=data.allow_outside_root,
    )
    from experiments.common import preflight_once

    preflight_once(pairs, data)
    dataset = MemoizedImages(pairs) if memoize else pairs
    loader_cfg = effective_loader(ctx.raw, loader_overrides, where)
    return build_loader(dataset, loader_cfg, make_bpe_collate(BpeTokenizer(context)), shuffle=True)


def decode_images(data: Any, paths: list[str]):
    """Images (paths relative to data.root/image_root) with the evaluation transform, [N, 3, S, S]."""
    from nas.data.captions import stack_images
    from nas.data.transforms import build_eval_transform

    return stack_images(
        data.images,
        paths,
        build_eval_transform(data.transform),
        data.root,
        allow_outside_root=data.allow_outside_root,
    )


# ---- teacher --------------------------------------------------------------------------------------


def load_stage_teacher(ctx: Context):
    """The frozen teacher `uta_teacher` recorded (its weights file, or the EVA-CLIP checkpoint)."""
    from nas.models.clip_teacher import load_teacher

    record_file = input_root(output_root(ctx.raw), TEACHER_RUN, "uta_teacher") / TEACHER_RUN / "teacher.json"
    if not record_file.is_file():
        raise FileNotFoundError(f"{record_file} is missing: run the `uta_teacher` stage first")
    record = json.loads(record_file.read_text())
    dim = effective_student(ctx.section.student.model)["teacher_dim"]
    return load_teacher(record["weights"], record["model"], expected_dim=dim)


def stage_teacher(cfg: dict[str, Any], record: Recorder) -> None:
    import ignite.distributed as idist
    from ignite.utils import manual_seed

    from experiments.pretrain import training_callbacks
    from nas.config.stages import config_digest
    from nas.engine.checkpoint import atomic_save
    from nas.engine.fit import fit
    from nas.models.clip_teacher import ClipTrainer, load_teacher
    from nas.models.registry import create_model

    ctx = stage_context(cfg)
    root = output_root(cfg)
    spec = ctx.section.teacher
    dim = effective_student(ctx.section.student.model)["teacher_dim"]
    summary: dict[str, Any] = {"stage": "uta_teacher"}
    if spec.pretrained:
        teacher = load_teacher(spec.checkpoint, spec.open_clip_model, expected_dim=dim)
        teacher_record = {
            "source": "open_clip checkpoint",
            "model": spec.open_clip_model,
            "weights": spec.checkpoint,
        }
    else:
        model_cfg = spec.model.open_clip_config()
        if spec.model.embed_dim != dim:
            raise ValueError(
                f"uta.teacher.model.embed_dim={spec.model.embed_dim} differs from the student's head width "
                f"uta.student.model.overrides.teacher_dim={dim}"
            )
        manual_seed(ctx.seed + idist.get_rank())
        teacher = create_model("uta_clip_tiny", **to_dict(spec.model))
        loader = pair_loader(ctx, None, spec.loader, "uta.teacher.loader", spec.model.context_length)
        train = replace(spec.train, seed=ctx.seed)
        digest = config_digest(
            {
                "data": cfg["data"],
                "teacher": cfg["uta"]["teacher"],
                "seed": ctx.seed,
                "memo": ctx.section.memoize_images,
            }
        )
        on_epoch_end, on_log_step = training_callbacks("uta_teacher", "clip", record)
        result = fit(
            ClipTrainer(teacher),
            loader,
            train,
            output_dir=root / TEACHER_CHECKPOINTS / digest,
            on_epoch_end=on_epoch_end,
            on_log_step=on_log_step,
            tensorboard_dir=root / TENSORBOARD / "uta_teacher",
        )
        if idist.get_rank() != 0:
            return
        weights = root / TEACHER_RUN / "teacher.pt"
        atomic_save(teacher.clip.state_dict(), weights)
        teacher_record = {"source": "trained", "model": model_cfg, "weights": str(weights)}
        summary |= {"config_digest": digest, "resumed_from": result["resumed_from"]}
        summary |= {"final": result["history"][-1], "epochs": result["history"], "steps": result["steps"]}
        teacher = teacher.freeze()
    if idist.get_rank() != 0:
        return
    write_json(root / TEACHER_RUN / "teacher.json", teacher_record)
    summary["zero_shot"] = teacher_zero_shot(
        teacher, held_out(ctx, with_probe_images=False), ctx.section.evaluation.batch_size
    )
    for name, value in summary["zero_shot"].items():
        record.log_scalar(f"zero_shot.{name}", value["accuracy"])
    print("uta_teacher zero-shot:", {k: round(v["accuracy"], 1) for k, v in summary["zero_shot"].items()})
    write_json(root / METRICS / "teacher.json", summary)
    record.add_artifact(root / METRICS / "teacher.json", name="teacher_metrics.json")


# ---- student pretraining --------------------------------------------------------------------------


def student_file(arm: str, seed: int, root: Path = PIPELINE_ROOT) -> Path:
    return root / PRETRAIN_RUN / arm / f"seed{seed}" / "student.pt"


def build_student(ctx: Context):
    from nas.models.registry import create_model

    spec = ctx.section.student.model
    return create_model(spec.name, **spec.overrides)


def load_student(ctx: Context, path: Path):
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the `uta_pretrain` stage first")
    student = build_student(ctx)
    student.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return student.eval()


def stage_pretrain(cfg: dict[str, Any], record: Recorder) -> None:
    import ignite.distributed as idist
    from ignite.utils import manual_seed

    from experiments.pretrain import training_callbacks
    from nas.config.stages import config_digest
    from nas.engine.checkpoint import atomic_save
    from nas.engine.fit import fit
    from nas.evaluation.seeds import mean_std
    from nas.models.uta import UTAPretrainer

    ctx = stage_context(cfg)
    root = output_root(cfg)
    section = ctx.section
    teacher = load_stage_teacher(ctx)
    loader = pair_loader(
        ctx, section.student.train_file, section.student.loader, "uta.student.loader", teacher.context_length
    )
    runs: dict[str, dict[str, Any]] = {}
    # Memoized images never change, so neither do the frozen teacher's tokens: one forward per image.
    token_cache: dict[int, Any] | None = {} if section.memoize_images else None
    for arm in section.trained_arms:
        masking = section.arm_masking(arm)
        for seed in section.arm_seeds(arm):
            name = f"{arm}/seed{seed}"
            manual_seed(seed + idist.get_rank())
            model = UTAPretrainer(build_student(ctx), teacher, masking, token_cache)
            digest = config_digest(
                {
                    "data": cfg["data"],
                    "teacher": cfg["uta"]["teacher"],
                    "student": cfg["uta"]["student"],
                    "masking": to_dict(masking),
                    "seed": seed,
                    "memo": section.memoize_images,
                }
            )
            on_epoch_end, on_log_step = training_callbacks(
                "uta_pretrain", name, PrefixedRecorder(record, f"{name}.")
            )
            result = fit(
                model,
                loader,
                replace(section.student.train, seed=seed),
                output_dir=root / STUDENT_CHECKPOINTS / arm / f"seed{seed}" / digest,
                on_epoch_end=on_epoch_end,
                on_log_step=on_log_step,
                tensorboard_dir=root / TENSORBOARD / "uta_pretrain" / arm / f"seed{seed}",
            )
            if idist.get_rank() == 0:
                atomic_save(model.student.state_dict(), student_file(arm, seed, root))
            history = result["history"]
            runs.setdefault(arm, {})[str(seed)] = {
                "config_digest": digest,
                "resumed_from": result["resumed_from"],
                "final": history[-1] if history else {},
                "epochs": history,
                "steps": result["steps"],
            }
    if idist.get_rank() != 0:
        return
    write_json(root / PRETRAIN_RUN / "config.json", cfg)
    final = {
        arm: mean_std([run["final"]["uta"] for run in by_seed.values()]) for arm, by_seed in runs.items()
    }
    summary = {"stage": "uta_pretrain", "final_train_loss": final, "runs": runs}
    write_json(root / METRICS / "pretrain.json", summary)
    record.add_artifact(root / METRICS / "pretrain.json", name="pretrain_metrics.json")


# ---- optional contrastive fine-tuning -------------------------------------------------------------


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


def finetune_train_config(ft, seed: int):
    """The fine-tuning TrainConfig: LAMB with layer-wise lr decay [P], from timm's optimizer factory
    (the engine's `OptimConfig.name` / `layer_decay`; its schedule multiplies each group's lr_scale)."""
    optim = replace(ft.train.optim, name="lamb", layer_decay=ft.layer_decay)
    return replace(ft.train, seed=seed, optim=optim)


def stage_finetune(cfg: dict[str, Any], record: Recorder) -> None:
    import ignite.distributed as idist

    from experiments.pretrain import training_callbacks
    from nas.config.stages import config_digest
    from nas.engine.checkpoint import atomic_save
    from nas.engine.fit import fit
    from nas.models.uta import UTAContrastive

    ctx = stage_context(cfg)
    section = ctx.section
    ft = section.finetune
    root = output_root(cfg)
    (root / FINETUNE_RUN).mkdir(parents=True, exist_ok=True)
    (root / FINETUNE_CHECKPOINTS).mkdir(parents=True, exist_ok=True)  # a DVC output, trained or not
    summary: dict[str, Any] = {
        "stage": "uta_finetune",
        "enabled": ft.enabled,
        "arm": section.main_arm,
        "runs": {},
    }
    if ft.enabled:
        context = load_stage_teacher(ctx).context_length
        loader = pair_loader(ctx, ft.train_file, ft.loader, "uta.finetune.loader", context)
        trained = input_root(root, PRETRAIN_RUN, "uta_pretrain")
        for seed in section.seeds:
            student = load_student(ctx, student_file(section.main_arm, seed, trained)).train()
            model = UTAContrastive(student, load_stage_teacher(ctx), ft.temperature).to(idist.device())
            digest = config_digest({"cfg": {k: v for k, v in cfg.items() if k != "stage"}, "seed": seed})
            on_epoch_end, on_log_step = training_callbacks(
                "uta_finetune", f"seed{seed}", PrefixedRecorder(record, f"seed{seed}.")
            )
            result = fit(
                model,
                loader,
                finetune_train_config(ft, seed),
                output_dir=root / FINETUNE_CHECKPOINTS / f"seed{seed}" / digest,
                on_epoch_end=on_epoch_end,
                on_log_step=on_log_step,
                tensorboard_dir=root / TENSORBOARD / "uta_finetune" / f"seed{seed}",
            )
            if idist.get_rank() != 0:
                continue
            out_dir = root / FINETUNE_RUN / f"seed{seed}"
            atomic_save(model.student.state_dict(), out_dir / "student.pt")
            atomic_save(model.text.clip.state_dict(), out_dir / "text.pt")
            steps = [row["clip"] for row in result["steps"] if "clip" in row]
            run = {
                "first_logged_loss": steps[0] if steps else None,
                "last_logged_loss": steps[-1] if steps else None,
                "final_epoch_loss": result["history"][-1]["clip"] if result["history"] else None,
                "steps": sum(epoch.get("steps", 0) for epoch in result["history"]),
                "config_digest": digest,
                "resumed_from": result["resumed_from"],
            }
            summary["runs"][str(seed)] = run | convergence(run, loader_batch(ctx, ft.loader))
            print(f"uta_finetune seed {seed}: {summary['runs'][str(seed)]}")
    # The stage's output exists whether or not it trained.
    write_json(root / FINETUNE_RUN / "config.json", cfg)
    write_json(root / METRICS / "finetune.json", summary)


# ---- evaluation -----------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """The evaluation data, decoded once: held-out images and labels, probe-training images."""

    images: Any  # [N, 3, S, S]
    labels: dict[str, list]
    zero_shot_rows: list[int]  # single-object scenes (the prompts name one object)
    probe_images: Any
    probe_labels: dict[str, list]


def held_out(ctx: Context, with_probe_images: bool = True) -> HeldOut:
    from nas.evaluation.scene_attributes import load_split_attributes
    from nas.evaluation.zero_shot import single_object_rows

    ev = ctx.section.evaluation
    paths, labels = load_split_attributes(ctx.data.root, ev.split)
    probe_images, probe_labels = None, {}
    if with_probe_images:
        train_paths, train_labels = load_split_attributes(ctx.data.root, "train")
        limit = ev.probe_train_images or len(train_paths)
        probe_images = decode_images(ctx.data, train_paths[:limit])
        probe_labels = {name: values[:limit] for name, values in train_labels.items()}
    rows = single_object_rows(labels["count"])
    return HeldOut(decode_images(ctx.data, paths), labels, rows, probe_images, probe_labels)


def batched(fn, images, batch_size: int):
    import torch

    with torch.no_grad():
        return torch.cat([fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def classifier_of(text_model):
    """Zero-shot class embeddings through a CLIP text tower (BPE with the tower's context length)."""
    from nas.data.bpe_tokenizer import BpeTokenizer
    from nas.evaluation.zero_shot import build_classifier

    tokenizer = BpeTokenizer(text_model.context_length)
    text_model.eval()
    return build_classifier(lambda texts: text_model.encode_text(tokenizer.encode(texts).input_ids))


def teacher_zero_shot(teacher, data: HeldOut, batch_size: int, outcomes: bool = False) -> dict[str, Any]:
    from nas.evaluation.zero_shot import zero_shot_accuracy

    embeddings = batched(teacher.encode_image, data.images, batch_size)
    return zero_shot_accuracy(
        embeddings, data.labels, classifier_of(teacher), rows=data.zero_shot_rows, outcomes=outcomes
    )


def probe_features_of(ctx: Context) -> dict[str, str]:
    """The feature each scene attribute is probed on (uta.evaluation.probe_feature / spatial_probe_feature)."""
    from nas.evaluation.scene_attributes import ATTRIBUTES, SPATIAL_ATTRIBUTES

    ev = ctx.section.evaluation
    return {a: ev.spatial_probe_feature if a in SPATIAL_ATTRIBUTES else ev.probe_feature for a in ATTRIBUTES}


def pooled_of(tokens, kinds, grid: int) -> dict[str, Any]:
    from nas.evaluation.linear_probe import pooled_features

    return {kind: pooled_features(tokens, kind, grid).numpy() for kind in kinds}


def probes(tokens_fn, data: HeldOut, ctx: Context, test_tokens=None) -> dict[str, Any]:
    """Linear probes per scene attribute on frozen tokens `tokens_fn(images) -> [B, 1 + N, D]` (CLS
    first), each attribute on its own feature; with per-case outcomes ("_correct")."""
    from nas.evaluation.linear_probe import probe_by_feature

    ev = ctx.section.evaluation
    feature_of = probe_features_of(ctx)
    kinds = sorted(set(feature_of.values()))
    train = pooled_of(batched(tokens_fn, data.probe_images, ev.batch_size), kinds, ev.probe_grid)
    if test_tokens is None:
        test_tokens = batched(tokens_fn, data.images, ev.batch_size)
    test = pooled_of(test_tokens, kinds, ev.probe_grid)
    return probe_by_feature(train, data.probe_labels, test, data.labels, feature_of, ev.probe, outcomes=True)


def _cases_of(zero_shot: dict[str, Any], probe: dict[str, Any]) -> dict[str, Any]:
    return {
        "zero_shot": {a: {"rows": r["_rows"], "correct": r["_correct"]} for a, r in zero_shot.items()},
        "probes": {
            a: {"rows": r["_rows"], "correct": r["_correct"]} for a, r in probe.items() if "_correct" in r
        },
    }


def measure_student(
    student, ctx: Context, arm: str, data: HeldOut, classifier, teacher_tokens
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, per-case outcomes) of one student: zero-shot, linear probes, held-out 1 - cos (full
    view, own masking, CLS, per position) and whether its CLS is aligned (alignment_threshold)."""
    import torch
    import torch.nn.functional as F

    from nas.evaluation.linear_probe import public
    from nas.evaluation.zero_shot import mean_accuracy, zero_shot_accuracy
    from nas.models.block_masking import sample_visible
    from nas.objectives.uta import gather_tokens, token_cosine

    ev = ctx.section.evaluation
    student.eval()
    tokens = batched(student.forward_features, data.images, ev.batch_size)  # one pass, full view
    with torch.no_grad():
        projected = student.head(tokens)
    full = token_cosine(projected, teacher_tokens)  # [N, 1 + P]
    embeddings = F.normalize(projected[:, 0], dim=-1)
    zero_shot = zero_shot_accuracy(
        embeddings, data.labels, classifier, rows=data.zero_shot_rows, outcomes=True
    )
    generator = torch.Generator().manual_seed(ev.mask_seed)
    keep = sample_visible(len(data.images), student.grid, ctx.section.arm_masking(arm), generator=generator)
    with torch.no_grad():
        masked = token_cosine(student(data.images, keep), gather_tokens(teacher_tokens, keep))
    position = full[:, 1:].mean(dim=0)
    probe = probes(student.forward_features, data, ctx, test_tokens=tokens)
    cls = float(1 - full[:, 0].mean())
    result = {
        "zero_shot": public(zero_shot),
        "zero_shot_mean": mean_accuracy(zero_shot),
        "probes": public(probe),
        "heldout_1mcos": float(1 - full.mean()),
        "heldout_1mcos_masked": float(1 - masked.mean()),
        "heldout_1mcos_cls": cls,
        "aligned": cls <= ev.alignment_threshold,
        "position_cos_std": float(position.std()),  # spatial (non-)uniformity of the heatmap
        "_heatmap": position.reshape(student.grid).tolist(),
    }
    cases = _cases_of(zero_shot, probe) | {"cls_1mcos": (1 - full[:, 0]).numpy()}
    return result, cases


def fine_grained_row(scorer_for, seeds, probes_root, benchmarks, scores_dir: Path) -> dict[str, Any]:
    """One row of the shared fine-grained tables: the probe suite under one scorer, per seed."""
    from nas.evaluation.probe_suite import run_probe_suite

    per_seed = [
        run_probe_suite([scorer_for(seed)], probes_root, benchmarks, scores_dir / f"seed{seed}")
        for seed in seeds
    ]
    return {"seeds": list(seeds), "per_seed": per_seed}


def figure_data(ctx: Context, heatmaps: dict[str, list], grid: tuple[int, int]) -> dict[str, Any]:
    """What the report's figure shows: per-position cosine maps, P(visible) maps, example masks."""
    import torch

    from nas.models.block_masking import sample_visible, visibility_frequency

    ev = ctx.section.evaluation
    out: dict[str, Any] = {"grid": list(grid), "heatmaps": heatmaps, "visibility": {}, "example_masks": {}}
    for arm in ctx.section.arms:  # every scheme's masks; heatmaps for the trained ones
        masking = ctx.section.arm_masking(arm)
        generator = torch.Generator().manual_seed(ev.mask_seed)
        out["visibility"][arm] = visibility_frequency(
            grid, masking, ev.visibility_draws, generator=generator
        ).tolist()
        keep = sample_visible(max(ev.example_masks, 1), grid, masking, generator=generator)[
            : ev.example_masks
        ]
        out["example_masks"][arm] = keep.tolist()
    return out


def load_finetuned(ctx: Context, seed: int):
    """(student, text tower as a frozen ClipTeacher) of one fine-tuning run."""
    import torch

    from nas.models.clip_teacher import ClipTeacher, build_open_clip

    root = output_root(ctx.raw)
    run = input_root(root, FINETUNE_RUN, "uta_finetune") / FINETUNE_RUN / f"seed{seed}"
    student = load_student(ctx, run / "student.pt")
    teacher_file = input_root(root, TEACHER_RUN, "uta_teacher") / TEACHER_RUN / "teacher.json"
    record = json.loads(teacher_file.read_text())
    clip = build_open_clip(record["model"])
    clip.load_state_dict(torch.load(run / "text.pt", map_location="cpu", weights_only=True))
    return student, ClipTeacher(clip).freeze()


def finetune_record(ctx: Context) -> dict[str, Any]:
    """metrics/uta/finetune.json of the fine-tuning stage whose runs are evaluated ({} if absent)."""
    root = output_root(ctx.raw)
    path = input_root(root, FINETUNE_RUN, "uta_finetune") / METRICS / "finetune.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluate_finetuned(ctx: Context, data: HeldOut) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    """Zero-shot of the fine-tuned students through their fine-tuned text towers: (result, per-seed
    cases, converged seeds). Seeds whose fine-tuning diverged (finetune.json) are scored and listed
    but left out of the mean."""
    from nas.evaluation.linear_probe import public
    from nas.evaluation.seeds import aggregate
    from nas.evaluation.zero_shot import mean_accuracy, zero_shot_accuracy

    runs = finetune_record(ctx).get("runs", {})
    per_seed, cases, converged = [], [], []
    for seed in ctx.section.seeds:
        student, text = load_finetuned(ctx, seed)
        embeddings = batched(student.encode_image, data.images, ctx.section.evaluation.batch_size)
        zs = zero_shot_accuracy(
            embeddings, data.labels, classifier_of(text), rows=data.zero_shot_rows, outcomes=True
        )
        ok = bool(runs.get(str(seed), {}).get("converged", False))
        per_seed.append({"zero_shot": public(zs), "zero_shot_mean": mean_accuracy(zs), "converged": ok})
        cases.append(_cases_of(zs, {}))
        if ok:
            converged.append(seed)
    kept = [run for seed, run in zip(ctx.section.seeds, per_seed) if seed in converged]
    result = {
        "seeds": list(ctx.section.seeds),
        "converged_seeds": converged,
        "diverged_seeds": [s for s in ctx.section.seeds if s not in converged],
        "mean_std": aggregate(kept) if kept else None,
        "per_seed": per_seed,
    }
    return result, cases, converged


def fine_grained_rows(ctx: Context, teacher, finetuned: bool) -> dict[str, Any]:
    """Rows `uta` (main arm, every seed), `uta/teacher`, and `uta/finetuned` when it ran."""
    from nas.data.bpe_tokenizer import BpeTokenizer
    from nas.data.transforms import build_eval_transform
    from nas.evaluation.uta_scorer import teacher_scorer, uta_scorer

    section, ev = ctx.section, ctx.section.evaluation
    transform, tokenizer = build_eval_transform(ctx.data.transform), BpeTokenizer(teacher.context_length)
    root = output_root(ctx.raw)
    scores = root / EVAL_RUN / "scores"
    suite = (ctx.data.probes_root, ev.benchmarks)
    trained = input_root(root, PRETRAIN_RUN, "uta_pretrain")

    def student_scorer(seed: int):
        return uta_scorer(
            load_student(ctx, student_file(section.main_arm, seed, trained)), teacher, transform, tokenizer
        )

    rows = {
        "uta": fine_grained_row(student_scorer, section.seeds, *suite, scores / "uta"),
        "uta/teacher": fine_grained_row(
            lambda seed: teacher_scorer(teacher, transform, tokenizer),
            section.seeds[:1],
            *suite,
            scores / "teacher",
        ),
    }
    if finetuned:

        def finetuned_scorer(seed: int):
            student, text = load_finetuned(ctx, seed)
            return uta_scorer(student, text, transform, tokenizer, name="uta_finetuned")

        rows["uta/finetuned"] = fine_grained_row(
            finetuned_scorer, section.seeds, *suite, scores / "finetuned"
        )
    return rows


# ---- findings -------------------------------------------------------------------------------------

TEACHER, UNTRAINED, FINETUNED = "teacher", "untrained", "finetuned"


def _outcomes(runs: list[dict[str, Any]] | None, kind: str, attribute: str):
    """[S, N] outcomes of `kind` ("zero_shot" / "probes") on `attribute` over `runs`, or None."""
    from nas.reporting.recipe_findings import as_cases

    rows = [run[kind].get(attribute) for run in runs or []]
    if not rows or any(r is None for r in rows):
        return None
    return as_cases([r["correct"] for r in rows])


def uta_findings(
    cases: dict[str, list[dict[str, Any]]],
    seeds: dict[str, list[int]],
    aligned: dict[str, list[int]],
    chance: dict[str, float],
    ctx: Context,
) -> tuple[list[Any], dict[str, bool]]:
    """The claims of MUG_UTA.md §2 in miniature, judged with intervals (recipe_findings), and the
    zero-shot attributes the teacher learned (above chance by its interval):

    - the student's zero-shot through the teacher's text tower approaches the teacher's (per attribute
      and pooled; non-inferiority, margin uta.evaluation.findings.margin points), judged on the main
      arm's aligned seeds only (held-out CLS 1 - cos <= alignment_threshold);
    - reversed block-wise beats no masking at equal steps (zero-shot, on the seeds both trained);
    - every student aligns: per-image held-out CLS 1 - cos below the threshold (interval below it);
    - sanity: the student beats its untrained self; fine-tuning (converged seeds) keeps the zero-shot.
    `seeds[model]` lists the seeds of `cases[model]` in order."""
    from nas.reporting.recipe_findings import (
        above_level,
        as_cases,
        difference,
        not_judged,
        pooled_difference,
    )

    section, ev = ctx.section, ctx.section.evaluation
    settings = ev.findings
    main = section.main_arm
    learned: dict[str, bool] = {}
    for attribute, level in chance.items():
        x = _outcomes(cases.get(TEACHER), "zero_shot", attribute)
        learned[attribute] = x is not None and above_level(x, level / 100.0, settings)[0]
    judged = [a for a in chance if learned[a]]

    def pick(model: str, keep: list[int]) -> list[dict[str, Any]]:
        return [run for seed, run in zip(seeds.get(model, []), cases.get(model, [])) if seed in keep]

    def compare(key, claim, comparison, a_runs, b_runs, threshold, b_single=False):
        out, pairs = [], []
        for attribute in chance:
            rkey = f"{key}.{attribute}"
            if not learned[attribute]:
                out.append(
                    not_judged(
                        rkey, claim, comparison, attribute, "teacher not above chance", threshold=threshold
                    )
                )
                continue
            a = _outcomes(a_runs, "zero_shot", attribute)
            b = _outcomes(b_runs, "zero_shot", attribute)
            if a is None or b is None:
                out.append(not_judged(rkey, claim, comparison, attribute, "no outcomes", threshold=threshold))
                continue
            if b_single:
                b = as_cases(b, seeds=a.shape[0])
            out.append(difference(rkey, claim, comparison, attribute, a, b, settings, threshold=threshold))
            pairs.append((a, b))
        if pairs:
            out.append(
                pooled_difference(f"{key}.pooled", claim, comparison, pairs, settings, threshold=threshold)
            )
        else:
            out.append(
                not_judged(
                    f"{key}.pooled", claim, comparison, "pooled", "no attribute judged", threshold=threshold
                )
            )
        return out

    rows: list[Any] = []
    claim = "The student's zero-shot through the teacher's text tower approaches the teacher's"
    ok = aligned.get(main, [])
    comparison = f"student ({main}, {len(ok)}/{len(seeds.get(main, []))} seeds aligned) − teacher"
    if not ok:
        why = f"no aligned seed (held-out CLS 1 − cos > {ev.alignment_threshold})"
        rows.append(
            not_judged(
                "student_vs_teacher.pooled", claim, comparison, "pooled", why, threshold=-settings.margin
            )
        )
    else:
        rows += compare(
            "student_vs_teacher",
            claim,
            comparison,
            pick(main, ok),
            cases.get(TEACHER),
            -settings.margin,
            b_single=True,
        )
    claim = "Reversed block-wise beats no masking at equal steps"
    if main in cases and "none" in cases and main != "none":
        common = [s for s in seeds[main] if s in seeds["none"]]
        rows += compare(
            "reversed_vs_none",
            claim,
            f"{main} − none (zero-shot)",
            pick(main, common),
            pick("none", common),
            0.0,
        )
    else:
        rows.append(not_judged("reversed_vs_none.pooled", claim, "reversed − none", "pooled", "arm not run"))
    claim = f"The student aligns: held-out CLS 1 − cos below {ev.alignment_threshold}"
    for arm in seeds:
        if arm in (TEACHER, UNTRAINED, FINETUNED):
            continue
        x = as_cases([run["cls_1mcos"] for run in cases[arm]])
        rows.append(
            difference(
                f"aligned.{arm}",
                claim,
                f"{arm}: CLS 1 − cos − {ev.alignment_threshold}",
                "held-out images",
                x,
                ev.alignment_threshold,
                settings,
                expected="negative",
                unit="1−cos",
            )
        )
    if UNTRAINED in cases and main in cases and judged:
        common = [s for s in seeds[main] if s in seeds[UNTRAINED]]
        pairs = [
            (
                _outcomes(pick(main, common), "zero_shot", a),
                _outcomes(pick(UNTRAINED, common), "zero_shot", a),
            )
            for a in judged
        ]
        rows.append(
            pooled_difference(
                "student_vs_untrained.pooled",
                "Training helps: the student beats its untrained self",
                f"{main} − untrained (zero-shot)",
                pairs,
                settings,
            )
        )
    if FINETUNED in cases:
        ok = [s for s in aligned.get(FINETUNED, [])]
        claim = "Zero-shot holds after contrastive fine-tuning"
        comparison = f"fine-tuned − pretrained ({len(ok)}/{len(seeds[FINETUNED])} seeds converged)"
        if ok and judged:
            pairs = [
                (_outcomes(pick(FINETUNED, ok), "zero_shot", a), _outcomes(pick(main, ok), "zero_shot", a))
                for a in judged
            ]
            rows.append(
                pooled_difference(
                    "finetuned_vs_student.pooled",
                    claim,
                    comparison,
                    pairs,
                    settings,
                    threshold=-settings.margin,
                )
            )
        else:
            rows.append(
                not_judged("finetuned_vs_student.pooled", claim, comparison, "pooled", "no converged seed")
            )
    return rows, learned


def zero_shot_intervals(cases: dict[str, list[dict[str, Any]]], attributes, settings) -> dict[str, Any]:
    """{model: {attribute: seed x case bootstrap interval of the zero-shot accuracy (fractions)}}."""
    from nas.evaluation.stats import seed_case_bootstrap

    out: dict[str, Any] = {}
    for model, runs in cases.items():
        for attribute in attributes:
            x = _outcomes(runs, "zero_shot", attribute)
            if x is not None:
                out.setdefault(model, {})[attribute] = seed_case_bootstrap(x, **settings.kwargs).to_dict()
    return out


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return [round(float(v), 5) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def stage_evaluate(cfg: dict[str, Any], record: Recorder) -> None:
    import time

    import torch

    from nas.evaluation.linear_probe import public
    from nas.evaluation.scene_attributes import KIND
    from nas.evaluation.seeds import aggregate
    from nas.models.uta import UTAPretrainer

    clock, seconds = time.perf_counter(), {}
    ctx = stage_context(cfg)
    root = output_root(cfg)
    trained = input_root(root, PRETRAIN_RUN, "uta_pretrain")
    section, ev = ctx.section, ctx.section.evaluation
    teacher = load_stage_teacher(ctx)
    data = held_out(ctx)
    reference = UTAPretrainer(build_student(ctx), teacher, section.masking)  # the teacher on the student grid
    teacher_tokens = batched(reference.teacher_tokens, data.images, ev.batch_size)
    teacher_zs = teacher_zero_shot(teacher, data, ev.batch_size, outcomes=True)
    teacher_probes = probes(teacher.image_tokens, data, ctx)
    cases: dict[str, list[dict[str, Any]]] = {TEACHER: [_cases_of(teacher_zs, teacher_probes)]}
    seeds: dict[str, list[int]] = {TEACHER: [section.seeds[0]]}
    result: dict[str, Any] = {
        "split": ev.split,
        "zero_shot_images": len(data.zero_shot_rows),
        "probe_train_images": len(data.probe_images),
        "probe_test_images": len(data.images),
        "alignment_threshold": ev.alignment_threshold,
        "attributes": {a: {"kind": KIND[a], "feature": f} for a, f in probe_features_of(ctx).items()},
        "teacher": {"zero_shot": public(teacher_zs), "probes": public(teacher_probes)},
    }
    seconds["teacher"] = time.perf_counter() - clock
    classifier = classifier_of(teacher)
    aligned: dict[str, list[int]] = {}
    if ev.untrained:
        clock = time.perf_counter()
        per_seed = []
        for seed in section.seeds:
            torch.manual_seed(seed)  # the student every arm of this seed starts from (manual_seed(seed))
            run, run_cases = measure_student(
                build_student(ctx), ctx, section.main_arm, data, classifier, teacher_tokens
            )
            run.pop("_heatmap")
            per_seed.append(run)
            cases.setdefault(UNTRAINED, []).append(run_cases)
        seeds[UNTRAINED] = list(section.seeds)
        result[UNTRAINED] = {
            "seeds": list(section.seeds),
            "mean_std": aggregate(per_seed),
            "per_seed": per_seed,
        }
        # The spec's "falls from ~1": 1 - cos of the untrained students.
        result["heldout_1mcos_initial"] = sum(r["heldout_1mcos"] for r in per_seed) / len(per_seed)
        seconds[UNTRAINED] = time.perf_counter() - clock
    else:
        torch.manual_seed(section.seeds[0])
        from nas.objectives.uta import token_cosine

        untrained = batched(build_student(ctx).eval(), data.images, ev.batch_size)
        result["heldout_1mcos_initial"] = float(1 - token_cosine(untrained, teacher_tokens).mean())
    result["arms"], heatmaps = {}, {}
    result["context_arms"] = [a for a in section.arms if a not in section.trained_arms]  # masks only
    for arm in section.trained_arms:
        clock = time.perf_counter()
        arm_seeds = list(section.arm_seeds(arm))
        per_seed = []
        for seed in arm_seeds:
            run, run_cases = measure_student(
                load_student(ctx, student_file(arm, seed, trained)),
                ctx,
                arm,
                data,
                classifier,
                teacher_tokens,
            )
            per_seed.append(run)
            cases.setdefault(arm, []).append(run_cases)
        seeds[arm] = arm_seeds
        aligned[arm] = [s for s, run in zip(arm_seeds, per_seed) if run["aligned"]]
        heatmaps[arm] = torch.tensor([run.pop("_heatmap") for run in per_seed]).mean(dim=0).tolist()
        summary = aggregate(per_seed)
        result["arms"][arm] = {
            "seeds": arm_seeds,
            "aligned_seeds": aligned[arm],
            "mean_std": summary,
            "per_seed": per_seed,
        }
        print(
            f"uta_evaluate[{arm}]: zero-shot mean {summary['zero_shot_mean']['mean']:.1f}, held-out 1-cos "
            f"{summary['heldout_1mcos']['mean']:.3f}, CLS 1-cos {summary['heldout_1mcos_cls']['mean']:.3f} "
            f"(aligned seeds {aligned[arm]} of {arm_seeds})"
        )
        record.log_scalar(f"{arm}.zero_shot_mean", summary["zero_shot_mean"]["mean"])
        record.log_scalar(f"{arm}.heldout_1mcos", summary["heldout_1mcos"]["mean"])
        seconds[arm] = time.perf_counter() - clock
    tuned = input_root(root, FINETUNE_RUN, "uta_finetune") if section.finetune.enabled else root
    finetuned = section.finetune.enabled and all(
        (tuned / FINETUNE_RUN / f"seed{seed}" / "student.pt").is_file() for seed in section.seeds
    )
    result["finetune_enabled"] = section.finetune.enabled
    if finetuned:
        result[FINETUNED], cases[FINETUNED], aligned[FINETUNED] = evaluate_finetuned(ctx, data)
        seeds[FINETUNED] = list(section.seeds)
    clock = time.perf_counter()
    chance = {a: r["chance"] for a, r in teacher_zs.items()}
    findings, learned = uta_findings(cases, seeds, aligned, chance, ctx)
    result["findings"] = [row.to_json() for row in findings]
    result["findings_settings"] = {
        "level": ev.findings.level,
        "resamples": ev.findings.resamples,
        "margin": ev.findings.margin,
    }
    result["teacher_learned"] = learned
    result["zero_shot_intervals"] = zero_shot_intervals(cases, list(chance), ev.findings)
    for name, runs in cases.items():
        for seed, run_cases in zip(seeds[name], runs):
            write_json(root / EVAL_RUN / "cases" / name / f"seed{seed}.json", _jsonable(run_cases))
    for row in findings:
        print(
            f"uta_evaluate finding [{row.key}]: {row.estimate} [{row.low}, {row.high}] {row.unit} -> {row.verdict}"
        )
    seconds["findings"] = time.perf_counter() - clock
    clock = time.perf_counter()
    rows = fine_grained_rows(ctx, teacher, finetuned) if ev.fine_grained else {}
    seconds["fine_grained"] = time.perf_counter() - clock
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    write_json(root / METRICS / "evaluate.json", result)
    write_json(root / METRICS / "figure.json", figure_data(ctx, heatmaps, reference.student.grid))
    write_json(root / FINE_GRAINED, {"recipe": "uta", "rows": rows})
    record.add_artifact(root / METRICS / "evaluate.json", name="evaluate_metrics.json")


STAGE_MAINS = {
    "uta_teacher": stage_teacher,
    "uta_pretrain": stage_pretrain,
    "uta_finetune": stage_finetune,
    "uta_evaluate": stage_evaluate,
}


def main(argv=None) -> None:
    args = parse_stage_args("uta", argv)  # --stage: one of STAGES
    launch = {
        "uta_teacher": ("uta", "teacher", "train", "launch"),
        "uta_pretrain": ("uta", "student", "train", "launch"),
    }
    run_stage(args.stage, STAGE_MAINS[args.stage], args=args, nproc_key=launch.get(args.stage))


if __name__ == "__main__":
    main()
