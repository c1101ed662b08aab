"""Stages `mug_pretrain` and `mug_evaluate`: the MUG recipe (MUG_UTA.md §1) in the same harness.

`mug_pretrain` trains every ablation arm (params `mug.arms`: MAE only, caption only, MUG) for every
seed (`mug.seeds`) in one process, each run through the one Ignite engine (`nas.engine.fit`) with
equal steps, in its own resumable folder: a killed stage resumes the run it was in and skips the
finished ones. Before training, the training captions are checked once: an empty caption is an
error naming it or a counted skip (`mug.empty_captions`), captions longer than the context are
counted (the tokenizer cuts them), and the decoder's corpus vocabulary is read off them.

`mug_evaluate` scores every run: held-out masked-patch MSE and caption cross-entropy against their
values at initialisation and the trivial baselines; linear probes per scene attribute on frozen
encoder features; greedy and beam captions of the test images with per-attribute exact match; the
fine-grained probe suite under the caption-likelihood scorer; a figure of samples.

Outputs (fixed paths, named in dvc.yaml):
  checkpoints/mug/<arm>/seed<k>/<config digest>/   resumable epoch checkpoints (DVC persist)
  runs/mug_pretrain/<arm>/seed<k>/{model.pt,config.json}   final weights and the run's config
  runs/mug_evaluate/                               score files, sample figure
  metrics/mug/pretrain.json, metrics/mug/evaluate.json, metrics/fine_grained/mug.json
An ad-hoc run (`--set`, another `--params`) writes the same tree under runs/adhoc/<tag>/ instead (the
paths below are relative to the run's output root, nas.config.params.output_root); `mug_evaluate` then
scores the runs of its own folder where it has them, else the pipeline's.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from experiments.common import PrefixedRecorder, Recorder, parse_stage_args, run_stage
from nas.config.base import to_dict
from nas.config.mug_card import MUGSection, effective_model, effective_sections
from nas.config.params import PIPELINE_ROOT, input_root, output_root

STAGES = ("mug_pretrain", "mug_evaluate")
RUNS = Path("runs/mug_pretrain")
EVAL_DIR = Path("runs/mug_evaluate")
CHECKPOINTS = Path("checkpoints/mug")
METRICS = Path("metrics/mug")
FINE_GRAINED = Path("metrics/fine_grained/mug.json")


def run_dir(arm: str, seed: int, root: Path = PIPELINE_ROOT) -> Path:
    return root / RUNS / arm / f"seed{seed}"


def set_threads(section: MUGSection) -> None:
    if section.torch_threads is not None:
        import torch

        torch.set_num_threads(section.torch_threads)


# ---- the training captions, checked once --------------------------------------------------------


def caption_census(annotation: Path, tokenizer: Any, policy: str, out_dir: Path) -> dict[str, Any]:
    """Read the pairs file, apply the empty-caption policy, tokenize every caption once.

    Returns {"annotation": the file to train on (a filtered copy when captions were skipped),
    "pairs", "empty_skipped", "truncated", "bpe_ids" (sorted distinct ids, SOT/EOT included),
    "targets" (every teacher-forced label id, EOT included: the unigram baseline's data)}.
    """
    from nas.data.bpe_tokenizer import EmptyCaptionError
    from nas.engine.checkpoint import atomic_write_text

    records = json.loads(annotation.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{annotation}: expected a JSON list of records")
    kept_records, skipped, truncated = [], [], 0
    ids: set[int] = set()
    targets: list[int] = []
    for index, record in enumerate(records):
        captions = record.get("caption") if isinstance(record, dict) else None
        single = isinstance(captions, str)
        captions = [captions] if single else captions
        if not isinstance(captions, list):
            raise ValueError(f"{annotation}, record {index}: 'caption' must be a string or a list of strings")
        good = []
        for k, caption in enumerate(captions):
            where = f"{annotation}, record {index}" + ("" if single else f", caption {k}")
            try:
                encoded = tokenizer.encode([caption])
            except EmptyCaptionError as exc:
                if policy == "error":
                    raise EmptyCaptionError(
                        f"{where}: empty or whitespace-only caption {caption!r} (set mug.empty_captions: "
                        "skip to drop and count such captions)"
                    ) from exc
                skipped.append(where)
                continue
            good.append(caption)
            truncated += int(encoded.truncated[0])
            row = encoded.input_ids[0][encoded.attention_mask[0].bool()].tolist()
            ids.update(row)
            targets.extend(row[1:])
        if good:
            kept_records.append({**record, "caption": good[0] if single else good})
    train_file = annotation
    if skipped:
        train_file = out_dir / f"{annotation.stem}.nonempty.json"
        atomic_write_text(train_file, json.dumps(kept_records) + "\n")
    pairs = sum(1 if isinstance(r["caption"], str) else len(r["caption"]) for r in kept_records)
    return {
        "annotation": str(train_file),
        "pairs": pairs,
        "empty_skipped": len(skipped),
        "empty_skipped_where": skipped[:20],
        "truncated": truncated,
        "bpe_ids": sorted(ids),
        "targets": targets,
    }


# ---- mug_pretrain -------------------------------------------------------------------------------


def build_train_loader(typed: dict[str, Any], annotation: str, tokenizer: Any):
    from nas.data.bpe_tokenizer import make_bpe_collate
    from nas.data.captions import CaptionDataset
    from nas.data.loader import build_loader
    from nas.data.transforms import build_train_transform

    data = typed["data"]
    dataset = CaptionDataset(
        annotation,
        data.images,
        build_train_transform(typed["transform"]),
        skip_bad_images=data.skip_bad_images,
        allow_outside_root=data.allow_outside_root,
        max_words=None,  # the CLIP tokenizer cleans the text itself; too-long captions are cut and counted
    )
    from experiments.common import preflight_once

    preflight_once(dataset, data)
    return build_loader(dataset, typed["loader"], make_bpe_collate(tokenizer), shuffle=True)


def build_mug(section: MUGSection, arm: str, seed: int, bpe_ids: list[int]):
    """The arm's model, initialised from `seed` exactly as its training run starts."""
    from ignite.utils import manual_seed

    from experiments.pretrain import build_model

    manual_seed(seed)
    model = build_model(section.arm_model(arm))
    model.set_vocabulary(bpe_ids)
    return model


def run_config(cfg: dict[str, Any], section: MUGSection, arm: str, seed: int) -> dict[str, Any]:
    """The resolved config of one run, as the audit reads it: `mug.model` carries the arm's overrides."""
    out = json.loads(json.dumps(cfg))
    out["mug"] = to_dict(section) | {"model": to_dict(section.arm_model(arm))}
    out["run"] = {"arm": arm, "seed": seed}
    return out


def pretrain(cfg: dict[str, Any], record: Recorder) -> None:
    import ignite.distributed as idist

    from experiments.pretrain import training_callbacks
    from nas.config.stages import config_digest
    from nas.data.bpe_tokenizer import BpeTokenizer
    from nas.engine.checkpoint import atomic_save, atomic_write_text, read_checkpoint
    from nas.engine.fit import fit

    stage_start = time.perf_counter()
    root = output_root(cfg)
    typed = effective_sections(cfg)
    section, data = typed["section"], typed["data"]
    set_threads(section)
    context = section.arm_model(next(iter(section.arms)))  # every arm shares the text context
    tokenizer = BpeTokenizer(effective_model(context)["caption"]["context_length"])
    census = caption_census(
        data.path(section.train_file or data.train_file), tokenizer, section.empty_captions, root / RUNS
    )
    print(
        f"mug_pretrain: {census['pairs']} training pairs, {len(census['bpe_ids'])} distinct BPE ids, "
        f"{census['truncated']} captions cut to the context, {census['empty_skipped']} empty captions skipped"
    )
    record.info("captions", {k: v for k, v in census.items() if k not in ("targets", "bpe_ids")})
    loader = build_train_loader(typed, census["annotation"], tokenizer)
    # What a run's weights depend on (its checkpoints are keyed by it): not the evaluation knobs,
    # the thread count, or the other arms and seeds.
    training = {
        k: v for k, v in cfg["mug"].items() if k not in ("evaluate", "torch_threads", "arms", "seeds")
    }
    shared = {k: cfg[k] for k in ("data", "loader") if k in cfg} | {"mug": training}
    runs: dict[str, Any] = {}
    for arm in section.arms:
        for seed in section.seeds:
            name = f"{arm}/seed{seed}"
            model = build_mug(section, arm, seed, census["bpe_ids"])
            arm_spec = to_dict(section.arm_model(arm))
            digest = config_digest(
                shared | {"arm": arm, "model": arm_spec, "seed": seed, "stage": "mug_pretrain"}
            )
            output_dir = root / CHECKPOINTS / arm / f"seed{seed}" / digest
            on_epoch_end, on_log_step = training_callbacks(
                "mug_pretrain", name, PrefixedRecorder(record, f"{arm}.seed{seed}.")
            )
            start = time.perf_counter()
            result = fit(
                model,
                loader,
                replace(section.train, seed=seed),
                output_dir=output_dir,
                on_epoch_end=on_epoch_end,
                on_log_step=on_log_step,
            )
            if idist.get_rank() != 0:
                continue
            out = run_dir(arm, seed, root)
            atomic_save({"model": read_checkpoint(result["last_checkpoint"])["model"]}, out / "model.pt")
            atomic_write_text(
                out / "config.json", json.dumps(run_config(cfg, section, arm, seed), indent=2) + "\n"
            )
            history = result["history"]
            runs[name] = {
                "arm": arm,
                "seed": seed,
                "config_digest": digest,
                "resumed_from": result["resumed_from"],
                "seconds": round(time.perf_counter() - start, 2),
                "final": history[-1] if history else {},
                "epochs": history,
                "steps": result["steps"],
            }
    if idist.get_rank() != 0:
        return
    summary = {
        "stage": "mug_pretrain",
        "captions": {k: v for k, v in census.items() if k not in ("targets", "bpe_ids")},
        "vocabulary_size": len(census["bpe_ids"]) + 1,
        "stage_seconds": round(time.perf_counter() - stage_start, 1),  # the process's start-up aside
        "runs": runs,
    }
    atomic_write_text(root / METRICS / "pretrain.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(
        root / RUNS / "vocabulary.json",
        json.dumps({"bpe_ids": census["bpe_ids"], "targets": census["targets"]}) + "\n",
    )
    record.add_artifact(root / METRICS / "pretrain.json", name="mug_pretrain.json")


# ---- mug_evaluate -------------------------------------------------------------------------------


def load_run(arm: str, seed: int, device: str = "cpu", root: Path = PIPELINE_ROOT):
    """The trained model of one run, rebuilt from its recorded config."""
    from nas.config.base import from_dict
    from nas.config.stages import ModelSpec
    from nas.engine.checkpoint import read_checkpoint
    from nas.models.registry import create_model

    folder = run_dir(arm, seed, root)
    if not (folder / "model.pt").is_file():
        raise FileNotFoundError(f"{folder / 'model.pt'} is missing: run the mug_pretrain stage first")
    config = json.loads((folder / "config.json").read_text())
    spec = from_dict(ModelSpec, config["mug"]["model"], f"{folder / 'config.json'}:mug.model")
    model = create_model(spec.name, **spec.overrides)
    model.load_state_dict(read_checkpoint(folder / "model.pt")["model"])
    return model.to(device).eval()


def heldout_set(typed: dict[str, Any], tokenizer: Any, transform) -> dict[str, Any]:
    """Held-out pairs (distinct images once, every caption) for the MSE and the caption CE."""
    import torch

    from nas.data.captions import load_pairs, stack_images

    data, split = typed["data"], typed["section"].evaluate.heldout
    annotation = data.path(data.val_file if split == "val" else data.test_file)
    pairs = load_pairs(annotation, max_words=None)
    index: dict[str, int] = {}
    rows = [index.setdefault(image, len(index)) for image, _ in pairs]
    encoded = tokenizer.encode([caption for _, caption in pairs])
    return {
        "images": stack_images(
            data.images, list(index), transform, data.root, allow_outside_root=data.allow_outside_root
        ),
        "rows": torch.tensor(rows),
        "input_ids": encoded.input_ids,
        "attention_mask": encoded.attention_mask,
        "file": str(annotation),
    }


def heldout_losses(model, held: dict[str, Any], mask_seed: int, batch_size: int) -> dict[str, float]:
    """Masked-patch MSE (one fixed mask per image), caption CE given that masked view (the training
    objective) and given the full image; plus the patch-mean baseline on the same masks."""
    import torch

    from nas.models.masking import random_masking
    from nas.objectives.mug import patchify, reconstruction_targets, teacher_forcing, token_log_probs

    generator = torch.Generator().manual_seed(mask_seed)
    images = held["images"]
    view = random_masking(len(images), model.num_patches, model.cfg.mask_ratio, generator=generator)
    sums = {"mse": 0.0, "baseline": 0.0, "hidden": 0.0, "ce": 0.0, "ce_full": 0.0, "tokens": 0.0}
    with torch.no_grad():
        latents, full = [], []
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            x = images[part]
            sub = view.select(part)
            latent = model.encode(x, sub)
            target = reconstruction_targets(patchify(x, model.patch_size), model.cfg.norm_pix_loss)
            per_patch = (model.reconstruct(latent, sub) - target).pow(2).mean(-1)
            sums["mse"] += float((per_patch * sub.mask).sum())
            sums["baseline"] += float((target.pow(2).mean(-1) * sub.mask).sum())
            sums["hidden"] += float(sub.mask.sum())
            latents.append(latent)
            full.append(model.encode(x))
        latents, full = torch.cat(latents), torch.cat(full)
        ids = model.to_local(held["input_ids"])
        for start in range(0, len(ids), batch_size):
            part = slice(start, start + batch_size)
            rows = held["rows"][part]
            inputs, labels, label_mask = teacher_forcing(ids[part], held["attention_mask"][part])
            counted = label_mask.float()
            sums["ce"] -= float(
                (token_log_probs(model.caption_logits(latents[rows], inputs), labels) * counted).sum()
            )
            sums["ce_full"] -= float(
                (token_log_probs(model.caption_logits(full[rows], inputs), labels) * counted).sum()
            )
            sums["tokens"] += float(counted.sum())
    return {
        "recon_mse": sums["mse"] / sums["hidden"],
        "recon_mse_patch_mean_baseline": sums["baseline"] / sums["hidden"],
        "caption_ce": sums["ce"] / sums["tokens"],
        "caption_ce_full_image": sums["ce_full"] / sums["tokens"],
    }


def features(model, images, pooling: str, batch_size: int):
    import torch

    with torch.no_grad():
        return torch.cat(
            [model.features(images[s : s + batch_size], pooling) for s in range(0, len(images), batch_size)]
        ).numpy()


def evaluate_run(model, shared: dict[str, Any], section: MUGSection, scores_dir: Path) -> dict[str, Any]:
    from nas.evaluation.caption_scorer import CaptionLikelihoodScorer
    from nas.evaluation.captioning import exact_match_rates, generate_captions
    from nas.evaluation.linear_probe import probe_attributes
    from nas.evaluation.probe_suite import run_probe_suite

    ev = section.evaluate
    tokenizer = shared["tokenizer"]
    result: dict[str, Any] = {
        "heldout": heldout_losses(model, shared["heldout"], ev.mask_seed, ev.batch_size)
    }
    train_x = features(model, shared["train_images"], ev.probe_feature, ev.batch_size)
    test_x = features(model, shared["test_images"], ev.probe_feature, ev.batch_size)
    result["probes"] = probe_attributes(
        train_x, shared["train_labels"], test_x, shared["test_labels"], ev.probe
    )
    captions = {}
    images = shared["caption_images"]
    for method, beam in (("greedy", False), ("beam", True)):
        generated = generate_captions(model, images, tokenizer.decode, ev.generation, beam=beam)
        texts = [g.text for g in generated]
        captions[method] = {
            "exact_match": exact_match_rates(texts, shared["caption_scenes"], shared["vocab"]),
            "stopped_at_eot": 100.0 * sum(g.finished for g in generated) / len(generated),
            "texts": texts,
        }
    result["captions"] = captions
    scorer = CaptionLikelihoodScorer(model, shared["eval_transform"], tokenizer, batch_size=ev.batch_size)
    result["fine_grained"] = run_probe_suite([scorer], shared["probes_root"], ev.benchmarks, scores_dir)
    result["fine_grained_truncated_texts"] = scorer.truncated
    return result


def shared_inputs(typed: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """What every run is scored on, loaded once: images, labels, scenes, held-out pairs."""
    from nas.data.captions import stack_images
    from nas.data.transforms import build_eval_transform
    from nas.evaluation.captioning import CaptionVocabulary
    from nas.evaluation.scene_attributes import load_split_attributes
    from nas.jsonfile import read_json_file

    data, ev = typed["data"], typed["section"].evaluate
    transform = build_eval_transform(typed["transform"])
    train_paths, train_labels = load_split_attributes(data.root, "train")
    test_paths, test_labels = load_split_attributes(data.root, "test")
    test_images = stack_images(
        data.root, test_paths, transform, data.root, allow_outside_root=data.allow_outside_root
    )
    scenes = read_json_file(Path(data.root) / "test_scenes.json", expect=list, missing="run the `data` stage")
    count = len(test_paths) if ev.caption_images is None else min(ev.caption_images, len(test_paths))
    return {
        "tokenizer": tokenizer,
        "eval_transform": transform,
        "train_images": stack_images(
            data.root, train_paths, transform, data.root, allow_outside_root=data.allow_outside_root
        ),
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
        "test_paths": test_paths,
        "caption_images": test_images[:count],
        "caption_scenes": scenes[:count],
        "vocab": CaptionVocabulary.from_synthetic(data.synthetic),
        "heldout": heldout_set(typed, tokenizer, transform),
        "probes_root": data.probes_root,
    }


def baselines(shared: dict[str, Any], vocabulary: dict[str, Any]) -> dict[str, float]:
    from nas.objectives.mug import unigram_cross_entropy

    held = shared["heldout"]
    targets = held["input_ids"][:, 1:][held["attention_mask"][:, 1:].bool()].tolist()
    return {
        "caption_ce_unigram": unigram_cross_entropy(
            vocabulary["targets"], targets, vocab_size=len(vocabulary["bpe_ids"]) + 1
        ),
    }


def evaluate(cfg: dict[str, Any], record: Recorder) -> None:
    import torch

    from nas.data.bpe_tokenizer import BpeTokenizer
    from nas.engine.checkpoint import atomic_write_text
    from nas.evaluation.seeds import aggregate
    from nas.reporting.mug_section import sample_figure

    stage_start = time.perf_counter()
    root = output_root(cfg)
    trained = input_root(root, RUNS, "mug_pretrain")  # the runs it scores
    torch.manual_seed(cfg["seed"])
    typed = effective_sections(cfg)
    section, ev = typed["section"], typed["section"].evaluate
    set_threads(section)
    first_arm = next(iter(section.arms))
    tokenizer = BpeTokenizer(effective_model(section.arm_model(first_arm))["caption"]["context_length"])
    vocabulary = json.loads((trained / RUNS / "vocabulary.json").read_text())
    shared = shared_inputs(typed, tokenizer)
    result: dict[str, Any] = {"stage": "mug_evaluate", "baselines": baselines(shared, vocabulary), "arms": {}}
    rows: dict[str, Any] = {}
    initial_cache: dict[str, dict[str, float]] = {}
    for arm in section.arms:
        per_seed, initial = [], []
        for seed in section.seeds:
            model = load_run(arm, seed, root=trained)
            scores_dir = root / EVAL_DIR / arm / f"seed{seed}" / "scores"
            run = evaluate_run(model, shared, section, scores_dir)
            # The loss weights do not change the initial weights: arms of one seed share them.
            spec = section.arm_model(arm)
            key = json.dumps(
                [seed, spec.name, {k: v for k, v in spec.overrides.items() if not k.endswith("_weight")}]
            )
            if key not in initial_cache:
                start = build_mug(section, arm, seed, vocabulary["bpe_ids"]).eval()
                initial_cache[key] = heldout_losses(start, shared["heldout"], ev.mask_seed, ev.batch_size)
            initial.append(initial_cache[key])
            per_seed.append(run)
            greedy = run["captions"]["greedy"]["exact_match"]
            print(
                f"mug_evaluate[{arm}/seed{seed}]: held-out MSE {run['heldout']['recon_mse']:.3f} "
                f"(init {initial[-1]['recon_mse']:.3f}), caption CE {run['heldout']['caption_ce']:.3f} "
                f"(init {initial[-1]['caption_ce']:.3f}); probes "
                + ", ".join(f"{k} {v['accuracy']:.0f}" for k, v in run["probes"].items())
                + f"; greedy exact match all {greedy['all']['accuracy']:.0f}%"
            )
            if arm == ev.figure_arm and seed == section.seeds[0] and ev.figure_images:
                n = ev.figure_images
                result["figure"] = str(
                    sample_figure(
                        model,
                        shared["test_images"][:n],
                        run["captions"]["greedy"]["texts"][:n],
                        [s["captions"][0]["text"] for s in shared["caption_scenes"][:n]],
                        root / EVAL_DIR / "figures" / "mug_samples.png",
                        mean=typed["transform"].mean,
                        std=typed["transform"].std,
                        mask_seed=ev.mask_seed,
                    )
                )
        numbers = [{k: v for k, v in run.items() if k in ("heldout", "probes")} for run in per_seed]
        matches = [{m: run["captions"][m]["exact_match"] for m in ("greedy", "beam")} for run in per_seed]
        result["arms"][arm] = {
            "seeds": list(section.seeds),
            "model_overrides": section.arms[arm],
            "summary": aggregate(numbers) | {"captions": aggregate(matches), "initial": aggregate(initial)},
            "per_seed": [run | {"initial": init} for run, init in zip(per_seed, initial)],
        }
        # The shared fine-grained tables score pairs by caption likelihood: an arm whose caption
        # decoder never trained (MAE only) has no such score; its rows stay in evaluate.json.
        if effective_model(section.arm_model(arm))["cap_weight"] > 0:
            rows["mug" if arm == "mug" else f"mug/{arm}"] = {
                "seeds": list(section.seeds),
                "per_seed": [run["fine_grained"] for run in per_seed],
            }
    count = min(8, len(shared["caption_scenes"]))
    result["samples"] = [
        {
            "image": shared["test_paths"][i],
            "truth": [c["text"] for c in shared["caption_scenes"][i]["captions"]],
            **{
                f"{arm}/{m}": result["arms"][arm]["per_seed"][0]["captions"][m]["texts"][i]
                for arm in section.arms
                for m in ("greedy", "beam")
            },
        }
        for i in range(count)
    ]
    result["stage_seconds"] = round(time.perf_counter() - stage_start, 1)
    atomic_write_text(root / METRICS / "evaluate.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(root / FINE_GRAINED, json.dumps({"recipe": "mug", "rows": rows}, indent=2) + "\n")
    record.add_artifact(root / METRICS / "evaluate.json", name="mug_evaluate.json")


def main(argv=None) -> None:
    args = parse_stage_args("mug", argv)  # --stage: one of STAGES
    if args.stage == "mug_pretrain":
        run_stage("mug_pretrain", pretrain, args=args, nproc_key=("mug", "train", "launch"))
    else:
        run_stage("mug_evaluate", evaluate, args=args)


if __name__ == "__main__":
    main()
