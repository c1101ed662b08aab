"""Per-stage process start-up: the time from process start to the first line of a stage's own work.

Every process the main command (`dvc repro`) starts is measured as DVC starts it: the commands of
dvc.yaml, each `foreach` stage once per variant of params.yaml, each `matrix` stage once per entry
(`mug_pretrain@mug-0`, ...), in dvc.yaml's order. A stage process is started through a
small probe that runs `python -m experiments.<stage> ...` unchanged (runpy, `__main__`) except that the
stage function handed to `nas.recipes.stage.run_stage` is replaced by one that stamps the time and
exits at once: so the figure covers the interpreter, every import, the params check, the run record
(git state, source hashes) and Sacred's set-up, and none of the stage's work. Sacred writes its record
to a temporary `--runs-dir`, one per tree and repeat that all its processes share, as `runs/` is shared
in a main command (so the params checks a stage remembers there, `nas.recipes.stage.load_config`, are
found by the later processes of the same repeat, and each repeat starts from none, as a fresh clone
does); no output of the pipeline is touched. `variant_params` (not a Sacred stage:
`python -m nas.config.params`, writing to a temporary file) is timed whole.

Start-up after the imports is split in two: `imports` (process start until `run_stage` is called: the
module and everything it imports) and `setup` (until the stage function runs: params, record, Sacred).
`heavy` lists the heavy top-level packages loaded by then. `torch_later` is what the stage would still
pay for `import torch` after its first line (0 where torch is loaded by then): a stage whose work needs
torch pays it there, so the figure says how much of a cut only moved into the work. A bare
`python -c pass` is timed as the floor. `--compare REV` times the same processes in a `git worktree` of
REV, interleaved with this tree.

    python -m benchmarks startup                        # every stage process, 3 repeats
    python -m benchmarks startup --compare HEAD --out reports/bench/startup.json
    python -m benchmarks startup --stages pretrain_stage1@albef evaluate@albef --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import add_worktree, remove_worktree  # noqa: E402

HEAVY = (
    "torch",
    "torchvision",
    "transformers",
    "timm",
    "ignite",
    "sacred",
    "numpy",
    "sklearn",
    "scipy",
    "matplotlib",
    "open_clip",
    "PIL",
    "pandas",
    "dvc",
    "tensorboard",
    "pkg_resources",
)

# Runs `python -m <module> <args>` with the stage function replaced by a time stamp. argv[1]: the module;
# the rest: its arguments. Prints one JSON line (prefixed) on stdout and exits 0 without stage work.
_PROBE = r"""
import os, sys, time, json, runpy
_MARK = "__NAS_STARTUP__"
_stamps = {}
_profile_to = os.environ.get("NAS_STARTUP_PROFILE")
if _profile_to:
    import cProfile
    _profiler = cProfile.Profile()
    _profiler.enable()
def _stop_profile():
    if _profile_to:
        _profiler.disable()
        _profiler.dump_stats(_profile_to)
def _emit(kind, t=None, heavy=None):
    t = time.time() if t is None else t
    _stop_profile()
    if heavy is None:
        heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%(heavy)r))
    sys.stdout.flush()
    print(_MARK + json.dumps({"kind": kind, "t": t, "stamps": _stamps, "heavy": heavy}), flush=True)
    sys.stderr.flush()
    os._exit(0)
module, args = sys.argv[1], sys.argv[2:]
if module.startswith("experiments."):
    import nas.recipes.stage as _common
    _run_stage = _common.run_stage
    def run_stage(stage, main, *a, **k):
        _stamps["imports"] = time.time()
        def first_line_of_work(cfg, record):
            _stamps["first_line"] = time.time()
            _stop_profile()
            _heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%(heavy)r))
            _before = time.time()
            import torch
            _stamps["torch_later"] = 0.0 if "torch" in _heavy else time.time() - _before
            _emit("stage", _stamps["first_line"], _heavy)
        return _run_stage(stage, first_line_of_work, *a, **k)
    _common.run_stage = run_stage
