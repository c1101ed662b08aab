"""Where the evaluate stage's time goes: phase by phase, and how often it encodes the same input again.

Runs `python -m nas.recipes.evaluate --variant V [--set ...]` in this process, unchanged except for
timers wrapped around its phases (model build or load, test images, retrieval, each probe benchmark,
the NVA figure) and counters on the model's encoders (`encode_image`, `encode_text`, `itm_image_tokens`,
`fused_itm_logits` / `itm_logits`): rows in, and rows that were already seen in the same phase of the
same model (by the bytes of the input row, or of the (image tokens, text) pair for ITM), which is
repeated work. The stage runs in a scratch folder (its data/, params and run folders linked to this
tree's), so its outputs never touch the pipeline's. `--cprofile FILE` also writes a cProfile of the run.

Inside each probe benchmark, the time of each kind of work is also summed (`work` rows): reading the
image files, the eval transform, `encode_image`, `itm_image_tokens`, `encode_text` and the ITM pairs
(`fused_itm_logits` / `itm_logits`); the rest of a benchmark is loading its annotations, the metrics and
the score files. Text rows are keyed by their tokens up to the attention mask, so a text padded to
another width still counts as seen.

`--stage mug_evaluate` / `uta_evaluate` profiles MUG's and UTA's evaluate stages instead (their run folders
and checkpoints linked in): the stage, each model's probe suite and each probe benchmark. `--runs-from DIR`
reads the run folders from another tree (e.g. a fresh clone's pipeline).

`--compare REV` runs the same profile on a `git worktree` of REV (this tree's instrumentation, REV's
`nas` package: `--code DIR`), alternating this tree and REV `--repeats` times, prints each phase's median
seconds in both and their ratio, and compares the stage's outputs of the two: every per-option score
file within `--tolerance` (absolute), the per-case outcome files and the metrics JSON identical.

    python -m benchmarks.evaluate_profile --variant albef --set 'evaluate.checkpoint_stages=[untrained]'
    python -m benchmarks.evaluate_profile --variant nas --no-count --cprofile /tmp/evaluate.prof
    python -m benchmarks.evaluate_profile --variant albef --set study.seeds=[0] --compare HEAD --out cmp.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Phases:
    """Nested phase timers (wall seconds, summed per name) and the encoder counters of each phase."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.rows: dict[tuple[str, str], int] = collections.defaultdict(int)
        self.repeats: dict[tuple[str, str], int] = collections.defaultdict(int)
        self.seen: dict[tuple[str, str], set] = collections.defaultdict(set)
        self.work: dict[tuple[str, str], float] = collections.defaultdict(float)  # seconds per kind of work
        self.model_index = 0
        self.caches: list[dict] = []  # per model's probe suite: the encoding cache's size and hits

    @contextlib.contextmanager
    def phase(self, name: str):
        self.stack.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[" > ".join(self.stack)] += time.perf_counter() - start
            self.calls[" > ".join(self.stack)] += 1
            self.stack.pop()

    def where(self) -> str:
        return f"model {self.model_index}: " + " > ".join(n for n in self.stack[1:] if not n.startswith("<"))

    @contextlib.contextmanager
    def working(self, kind: str):
        """Time one kind of work (an encoder, image reads) in the current phase; nested work is
        counted in the innermost kind only."""
        self.stack.append(f"<{kind}>")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stack.pop()
            seconds = time.perf_counter() - start
            self.work[(self.where(), kind)] += seconds
            # an enclosing kind of work loses the time of the nested one
            if self.stack and self.stack[-1].startswith("<"):
                self.work[(self.where(), self.stack[-1][1:-1])] -= seconds

    def count(self, encoder: str, keys: list[bytes]) -> None:
        where = (self.where(), encoder)
        seen = self.seen[where]
        for key in keys:
            self.rows[where] += 1
            if key in seen:
                self.repeats[where] += 1
            else:
                seen.add(key)


def _row_keys(*tensors) -> list[bytes]:
    rows = tensors[0].shape[0]
    keys = []
    for i in range(rows):
        digest = hashlib.blake2b(digest_size=16)
        for t in tensors:
            digest.update(t[i].detach().contiguous().cpu().numpy().tobytes())
        keys.append(digest.digest())
    return keys


def _text_keys(ids, mask) -> list[bytes]:
    """Keys of tokenised texts: the ids where the mask is set (a text padded to any width is one key)."""
    keep = mask.bool()
    return [_row_keys(ids[i][keep[i]].unsqueeze(0))[0] for i in range(ids.shape[0])]


