"""Stage `evaluate`: score one variant's final checkpoint.

Zero-shot image->text and text->image retrieval (R@1/5/10, ALBEF protocol: ITC for all pairs, ITM
re-ranking of the top `k_test`) on the test split, with the chance level beside every figure.
The fine-grained suite (ARO / Winoground / VALSE / SugarCrepe probes) plugs in here (issue 4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.build_vd import load_split_images
from experiments.common import Recorder, run_stage
from nas.config import from_dict
from nas.config.data import DataConfig
from nas.evaluation.model_scorers import ScorerConfig
from nas.evaluation.retrieval import RetrievalConfig


@dataclass
class EvaluateConfig:
    checkpoint_stage: str = "finetune"  # which stage's output of the variant is scored
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    # Pair scorers for the fine-grained probes; the first is the headline (NAS_METHOD §7: ITM
    # probability with VD tokens on the image side). Every result names its scorer.
    scorers: tuple[ScorerConfig, ...] = (ScorerConfig(kind="itm"),)
    benchmarks: tuple[str, ...] = ()  # empty = every benchmark the probe manifest lists
    valse_match_threshold: float | None = 0.5  # p_c / p_f of an ITM probability (VALSE §3.4)


def fine_grained(model, data: DataConfig, cfg: EvaluateConfig, scores_dir: Path) -> dict[str, Any]:
    """Every probe benchmark under every configured scorer, through the official-format loaders."""
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

    return run_probe_suite(scorers, data.probes_root, cfg.benchmarks, scores_dir, config_for)


def retrieval_on_split(
    model, data: DataConfig, split_file: str, cfg: RetrievalConfig, images
) -> dict[str, Any]:
    """`images`: the split's distinct images in order of first appearance (`load_split_images`)."""
    import numpy as np
    import torch

    from nas.data.captions import load_pairs
    from nas.data.tokenizer import load_tokenizer
    from nas.evaluation.encode import embed_images, embed_texts
    from nas.evaluation.retrieval import chance_recall, recall_at_k, rerank_with_itm

    annotation = data.path(split_file)
    pairs = load_pairs(annotation, max_words=data.max_words)
    image_index: dict[str, int] = {}
    txt2img = []
    for image, _ in pairs:
        txt2img.append(image_index.setdefault(image, len(image_index)))
    if len(image_index) != len(images):
        raise ValueError(f"{annotation}: {len(image_index)} distinct images, but {len(images)} were loaded")
    texts = [caption for _, caption in pairs]

    img_tokens, img_feat = embed_images(model, images, cfg.batch_size)
    txt = embed_texts(model, texts, load_tokenizer(), data.text_max_length, cfg.batch_size)
    itc = img_feat @ txt["feat"].T  # [N_img, N_txt]

    @torch.no_grad()
    def itm_i2t(rows, cols):
        logits = model.itm_logits(img_tokens[rows], txt["tokens"][cols], txt["attention_mask"][cols])
        return logits[:, 1]

    @torch.no_grad()
    def itm_t2i(rows, cols):
        return itm_i2t(cols, rows)

    txt2img_arr = np.asarray(txt2img)
    result = {
        "n_images": len(images),
        "n_texts": len(texts),
        "chance": chance_recall(txt2img_arr, 1),
        # Headline: ITC cosine over all pairs. ALBEF's ITM re-ranking (below) relies on a trained ITM
        # head; on the tiny profile ITM is still near its prior, so both are reported side by side.
        "scorer": "ITC cosine",
        "metrics": recall_at_k(itc.numpy(), itc.T.numpy(), txt2img_arr, cfg.ks),
    }
    if cfg.k_test > 0:
        i2t = rerank_with_itm(itc, cfg.k_test, itm_i2t)
        t2i = rerank_with_itm(itc.T.contiguous(), cfg.k_test, itm_t2i)
        result["reranked"] = {
            "scorer": f"ITC + ITM re-rank top {cfg.k_test}",
            "metrics": recall_at_k(i2t.numpy(), t2i.numpy(), txt2img_arr, cfg.ks),
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


def stage(cfg: dict[str, Any], record: Recorder) -> None:
    import torch

    from nas.evaluation.encode import load_trained_model

    variant = cfg["variant"]
    data = from_dict(DataConfig, cfg["data"], "data")
    eval_cfg = from_dict(EvaluateConfig, cfg["evaluate"], "evaluate")
    torch.manual_seed(cfg["seed"])
    run_dir = Path("runs") / eval_cfg.checkpoint_stage / variant
    model, _ = load_trained_model(run_dir)
    result = {"variant": variant, "checkpoint": str(run_dir / "checkpoint.pt")}
    test_images = load_split_images(data, annotation_file=data.test_file)  # read once, used below
    result["retrieval"] = retrieval_on_split(model, data, data.test_file, eval_cfg.retrieval, test_images)
    if hasattr(model, "dictionary_health"):
        result["dictionary"] = model.dictionary_health(test_images)
        print(
            f"evaluate[{variant}] dictionary health on {len(test_images)} test images: {result['dictionary']}"
        )
        result["nva_figure"] = str(nva_picture(model, data, test_images, Path("runs/evaluate") / variant))
    result["fine_grained"] = fine_grained(model, data, eval_cfg, Path("runs/evaluate") / variant / "scores")
    for name, by_scorer in result["fine_grained"].items():
        for scorer_name, res in by_scorer.items():
            headline = {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))}
            print(
                f"evaluate[{variant}] {name} ({scorer_name}, {res['n_cases']} cases): "
                + ", ".join(f"{k}={v:.1f}" for k, v in list(headline.items())[:6])
            )

    r = result["retrieval"]
    for scored in (r, r.get("reranked")):
        if scored:
            print(
                f"evaluate[{variant}] retrieval on {r['n_images']} images / {r['n_texts']} texts "
                f"({scored['scorer']}): "
                + ", ".join(f"{k}={v:.1f}" for k, v in scored["metrics"].items() if "_r" in k)
                + f" | chance R@1 i2t={r['chance']['i2t_r1']:.2f} t2i={r['chance']['t2i_r1']:.2f}"
            )
    for key, value in r["metrics"].items():
        record.log_scalar(f"retrieval.{key}", value)
    out = Path("metrics") / "evaluate" / f"{variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    record.add_artifact(out, name="evaluation.json")


def main(argv=None) -> None:
    run_stage("evaluate", stage, argv)


if __name__ == "__main__":
    main()
