"""Which training results are bit-identical across fresh processes, thread counts and CPU code paths?

Each measurement is a fresh Python process that trains one variant of the default profile for
`--steps` steps through the engine (`nas.engine.fit`, so `train.deterministic` applies) on the
same synthetic batches, then writes a SHA-256 of its final weights (every parameter and buffer:
momentum copies, queues, VD codebook and EMA state) and its per-step losses. Batches hold two
captions per image, as the default data does, so in-batch hard negatives repeat rows and the ITM
backward accumulates several gradients into one row.

Variants: `albef` (stage 1), `vd` (stage 1: VD tokens in ITM, EMA codebook updates), `nas` (stage-2
form: VD frozen, NVA negatives). Settings compared against the reference (deterministic kernels,
`select_rows`, 2 threads, the CPU's best code path):
  - a second fresh process (same settings);
  - before this fix: `tensor[index]` for the hard negatives and no deterministic kernels (the parent
    commit's behaviour), two fresh processes;
  - 1 thread instead of 2;
  - code paths capped to AVX2 (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`,
    `MKL_CBWR=AVX2`): what a machine without AVX-512 would run, our stand-in for "another machine".
It also prints the median step time of each setting (a process's own steps after the first two).
Not a test: it prints a table and writes JSON.

    .venv/bin/python benchmarks/reproducibility.py --steps 20 --json reports/reproducibility.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("albef", "vd", "nas")
AVX2_CAP = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
# name -> (environment, worker flags); the reference comes first.
SETTINGS: dict[str, tuple[dict[str, str], list[str]]] = {
    "reference": ({"OMP_NUM_THREADS": "2"}, []),
    "reference, 2nd process": ({"OMP_NUM_THREADS": "2"}, []),
    "before fix": ({"OMP_NUM_THREADS": "2"}, ["--before-fix"]),
    "before fix, 2nd process": ({"OMP_NUM_THREADS": "2"}, ["--before-fix"]),
    "1 thread": ({"OMP_NUM_THREADS": "1"}, []),
    "AVX2 code paths": ({"OMP_NUM_THREADS": "2", **AVX2_CAP}, []),
}
BATCH_IMAGES_PER_CAPTION = 2  # the synthetic default: two captions per image


def make_batches(steps: int, batch: int, image_size: int, text_length: int = 24):
    import torch

    generator = torch.Generator().manual_seed(1234)
    batches = []
    for _ in range(steps):
        images = torch.randn(
            batch // BATCH_IMAGES_PER_CAPTION, 3, image_size, image_size, generator=generator
        )
        ids = torch.randint(1000, 3000, (batch, text_length), generator=generator)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        batches.append(
            {
                "image": images.repeat_interleave(BATCH_IMAGES_PER_CAPTION, dim=0),
                "input_ids": ids,
                "attention_mask": torch.ones(batch, text_length, dtype=torch.long),
                "image_id": torch.arange(batch // BATCH_IMAGES_PER_CAPTION).repeat_interleave(2),
                "num_skipped": 0,
            }
        )
    return batches


def worker(args: argparse.Namespace) -> None:
    """One fresh-process training run; writes {"sha256", "losses", "step_ms"} to args.out."""
    import torch

    from nas.config import merge
    from nas.config.distillation import DistillationConfig
    from nas.config.params import load_params, resolve
    from nas.engine import ScheduleConfig, TrainConfig, fit
    from nas.models.registry import create_model

    if args.before_fix:
        import nas.objectives.itm as itm

        itm.select_rows = lambda tensor, index: tensor[index]  # the parent commit's indexing
    cfg = resolve(load_params(ROOT / "params.yaml"), args.variant)
    stage = "pretrain_stage2" if args.variant == "nas" else "pretrain_stage1"
    overrides = merge(cfg["model"]["overrides"], cfg[stage].get("model_overrides", {}))
    overrides = merge(overrides, {"vd": {"init": "random"}} if "vd" in overrides else {})
    torch.manual_seed(0)
    model = create_model(cfg["model"]["name"], **overrides)
    if hasattr(model, "set_total_steps"):
        model.set_total_steps(args.steps)
    image_size = model.cfg.vision.img_size
    batches = make_batches(args.steps, args.batch, image_size)

    step_ms: list[float] = []
    forward = model.forward

    def timed_forward(*a, **k):
        step_ms.append(time.perf_counter())
        return forward(*a, **k)

    model.forward = timed_forward
    train = TrainConfig(
        epochs=1,
        seed=42,
        deterministic=not args.before_fix,
        progress_bar=False,
        log_every_steps=1,
        schedule=ScheduleConfig(lr=1e-3, min_lr=3e-4, warmup_steps=2),
    )
    with tempfile.TemporaryDirectory() as out:
        # ALBEF's distillation at the paper's α (0.4, ramped), as the engine's step input.
        result = fit(model, batches, train, output_dir=out, step_inputs=DistillationConfig().step_inputs)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    starts = step_ms + [time.perf_counter()]
    durations = [1000 * (b - a) for a, b in zip(starts, starts[1:])][2:]
    Path(args.out).write_text(
        json.dumps(
            {
                "sha256": digest.hexdigest(),
                "losses": [step["total"] for step in result["steps"]],
                "step_ms": statistics.median(durations) if durations else None,
                "threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            }
        )
    )


def run_setting(variant: str, env: dict[str, str], flags: list[str], steps: int, batch: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = [sys.executable, __file__, "--worker", "--variant", variant, "--steps", str(steps)]
    command += ["--batch", str(batch), "--out", out, *flags]
    full_env = {**os.environ, **env, "PYTHONHASHSEED": "0"}
    subprocess.run(command, check=True, cwd=ROOT, env=full_env)
    try:
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compare_with(path: Path, rows: list[dict]) -> None:
    """Across machines: is each (variant, setting)'s final-weights hash the one a run elsewhere recorded?"""
    recorded = json.loads(path.read_text())
    theirs = {(r["variant"], r["setting"]): r["sha256"] for r in recorded["rows"]}
    print(f"\nagainst {path} ({recorded['machine']['cpu']}, {recorded['machine']['cpu_capability']}):")
    for row in rows:
        key = (row["variant"], row["setting"])
        if key in theirs and recorded["steps"] == row.get("steps"):
            verdict = "identical" if theirs[key] == row["sha256"] else "DIFFERENT"
            print(f"  {row['variant']:<7} {row['setting']:<24} {verdict}")


