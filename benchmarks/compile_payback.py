"""Does `torch.compile` pay back within a stage? ALBEF's stage-1 step at the default profile (params.yaml,
variant albef, default precision), eager and compiled, in one process: the first step (the compile) and
the median of the next 8; prints after how many steps the compile time is won back.

    python benchmarks/compile_payback.py [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.steps import (  # noqa: E402
    _load_config,
    _model_for,
    _step_inputs,
    _training_batches,
    engine_step,
)


def main(argv: list[str] | None = None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    cfg = _load_config("albef")
    batches, _ = _training_batches(cfg, args.batch, 4)
    out: dict = {}
    for arm in ("eager", "compiled"):
        model, train_cfg = _model_for(cfg, "pretrain_stage1")
        step = engine_step(
            torch.compile(model) if arm == "compiled" else model,
            train_cfg,
            step_inputs=_step_inputs(cfg, "pretrain_stage1"),
        )
        start = time.perf_counter()
        step(batches[0])
        first = time.perf_counter() - start
        times = []
        for i in range(1, args.steps + 1):
            start = time.perf_counter()
            step(batches[i % len(batches)])
            times.append(time.perf_counter() - start)
        out[arm] = {
            "first_step_s": round(first, 2),
            "median_step_s": round(sorted(times)[len(times) // 2], 4),
        }
        print(arm, out[arm], flush=True)
    saved = out["eager"]["median_step_s"] - out["compiled"]["median_step_s"]
    extra = out["compiled"]["first_step_s"] - out["eager"]["first_step_s"]
    out["pays_back_after_steps"] = round(extra / saved) if saved > 0 else None
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
