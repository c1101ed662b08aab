"""Stage `evaluate`: score one variant's models, one per study seed and checkpoint stage.

Zero-shot image->text and text->image retrieval (R@1/5/10, ALBEF protocol: ITC for all pairs, ITM
re-ranking of the top `k_test`) on the test split, with the chance level beside every figure, and
the fine-grained suite (ARO / Winoground / VALSE / SugarCrepe probes) under every configured scorer.

Models: for each stage of `evaluate.checkpoint_stages` and each offset k of `study.seeds`, the run
folder runs/<stage>/<variant>/seed<k>/ (`model_runs`); the pseudo-stage "untrained" is the same
architecture at its random initialisation (torch seed `seed + k`, no training; `untrained_model`),
scored exactly like the trained ones: the floor every trained figure is read against.

Per model (stage, seed<k>) under runs/evaluate/<variant>/:
- scores/<stage>/seed<k>/<benchmark>.<scorer>.jsonl: per-pair scores, plus Winoground's official
  format beside it (`*.official.jsonl`); `nas score` rescores either;
- cases/<stage>/seed<k>.json: per-case outcomes for paired statistics (`write_cases`), for every
  benchmark under the headline scorer and for retrieval (ITC, per query hit at rank 1):
  {"<benchmark>" | "retrieval_i2t_r1" | "retrieval_t2i_r1":
     {"metric": <the figure they average to>, "unit": "fraction", "case_ids": [...], "outcomes": [...]}}
  The case order of a benchmark is fixed by its files, so two models' arrays pair by position.
An ad-hoc run (`--set`, another `--params`) writes the same files under runs/adhoc/<tag>/ instead, and
scores the models of its own folder where it has them (else the pipeline's).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.atomic import atomic_write_text
from nas.config import from_dict
from nas.config.data import DataConfig
from nas.config.params import PIPELINE_ROOT, input_root, output_root
from nas.config.stages import study_seeds
from nas.config.train import LaunchConfig
from nas.evaluation.model_scorers import ScorerConfig
from nas.evaluation.retrieval import RetrievalConfig
from nas.recipes.stage import Recorder, parse_stage_args, run_stage

UNTRAINED = "untrained"  # the pseudo-stage of `checkpoint_stages`: random init, no training


@dataclass
class EvaluateConfig:
    # Which models of the variant are scored, each once per `study.seeds` offset, side by side in the
    # report: the untrained architecture (the floor), the pretrained and the fine-tuned models.
    checkpoint_stages: tuple[str, ...] = (UNTRAINED, "pretrain_stage2", "finetune")
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    # Pair scorers for the fine-grained probes; the first is the headline (NAS_METHOD §7: ITM
    # probability with VD tokens on the image side). Every result names its scorer.
    scorers: tuple[ScorerConfig, ...] = (ScorerConfig(kind="itm"),)
    benchmarks: tuple[str, ...] = ()  # empty = every benchmark the probe manifest lists
    valse_match_threshold: float | None = 0.5  # p_c / p_f of an ITM probability (VALSE §3.4)
    # Retrieval is sharded over these processes (each embeds its share; every quantity is gathered
    # once); the fine-grained probes are small and rank 0 scores them. Paper scale: 8.
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def fine_grained(
    model,
    data: DataConfig,
    cfg: EvaluateConfig,
    scores_dir: Path,
    outcomes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every probe benchmark under every configured scorer, through the official-format loaders.
    `outcomes`, when given, receives the per-case outcomes of the headline scorer (the first of
    `cfg.scorers`): `{benchmark: {"metric", "unit", "case_ids", "outcomes"}}`."""
    from nas.data.tokenizer import load_tokenizer
    from nas.data.transforms import build_eval_transform
    from nas.evaluation.model_scorers import scorer_from_config
    from nas.evaluation.probe_suite import run_probe_suite

    transform, tokenizer = build_eval_transform(data.transform), load_tokenizer()
    scorers = [scorer_from_config(s, model, transform, tokenizer) for s in cfg.scorers]
    kinds = {scorer.name: s.kind for scorer, s in zip(scorers, cfg.scorers, strict=True)}

    def config_for(scorer, name: str) -> dict[str, Any]:
        if name == "valse" and kinds[scorer.name] == "itm" and cfg.valse_match_threshold is not None:
            return {"match_threshold": cfg.valse_match_threshold}
        return {}

    per_case: dict[str, dict[str, Any]] = {}
    results = run_probe_suite(
        scorers, data.probes_root, cfg.benchmarks, scores_dir, config_for, outcomes=per_case
    )
    if outcomes is not None:
        outcomes.update({name: by_scorer[scorers[0].name] for name, by_scorer in per_case.items()})
    return results