def first_divergence(a: list[float], b: list[float]) -> int | None:
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--compare", type=Path, default=None, help="a JSON written on another machine: compare the hashes"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--before-fix", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    machine = {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }
    print(f"machine: {machine}; {args.steps} steps, batch {args.batch}\n")
    rows = []
    header = f"{'variant':<7} {'setting':<24} {'weights = reference?':<22} {'first differing loss':<21} {'ms/step':>8}"
    print(header)
    print("-" * len(header))
    for variant in args.variants:
        results = {}
        for name, (env, flags) in SETTINGS.items():
            results[name] = run_setting(variant, env, flags, args.steps, args.batch)
        reference = results["reference"]
        for name, result in results.items():
            # "before fix" runs are compared with each other (reruns of the parent's behaviour).
            base = results["before fix"] if name == "before fix, 2nd process" else reference
            same = result["sha256"] == base["sha256"]
            step = first_divergence(base["losses"], result["losses"])
            label = "-" if name in ("reference", "before fix") else ("identical" if same else "DIFFERENT")
            if name == "before fix":
                label = "(its own reference)"
            row = {
                "variant": variant,
                "setting": name,
                "identical": None if name in ("reference", "before fix") else same,
                "first_differing_step": step,
                "step_ms": result["step_ms"],
                "sha256": result["sha256"],
                "steps": args.steps,
            }
            rows.append(row)
            where = "-" if step is None else f"step {step}"
            print(f"{variant:<7} {name:<24} {label:<22} {where:<21} {result['step_ms']:>8.1f}")
    if args.compare:
        compare_with(args.compare, rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": machine, "steps": args.steps, "batch": args.batch, "rows": rows}, indent=2)
            + "\n"
        )
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
