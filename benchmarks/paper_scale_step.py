"""The paper-size models, one training step at a time: parameter counts, step time, peak memory;
on a GPU also images/s and an MFU estimate. Not a test: it prints numbers.

Builds `albef_base` (DeiT-B/16 at 256 px + BERT-base 6 + 6, queue 65,536) and `nas_base` (the same
plus a 2,048-code visual dictionary) with random weights, counts parameters with and without the
momentum copies, and runs forward + backward + AdamW on random inputs. nas_base runs in its stage-2
form (codebook frozen, NVA on): the heaviest step of the method (a 4B-row ITM batch).

    .venv/bin/python benchmarks/paper_scale_step.py --threads 2         # CPU, batch 2, one step each
    python benchmarks/paper_scale_step.py --device cuda --precision bf16 --batch 64 --steps 10

Measured here (2 shared CPU cores, fp32, batch 2): albef_base 419.9M parameters with momentum
copies, 209.9M without; one step 35 s and 5.3 GiB peak RSS; nas_base (stage 2) 211.1M without
momentum copies, one step 62 s, 5.4 GiB.

FLOPs come from torch's FlopCounterMode on one extra step (matmuls and, on CUDA, attention kernels;
CPU attention is not counted); MFU = FLOPs per step / step time / the GPU's dense peak.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

# ALBEF-4M's parameter count as the issue states it ("incl. momentum copies"); no source for it was
# found in the ALBEF paper or repository. It equals albef_base's count WITHOUT the momentum copies
# (209.9M, measured by this script); with them the model holds 419.9M. The script prints both.
ALBEF_4M_REFERENCE_PARAMS = 209.9e6
TEXT_LENGTH = 25  # ALBEF Pretrain.py tokenizer(max_length=25) [B]
IMAGE_SIZE = 256  # pretraining resolution [P]
# Dense bf16 peak TFLOP/s per GPU (vendor datasheets, without sparsity), for the MFU estimate.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A800": 312.0, "A100": 312.0}
# Stage-2 form of NAS: codebook frozen, NVA negatives on (NAS_METHOD §6).
NAS_STAGE2 = {"nva_enabled": True, "vd": {"frozen": True}}


def build(name: str, overrides: dict[str, Any] | None = None) -> nn.Module:
    from nas.models.registry import create_model

    return create_model(name, **(overrides or {}))


def momentum_modules(model: nn.Module) -> list[nn.Module]:
    pairs = getattr(model, "momentum_pairs", None)
    return [momentum for _, momentum in pairs()] if pairs is not None else []


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: all (incl. momentum copies), trainable, the momentum copies, and buffer elements
    (ITC queues, the VD codebook and its EMA state)."""
    total = sum(p.numel() for p in model.parameters())
    momentum = sum(p.numel() for module in momentum_modules(model) for p in module.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    return {
        "total": total,
        "without_momentum": total - momentum,
        "momentum": momentum,
        "trainable": trainable,
        "buffer_elements": buffers,
    }


def make_batch(
    batch_size: int, image_size: int, text_length: int, vocab_size: int, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random images and token ids shaped like a real batch ([CLS] ... [SEP], no padding)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, vocab_size, (batch_size, text_length), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 101, 102  # BERT [CLS], [SEP]
    batch = {
        "image": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long),
        "image_id": torch.arange(batch_size),
    }
    return {k: v.to(device) for k, v in batch.items()}


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    from nas.engine.trainer import autocast_context

    return autocast_context(precision, device)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> dict[str, float]:
    """Forward (momentum update, ITC, ITM, MLM), backward, AdamW: the engine's step without the engine."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        losses = model(batch, alpha=0.4)
    total = sum(losses.values())
    total.backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in losses.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- memory --------------------------------------------------------------------------------------------


def _proc_status(field: str) -> int | None:
    """A `VmRSS` / `VmHWM` line of /proc/self/status in bytes (Linux), else None."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes since the last reset: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status("VmHWM")


@contextlib.contextmanager
def timed(device: torch.device) -> Iterator[list[float]]:
    out: list[float] = []
    _sync(device)
    start = time.perf_counter()
    yield out
    _sync(device)
    out.append(time.perf_counter() - start)


# ---- one measurement -----------------------------------------------------------------------------------


def measure(
    model: nn.Module,
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 2,
    image_size: int = IMAGE_SIZE,
    text_length: int = TEXT_LENGTH,
    steps: int = 1,
    warmup: int = 0,
    count_flops: bool = True,
) -> dict[str, Any]:
    """Train `model` for `warmup` + `steps` steps on one random batch; times, peak memory, FLOPs."""
    from nas.engine.optim import OptimConfig, build_optimizer

    model.to(device).train()
    if hasattr(model, "set_total_steps"):
        model.set_total_steps(max(1, warmup + steps + 1))  # the VD's γ ramp needs a length (stage 1 form)
    optimizer = build_optimizer(model, OptimConfig(), lr=1e-4)
    vocab = model.cfg.text.vocab_size
    batch = make_batch(batch_size, image_size, text_length, vocab, device)
    autocast = autocast_for(precision, device)
    losses: dict[str, float] = {}
    for _ in range(warmup):
        train_step(model, optimizer, batch, autocast)
    reset_peak_memory(device)
    times = []
    for _ in range(steps):
        with timed(device) as elapsed:
            losses = train_step(model, optimizer, batch, autocast)
        times.append(elapsed[0])
    result: dict[str, Any] = {
        "step_seconds": times,
        "median_step_seconds": statistics.median(times),
        "images_per_second": batch_size / statistics.median(times),
        "peak_memory_bytes": peak_memory(device),
        "losses": losses,
    }
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            train_step(model, optimizer, batch, autocast)
        result["flops_per_step"] = counter.get_total_flops()
    return result


def mfu(flops_per_step: float, step_seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak."""
    return flops_per_step / step_seconds / (peak_tflops * 1e12)


def device_peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def _m(n: float) -> str:
    return f"{n / 1e6:.1f}M"


def report(name: str, counts: dict[str, int], result: dict[str, Any], peak_tflops: float | None) -> str:
    lines = [
        f"== {name}",
        f"parameters: {_m(counts['total'])} incl. momentum copies ({_m(counts['momentum'])}), "
        f"{_m(counts['without_momentum'])} without; {_m(counts['trainable'])} trainable; "
        f"{_m(counts['buffer_elements'])} buffer elements (queues, VD state)",
        f"  vs ALBEF-4M {_m(ALBEF_4M_REFERENCE_PARAMS)} (the issue's figure): "
        f"incl. {counts['total'] / ALBEF_4M_REFERENCE_PARAMS:.2f}x, "
        f"without {counts['without_momentum'] / ALBEF_4M_REFERENCE_PARAMS:.2f}x",
        f"step: median {result['median_step_seconds']:.3f} s over {len(result['step_seconds'])} step(s), "
        f"{result['images_per_second']:.2f} images/s",
    ]
    peak = result["peak_memory_bytes"]
    lines.append(f"peak memory during the timed steps: {'?' if peak is None else f'{peak / 2**30:.2f} GiB'}")
    flops = result.get("flops_per_step")
    if flops:
        achieved = flops / result["median_step_seconds"] / 1e12
        text = f"FLOPs per step: {flops / 1e12:.2f} TFLOP, achieved {achieved:.2f} TFLOP/s"
        if peak_tflops:
            text += f", MFU {100 * mfu(flops, result['median_step_seconds'], peak_tflops):.1f}% of {peak_tflops:g}"
        lines.append(text)
    lines.append("losses: " + ", ".join(f"{k}={v:.3f}" for k, v in result["losses"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["albef_base", "nas_base"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch", type=int, default=2, help="images per step (paper: 64 per GPU)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: 0 CPU, 3 CUDA)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--flops",
        choices=("auto", "on", "off"),
        default="auto",
        help="count FLOPs on one extra step (auto: CUDA)",
    )
    parser.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute ViT and BERT activations in backward (vision/text.grad_checkpointing)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)"
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 0)
    peak_tflops = args.peak_tflops or device_peak_tflops(device, args.precision)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {where}; precision {args.precision}; batch {args.batch}; {IMAGE_SIZE} px; text {TEXT_LENGTH}; "
        f"activation checkpointing {'on' if args.grad_checkpointing else 'off'}"
    )
    for name in args.models:
        torch.manual_seed(0)
        start = time.perf_counter()
        overrides = dict(NAS_STAGE2) if name.startswith("nas") else {}
        if args.grad_checkpointing:
            overrides |= {"vision": {"grad_checkpointing": True}, "text": {"grad_checkpointing": True}}
        model = build(name, overrides)
        built = time.perf_counter() - start
        counts = count_parameters(model)
        result = measure(
            model,
            device=device,
            precision=args.precision,
            batch_size=args.batch,
            steps=args.steps,
            warmup=warmup,
            count_flops=args.flops == "on" or (args.flops == "auto" and device.type == "cuda"),
        )
        print(
            report(
                name + (" (stage-2 form: NVA on)" if name.startswith("nas") else ""),
                counts,
                result,
                peak_tflops,
            )
        )
        print(f"built in {built:.1f} s")
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
