"""How much does NVA add to a stage-2 training step? (spec NAS_METHOD.md §4; target: <= 15% on CPU)

Times one full training step (forward, backward, AdamW) of nas_tiny in its stage-2 form (codebook frozen)
with and without NVA, on the same batch. The two models start from the same weights; their steps are
interleaved (off, on, off, on, ...) so that drifting machine load hits both alike; the medians are compared,
and so is the median of the per-repeat ratios, in wall-clock and in process CPU time. Not a test: it
prints numbers.

    .venv/bin/python benchmarks/nva_overhead.py --batch 64 --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nas.models.nas_model import NAS
from nas.models.registry import create_model

TEXT_LENGTH = 30  # ALBEF's pretraining max_words
IMAGE_SIZE = 64  # nas_tiny's resolution


def make_batch(batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 30000, (batch_size, TEXT_LENGTH), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {
        "image": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, TEXT_LENGTH, dtype=torch.long),
        "image_id": torch.arange(batch_size),
    }


def stage2_model(nva_enabled: bool, state: dict[str, torch.Tensor] | None) -> NAS:
    model = create_model("nas_tiny", nva_enabled=nva_enabled, vd={"frozen": True})
    if state is not None:
        model.load_state_dict(state)
    return model.train()


def timed_step(
    model: NAS, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one step. On a shared machine the CPU time is the
    steadier of the two: it does not count time spent waiting for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    losses = model(batch, alpha=0.4)
    sum(losses.values()).backward()
    optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    without = stage2_model(False, None)
    with_nva = stage2_model(True, without.state_dict())
    models = {"without NVA": without, "with NVA": with_nva}
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.02)
        for name, m in models.items()
    }
    batch = make_batch(args.batch, seed=0)

    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in models}
    for repeat in range(args.warmup + args.repeats):
        for name, model in models.items():
            wall, cpu = timed_step(model, optimizers[name], batch)
            if repeat >= args.warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)

    print(f"nas_tiny stage-2 step, batch {args.batch}, {args.threads} threads, {args.repeats} repeats")
    for clock in ("wall", "cpu"):
        for name in models:
            values = times[name][clock]
            spread = ", ".join(f"{t * 1000:.0f}" for t in values)
            print(
                f"  {clock:4s} {name:12s} median {statistics.median(values) * 1000:8.1f} ms   (all: {spread})"
            )
        with_nva, without_nva = times["with NVA"][clock], times["without NVA"][clock]
        ratio = statistics.median(with_nva) / statistics.median(without_nva)
        # The two steps of one repeat ran back to back: their ratio cancels slow load drift best.
        paired = statistics.median(a / b for a, b in zip(with_nva, without_nva))
        print(
            f"  {clock:4s} NVA overhead: x{ratio:.3f} of medians ({(ratio - 1) * 100:+.1f}%), "
            f"x{paired:.3f} median of paired ratios ({(paired - 1) * 100:+.1f}%); target <= +15%"
        )


if __name__ == "__main__":
    main()
