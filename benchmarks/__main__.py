"""`python -m benchmarks` (= `nas bench`): every step benchmark of the project, one table of ratios.

Each benchmark case runs in a fresh worker process (benchmarks/steps.py) against a source tree; its arms
(e.g. fp32 and bf16) are timed inside that one process in alternating blocks, so the ratios between
arms are measured side by side. Cases:

  albef_b32, albef_b64  ALBEF's stage-1 step at the tiny profile (params.yaml, variant albef) through
                        the engine's step, fp32 and bf16 autocast; plus the loader's time per batch
  nva                   the stage-2 step of albef, vd (VD frozen) and nas (VD frozen + NVA), batch 64
  mug                   MUG (reconstruction + captioning) against MAE only, batch 32
  uta                   UTA's student (visible tokens only) against MIM and no masking, batch 64
  paper                 the paper-size step (albef_base, ViT-B/16 + BERT-base): on a GPU bf16, images/s,
                        peak memory, MFU; on CPU skipped unless `--paper run` (batch 2, one step: ~35 s)
  eval                  one model scored as the evaluate stage scores it: retrieval + every probe

`--compare REV` runs the same cases on a `git worktree` of REV (its data/ linked to this tree's), worker
by worker interleaved with this tree (this, REV, this, REV ... for `--repeats`), and prints each arm's
time in both and their ratio. `python -m benchmarks startup` times the stage processes' start-up
(benchmarks/startup.py). Other scripts here: paper_scale_step.py (parameter counts of the paper models),
reproducibility.py (bit-identity across processes and code paths).

    python -m benchmarks                                   # every case, this tree
    python -m benchmarks --compare HEAD~1 --out reports/bench/steps.json
    python -m benchmarks --only albef_b32 --quick --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import add_worktree, remove_worktree  # noqa: E402

HERE = Path(__file__).resolve().parent
SCHEMA = "nas-bench/1"
MARK = "__NAS_BENCH__"

# case name -> worker spec (defaults); --quick shrinks batch / steps.
CASES: dict[str, dict[str, Any]] = {
    "albef_b32": {"case": "albef", "batch": 32, "precisions": ["fp32", "default"]},
    "albef_b64": {"case": "albef", "batch": 64, "precisions": ["fp32", "default"]},
    "nva": {"case": "nva", "batch": 64},
    "mug": {"case": "mug", "batch": 32},
    "uta": {"case": "uta", "batch": 64},
    "paper": {"case": "paper", "batch": 2},
    "eval": {"case": "eval", "variant": "albef"},
}
QUICK = {
    "albef_b32": {"batch": 8},
    "albef_b64": {"batch": 8},
    "nva": {"batch": 8},
    "mug": {"batch": 4},
    "uta": {"batch": 8},
    "paper": {"batch": 1},
    "eval": {"max_images": 16, "benchmarks": ["vg_relation"]},
}

_BOOT = (
    "import json, sys\n"
    "sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
    "from benchmarks.steps import run_case\n"
    "result = run_case(json.loads(sys.argv[3]))\n"
    f"print({MARK!r} + json.dumps(result), flush=True)\n"
)


def _harness_copy() -> Path:
    """This tree's benchmark code, copied: a worker imports it first, whichever tree it measures."""
    folder = Path(tempfile.mkdtemp(prefix="nas-bench-harness-"))
    shutil.copytree(HERE, folder / "benchmarks", ignore=shutil.ignore_patterns("__pycache__", "results"))
    return folder