def retrieval_on_split(
    model, data: DataConfig, split_file: str, cfg: RetrievalConfig, local_images
) -> dict[str, Any]:
    """`local_images`: this rank's share (`shard_slice`) of the split's distinct images, in order of
    first appearance (`load_split_images`); all of them in a single process. Sharded across ranks
    and gathered once per quantity (nas.evaluation.retrieval.retrieval_scores). The result's
    "outcomes" (not for the metrics JSON) are the per-query hits at rank 1 of the ITC headline:
    `{"retrieval_i2t_r1": {...}, "retrieval_t2i_r1": {...}}`, case ids the image paths and
    "<image path>#<n>" for the n-th caption of an image."""
    import numpy as np

    from nas.data.captions import load_pairs
    from nas.data.tokenizer import load_tokenizer
    from nas.evaluation.retrieval import (
        chance_recall,
        hits_at_k,
        query_ranks,
        recall_at_k,
        recall_from_ranks,
        retrieval_scores,
    )
    from nas.evaluation.sharding import shard_slice

    annotation = data.path(split_file)
    pairs = retrieval_pairs(load_pairs(annotation, max_words=data.max_words), cfg.max_images)
    image_index: dict[str, int] = {}
    txt2img = []
    for image, _ in pairs:
        txt2img.append(image_index.setdefault(image, len(image_index)))
    mine = shard_slice(len(image_index))
    if len(local_images) != mine.stop - mine.start:
        raise ValueError(
            f"{annotation}: this rank's share is images {mine.start}..{mine.stop - 1}, "
            f"but {len(local_images)} were loaded"
        )
    texts = [caption for _, caption in pairs]
    scores = retrieval_scores(
        model,
        local_images,
        texts[shard_slice(len(texts))],
        n_images=len(image_index),
        n_texts=len(texts),
        tokenizer=load_tokenizer(),
        max_length=data.text_max_length,
        cfg=cfg,
    )
    itc = scores["itc"]
    txt2img_arr = np.asarray(txt2img)
    rank_i2t, rank_t2i = query_ranks(itc.numpy(), itc.T.numpy(), txt2img_arr)
    caption_number: dict[str, int] = {}
    text_ids = []
    for image, _ in pairs:
        caption_number[image] = caption_number.get(image, -1) + 1
        text_ids.append(f"{image}#{caption_number[image]}")
    result = {
        "n_images": len(image_index),
        "n_texts": len(texts),
        "chance": chance_recall(txt2img_arr, 1),
        # Headline: ITC cosine over all pairs. ALBEF's ITM re-ranking (below) relies on a trained ITM
        # head; on the tiny profile ITM is still near its prior, so both are reported side by side.
        "scorer": "ITC cosine",
        "metrics": recall_from_ranks(rank_i2t, rank_t2i, cfg.ks),
        "outcomes": {
            f"retrieval_{direction}_r1": {
                "metric": f"{direction}_r1",
                "unit": "fraction",
                "case_ids": ids,
                "outcomes": hits_at_k(ranks, 1).tolist(),
            }
            for direction, ids, ranks in (("i2t", list(image_index), rank_i2t), ("t2i", text_ids, rank_t2i))
        },
    }
    if "i2t" in scores:
        result["reranked"] = {
            "scorer": f"ITC + ITM re-rank top {cfg.k_test}",
            "metrics": recall_at_k(scores["i2t"].numpy(), scores["t2i"].numpy(), txt2img_arr, cfg.ks),
        }
    return result