def _pair_keys(image, text, mask) -> list[bytes]:
    keep = mask.bool()
    return [_row_keys(image[i].unsqueeze(0), text[i][keep[i]].unsqueeze(0))[0] for i in range(image.shape[0])]


def instrument(phases: Phases, count: bool, stage: str = "evaluate") -> None:
    """Wrap the stage's phases and the model's encoders (module attributes, looked up at call time)."""
    import nas.engine.run as run_layer
    import nas.evaluation.benchmarks as bench
    import nas.recipes.evaluate as ev

    def timed(module, name: str, label, new_model: bool = False) -> None:
        original = getattr(module, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if new_model:
                phases.model_index += 1
            with phases.phase(label(*args, **kwargs) if callable(label) else label):
                return original(*args, **kwargs)

        setattr(module, name, wrapper)

    import nas.data.captions as captions
    import nas.data.transforms as transforms
    from nas.evaluation.benchmarks import common

    timed(bench, "evaluate_benchmark", lambda name, *a, **k: f"probe {name} ({getattr(a[1], 'name', '?')})")
    import nas.evaluation.probe_suite as suite_module

    if hasattr(suite_module, "shared_encodings"):  # trees with the suite's encoding cache
        shared = suite_module.shared_encodings

        @contextlib.contextmanager
        def recorded(*args, **kwargs):
            with shared(*args, **kwargs) as caches:
                yield caches
            for cache in caches.values():
                phases.caches.append(
                    {"model": phases.model_index, "bytes": cache.bytes, "entries": len(cache), **cache.stats}
                )

        suite_module.shared_encodings = recorded
    if stage != "evaluate":  # MUG, UTA: one probe suite per model
        import nas.evaluation.probe_suite as suite

        timed(suite, "run_probe_suite", "probes", new_model=True)
        return
    timed(ev, "untrained_model", "model: build untrained", new_model=True)
    timed(run_layer, "load_run", "model: load checkpoint", new_model=True)
    timed(captions, "load_split_images", "test images: read + transform")
    if hasattr(ev, "load_split_images"):  # older trees import it at module level
        timed(ev, "load_split_images", "test images: read + transform")
    timed(ev, "evaluate_model", lambda *a, **k: f"score model ({a[5] if len(a) > 5 else k.get('label')})")
    timed(ev, "retrieval_on_split", "retrieval")
    timed(ev, "fine_grained", "probes")
    timed(ev, "nva_picture", "NVA figure")

    def worked(owner, name: str, kind: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            with phases.working(kind):
                return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    worked(common.ImageRef, "load", "read image files")
    build_eval_transform = transforms.build_eval_transform

    @functools.wraps(build_eval_transform)
    def timed_transform(*args, **kwargs):
        transform = build_eval_transform(*args, **kwargs)

        def apply(image):
            with phases.working("eval transform"):
                return transform(image)

        return apply

    transforms.build_eval_transform = timed_transform

    from nas.models.albef import ALBEF

    classes = [ALBEF]
    try:
        from nas.models.nas_model import NAS

        classes.append(NAS)
    except ImportError:
        pass
    keyers = {
        "encode_image": lambda self, image, *a, **k: _row_keys(image),
        "encode_text": lambda self, ids, mask, *a, **k: _text_keys(ids, mask),
        "itm_image_tokens": lambda self, tokens, *a, **k: _row_keys(tokens),
        "fused_itm_logits": lambda self, img, txt, mask, *a, **k: _pair_keys(img, txt, mask),
        "itm_logits": lambda self, img, txt, mask, *a, **k: _pair_keys(img, txt, mask),
    }
    for cls in classes:
        for name, keyer in keyers.items():
            if name not in cls.__dict__:
                continue
            original = cls.__dict__[name]

            def wrapper(self, *args, _original=original, _keyer=keyer, _name=name, **kwargs):
                if count:
                    phases.count(_name, _keyer(self, *args, **kwargs))
                with phases.working(_name):
                    return _original(self, *args, **kwargs)

            setattr(cls, name, functools.wraps(original)(wrapper))


# The stages this profiles: module, its arguments, and the run folder it writes (not linked in).
STAGES = {
    "evaluate": ("nas.recipes.evaluate", lambda variant: ["--variant", variant], "evaluate"),
    "mug_evaluate": ("nas.recipes.mug.stages", lambda variant: ["--stage", "mug_evaluate"], "mug_evaluate"),
    "uta_evaluate": ("nas.recipes.uta.stages", lambda variant: ["--stage", "uta_evaluate"], "uta_evaluate"),
}


def scratch_tree(variant: str, stage: str = "evaluate", runs_from: Path = ROOT) -> Path:
    """A folder holding links to this tree's data/, params and the run folders the stage reads (from
    `runs_from`, another tree's runs/ and checkpoints/ when given)."""
    folder = Path(tempfile.mkdtemp(prefix="nas-evaluate-profile-"))
    for name in ("data", "params.yaml", "params"):
        if (ROOT / name).exists():
            (folder / name).symlink_to(ROOT / name)
    if stage == "evaluate":
        for name in ("pretrain_stage1", "pretrain_stage2", "finetune"):
            source = runs_from / "runs" / name / variant
            if source.is_dir():
                (folder / "runs" / name).mkdir(parents=True, exist_ok=True)
                (folder / "runs" / name / variant).symlink_to(source.resolve())
        return folder
    (folder / "runs").mkdir()
    for source in sorted((runs_from / "runs").iterdir()):
        if source.name not in (STAGES[stage][2], "sacred", "adhoc", "evaluate", "tensorboard"):
            (folder / "runs" / source.name).symlink_to(source.resolve())
    if (runs_from / "checkpoints").is_dir():
        (folder / "checkpoints").symlink_to((runs_from / "checkpoints").resolve())
    return folder


def _work_table(work: dict[str, dict[str, float]], seconds: dict[str, float]) -> list[str]:
    """Per probe benchmark of each model: the phase's seconds (summed over the models that share its
    name) and the seconds of each kind of work in it for this model."""
    kinds = sorted({kind for by_kind in work.values() for kind in by_kind})
    lines = [
        "| model: phase | seconds | " + " | ".join(kinds) + " | rest |",
        "|---|---:|" + "---:|" * (len(kinds) + 1),
    ]
    for where, by_kind in sorted(work.items()):
        if "probe " not in where:
            continue
        total = seconds.get("stage > " + where.partition(": ")[2])
        cells = [f"{by_kind.get(kind, 0.0):.2f}" for kind in kinds]
        rest = "" if total is None else f"{total - sum(by_kind.values()):.2f}"
        lines.append(
            f"| {where} | {'' if total is None else f'{total:.2f}'} | " + " | ".join(cells) + f" | {rest} |"
        )
    return lines


def profile(args: argparse.Namespace) -> dict:
    folder = scratch_tree(args.variant, args.stage, Path(args.runs_from).resolve())
    os.chdir(folder)
    sys.path.insert(0, str(ROOT))
    if args.code:
        sys.path.insert(0, str(Path(args.code).resolve()))
    import torch

    import nas

    if args.threads:
        torch.set_num_threads(args.threads)
    phases = Phases()
    instrument(phases, count=not args.no_count, stage=args.stage)
    import importlib

    module, stage_args, _ = STAGES[args.stage]
    stage_argv = [*stage_args(args.variant), "--runs-dir", str(folder / "sacred")]
    for item in args.overrides:
        stage_argv += ["--set", item]
    profiler = None
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    with phases.phase("stage"):
        importlib.import_module(module).main(stage_argv)
    total = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.cprofile)

    # the work rows are "model i: a > b"; the phases they sit in are "stage > a > b"
    work: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for (where, kind), seconds in phases.work.items():
        work[where][kind] = seconds
    phase_seconds = dict(phases.seconds)
    print(
        f"\n{args.stage} --variant {args.variant} {' '.join(args.overrides)}: {total:.1f} s (scratch {folder})"
    )
    print(f"nas package: {Path(nas.__file__).parent}")
    print("| phase | calls | seconds | share |")
    print("|---|---:|---:|---:|")
    for name, seconds in sorted(phase_seconds.items(), key=lambda kv: kv[0]):
        print(f"| {name} | {phases.calls[name]} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    print(
        "\nwork inside each probe benchmark (seconds; a phase summed over the models when they share its name)"
    )
    for line in _work_table(work, phase_seconds):
        print(line)
    for cache in phases.caches:
        print(f"model {cache['model']}: probe encoding cache {cache['bytes'] / 2**20:.0f} MiB, {cache}")
    repeated = {k: v for k, v in phases.repeats.items() if v}
    if not args.no_count:
        print("\nencoder rows per (model, phase): rows in, of which already seen in that phase")
        print("| model: phase | encoder | rows | repeated |")
        print("|---|---|---:|---:|")
        for (where, encoder), rows in sorted(phases.rows.items()):
            print(f"| {where} | {encoder} | {rows} | {phases.repeats[(where, encoder)]} |")
        per_model = collections.defaultdict(lambda: collections.defaultdict(set))
        for (where, encoder), seen in phases.seen.items():
            if "probes" in where:
                per_model[where.partition(":")[0]][encoder] |= seen
        print("\nprobe encoder rows per model over all its benchmarks: rows in, distinct")
        print("| model | encoder | rows | distinct |")
        print("|---|---|---:|---:|")
        for model, by_encoder in sorted(per_model.items()):
            for encoder, seen in sorted(by_encoder.items()):
                rows = sum(
                    r
                    for (w, e), r in phases.rows.items()
                    if e == encoder and "probes" in w and w.partition(":")[0] == model
                )
                print(f"| {model} | {encoder} | {rows} | {len(seen)} |")
    return {
        "stage": args.stage,
        "variant": args.variant,
        "overrides": args.overrides,
        "nas": str(Path(nas.__file__).parent),
        "scratch": str(folder),
        "total_seconds": total,
        "phases": dict(phases.seconds),
        "calls": dict(phases.calls),
        "work": {where: dict(by_kind) for where, by_kind in work.items()},
        "encoder_rows": [
            {"where": w, "encoder": e, "rows": r, "repeated": phases.repeats[(w, e)]}
            for (w, e), r in sorted(phases.rows.items())
        ],
        "repeated_total": sum(repeated.values()),
        "caches": phases.caches,
    }


# ---- two trees side by side ------------------------------------------------------------------------


def _outputs(scratch: Path) -> dict[str, Path]:
    """The stage's written files under a scratch folder (score files, per-case outcomes, metrics),
    by their path relative to it (the linked inputs and TensorBoard logs left out)."""
    out = {}
    for path in scratch.rglob("*"):
        rel = path.relative_to(scratch)
        if rel.parts[0] in ("data", "params", "sacred") or "tensorboard" in rel.parts or not path.is_file():
            continue
        if any(part in ("pretrain_stage1", "pretrain_stage2", "finetune") for part in rel.parts[:3]):
            continue
        if path.suffix in (".jsonl", ".json"):
            out[str(rel)] = path
    return out


def _numbers(a, b, where: str, tolerance: float, report: dict) -> None:
    """Walk two JSON values side by side: numbers within `tolerance` (exact when 0), else equal."""
    if (
        isinstance(a, bool)
        or isinstance(b, bool)
        or not (isinstance(a, (int, float)) and isinstance(b, (int, float)))
    ):
        if isinstance(a, dict) and isinstance(b, dict):
            if set(a) != set(b):
                report["mismatch"].append(f"{where}: keys differ")
                return
            for key in a:
                _numbers(a[key], b[key], f"{where}.{key}", tolerance, report)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                report["mismatch"].append(f"{where}: lengths {len(a)} != {len(b)}")
                return
            for i, (x, y) in enumerate(zip(a, b)):
                _numbers(x, y, f"{where}[{i}]", tolerance, report)
        elif a != b:
            report["mismatch"].append(f"{where}: {a!r} != {b!r}")
        return
    diff = abs(float(a) - float(b))
    report["values"] += 1
    report["max_abs_diff"] = max(report["max_abs_diff"], diff)
    if diff > tolerance:
        report["mismatch"].append(f"{where}: {a!r} vs {b!r}")


def _load(path: Path, scratch: Path):
    text = path.read_text().replace(str(scratch), "<scratch>")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


VOLATILE = ("seconds", "time", "duration", "started", "finished", "host")  # keys not compared


def _drop_volatile(value):
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if not any(t in k for t in VOLATILE)}
    if isinstance(value, list):
        return [_drop_volatile(v) for v in value]
    return value