sys.argv = [module, *args]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
_stamps["imports"] = _stamps.get("imports", time.time())
_emit("whole")
"""


@dataclass(frozen=True)
class StageProcess:
    name: str  # dvc.yaml stage, `name@variant` for a foreach stage
    argv: tuple[str, ...]  # `python -m ...` words after `python`


def _param(params: dict[str, Any], ref: Any) -> list[Any]:
    """A matrix axis: a list, or `${dotted.key}` of params.yaml (a mapping gives its keys, as in DVC)."""
    if isinstance(ref, str) and ref.startswith("${") and ref.endswith("}"):
        node: Any = params
        for part in ref[2:-1].split("."):
            node = node[part]
        ref = node
    return list(ref)


def stage_processes(root: Path = ROOT) -> list[StageProcess]:
    """The processes `dvc repro` starts: dvc.yaml's commands, `foreach: ${variants}` once per variant,
    `matrix:` once per entry (DVC's name: `<stage>@<value>-<value>`)."""
    import itertools

    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    variants = list(params.get("variants") or {})
    out = []
    for name, spec in stages.items():
        cmd = (spec.get("do") or spec)["cmd"]
        entries: list[tuple[str | None, dict[str, str]]] = [(None, {})]
        if "foreach" in spec:
            entries = [(key, {"${key}": key}) for key in variants]
        elif "matrix" in spec:
            axes = {axis: _param(params, values) for axis, values in spec["matrix"].items()}
            entries = [
                ("-".join(map(str, combo)), {f"${{item.{a}}}": str(v) for a, v in zip(axes, combo)})
                for combo in itertools.product(*axes.values())
            ]
        for key, subs in entries:
            text = cmd
            for ref, value in subs.items():
                text = text.replace(ref, value)
            words = text.split()
            if words[0] != "python":
                continue
            out.append(StageProcess(name if key is None else f"{name}@{key}", tuple(words[1:])))
    return out


def _probe_argv(process: StageProcess, runs_dir: str, scratch: str) -> list[str]:
    words = list(process.argv)
    assert words[0] == "-m", process
    module, args = words[1], words[2:]
    if module.startswith("experiments."):
        args += ["--runs-dir", runs_dir]
    if "--out" in args:  # variant_params: write the lineage to a scratch file, not the pipeline's
        args[args.index("--out") + 1] = os.path.join(scratch, "lineage.json")
    return [sys.executable, "-c", _PROBE % {"heavy": HEAVY}, module, *args]


def time_process(
    process: StageProcess, cwd: Path, *, runs_dir: str | None = None, timeout: float = 300
) -> dict[str, Any]:
    """One start of `process` in `cwd`: seconds to the first line of work, split into imports and set-up.
    `runs_dir`: the `--runs-dir` it gets (default: its own temporary one)."""
    with tempfile.TemporaryDirectory(prefix="nas-startup-") as scratch:
        argv = _probe_argv(process, runs_dir or os.path.join(scratch, "runs"), scratch)
        env = {**os.environ, "PYTHONPATH": str(cwd), "PYTHONWARNINGS": "default"}
        start = time.time()
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        end = time.time()
    lines = [line for line in done.stdout.splitlines() if line.startswith("__NAS_STARTUP__")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{process.name}: probe failed (exit {done.returncode}): {' | '.join(tail)}")
    mark = json.loads(lines[-1][len("__NAS_STARTUP__") :])
    imports = mark["stamps"].get("imports", mark["t"])
    warnings = [line for line in done.stderr.splitlines() if "Warning" in line]
    return {
        "seconds": mark["t"] - start,
        "imports_seconds": imports - start,
        "setup_seconds": mark["t"] - imports,
        "process_seconds": end - start,
        "torch_later_seconds": mark["stamps"].get("torch_later", 0.0),
        "heavy": mark["heavy"],
        "warnings": warnings,
    }


def time_bare_python(cwd: Path) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", "pass"], cwd=cwd, check=True)
    return time.time() - start


def measure(
    processes: list[StageProcess], trees: dict[str, Path], repeats: int, log=print
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{tree: {process: [one start per repeat]}}; trees interleaved within each repeat. The processes of
    one tree and repeat share one fresh `--runs-dir`, as a main command's processes share `runs/`."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {t: {p.name: [] for p in processes} for t in trees}
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="nas-startup-runs-") as shared:
            for process in processes:
                for tree, cwd in trees.items():
                    runs_dir = os.path.join(shared, tree.replace("/", "_"))
                    one = time_process(process, cwd, runs_dir=runs_dir)
                    results[tree][process.name].append(one)
                    log(f"  [{repeat + 1}/{repeats}] {tree:6s} {process.name:28s} {one['seconds']:6.2f} s")
    return results


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("seconds", "imports_seconds", "setup_seconds", "torch_later_seconds")
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    return {
        **{f"median_{k}": v for k, v in med.items()},
        "all_seconds": [round(r["seconds"], 3) for r in runs],
        "heavy": runs[-1]["heavy"],
        "warnings": sorted({w for r in runs for w in r["warnings"]}),
    }


def table(summary: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    trees = list(summary)
    head = "| process | " + " | ".join(f"{t} s (imports + setup)" for t in trees)
    head += " | after/before |" if len(trees) == 2 else " |"
    lines = [head, "|---|" + "---:|" * (len(trees) + (len(trees) == 2))]
    for name in names:
        cells = []
        for tree in trees:
            s = summary[tree]["processes"][name]
            cells.append(
                f"{s['median_seconds']:.2f} ({s['median_imports_seconds']:.2f} + {s['median_setup_seconds']:.2f})"
            )
        row = f"| {name} | " + " | ".join(cells)
        if len(trees) == 2:
            a, b = (summary[t]["processes"][name]["median_seconds"] for t in trees)
            row += f" | {a / b:.2f}"
        lines.append(row + " |")
    sums = [summary[t]["sum_seconds"] for t in trees]
    row = f"| **sum over {len(names)} processes** | " + " | ".join(f"**{s:.1f}**" for s in sums)
    if len(trees) == 2:
        row += f" | **{sums[0] / sums[1]:.2f}**"
    lines.append(row + " |")
    return lines


def run(
    stages: list[str] | None = None,
    repeats: int = 3,
    compare: str | None = None,
    out: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    from benchmarks.machine import machine_info

    log = (lambda *a, **k: None) if quiet else print
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    processes = stage_processes()
    if stages:
        unknown = set(stages) - {p.name for p in processes} - {p.name.split("@")[0] for p in processes}
        if unknown:
            raise SystemExit(f"unknown stage(s) {sorted(unknown)}; choose from {[p.name for p in processes]}")
        processes = [p for p in processes if p.name in stages or p.name.split("@")[0] in stages]
    trees = {"this": ROOT}
    worktree = None
    try:
        if compare:
            worktree = add_worktree(compare)
            trees = {"this": ROOT, compare: worktree}
        bare = statistics.median(time_bare_python(ROOT) for _ in range(3))
        raw = measure(processes, trees, repeats, log=log)
    finally:
        if worktree is not None:
            remove_worktree(worktree)
    summary: dict[str, Any] = {}
    for tree in trees:
        per = {name: summarise(runs) for name, runs in raw[tree].items()}
        summary[tree] = {
            "processes": per,
            "sum_seconds": sum(p["median_seconds"] for p in per.values()),
            "sum_torch_later_seconds": sum(p["median_torch_later_seconds"] for p in per.values()),
            "n_torch_later": sum(p["median_torch_later_seconds"] > 0 for p in per.values()),
        }
    names = [p.name for p in processes]
    lines = table(summary, names)
    result = {
        "benchmark": "startup",
        "machine": {**machine_info(), "load_average_start": load_start},
        "repeats": repeats,
        "bare_python_seconds": bare,
        "trees": {t: str(p) for t, p in trees.items()},
        "compare": compare,
        "summary": summary,
        "table": lines,
    }
    print(
        f"per-stage process start-up (process start -> first line of the stage's work), median of {repeats}; "
        f"bare `python -c pass` {bare:.2f} s"
    )
    print("\n".join(lines))
    for tree in trees:
        later = summary[tree]
        print(
            f"{tree}: {later['n_torch_later']} of {len(names)} processes reach their first line without torch; "
            f"`import torch` after it would add {later['sum_torch_later_seconds']:.1f} s in all (paid inside the "
            "work by those whose work needs torch)"
        )
    for tree in trees:
        warned = {n: s["warnings"] for n, s in summary[tree]["processes"].items() if s["warnings"]}
        messages = sorted({w for ws in warned.values() for w in ws})
        print(
            f"{tree}: warnings at start-up in {len(warned)} of {len(names)} processes"
            + "".join(f"\n  {m}" for m in messages)
        )
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return result


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks startup") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], epilog=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--stages", nargs="+", help="dvc.yaml stage names (or name@variant); default: all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", metavar="REV", help="also time a git worktree of REV, interleaved")
    parser.add_argument("--out", metavar="JSON", help="write the figures as JSON")
    args = parser.parse_args(argv)
    run(args.stages, args.repeats, args.compare, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