def nva_picture(model, data: DataConfig, images, out_dir: Path, count: int = 4) -> Path:
    """Images, their VD code maps and the patches one NVA draw replaced (the reader's picture of
    "token level"), for the first test images and their first captions."""
    from nas.data.captions import load_pairs
    from nas.data.tokenizer import load_tokenizer
    from nas.reporting.nva_figure import nva_figure

    first_caption: dict[str, str] = {}
    for image, caption in load_pairs(data.path(data.test_file), max_words=data.max_words):
        first_caption.setdefault(image, caption)
    captions = list(first_caption.values())[:count]
    enc = load_tokenizer()(
        captions, padding="longest", truncation=True, max_length=data.text_max_length, return_tensors="pt"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return nva_figure(
        model,
        images[:count],
        enc["input_ids"],
        enc["attention_mask"],
        out_dir / "nva_figure.png",
        captions=captions,
        max_images=count,
    )


def model_runs(stage_name: str, variant: str, cfg: dict[str, Any]) -> list[Path]:
    """Run folders of one stage's models, one per study seed offset k: runs/<stage>/<variant>/seed<k>.
    An ad-hoc run reads them from its own folder when that holds the stage's output, else the
    pipeline's. The pseudo-stage "untrained" has no run folder (`untrained_model`)."""
    if stage_name == UNTRAINED:
        raise ValueError(f"{UNTRAINED!r} models are built, not read from a run folder (untrained_model)")
    stage_dir = Path("runs") / stage_name / variant
    root = input_root(output_root(cfg), stage_dir, stage_name)
    return [root / stage_dir / f"seed{k}" for k in study_seeds(cfg)]


def untrained_model(cfg: dict[str, Any], offset: int):
    """`(model in eval mode, cfg)`: the variant's architecture as pretraining builds it (`model` with
    `pretrain_stage1.model_overrides`), at its random initialisation under torch seed `seed + offset`,
    never trained. A visual dictionary keeps its random N(0, 1) codebook (the build_vd k-means
    initialisation is a step of training, so it is not applied); scoring needs nothing else, since
    the scoring path runs the dictionary in eval mode, which never takes an EMA step."""
    import torch

    from nas.config.stages import ModelSpec
    from nas.recipes.pretrain import build_model

    torch.manual_seed(cfg["seed"] + offset)
    spec = from_dict(ModelSpec, cfg["model"], "model")
    model = build_model(spec, cfg.get("pretrain_stage1", {}).get("model_overrides") or {})
    return model.eval(), cfg


def write_cases(path: Path, outcomes: dict[str, dict[str, Any]]) -> Path:
    """The per-case outcomes of one model, `{name: {"metric", "unit", "case_ids", "outcomes"}}`
    (see the module docstring), written atomically."""
    for name, entry in outcomes.items():
        if len(entry["case_ids"]) != len(entry["outcomes"]):
            raise ValueError(
                f"{path}: {name} has {len(entry['case_ids'])} case ids for {len(entry['outcomes'])} outcomes"
            )
    atomic_write_text(path, json.dumps(outcomes) + "\n")
    return path


def evaluate_paths(variant: str, root: Path = PIPELINE_ROOT) -> dict[str, Path]:
    """The stage's outputs under the output root `root` (the repository root: the paths dvc.yaml names)."""
    return {
        "run": root / "runs" / "evaluate" / variant,
        "metrics": root / "metrics" / "evaluate" / f"{variant}.json",
        "tensorboard": root / "runs" / "tensorboard" / "evaluate" / variant,  # per checkpoint stage and seed
    }


def data_as_trained(data: DataConfig, recorded: dict[str, Any]) -> DataConfig:
    """The eval input size a model was trained at, read from its recorded config (fine-tuning may
    raise the resolution: 384 px at paper scale), not from today's params."""
    size = recorded.get("data", {}).get("transform", {}).get("image_size", data.transform.image_size)
    return dataclasses.replace(data, transform=dataclasses.replace(data.transform, image_size=int(size)))


def evaluate_model(
    model,
    data: DataConfig,
    eval_cfg: EvaluateConfig,
    local_images,
    scores_dir: Path,
    label: str,
    cases_file: Path | None = None,
) -> dict[str, Any] | None:
    """Retrieval on the test split (sharded across ranks) and every fine-grained probe (small: rank
    0 alone scores them), for one model. The result on rank 0, None on the others. With `cases_file`,
    rank 0 writes the per-case outcomes there (`write_cases`); they are not in the result."""
    import ignite.distributed as idist

    retrieval = retrieval_on_split(model, data, data.test_file, eval_cfg.retrieval, local_images)
    retrieval_outcomes = retrieval.pop("outcomes")
    if idist.get_rank() != 0:
        return None
    probe_outcomes: dict[str, Any] = {}
    out = {
        "retrieval": retrieval,
        "fine_grained": fine_grained(model, data, eval_cfg, scores_dir, outcomes=probe_outcomes),
    }
    if cases_file is not None:
        write_cases(cases_file, {**probe_outcomes, **retrieval_outcomes})
    for name, by_scorer in out["fine_grained"].items():
        for scorer_name, res in by_scorer.items():
            headline = {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))}
            print(
                f"evaluate[{label}] {name} ({scorer_name}, {res['n_cases']} cases): "
                + ", ".join(f"{k}={v:.1f}" for k, v in list(headline.items())[:6])
            )
    r = out["retrieval"]
    for scored in (r, r.get("reranked")):
        if scored:
            print(
                f"evaluate[{label}] retrieval on {r['n_images']} images / {r['n_texts']} texts "
                f"({scored['scorer']}): "
                + ", ".join(f"{k}={v:.1f}" for k, v in scored["metrics"].items() if "_r" in k)
                + f" | chance R@1 i2t={r['chance']['i2t_r1']:.2f} t2i={r['chance']['t2i_r1']:.2f}"
            )
    return out