def compare_outputs(new: Path, old: Path, tolerance: float) -> dict:
    """Score files (*.jsonl) within `tolerance`; every other output (per-case outcomes, metrics)
    identical, number for number."""
    a, b = _outputs(new), _outputs(old)
    result: dict = {"only_new": sorted(set(a) - set(b)), "only_old": sorted(set(b) - set(a)), "files": {}}
    for rel in sorted(set(a) & set(b)):
        report = {"values": 0, "max_abs_diff": 0.0, "mismatch": []}
        score_file = rel.endswith(".jsonl")
        _numbers(
            _drop_volatile(_load(a[rel], new)),
            _drop_volatile(_load(b[rel], old)),
            rel,
            tolerance if score_file else 0.0,
            report,
        )
        report["mismatch"] = report["mismatch"][:5] + (
            [f"... {len(report['mismatch']) - 5} more"] if len(report["mismatch"]) > 5 else []
        )
        result["files"][rel] = report
    result["equal"] = (
        not result["only_new"]
        and not result["only_old"]
        and all(not r["mismatch"] for r in result["files"].values())
    )
    return result


def compare(args: argparse.Namespace, argv: list[str]) -> int:
    """This tree against `args.compare` (a worktree), alternating, each run in its own process."""
    import statistics
    import subprocess

    from benchmarks.machine import add_worktree, remove_worktree

    passthrough = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--compare", "--out", "--repeats", "--tolerance"):
            skip = True
            continue
        if item.startswith(("--compare=", "--out=", "--repeats=", "--tolerance=")):
            continue
        passthrough.append(item)
    worktree = add_worktree(args.compare)
    runs: dict[str, list[dict]] = {"this": [], args.compare: []}
    try:
        with tempfile.TemporaryDirectory(prefix="nas-evaluate-compare-") as tmp:
            for repeat in range(args.repeats):
                for arm, code in (("this", None), (args.compare, worktree)):
                    out = Path(tmp) / f"{len(runs[arm])}-{arm.replace('/', '_')}.json"
                    command = [
                        sys.executable,
                        "-m",
                        "benchmarks.evaluate_profile",
                        *passthrough,
                        "--out",
                        str(out),
                    ]
                    if code is not None:
                        command += ["--code", str(code)]
                    print(f"[{repeat + 1}/{args.repeats}] {arm}: {' '.join(command[1:])}", flush=True)
                    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(done.stdout[-4000:], done.stderr[-4000:])
                        raise SystemExit(f"{arm}: the profile failed ({done.returncode})")
                    runs[arm].append(json.loads(out.read_text()))
            outputs = compare_outputs(
                Path(runs["this"][0]["scratch"]), Path(runs[args.compare][0]["scratch"]), args.tolerance
            )
    finally:
        remove_worktree(worktree)
    names = sorted(set(runs["this"][0]["phases"]) | set(runs[args.compare][0]["phases"]))

    def median(arm: str, name: str) -> float | None:
        values = [run["phases"][name] for run in runs[arm] if name in run["phases"]]
        return statistics.median(values) if values else None

    print(
        f"\nevaluate --variant {args.variant} {' '.join(args.overrides)}: median of {args.repeats} run(s) each"
    )
    print(f"| phase | {args.compare} s | this tree s | this / {args.compare} |")
    print("|---|---:|---:|---:|")
    table = {}
    for name in names:
        old, new = median(args.compare, name), median("this", name)
        table[name] = {"old": old, "new": new}
        ratio = f"{new / old:.2f}" if old and new is not None else ""
        print(
            f"| {name} | {'' if old is None else f'{old:.2f}'} | {'' if new is None else f'{new:.2f}'} | {ratio} |"
        )
    for arm in (args.compare, "this"):
        print(f"\nwork inside each probe benchmark, {arm} (first run)")
        run = runs[arm][0]
        for line in _work_table(run["work"], run["phases"]):
            print(line)
    print(
        f"\noutputs: {'identical' if outputs['equal'] else 'DIFFERENT'} (score files within {args.tolerance} abs,"
        " outcomes and metrics exact)"
    )
    for rel, report in outputs["files"].items():
        flag = "ok" if not report["mismatch"] else "; ".join(report["mismatch"])
        print(f"  {rel}: {report['values']} numbers, max |diff| {report['max_abs_diff']:.3g}: {flag}")
    for key in ("only_new", "only_old"):
        if outputs[key]:
            print(f"  {key}: {outputs[key]}")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"compare": args.compare, "phases": table, "runs": runs, "outputs": outputs}, indent=2)
            + "\n"
        )
        print(f"wrote {args.out}")
    return 0 if outputs["equal"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.evaluate_profile",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", choices=sorted(STAGES), default="evaluate")
    parser.add_argument("--variant", default="albef", help="the variant (stage evaluate)")
    parser.add_argument("--runs-from", default=str(ROOT), metavar="DIR", help="read run folders from DIR")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-count", action="store_true", help="time only (no input hashing)")
    parser.add_argument("--cprofile", metavar="FILE", help="also write a cProfile of the stage")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", metavar="JSON")
    parser.add_argument("--code", metavar="DIR", help="import the `nas` package from DIR (another tree)")
    parser.add_argument("--compare", metavar="REV", help="also profile a worktree of REV; compare outputs")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tree with --compare (alternating)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="score files: max abs difference")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args, argv)
    result = profile(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
