"""Stages `mug_pretrain` and `mug_evaluate`: the MUG recipe (MUG_UTA.md §1) in the same harness.

`mug_pretrain` trains every ablation arm (params `mug.arms`: MAE only, caption only, MUG) for every
seed (`mug.seeds`) in one process, each run through the one Ignite engine (`nas.engine.fit`) with
equal steps, in its own resumable folder: a killed stage resumes the run it was in and skips the
finished ones. Before training, the training captions are checked once: an empty caption is an
error naming it or a counted skip (`mug.empty_captions`), captions longer than the context are
counted (the tokenizer cuts them), and the decoder's corpus vocabulary is read off them.

`mug_evaluate` scores the untrained model of every seed (the baseline: same architecture, probes and
seeds) and every run: held-out masked-patch MSE and caption cross-entropy (given the own image and a
shuffled one) against their values at initialisation and the trivial baselines; linear probes per
scene attribute on frozen encoder features (labels the pixels determine: scene_attributes); greedy
and beam captions of the test images with per-attribute exact match (arms that train a captioner);
the fine-grained probe suite under the caption-likelihood scorer; a figure of samples. It then judges
the claims with intervals over seeds and cases (`mug_findings`), writes the per-case outcomes to
runs/mug_evaluate/cases/ and the findings into metrics/mug/evaluate.json.

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
                tensorboard_dir=root / "runs" / "tensorboard" / "mug_pretrain" / arm / f"seed{seed}",
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


def heldout_losses(
    model, held: dict[str, Any], mask_seed: int, batch_size: int, cases: dict[str, Any] | None = None
) -> dict[str, float]:
    """Masked-patch MSE (one fixed mask per image), caption CE given that masked view (the training
    objective) and given the full image; plus the patch-mean baseline on the same masks, and both
    cross-entropies with every caption scored against another image (image k's captions given image
    k - 1's latent: a fixed derangement of unrelated scenes). A caption branch that uses the image
    scores its own image's captions better than a shuffled image's.

    Cross-entropies are per token, averaged over every label token. With `cases` (a dict), per-caption
    figures are stored there: "ce", "ce_shuffled", "ce_full", "ce_full_shuffled" (numpy arrays, one
    entry per held-out caption): the caption's summed negative log-likelihood x captions / tokens, so
    that their mean is exactly the per-token cross-entropy reported (the cases of its interval)."""
    import numpy as np
    import torch

    from nas.models.masking import random_masking
    from nas.objectives.mug import patchify, reconstruction_targets, teacher_forcing, token_log_probs

    generator = torch.Generator().manual_seed(mask_seed)
    images = held["images"]
    view = random_masking(len(images), model.num_patches, model.cfg.mask_ratio, generator=generator)
    sums = {"mse": 0.0, "baseline": 0.0, "hidden": 0.0, "tokens": 0.0}
    names = ("ce", "ce_shuffled", "ce_full", "ce_full_shuffled")
    per_caption: dict[str, list[Any]] = {name: [] for name in names}
    token_sums = dict.fromkeys(names, 0.0)
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
        shifted = torch.roll(
            torch.arange(len(images)), 1
        )  # image k -> image k - 1 (a derangement for n >= 2)
        ids = model.to_local(held["input_ids"])
        for start in range(0, len(ids), batch_size):
            part = slice(start, start + batch_size)
            rows = held["rows"][part]
            inputs, labels, label_mask = teacher_forcing(ids[part], held["attention_mask"][part])
            counted = label_mask.float()
            for name, source, index in (
                ("ce", latents, rows),
                ("ce_shuffled", latents, shifted[rows]),
                ("ce_full", full, rows),
                ("ce_full_shuffled", full, shifted[rows]),
            ):
                nll = -(token_log_probs(model.caption_logits(source[index], inputs), labels) * counted).sum(1)
                token_sums[name] += float(nll.sum())
                per_caption[name].append(nll.numpy())
            sums["tokens"] += float(counted.sum())
    if cases is not None:
        captions = len(ids)
        cases.update({name: np.concatenate(v) * captions / sums["tokens"] for name, v in per_caption.items()})
    return {
        "recon_mse": sums["mse"] / sums["hidden"],
        "recon_mse_patch_mean_baseline": sums["baseline"] / sums["hidden"],
        "caption_ce": token_sums["ce"] / sums["tokens"],
        "caption_ce_full_image": token_sums["ce_full"] / sums["tokens"],
        "caption_ce_shuffled_image": token_sums["ce_shuffled"] / sums["tokens"],
        "caption_ce_full_image_shuffled": token_sums["ce_full_shuffled"] / sums["tokens"],
    }


def probe_features_of(section: MUGSection) -> dict[str, str]:
    """The feature each scene attribute is probed on (mug.evaluate.probe_feature / spatial_probe_feature)."""
    from nas.evaluation.scene_attributes import ATTRIBUTES, SPATIAL_ATTRIBUTES

    ev = section.evaluate
    return {a: ev.spatial_probe_feature if a in SPATIAL_ATTRIBUTES else ev.probe_feature for a in ATTRIBUTES}


def features(model, images, kinds, batch_size: int, grid: int = 2) -> dict[str, Any]:
    """{kind: [N, F] numpy} frozen features of the unmasked encoder for every kind in `kinds`."""
    import torch

    from nas.evaluation.linear_probe import pooled_features

    out: dict[str, list[Any]] = {kind: [] for kind in kinds}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            tokens = model.encode(images[start : start + batch_size])
            for kind in kinds:
                out[kind].append(pooled_features(tokens, kind, grid))
    return {kind: torch.cat(parts).numpy() for kind, parts in out.items()}


def run_probes(model, shared: dict[str, Any], section: MUGSection) -> dict[str, Any]:
    """Linear probes per scene attribute, each on its feature, with per-case outcomes ("_correct")."""
    from nas.evaluation.linear_probe import probe_by_feature

    ev = section.evaluate
    feature_of = probe_features_of(section)
    kinds = sorted(set(feature_of.values()))
    train_x = features(model, shared["train_images"], kinds, ev.batch_size, ev.probe_grid)
    test_x = features(model, shared["test_images"], kinds, ev.batch_size, ev.probe_grid)
    return probe_by_feature(
        train_x, shared["train_labels"], test_x, shared["test_labels"], feature_of, ev.probe, outcomes=True
    )


def evaluate_run(
    model,
    shared: dict[str, Any],
    section: MUGSection,
    scores_dir: Path | None,
    *,
    captions: bool = True,
    beam: bool = True,
    fine_grained: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, per-case outcomes) of one model: held-out losses, probes, captions (greedy, and beam
    search with `beam`), fine-grained probes. A model whose caption decoder never trained (MAE only)
    is not captioned (`captions=False`): its captions and caption likelihoods mean nothing."""
    from nas.evaluation.caption_scorer import CaptionLikelihoodScorer
    from nas.evaluation.captioning import exact_match_rates, generate_captions
    from nas.evaluation.linear_probe import public
    from nas.evaluation.probe_suite import run_probe_suite

    ev = section.evaluate
    tokenizer = shared["tokenizer"]
    ce_cases: dict[str, Any] = {}
    result: dict[str, Any] = {
        "heldout": heldout_losses(model, shared["heldout"], ev.mask_seed, ev.batch_size, ce_cases)
    }
    probes = run_probes(model, shared, section)
    result["probes"] = public(probes)
    cases = {
        "probes": {
            name: {"rows": list(p["_rows"]), "correct": p["_correct"]}
            for name, p in probes.items()
            if "_correct" in p
        },
        "caption_ce": ce_cases,
    }
    decoded = {}
    images = shared["caption_images"]
    for method in (("greedy", "beam") if beam else ("greedy",)) if captions else ():
        generated = generate_captions(model, images, tokenizer.decode, ev.generation, beam=method == "beam")
        texts = [g.text for g in generated]
        decoded[method] = {
            "exact_match": exact_match_rates(texts, shared["caption_scenes"], shared["vocab"]),
            "stopped_at_eot": 100.0 * sum(g.finished for g in generated) / len(generated),
            "texts": texts,
        }
    result["captions"] = decoded
    if fine_grained and captions:
        scorer = CaptionLikelihoodScorer(model, shared["eval_transform"], tokenizer, batch_size=ev.batch_size)
        result["fine_grained"] = run_probe_suite([scorer], shared["probes_root"], ev.benchmarks, scores_dir)
        result["fine_grained_truncated_texts"] = scorer.truncated
    return result, cases


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
    if ev.probe_train_images is not None:
        train_paths = train_paths[: ev.probe_train_images]
        train_labels = {name: values[: ev.probe_train_images] for name, values in train_labels.items()}
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


# ---- findings -----------------------------------------------------------------------------------

FULL, MAE, CAPTION = "mug", "mae_only", "caption_only"  # the arms the paper's claims name
UNTRAINED = "untrained"
ARM_NAMES = {MAE: "MAE-only", CAPTION: "caption-only", FULL: "MUG"}


def _probe_cases(cases: dict[str, list[dict[str, Any]]], model: str, attribute: str):
    """[S, N] probe outcomes of `model` on `attribute` (None when a seed skipped it)."""
    from nas.reporting.recipe_findings import as_cases

    runs = cases.get(model) or []
    rows = [run["probes"].get(attribute) for run in runs]
    if not rows or any(r is None for r in rows):
        return None
    return as_cases([r["correct"] for r in rows])


def probe_intervals(
    cases: dict[str, list[dict[str, Any]]], attributes, settings
) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {attribute: seed x case bootstrap interval of the probe accuracy (fractions)}}."""
    from nas.evaluation.stats import seed_case_bootstrap

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model in cases:
        for attribute in attributes:
            x = _probe_cases(cases, model, attribute)
            if x is not None:
                out.setdefault(model, {})[attribute] = seed_case_bootstrap(x, **settings.kwargs).to_dict()
    return out


def mug_findings(
    cases: dict[str, list[dict[str, Any]]],
    levels: dict[str, float],
    section: MUGSection,
) -> tuple[list[Any], dict[str, bool]]:
    """The claims of MUG_UTA.md §1 in miniature, judged with intervals (recipe_findings), and which
    attributes the full model learned (its probe accuracy above `levels[attribute]` percent, the
    better of chance and the majority-class rate, by its whole interval):

    - MUG beats MAE-only on caption-described attributes (per attribute and pooled);
    - MUG matches or beats caption-only on pixel-only attributes (non-inferiority, margin
      mug.evaluate.findings.margin points);
    - every arm that trains a caption branch uses the image: held-out caption CE given a shuffled image
      minus CE given the right one > 0 (masked view and full image);
    - sanity: MUG beats its untrained self (pooled over the learned attributes)."""
    from nas.evaluation.scene_attributes import CAPTION_ATTRIBUTES, PIXEL_ATTRIBUTES
    from nas.reporting.recipe_findings import (
        above_level,
        as_cases,
        difference,
        not_judged,
        pooled_difference,
    )

    cfg = settings = section.evaluate.findings
    learned: dict[str, bool] = {}
    for attribute, level in levels.items():
        x = _probe_cases(cases, FULL, attribute)
        learned[attribute] = x is not None and above_level(x, level / 100.0, settings)[0]
    rows: list[Any] = []
    claims = (
        ("mug_vs_mae", "MUG beats MAE-only on caption-described attributes", MAE, CAPTION_ATTRIBUTES, 0.0),
        (
            "mug_vs_caption_only",
            "MUG matches or beats caption-only on pixel-only attributes",
            CAPTION,
            PIXEL_ATTRIBUTES,
            -cfg.margin,
        ),
    )
    for key, claim, other, attributes, threshold in claims:
        comparison = f"MUG − {ARM_NAMES.get(other, other)}"
        if FULL not in cases or other not in cases:
            rows.append(not_judged(f"{key}.pooled", claim, comparison, "pooled", "arm not run"))
            continue
        pairs = []
        for attribute in attributes:
            a, b = _probe_cases(cases, FULL, attribute), _probe_cases(cases, other, attribute)
            rkey = f"{key}.{attribute}"
            if a is None or b is None:
                rows.append(not_judged(rkey, claim, comparison, attribute, "no probe (too few labels)"))
            elif not learned.get(attribute, False):  # no probe could fit it, or not above chance
                rows.append(not_judged(rkey, claim, comparison, attribute, "MUG not above chance"))
            else:
                rows.append(
                    difference(rkey, claim, comparison, attribute, a, b, settings, threshold=threshold)
                )
                pairs.append((a, b))
        if pairs:
            rows.append(
                pooled_difference(f"{key}.pooled", claim, comparison, pairs, settings, threshold=threshold)
            )
        else:
            rows.append(not_judged(f"{key}.pooled", claim, comparison, "pooled", "no attribute learned"))
    for arm, runs in cases.items():
        if arm == UNTRAINED or effective_model(section.arm_model(arm))["cap_weight"] == 0:
            continue
        claim = "The caption branch uses the image"
        for view, right, shuffled in (
            ("masked view", "ce", "ce_shuffled"),
            ("full image", "ce_full", "ce_full_shuffled"),
        ):
            a = as_cases([run["caption_ce"][shuffled] for run in runs])
            b = as_cases([run["caption_ce"][right] for run in runs])
            rows.append(
                difference(
                    f"uses_image.{arm}.{view.split()[0]}",
                    claim,
                    f"{arm}: CE(shuffled image) − CE(own image)",
                    view,
                    a,
                    b,
                    settings,
                    unit="nats",
                )
            )
    if FULL in cases and UNTRAINED in cases:
        pairs = [
            (_probe_cases(cases, FULL, a), _probe_cases(cases, UNTRAINED, a))
            for a in levels
            if learned[a] and _probe_cases(cases, UNTRAINED, a) is not None
        ]
        claim, comparison = "Training helps: MUG beats the untrained encoder", "MUG − untrained"
        if pairs:
            rows.append(pooled_difference("mug_vs_untrained.pooled", claim, comparison, pairs, settings))
        else:
            rows.append(
                not_judged("mug_vs_untrained.pooled", claim, comparison, "pooled", "no attribute learned")
            )
    return rows, learned


def _jsonable_cases(cases: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    def plain(value):
        if isinstance(value, np.ndarray):
            return [round(float(v), 5) for v in value.tolist()]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cases)


def evaluate(cfg: dict[str, Any], record: Recorder) -> None:
    import torch

    from nas.data.bpe_tokenizer import BpeTokenizer
    from nas.engine.checkpoint import atomic_write_text
    from nas.evaluation.scene_attributes import KIND
    from nas.evaluation.seeds import aggregate
    from nas.reporting.mug_section import sample_figure

    stage_start = time.perf_counter()
    seconds: dict[str, float] = {}
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
    seconds["inputs"] = time.perf_counter() - stage_start
    result: dict[str, Any] = {
        "stage": "mug_evaluate",
        "baselines": baselines(shared, vocabulary),
        "attributes": {
            name: {"kind": KIND[name], "feature": f} for name, f in probe_features_of(section).items()
        },
        "arms": {},
    }
    rows: dict[str, Any] = {}
    cases: dict[str, list[dict[str, Any]]] = {}
    untrained_runs: list[dict[str, Any]] = []
    if ev.untrained:
        # The untrained model of each seed: the weights every arm of that seed starts from (the loss
        # weights only freeze a branch; they do not change the initialisation).
        clock = time.perf_counter()
        for seed in section.seeds:
            start = build_mug(
                section, FULL if FULL in section.arms else first_arm, seed, vocabulary["bpe_ids"]
            ).eval()
            run, run_cases = evaluate_run(start, shared, section, None, beam=False, fine_grained=False)
            untrained_runs.append(run)
            cases.setdefault(UNTRAINED, []).append(run_cases)
        numbers = [{k: v for k, v in run.items() if k in ("heldout", "probes")} for run in untrained_runs]
        result[UNTRAINED] = {
            "seeds": list(section.seeds),
            "summary": aggregate(numbers)
            | {
                "captions": aggregate(
                    [{"greedy": r["captions"]["greedy"]["exact_match"]} for r in untrained_runs]
                )
            },
            "per_seed": untrained_runs,
        }
        seconds["untrained"] = time.perf_counter() - clock
    for arm in section.arms:
        clock = time.perf_counter()
        per_seed, initial = [], []
        for k, seed in enumerate(section.seeds):
            model = load_run(arm, seed, root=trained)
            scores_dir = root / EVAL_DIR / arm / f"seed{seed}" / "scores"
            beam = ev.beam_seeds is None or k < ev.beam_seeds
            captioner = effective_model(section.arm_model(arm))["cap_weight"] > 0
            run, run_cases = evaluate_run(
                model, shared, section, scores_dir, captions=captioner, beam=beam, fine_grained=captioner
            )
            cases.setdefault(arm, []).append(run_cases)
            if untrained_runs:
                initial.append(untrained_runs[k]["heldout"])
            else:
                start = build_mug(section, arm, seed, vocabulary["bpe_ids"]).eval()
                initial.append(heldout_losses(start, shared["heldout"], ev.mask_seed, ev.batch_size))
            per_seed.append(run)
            greedy = run["captions"].get("greedy", {}).get("exact_match", {}).get("all", {"accuracy": 0.0})
            held = run["heldout"]
            print(
                f"mug_evaluate[{arm}/seed{seed}]: held-out MSE {held['recon_mse']:.3f} "
                f"(init {initial[-1]['recon_mse']:.3f}), caption CE {held['caption_ce']:.3f} "
                f"(init {initial[-1]['caption_ce']:.3f}, shuffled image {held['caption_ce_shuffled_image']:.3f}); "
                "probes "
                + ", ".join(f"{k} {v['accuracy']:.0f}" for k, v in run["probes"].items() if "accuracy" in v)
                + (f"; greedy exact match all {greedy['accuracy']:.0f}%" if run["captions"] else "")
            )
            if arm == ev.figure_arm and seed == section.seeds[0] and ev.figure_images and run["captions"]:
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
        matches = [
            {m: run["captions"][m]["exact_match"] for m in ("greedy", "beam") if m in run["captions"]}
            for run in per_seed
        ]
        beams = [m for m in matches if "beam" in m]
        summary = aggregate(numbers) | {"initial": aggregate(initial)}
        summary["captions"] = aggregate([{"greedy": m["greedy"]} for m in matches]) if matches[0] else {}
        if beams:
            summary["captions"]["beam"] = aggregate([{"beam": m["beam"]} for m in beams])["beam"]
        result["arms"][arm] = {
            "seeds": list(section.seeds),
            "model_overrides": section.arms[arm],
            "summary": summary,
            "per_seed": [run | {"initial": init} for run, init in zip(per_seed, initial)],
        }
        # The shared fine-grained tables score pairs by caption likelihood: an arm whose caption
        # decoder never trained (MAE only) has no such score; its rows stay in evaluate.json.
        if effective_model(section.arm_model(arm))["cap_weight"] > 0:
            rows["mug" if arm == "mug" else f"mug/{arm}"] = {
                "seeds": list(section.seeds),
                "per_seed": [run["fine_grained"] for run in per_seed],
            }
        seconds[arm] = time.perf_counter() - clock
    clock = time.perf_counter()
    fcfg = settings = ev.findings
    any_run = (untrained_runs or result["arms"][first_arm]["per_seed"])[0]["probes"]
    # A probe that learned nothing scores the better of chance (1 / classes) and the majority rate.
    levels = {a: max(p["chance"], p["majority"]) for a, p in any_run.items() if "majority" in p}
    findings, learned = mug_findings(cases, levels, section)
    result["findings"] = [row.to_json() for row in findings]
    result["findings_settings"] = {"level": fcfg.level, "resamples": fcfg.resamples, "margin": fcfg.margin}
    result["learned_attributes"] = learned
    result["probe_intervals"] = probe_intervals(cases, list(levels), settings)
    for name, runs in cases.items():
        for seed, run_cases in zip(section.seeds, runs):
            atomic_write_text(
                root / EVAL_DIR / "cases" / name / f"seed{seed}.json",
                json.dumps(_jsonable_cases(run_cases)) + "\n",
            )
    seconds["findings"] = time.perf_counter() - clock
    count = min(8, len(shared["caption_scenes"]))
    result["samples"] = [
        {
            "image": shared["test_paths"][i],
            "truth": [c["text"] for c in shared["caption_scenes"][i]["captions"]],
            **{
                f"{arm}/{m}": result["arms"][arm]["per_seed"][0]["captions"][m]["texts"][i]
                for arm in section.arms
                for m in ("greedy", "beam")
                if m in result["arms"][arm]["per_seed"][0]["captions"]
            },
        }
        for i in range(count)
    ]
    for row in findings:
        print(
            f"mug_evaluate finding [{row.key}]: {row.estimate} [{row.low}, {row.high}] {row.unit} -> {row.verdict}"
        )
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
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