def retrieval_pairs(pairs, max_images: int | None):
    """The pairs of the first `max_images` distinct images (all when None), in their order."""
    if max_images is None:
        return list(pairs)
    kept: dict[str, None] = {}
    out = []
    for image, caption in pairs:
        if image not in kept and len(kept) >= max_images:
            continue
        kept.setdefault(image, None)
        out.append((image, caption))
    return out


def count_split_images(data: DataConfig, split_file: str, max_images: int | None = None) -> int:
    from nas.data.captions import load_pairs

    count = len({image for image, _ in load_pairs(data.path(split_file), max_words=data.max_words)})
    return count if max_images is None else min(count, max_images)


def stage(cfg: dict[str, Any], record: Recorder) -> None:
    import ignite.distributed as idist
    import torch

    from nas.data.captions import load_split_images
    from nas.engine.run import load_run
    from nas.evaluation.seeds import aggregate
    from nas.evaluation.sharding import shard_slice

    variant = cfg["variant"]
    data = from_dict(DataConfig, cfg["data"], "data")
    eval_cfg = from_dict(EvaluateConfig, cfg["evaluate"], "evaluate")
    main_rank, sharded = idist.get_rank() == 0, idist.get_world_size() > 1
    paths = evaluate_paths(variant, output_root(cfg))
    out_dir = paths["run"]
    result: dict[str, Any] = {"variant": variant, "models": {}, "summary": {}}
    max_images = eval_cfg.retrieval.max_images
    mine = shard_slice(count_split_images(data, data.test_file, max_images))
    images_by_size: dict[int, Any] = {}  # this rank's test images, read once per input size
    seeds = study_seeds(cfg)
    for stage_name in eval_cfg.checkpoint_stages:
        runs = None if stage_name == UNTRAINED else model_runs(stage_name, variant, cfg)
        replicates, sources = [], []
        for index, offset in enumerate(seeds):
            if runs is None:
                model, recorded = untrained_model(cfg, offset)
                sources.append(f"{UNTRAINED}: random init, torch seed {cfg['seed'] + offset}")
            else:
                torch.manual_seed(cfg["seed"])
                model, recorded = load_run(runs[index])
                sources.append(str(runs[index]))
            model_data = data_as_trained(data, recorded)
            size = model_data.transform.image_size
            if size not in images_by_size:
                images_by_size[size] = load_split_images(
                    model_data, max_images, annotation_file=data.test_file, select=mine
                )
            local_images = images_by_size[size]
            run_name = f"seed{offset}"
            label = f"{variant} {stage_name}" + (f" {run_name}" if len(seeds) > 1 else "")
            scores_dir = out_dir / "scores" / stage_name / run_name
            cases_file = out_dir / "cases" / stage_name / f"{run_name}.json"
            replicates.append(
                evaluate_model(model, model_data, eval_cfg, local_images, scores_dir, label, cases_file)
            )
            if main_rank:
                from nas.evaluation.tensorboard import log_evaluation

                log_evaluation(
                    paths["tensorboard"] / stage_name / run_name,
                    replicates[-1],
                    {
                        "variant": variant,
                        "checkpoint": stage_name,
                        "seed": cfg["seed"] + offset,
                        "model": recorded.get("model", {}).get("name", "")
                        if isinstance(recorded, dict)
                        else "",
                    },
                )
            final_stage = stage_name == eval_cfg.checkpoint_stages[-1]
            if (
                main_rank
                and final_stage
                and "dictionary" not in result
                and hasattr(model, "dictionary_health")
            ):
                # The final model's visual dictionary, on the test images (first replicate).
                test_images = (
                    load_split_images(model_data, max_images, annotation_file=data.test_file)
                    if sharded
                    else local_images
                )
                result["dictionary"] = model.dictionary_health(test_images)
                print(
                    f"evaluate[{variant}] dictionary health on {len(test_images)} test images: "
                    f"{result['dictionary']}"
                )
                result["nva_figure"] = str(nva_picture(model, model_data, test_images, out_dir))
        if not main_rank:
            continue
        result["models"][stage_name] = {
            "runs": sources,
            "seeds": seeds,
            "image_size": size,
            "replicates": replicates,
        }
        result["summary"][stage_name] = aggregate(replicates)
        for key, stats in result["summary"][stage_name]["retrieval"]["metrics"].items():
            record.log_scalar(f"{stage_name}.retrieval.{key}", stats["mean"])
    if not main_rank:
        return
    out = paths["metrics"]
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    record.add_artifact(out, name="evaluation.json")


def main(argv=None) -> None:
    args = parse_stage_args("evaluate", argv)
    run_stage(args.stage, stage, args=args, nproc_key=("evaluate", "launch"))


if __name__ == "__main__":
    main()
