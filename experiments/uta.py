"""Stages `uta_teacher`, `uta_pretrain`, `uta_finetune`, `uta_evaluate`: the UTA recipe (MUG_UTA.md §2).

`uta_teacher` trains the tiny open_clip CLIP on the synthetic pairs through the one Ignite engine and
freezes it (paper scale: loads an open_clip EVA-CLIP checkpoint from `uta.teacher.checkpoint`
instead), and records its zero-shot attribute accuracy. `uta_pretrain` trains the student of every
masking arm (`uta.arms`) for every seed (`uta.seeds`) in one process, equal steps, each run in its
own resumable folder: a killed stage resumes the run it was in and skips the finished ones.
`uta_finetune` (optional, `uta.finetune.enabled`) fine-tunes the main arm's students with the
teacher's text tower contrastively (fixed temperature, timm's LAMB with layer-wise lr decay).
`uta_evaluate` measures every run: zero-shot attribute accuracy through the frozen text tower next to
the teacher's own, linear probes per attribute, held-out 1 - cos (full view and masked view, and per
grid position), and the fine-grained probes under the student-text cosine scorer.

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

    ctx = read_context(cfg)
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

    ctx = read_context(cfg)
    root = output_root(cfg)
    section = ctx.section
    teacher = load_stage_teacher(ctx)
    loader = pair_loader(
        ctx, section.student.train_file, section.student.loader, "uta.student.loader", teacher.context_length
    )
    runs: dict[str, dict[str, Any]] = {}
    # Memoized images never change, so neither do the frozen teacher's tokens: one forward per image.
    token_cache: dict[int, Any] | None = {} if section.memoize_images else None
    for arm in section.arms:
        masking = section.arm_masking(arm)
        for seed in section.seeds:
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

    ctx = read_context(cfg)
    section = ctx.section
    ft = section.finetune
    root = output_root(cfg)
    (root / FINETUNE_RUN).mkdir(parents=True, exist_ok=True)
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
            )
            if idist.get_rank() != 0:
                continue
            out_dir = root / FINETUNE_RUN / f"seed{seed}"
            atomic_save(model.student.state_dict(), out_dir / "student.pt")
            atomic_save(model.text.clip.state_dict(), out_dir / "text.pt")
            steps = [row["clip"] for row in result["steps"] if "clip" in row]
            summary["runs"][str(seed)] = {
                "first_logged_loss": steps[0] if steps else None,
                "final_epoch_loss": result["history"][-1]["clip"] if result["history"] else None,
                "steps": sum(epoch.get("steps", 0) for epoch in result["history"]),
                "config_digest": digest,
                "resumed_from": result["resumed_from"],
            }
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


def teacher_zero_shot(teacher, data: HeldOut, batch_size: int) -> dict[str, Any]:
    from nas.evaluation.zero_shot import zero_shot_accuracy

    embeddings = batched(teacher.encode_image, data.images, batch_size)
    return zero_shot_accuracy(embeddings, data.labels, classifier_of(teacher), rows=data.zero_shot_rows)


def probes(features, data: HeldOut, ctx: Context, batch_size: int) -> dict[str, Any]:
    """Linear probes per scene attribute on frozen features `features(images) -> [B, D]`."""
    from nas.evaluation.linear_probe import probe_attributes

    train_x = batched(features, data.probe_images, batch_size).numpy()
    test_x = batched(features, data.images, batch_size).numpy()
    return probe_attributes(train_x, data.probe_labels, test_x, data.labels, ctx.section.evaluation.probe)


def measure_student(
    student, ctx: Context, arm: str, data: HeldOut, classifier, teacher_tokens
) -> dict[str, Any]:
    """Zero-shot, linear probes, held-out 1 - cos (full view, own masking, per position) of one student."""
    import torch
    import torch.nn.functional as F

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
    zero_shot = zero_shot_accuracy(embeddings, data.labels, classifier, rows=data.zero_shot_rows)
    generator = torch.Generator().manual_seed(ev.mask_seed)
    keep = sample_visible(len(data.images), student.grid, ctx.section.arm_masking(arm), generator=generator)
    with torch.no_grad():
        masked = token_cosine(student(data.images, keep), gather_tokens(teacher_tokens, keep))
    position = full[:, 1:].mean(dim=0)
    return {
        "zero_shot": zero_shot,
        "zero_shot_mean": mean_accuracy(zero_shot),
        "probes": probes(student.features, data, ctx, ev.batch_size),
        "heldout_1mcos": float(1 - full.mean()),
        "heldout_1mcos_masked": float(1 - masked.mean()),
        "heldout_1mcos_cls": float(1 - full[:, 0].mean()),
        "position_cos_std": float(position.std()),  # spatial (non-)uniformity of the heatmap
        "_heatmap": position.reshape(student.grid).tolist(),
    }


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
    for arm in ctx.section.arms:
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


def evaluate_finetuned(ctx: Context, data: HeldOut) -> dict[str, Any]:
    """Zero-shot of the fine-tuned students through their fine-tuned text towers."""
    from nas.evaluation.seeds import aggregate
    from nas.evaluation.zero_shot import mean_accuracy, zero_shot_accuracy

    per_seed = []
    for seed in ctx.section.seeds:
        student, text = load_finetuned(ctx, seed)
        embeddings = batched(student.encode_image, data.images, ctx.section.evaluation.batch_size)
        zs = zero_shot_accuracy(embeddings, data.labels, classifier_of(text), rows=data.zero_shot_rows)
        per_seed.append({"zero_shot": zs, "zero_shot_mean": mean_accuracy(zs)})
    return {"seeds": list(ctx.section.seeds), "mean_std": aggregate(per_seed), "per_seed": per_seed}


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


def stage_evaluate(cfg: dict[str, Any], record: Recorder) -> None:
    import torch

    from nas.evaluation.seeds import aggregate
    from nas.models.uta import UTAPretrainer
    from nas.objectives.uta import token_cosine

    ctx = read_context(cfg)
    root = output_root(cfg)
    trained = input_root(root, PRETRAIN_RUN, "uta_pretrain")
    section, ev = ctx.section, ctx.section.evaluation
    teacher = load_stage_teacher(ctx)
    data = held_out(ctx)
    reference = UTAPretrainer(build_student(ctx), teacher, section.masking)  # the teacher on the student grid
    teacher_tokens = batched(reference.teacher_tokens, data.images, ev.batch_size)
    result: dict[str, Any] = {
        "split": ev.split,
        "zero_shot_images": len(data.zero_shot_rows),
        "teacher": {
            "zero_shot": teacher_zero_shot(teacher, data, ev.batch_size),
            "probes": probes(lambda x: teacher.image_tokens(x)[:, 0], data, ctx, ev.batch_size),
        },
    }
    # The spec's "falls from ~1": 1 - cos of an untrained student (the first seed's initialisation).
    torch.manual_seed(section.seeds[0])
    untrained = batched(build_student(ctx).eval(), data.images, ev.batch_size)
    result["heldout_1mcos_initial"] = float(1 - token_cosine(untrained, teacher_tokens).mean())
    classifier = classifier_of(teacher)
    result["arms"], heatmaps = {}, {}
    for arm in section.arms:
        per_seed = [
            measure_student(
                load_student(ctx, student_file(arm, seed, trained)),
                ctx,
                arm,
                data,
                classifier,
                teacher_tokens,
            )
            for seed in section.seeds
        ]
        heatmaps[arm] = torch.tensor([run.pop("_heatmap") for run in per_seed]).mean(dim=0).tolist()
        summary = aggregate(per_seed)
        result["arms"][arm] = {"seeds": list(section.seeds), "mean_std": summary, "per_seed": per_seed}
        print(
            f"uta_evaluate[{arm}]: zero-shot mean {summary['zero_shot_mean']['mean']:.1f}, "
            f"held-out 1-cos {summary['heldout_1mcos']['mean']:.3f}"
        )
        record.log_scalar(f"{arm}.zero_shot_mean", summary["zero_shot_mean"]["mean"])
        record.log_scalar(f"{arm}.heldout_1mcos", summary["heldout_1mcos"]["mean"])
    tuned = input_root(root, FINETUNE_RUN, "uta_finetune") if section.finetune.enabled else root
    finetuned = section.finetune.enabled and all(
        (tuned / FINETUNE_RUN / f"seed{seed}" / "student.pt").is_file() for seed in section.seeds
    )
    if finetuned:
        result["finetuned"] = evaluate_finetuned(ctx, data)
    rows = fine_grained_rows(ctx, teacher, finetuned) if ev.fine_grained else {}
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
