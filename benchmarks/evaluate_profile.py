"""Where the evaluate stage's time goes: phase by phase, and how often it encodes the same input again.

Runs `python -m nas.recipes.evaluate --variant V [--set ...]` in this process, unchanged except for
timers wrapped around its phases (model build or load, test images, retrieval, each probe benchmark,
the NVA figure) and counters on the model's encoders (`encode_image`, `encode_text`, `itm_image_tokens`,
`fused_itm_logits` / `itm_logits`): rows in, and rows that were already seen in the same phase of the
same model (by the bytes of the input row, or of the (image tokens, text) pair for ITM), which is
repeated work. The stage runs in a scratch folder (its data/, params and run folders linked to this
tree's), so its outputs never touch the pipeline's. `--cprofile FILE` also writes a cProfile of the run.

    python -m benchmarks.evaluate_profile --variant albef --set 'evaluate.checkpoint_stages=[untrained]'
    python -m benchmarks.evaluate_profile --variant nas --no-count --cprofile /tmp/evaluate.prof
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
        self.model_index = 0

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

    def count(self, encoder: str, keys: list[bytes]) -> None:
        where = (f"model {self.model_index}: " + " > ".join(self.stack[1:]) or "?", encoder)
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


def instrument(phases: Phases, count: bool) -> None:
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

    timed(ev, "untrained_model", "model: build untrained", new_model=True)
    timed(run_layer, "load_run", "model: load checkpoint", new_model=True)
    timed(ev, "load_split_images", "test images: read + transform")
    timed(ev, "evaluate_model", lambda *a, **k: f"score model ({a[5] if len(a) > 5 else k.get('label')})")
    timed(ev, "retrieval_on_split", "retrieval")
    timed(ev, "fine_grained", "probes")
    timed(ev, "nva_picture", "NVA figure")
    timed(bench, "evaluate_benchmark", lambda name, *a, **k: f"probe {name} ({getattr(a[1], 'name', '?')})")
    if not count:
        return
    from nas.models.albef import ALBEF

    classes = [ALBEF]
    try:
        from nas.models.nas_model import NAS

        classes.append(NAS)
    except ImportError:
        pass
    keyers = {
        "encode_image": lambda self, image, *a, **k: _row_keys(image),
        "encode_text": lambda self, ids, mask, *a, **k: _row_keys(ids, mask),
        "itm_image_tokens": lambda self, tokens, *a, **k: _row_keys(tokens),
        "fused_itm_logits": lambda self, img, txt, mask, *a, **k: _row_keys(img, txt, mask),
        "itm_logits": lambda self, img, txt, mask, *a, **k: _row_keys(img, txt, mask),
    }
    for cls in classes:
        for name, keyer in keyers.items():
            if name not in cls.__dict__:
                continue
            original = cls.__dict__[name]

            def wrapper(self, *args, _original=original, _keyer=keyer, _name=name, **kwargs):
                phases.count(_name, _keyer(self, *args, **kwargs))
                return _original(self, *args, **kwargs)

            setattr(cls, name, functools.wraps(original)(wrapper))


def scratch_tree(variant: str) -> Path:
    """A folder holding links to this tree's data/, params and the run folders evaluate reads."""
    folder = Path(tempfile.mkdtemp(prefix="nas-evaluate-profile-"))
    for name in ("data", "params.yaml", "params"):
        if (ROOT / name).exists():
            (folder / name).symlink_to(ROOT / name)
    for stage in ("pretrain_stage1", "pretrain_stage2", "finetune"):
        source = ROOT / "runs" / stage / variant
        if source.is_dir():
            (folder / "runs" / stage).mkdir(parents=True, exist_ok=True)
            (folder / "runs" / stage / variant).symlink_to(source)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.evaluate_profile",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variant", default="albef")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-count", action="store_true", help="time only (no input hashing)")
    parser.add_argument("--cprofile", metavar="FILE", help="also write a cProfile of the stage")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", metavar="JSON")
    args = parser.parse_args(argv)

    folder = scratch_tree(args.variant)
    os.chdir(folder)
    sys.path.insert(0, str(ROOT))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    phases = Phases()
    instrument(phases, count=not args.no_count)
    import nas.recipes.evaluate as ev

    stage_argv = ["--variant", args.variant, "--runs-dir", str(folder / "sacred")]
    for item in args.overrides:
        stage_argv += ["--set", item]
    profiler = None
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    with phases.phase("stage"):
        ev.main(stage_argv)
    total = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.cprofile)

    print(f"\nevaluate --variant {args.variant} {' '.join(args.overrides)}: {total:.1f} s (scratch {folder})")
    print("| phase | calls | seconds | share |")
    print("|---|---:|---:|---:|")
    for name, seconds in sorted(phases.seconds.items(), key=lambda kv: kv[0]):
        print(f"| {name} | {phases.calls[name]} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    repeated = {k: v for k, v in phases.repeats.items() if v}
    if not args.no_count:
        print("\nencoder rows per (model, phase): rows in, of which already seen in that phase")
        print("| model: phase | encoder | rows | repeated |")
        print("|---|---|---:|---:|")
        for (where, encoder), rows in sorted(phases.rows.items()):
            print(f"| {where} | {encoder} | {rows} | {phases.repeats[(where, encoder)]} |")
    result = {
        "variant": args.variant,
        "overrides": args.overrides,
        "total_seconds": total,
        "phases": dict(phases.seconds),
        "calls": dict(phases.calls),
        "encoder_rows": [
            {"where": w, "encoder": e, "rows": r, "repeated": phases.repeats[(w, e)]}
            for (w, e), r in sorted(phases.rows.items())
        ],
        "repeated_total": sum(repeated.values()),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
