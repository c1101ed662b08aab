"""MUG's measurements of one model (held-out losses, linear probes, captions, fine-grained probes) and
the stage `mug_evaluate`: the untrained model of every seed and every run folder of `mug_pretrain`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nas.atomic import atomic_write_text
from nas.config.params import input_root, output_root
from nas.recipes.mug.card import MUGSection, effective_model, effective_sections
from nas.recipes.mug.data import caption_tokenizer, shared_inputs
from nas.recipes.mug.findings import FULL, UNTRAINED, mug_findings, probe_intervals
from nas.recipes.mug.paths import EVAL_DIR, FINE_GRAINED, METRICS, RUNS, SUMMARY, run_dir
from nas.recipes.mug.train import build_mug, read_captions, read_vocabulary, set_threads
from nas.recipes.stage import Recorder


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


def baselines(shared: dict[str, Any], vocabulary: dict[str, Any]) -> dict[str, float]:
    from nas.objectives.mug import unigram_cross_entropy

    held = shared["heldout"]
    targets = held["input_ids"][:, 1:][held["attention_mask"][:, 1:].bool()].tolist()
    return {
        "caption_ce_unigram": unigram_cross_entropy(
            vocabulary["targets"], targets, vocab_size=len(vocabulary["bpe_ids"]) + 1
        ),
    }


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

    from nas.engine.run import load_run
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
    tokenizer = caption_tokenizer(section)
    _, vocabulary = read_vocabulary(root)
    gather_pretrain(root, trained, section)
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
            model, _ = load_run(run_dir(arm, seed, trained))
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


def gather_pretrain(root: Path, trained: Path, section: MUGSection) -> dict[str, Any]:
    """metrics/mug/pretrain.json: the caption census (`mug_vocabulary`) and the summary of every run
    (`mug_pretrain`, one DVC matrix entry each), in the order of the params' arms and seeds."""
    runs: dict[str, Any] = {}
    for arm in section.arms:
        for seed in section.seeds:
            path = run_dir(arm, seed, trained) / SUMMARY
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: run mug_pretrain --run arm={arm} --run seed={seed}"
                )
            runs[f"{arm}/seed{seed}"] = json.loads(path.read_text())
    census = read_captions(root)
    summary = {
        "stage": "mug_pretrain",
        "captions": census["captions"],
        "vocabulary_size": census["vocabulary_size"],
        "stage_seconds": round(sum(run["seconds"] for run in runs.values()), 1),  # the runs' own time
        "runs": runs,
    }
    atomic_write_text(root / METRICS / "pretrain.json", json.dumps(summary, indent=2) + "\n")
    return summary
