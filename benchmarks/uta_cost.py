"""UTA's student step against an EVA-02-style masked-image-modelling step, at equal batch
(MUG_UTA.md §2, claim 4: the ratio should be close to the ideal 1 - r).

- UTA: the encoder runs on the K = round((1 - r) N) visible tokens only (reversed block-wise mask);
  loss 1 - cos against the teacher's tokens at CLS + the visible positions.
- MIM (EVA-02): every position enters the encoder, masked patches replaced by a learned [MASK]
  token (BEiT block-wise mask, N - K masked); loss 1 - cos against the teacher's tokens at the masked
  positions.

Both share the same student weights, optimizer (AdamW) and teacher targets (fixed random tensors:
the frozen teacher's forward is the same for both and is left out). Steps are interleaved (UTA, MIM,
UTA, ...) so drifting machine load hits both alike; medians of wall-clock and process CPU time are
compared. Not a test: it prints numbers.

    .venv/bin/python benchmarks/uta_cost.py --size tiny --batch 64
    .venv/bin/python benchmarks/uta_cost.py --size base --batch 8 --repeats 3   # EVA-02 B/16, 1024-d head
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from nas.models.block_masking import MaskingConfig, sample_visible
from nas.models.registry import create_model
from nas.models.uta import UTAStudent
from nas.objectives.uta import alignment_loss, gather_tokens


def mim_tokens(student: UTAStudent, images: torch.Tensor, masked: torch.Tensor, mask_token: nn.Parameter):
    """EVA-02's MIM encoder pass: [MASK] replaces masked patch embeddings, every position is encoded."""
    vit = student.vit
    x = vit.patch_embed(images)
    x = torch.where(masked.unsqueeze(-1), mask_token.to(x.dtype).expand_as(x), x)
    pos = vit.pos_embed
    cls = (vit.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
    x = vit.norm_pre(torch.cat([cls, x + pos[:, 1:]], dim=1))
    rope = vit.rope.get_embed()
    for block in vit.blocks:
        x = block(x, rope=rope)
    return student.head(vit.norm(x))


def timed(step: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    step().backward()
    optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--ratio", type=float, default=None, help="mask ratio r (default: 0.5 tiny, 0.4 base)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed steps of each kind (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ratio = args.ratio if args.ratio is not None else (0.5 if args.size == "tiny" else 0.4)
    torch.manual_seed(0)
    student = create_model(f"uta_{args.size}").train()
    grid, n = student.grid, student.num_patches
    masking = MaskingConfig("reversed_blockwise", ratio, min_patches=4 if args.size == "tiny" else 16)
    mim_masking = MaskingConfig("blockwise", ratio, masking.min_patches)
    mask_token = nn.Parameter(torch.zeros(1, 1, student.cfg.embed_dim))
    optimizer = torch.optim.AdamW([*student.parameters(), mask_token], lr=1e-4, weight_decay=0.05)
    size, dim = student.cfg.image_size, student.cfg.teacher_dim
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, generator=g)
    teacher = torch.randn(args.batch, 1 + n, dim, generator=g)  # stands in for the frozen teacher's tokens

    def uta_step() -> torch.Tensor:
        keep = sample_visible(args.batch, grid, masking)
        return alignment_loss(student(images, keep), gather_tokens(teacher, keep))

    def mim_step() -> torch.Tensor:
        visible = sample_visible(args.batch, grid, mim_masking)
        masked = torch.ones(args.batch, n, dtype=torch.bool)
        masked.scatter_(1, visible, False)
        out = mim_tokens(student, images, masked, mask_token)[:, 1:]
        return alignment_loss(out[masked].unsqueeze(0), teacher[:, 1:][masked].unsqueeze(0))

    timings: dict[str, list[tuple[float, float]]] = {"uta": [], "mim": []}
    for repeat in range(args.repeats + 1):
        for name, step in (("uta", uta_step), ("mim", mim_step)):
            result = timed(step, optimizer)
            if repeat > 0:  # the first of each is warm-up
                timings[name].append(result)
    wall = {k: statistics.median(t[0] for t in v) for k, v in timings.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in timings.items()}
    k = round((1 - ratio) * n)
    params = sum(p.numel() for p in student.parameters()) / 1e6
    print(
        f"student uta_{args.size}: {params:.1f}M params, {grid[0]}x{grid[1]} grid, batch {args.batch}, r = {ratio}"
    )
    print(f"tokens through the encoder: UTA 1 + {k} visible, MIM 1 + {n} (with {n - k} [MASK])")
    print("| step | wall ms (median) | CPU ms (median) |")
    print("|---|---:|---:|")
    for name in ("uta", "mim"):
        print(f"| {name.upper()} | {1e3 * wall[name]:.1f} | {1e3 * cpu[name]:.1f} |")
    print(
        f"UTA / MIM: wall {wall['uta'] / wall['mim']:.3f}, CPU {cpu['uta'] / cpu['mim']:.3f}; "
        f"ideal (1 - r) = {1 - ratio:.3f} (token ratio (1 + K) / (1 + N) = {(1 + k) / (1 + n):.3f})"
    )


if __name__ == "__main__":
    main()
