"""Sharded retrieval on every process: `python retrieval_shard_worker.py NPROC OUT_FILE`.

Every rank embeds its share of a fixed toy split; rank 0 saves the gathered score matrices."""

from __future__ import annotations

import sys

import torch

from nas.engine.launch import launch
from nas.evaluation.retrieval import RetrievalConfig, retrieval_scores
from nas.evaluation.sharding import shard_slice

N_IMAGES, N_TEXTS = 5, 11  # uneven shares on 2 ranks: 3 + 2 images, 6 + 5 texts


def toy_split():
    from nas.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(
        "albef_tiny", vision={"depth": 1}, text={"num_text_layers": 1, "num_fusion_layers": 1}, queue_size=8
    ).eval()
    images = torch.randn(N_IMAGES, 3, 64, 64)
    words = ["red", "blue", "circle", "square", "left", "of", "a", "small", "large", "green", "cross"]
    texts = [" ".join(words[(i * 3 + j) % len(words)] for j in range(4 + i % 3)) for i in range(N_TEXTS)]
    return model, images, texts


def run(local_rank: int, out_file: str) -> None:
    from nas.data.tokenizer import load_tokenizer

    model, images, texts = toy_split()
    scores = retrieval_scores(
        model,
        images[shard_slice(N_IMAGES)],
        texts[shard_slice(N_TEXTS)],
        n_images=N_IMAGES,
        n_texts=N_TEXTS,
        tokenizer=load_tokenizer(),
        max_length=12,
        cfg=RetrievalConfig(batch_size=2, k_test=3),
    )
    import ignite.distributed as idist

    if idist.get_rank() == 0:
        torch.save({k: v.clone() for k, v in scores.items()}, out_file)


if __name__ == "__main__":
    launch(run, sys.argv[2], nproc_per_node=int(sys.argv[1]), backend="gloo")
