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

from experiments.common import Recorder, run_stage
from nas.config import from_dict
from nas.config.data import DataConfig
from nas.evaluation.retrieval import RetrievalConfig


@dataclass
class EvaluateConfig:
    checkpoint_stage: str = "finetune"  # which stage's output of the variant is scored
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)


def retrieval_on_split(model, data: DataConfig, split_file: str, cfg: RetrievalConfig) -> dict[str, Any]:
    import numpy as np
    import torch

    from nas.data.captions import load_pairs, open_rgb
    from nas.data.tokenizer import load_tokenizer
    from nas.data.transforms import build_eval_transform
    from nas.evaluation.encode import embed_images, embed_texts
    from nas.evaluation.retrieval import chance_recall, recall_at_k, rerank_with_itm

    annotation = data.path(split_file)
    pairs = load_pairs(annotation, max_words=data.max_words)
    image_index: dict[str, int] = {}
    txt2img = []
    for image, _ in pairs:
        txt2img.append(image_index.setdefault(image, len(image_index)))
    images = [open_rgb(data.images / path, annotation) for path in image_index]
    texts = [caption for _, caption in pairs]

    img_tokens, img_feat = embed_images(model, images, build_eval_transform(data.transform), cfg.batch_size)
    txt = embed_texts(model, texts, load_tokenizer(), data.text_max_length, cfg.batch_size)
    itc = img_feat @ txt["feat"].T  # [N_img, N_txt]

    @torch.no_grad()
    def itm_i2t(rows, cols):
        logits = model.itm_logits(img_tokens[rows], txt["tokens"][cols], txt["attention_mask"][cols])
        return logits[:, 1]

    @torch.no_grad()
    def itm_t2i(rows, cols):
        return itm_i2t(cols, rows)

    i2t = rerank_with_itm(itc, cfg.k_test, itm_i2t)
    t2i = rerank_with_itm(itc.T.contiguous(), cfg.k_test, itm_t2i)
    txt2img_arr = np.asarray(txt2img)
    metrics = recall_at_k(i2t.numpy(), t2i.numpy(), txt2img_arr, cfg.ks)
    itc_only = recall_at_k(itc.numpy(), itc.T.numpy(), txt2img_arr, cfg.ks)
    chance = chance_recall(txt2img_arr, 1)
    return {
        "scorer": f"ITC + ITM re-rank top {cfg.k_test}" if cfg.k_test else "ITC cosine",
        "n_images": len(images),
        "n_texts": len(texts),
        "metrics": metrics,
        "itc_only": itc_only,
        "chance": chance,
    }


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
    result["retrieval"] = retrieval_on_split(model, data, data.test_file, eval_cfg.retrieval)

    r = result["retrieval"]
    print(
        f"evaluate[{variant}] retrieval on {r['n_images']} images / {r['n_texts']} texts ({r['scorer']}): "
        + ", ".join(f"{k}={v:.1f}" for k, v in r["metrics"].items() if "_r" in k)
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
