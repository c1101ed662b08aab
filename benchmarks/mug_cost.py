"""What does MUG's caption branch cost? A MUG training step against an MAE-only step on the same batch.

Times one full step (forward, backward, AdamW) of MUG (recon_weight 1, cap_weight 1) and of the same
model with cap_weight 0 (the MAE-only arm: the caption decoder is not run), both from the same
weights, interleaved (MAE, MUG, MAE, MUG, ...) so that drifting machine load hits both alike; the
medians and the median of the paired ratios are printed, in wall-clock and in process CPU time.
`--size base` builds the paper-size model (ViT-B/16, MAE decoder 8 x 512, caption decoder 4 x 512,
77 tokens, full CLIP vocabulary) and steps it on CPU. It also prints the default pipeline's added
wall time, as the MUG stages recorded it in metrics/mug/*.json, when those files exist. Not a test.

    .venv/bin/python benchmarks/mug_cost.py                      # tiny, batch 32
    .venv/bin/python benchmarks/mug_cost.py --size base --batch 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nas.models.mug import CLIP_EOT_ID, CLIP_SOT_ID, MUG
from nas.models.registry import create_model

# Captions of the synthetic set run to ~25 BPE tokens; CC3M's average is ~10 words.
CAPTION_TOKENS = 20
# The synthetic captions use 28 distinct BPE ids (metrics/mug/pretrain.json); web captions use the lot.
DISTINCT_WORDS = {"corpus": 28, "full": 39000}


def make_batch(model: MUG, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = model.cfg.vision.img_size
    context = model.cfg.caption.context_length
    length = min(CAPTION_TOKENS, context - 2)
    ids = torch.zeros(batch_size, context, dtype=torch.long)
    mask = torch.zeros(batch_size, context, dtype=torch.long)
    words = torch.randint(
        1000, 1000 + DISTINCT_WORDS[model.cfg.caption.vocab], (batch_size, length), generator=generator
    )
    ids[:, 0], ids[:, 1 : length + 1], ids[:, length + 1] = CLIP_SOT_ID, words, CLIP_EOT_ID
    mask[:, : length + 2] = 1
    return {
        "image": torch.randn(batch_size, 3, size, size, generator=generator),
        "input_ids": ids,
        "attention_mask": mask,
    }


def build(size: str, cap_weight: float, state: dict[str, torch.Tensor] | None = None) -> MUG:
    torch.manual_seed(0)
    model = create_model(f"mug_{size}", cap_weight=cap_weight)
    if state is not None:
        model.load_state_dict(state)  # weights and the vocabulary buffers
    return model.train()


def timed_step(
    model: MUG, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    sum(model(batch).values()).backward()
    optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def pipeline_seconds(metrics_dir: Path) -> list[str]:
    lines = []
    for stage in ("pretrain", "evaluate"):
        path = metrics_dir / f"{stage}.json"
        if path.is_file():
            seconds = json.loads(path.read_text()).get("stage_seconds")
            if seconds is not None:
                lines.append(f"  mug_{stage}: {seconds:.0f} s (as recorded by the stage in {path})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--metrics", default="metrics/mug", help="where the MUG stages wrote their metrics")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    mug = build(args.size, 1.0)
    batch = make_batch(mug, args.batch, seed=0)
    # The tiny profile's corpus vocabulary: the ids the captions use (a no-op for the full vocabulary).
    mug.set_vocabulary(batch["input_ids"][batch["attention_mask"].bool()].unique().tolist())
    models = {"MAE only": build(args.size, 0.0, mug.state_dict()), "MUG": mug}
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
        for name, m in models.items()
    }
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in models}
    for repeat in range(args.warmup + args.repeats):
        for name, model in models.items():
            torch.manual_seed(repeat)  # the same masks for both models
            wall, cpu = timed_step(model, optimizers[name], batch)
            if repeat >= args.warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)

    params = sum(p.numel() for p in mug.parameters()) / 1e6
    print(
        f"mug_{args.size} ({params:.1f}M parameters, {mug.text_decoder.token_embed.num_embeddings}-way caption "
        f"softmax), batch {args.batch}, {args.threads} threads, {args.repeats} repeats"
    )
    for clock in ("wall", "cpu"):
        for name in models:
            values = times[name][clock]
            print(f"  {clock:4s} {name:8s} median {statistics.median(values) * 1000:9.1f} ms")
        ratio = statistics.median(times["MUG"][clock]) / statistics.median(times["MAE only"][clock])
        paired = statistics.median(a / b for a, b in zip(times["MUG"][clock], times["MAE only"][clock]))
        print(
            f"  {clock:4s} MUG step / MAE-only step: x{ratio:.2f} of medians, x{paired:.2f} median of paired ratios"
        )
    added = pipeline_seconds(Path(args.metrics))
    if added:
        print("default pipeline, added wall time of the MUG stages:")
        print("\n".join(added))


if __name__ == "__main__":
    main()