def run_worker(
    spec: dict[str, Any], tree: Path, harness: Path, timeout: float, env_extra: dict[str, str] | None = None
) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{harness}{os.pathsep}{tree}",
        "HF_HUB_OFFLINE": "1",
        **(env_extra or {}),
    }
    argv = [sys.executable, "-c", _BOOT, str(harness), str(tree), json.dumps(spec)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        return {"error": f"exit {done.returncode}: {tail}", "process_seconds": time.perf_counter() - start}
    result = json.loads(lines[-1][len(MARK) :])
    result["process_seconds"] = time.perf_counter() - start
    if Path(result["nas_source"]).resolve() != (tree / "nas").resolve():
        result["error"] = f"measured {result['nas_source']}, not {tree / 'nas'}"
    return result


# ---- summary and table -----------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One tree's worker runs of one case: per arm the median time and the median (over runs) of the
    ratio to the case's baseline arm, each ratio taken inside one worker."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[-1].get("error", "no run")}
    base = good[0]["baseline"]
    arms: dict[str, Any] = {}
    for arm in good[0]["arms"]:
        walls = [t for r in good for t in r["arms"][arm]["wall"]]
        cpus = [t for r in good for t in r["arms"][arm]["cpu"]]
        ratio = [r["arms"][arm]["median_wall"] / r["arms"][base]["median_wall"] for r in good]
        arms[arm] = {
            "median_seconds": statistics.median(walls),
            "median_cpu_seconds": statistics.median(cpus) if cpus else None,
            "steps": len(walls),
            "ratio_to_baseline": statistics.median(ratio),
            "first_losses": good[0]["arms"][arm]["first"],
        }
    extra = {k: v for k, v in good[0].items() if k != "arms"}
    return {"baseline": base, "arms": arms, "runs": len(good), **extra}


def _fmt_time(seconds: float, unit: str) -> str:
    return f"{seconds:.2f} s" if unit == "s" else f"{seconds * 1000:.0f} ms"


def table(summary: dict[str, dict[str, Any]], trees: list[str]) -> list[str]:
    this = trees[0]
    other = trees[1] if len(trees) > 1 else None
    head = "| benchmark | arm | time/step | CPU/step | × baseline arm |"
    rule = "|---|---|---:|---:|---:|"
    if other:
        head += f" {other} | {other}: × baseline | this / {other} |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for case, by_tree in summary.items():
        mine = by_tree[this]
        if "error" in mine or "skipped" in mine:
            lines.append(
                f"| {case} | — | {mine.get('skipped') or 'error: ' + mine['error'][:120]} | | |"
                + (" | | |" if other else "")
            )
            continue
        unit = mine.get("unit", "ms")
        for arm, s in mine["arms"].items():
            label = f"{case}" + (f" (batch {mine['batch']})" if "batch" in mine else "")
            cpu = "" if s["median_cpu_seconds"] is None else _fmt_time(s["median_cpu_seconds"], unit)
            row = (
                f"| {label} | {arm} | {_fmt_time(s['median_seconds'], unit)} | {cpu} "
                f"| {s['ratio_to_baseline']:.2f} |"
            )
            if other:
                theirs = by_tree[other]
                t = theirs.get("arms", {}).get(arm) if "error" not in theirs else None
                if t:
                    paired = by_tree.get("paired", {}).get(arm)
                    ratio = paired if paired is not None else s["median_seconds"] / t["median_seconds"]
                    row += f" {_fmt_time(t['median_seconds'], unit)} | {t['ratio_to_baseline']:.2f} | {ratio:.2f} |"
                else:
                    row += " — | — | — |"
            lines.append(row)
        notes = []
        if mine.get("data_seconds_per_batch"):
            notes.append(f"loader {mine['data_seconds_per_batch'] * 1000:.0f} ms/batch")
        if mine.get("images_per_second"):
            notes.append(f"{mine['images_per_second']:.1f} images/s")
        if mine.get("peak_memory_bytes"):
            notes.append(f"peak memory {mine['peak_memory_bytes'] / 2**30:.2f} GiB")
        if mine.get("mfu") is not None:
            notes.append(f"MFU {100 * mine['mfu']:.1f}% of {mine['peak_tflops']:g} TFLOP/s")
        elif mine.get("achieved_tflops"):
            notes.append(f"{mine['achieved_tflops']:.2f} TFLOP/s")
        if mine.get("ideal_ratio"):
            notes.append(f"ideal UTA/MIM (1 - r) {mine['ideal_ratio']:.2f}")
        if mine.get("n_images"):
            notes.append(f"{mine['n_images']} images / {mine['n_texts']} texts, probes {mine.get('probes')}")
        if notes:
            lines.append(f"| {case} | *{'; '.join(notes)}* | | | |" + (" | | |" if other else ""))
    return lines


def paired_ratios(runs_this: list[dict[str, Any]], runs_other: list[dict[str, Any]]) -> dict[str, float]:
    """this / other per arm: the median over repeats of the ratio of worker medians run back to back."""
    out: dict[str, float] = {}
    pairs = [(a, b) for a, b in zip(runs_this, runs_other) if "error" not in a and "error" not in b]
    if not pairs:
        return out
    for arm in pairs[0][0]["arms"]:
        ratios = [
            a["arms"][arm]["median_wall"] / b["arms"][arm]["median_wall"]
            for a, b in pairs
            if arm in b["arms"]
        ]
        if ratios:
            out[arm] = statistics.median(ratios)
    return out


# ---- the command ------------------------------------------------------------------------------------


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(CASES), metavar="CASE", help=f"cases to run: {', '.join(CASES)}"
    )
    parser.add_argument(
        "--skip", nargs="+", choices=list(CASES), default=[], metavar="CASE", help="cases to leave out"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="worker runs per case and tree (default 1; 2 with --compare)",
    )
    parser.add_argument("--blocks", type=int, default=3, help="alternating timed blocks per arm in a worker")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads in the workers (default: torch's)"
    )
    parser.add_argument(
        "--paper",
        choices=("auto", "run", "skip"),
        default="auto",
        help="the paper-size step: auto = on a GPU only (CPU: skipped, ~35 s a step at batch 2)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny batches, one block of one step (a smoke test)"
    )
    parser.add_argument(
        "--compare", metavar="REV", help="also run every case on a git worktree of REV, interleaved"
    )
    parser.add_argument(
        "--passive",
        action="store_true",
        help="OMP_WAIT_POLICY=PASSIVE in the workers: on a CPU shared with other jobs, OpenMP threads that "
        "spin at a barrier while a sibling waits for a core make steps 3-20x slower at random; passive "
        "waiting keeps the times steady (the math is the same)",
    )
    parser.add_argument("--out", metavar="JSON", help="write every figure as JSON")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["startup"]:
        from benchmarks.startup import main as startup_main

        return startup_main(argv[1:], prog=f"{prog} startup")
    args = build_parser(prog).parse_args(argv)
    from benchmarks.machine import describe, machine_info

    machine = machine_info()
    cuda = bool(machine.get("gpu"))
    names = [n for n in (args.only or list(CASES)) if n not in args.skip]
    repeats = args.repeats or (2 if args.compare else 1)
    timing = {"warmup": args.warmup, "steps": args.steps, "blocks": args.blocks}
    if args.quick:
        timing = {"warmup": 1, "steps": 1, "blocks": 1}
    specs: dict[str, dict[str, Any] | None] = {}
    skipped: dict[str, str] = {}
    for name in names:
        spec = {**CASES[name], **timing, "threads": args.threads}
        if args.quick:
            spec.update(QUICK[name])
        if name == "paper":
            if args.paper == "skip" or (args.paper == "auto" and not cuda):
                skipped[name] = (
                    "skipped on CPU (about 35 s a step at batch 2 on 2 cores): `--paper run` to run it"
                )
                continue
            if not cuda:  # `--paper run` on CPU: one step (about 35 s at batch 2 on 2 cores)
                spec.update({"batch": 2 if not args.quick else 1, "warmup": 0, "steps": 1, "blocks": 1})
            else:
                spec.update(
                    {
                        "batch": 64 if not args.quick else 8,
                        "precision": "bf16",
                        "warmup": max(3, timing["warmup"]),
                    }
                )
        specs[name] = spec

    env_extra = {"OMP_WAIT_POLICY": "PASSIVE"} if args.passive else {}
    machine["env"] = {
        k: v
        for k, v in {**os.environ, **env_extra}.items()
        if k
        in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OMP_WAIT_POLICY",
            "ATEN_CPU_CAPABILITY",
            "ONEDNN_MAX_CPU_ISA",
        )
    }
    print(f"machine: {describe(machine)}" + (f"; {machine['env']}" if machine["env"] else ""))
    trees = {"this": ROOT}
    harness = _harness_copy()
    worktree = None
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in specs}
    try:
        if args.compare:
            worktree = add_worktree(args.compare)
            trees[args.compare] = worktree
        for name, spec in specs.items():
            raw[name] = {t: [] for t in trees}
            for repeat in range(repeats):
                order = list(trees) if repeat % 2 == 0 else list(reversed(trees))
                for tree in order:
                    result = run_worker({**spec, "id": name}, trees[tree], harness, args.timeout, env_extra)
                    raw[name][tree].append(result)
                    status = result.get("error") or ", ".join(
                        f"{arm} {_fmt_time(a['median_wall'], result.get('unit', 'ms'))}"
                        for arm, a in result["arms"].items()
                    )
                    print(f"  [{repeat + 1}/{repeats}] {name:9s} {tree:8s} {status}", flush=True)
    finally:
        if worktree is not None:
            remove_worktree(worktree)
        shutil.rmtree(harness, ignore_errors=True)

    tree_names = list(trees)
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in skipped:
            summary[name] = {t: {"skipped": skipped[name]} for t in tree_names}
            continue
        summary[name] = {t: summarise(raw[name][t]) for t in tree_names}
        if args.compare:
            summary[name]["paired"] = paired_ratios(raw[name]["this"], raw[name][args.compare])
    lines = table(summary, tree_names)
    print(
        "\nstep benchmarks: median time per step; '× baseline arm' = ratio to the case's first arm inside one worker"
        + (
            f"; 'this / {args.compare}' = median over {repeats} interleaved worker pairs"
            if args.compare
            else ""
        )
    )
    print("\n".join(lines))
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "command": "python -m benchmarks " + " ".join(argv),
        "trees": {t: str(p) for t, p in trees.items()},
        "compare": args.compare,
        "repeats": repeats,
        "timing": timing,
        "quick": args.quick,
        "cases": summary,
        "raw": raw,
        "table": lines,
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0 if all("error" not in s.get("this", {}) for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
