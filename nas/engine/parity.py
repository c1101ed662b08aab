"""Does training on N processes compute what training on one process does? A reusable check.

`record_training` runs the real engine (`wrap_model` + `build_optimizer` + `create_trainer`) for a few
steps of global batches from a batch factory; with N processes each rank takes its contiguous 1/N
of every batch. It records, per step, the engine's output (the loss terms, already averaged over
ranks), every parameter's gradient (after DDP's all-reduce) and every buffer (queues, pointers), and
the final state_dict. `compare_records` lists where two recordings differ.

For a model whose losses are means over independent samples, the 1-process and N-process recordings
agree up to float rounding (DDP averages the per-rank gradients of per-rank means). A loss that
couples samples within the local batch (ALBEF's in-batch ITC/ITM negatives) legitimately differs;
the check then shows by how much.

Factories are given as "module:function" strings so spawned workers can import them: the model
factory takes no argument, the batch factory takes the 0-based step and returns a global batch dict.
A model with per-step inputs (ALBEF's distillation α) gets the engine's `step_inputs` hook, given the
same way ("module:attribute", e.g. a `DistillationConfig(...).step_inputs` at module level) or, from
Python, as a picklable callable.
From Python, `record_training(..., nproc=2)` spawns the workers; on a GPU node, run
`torchrun --nproc_per_node=N -m nas.engine.parity MODEL_FACTORY BATCH_FACTORY --out record.pt`
and compare with an `nproc=1` recording.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.utils import manual_seed

from nas.config.base import from_dict, to_dict
from nas.engine.launch import launch, unwrap_model, wrap_model
from nas.engine.optim import build_optimizer
from nas.engine.trainer import CAPTION_COUNTS, StepInputs, TrainConfig, create_trainer


def resolve(spec: str) -> Any:
    """'package.module:attribute' -> the attribute."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module_name), attribute)


def shard(batch: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """Rank `rank`'s contiguous slice of every tensor (dim 0); the batch counts (`num_skipped`, the caption
    counts) go to rank 0."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            if value.shape[0] % world:
                raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows, not divisible by {world} ranks")
            out[key] = value.chunk(world, dim=0)[rank].clone()
        elif key in (
            "num_skipped",
            *CAPTION_COUNTS,
        ):  # per-batch counts: once, on rank 0, so their sum over ranks is right
            out[key] = value if rank == 0 else 0
        else:
            out[key] = value
    return out


def _cpu(tensors: Any) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().clone() for name, t in tensors}


def _record_worker(
    local_rank: int,
    model_factory: str,
    batch_factory: str,
    steps: int,
    cfg_dict: dict,
    out_path: str | None,
    threads: int | None = None,
    step_inputs: str | StepInputs | None = None,
) -> dict[str, Any]:
    if threads is not None:
        torch.set_num_threads(threads)
    cfg = from_dict(TrainConfig, cfg_dict)
    rank, world = idist.get_rank(), idist.get_world_size()
    manual_seed(cfg.seed)  # identical initial weights on every rank (DDP would broadcast rank 0's anyway)
    wrapped = wrap_model(resolve(model_factory)(), find_unused_parameters=cfg.launch.find_unused_parameters)
    model = unwrap_model(wrapped)
    optimizer = build_optimizer(model, cfg.optim, lr=cfg.schedule.lr)
    if isinstance(step_inputs, str):
        step_inputs = resolve(step_inputs)
    trainer = create_trainer(wrapped, optimizer, cfg, epoch_length=steps, step_inputs=step_inputs)
    make_batch = resolve(batch_factory)
    batches = [shard(make_batch(step), rank, world) for step in range(steps)]

    steps_record: list[dict[str, Any]] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine: Engine) -> None:
        steps_record.append(
            {
                "output": dict(engine.state.output),
                "grads": _cpu((n, p.grad) for n, p in model.named_parameters() if p.grad is not None),
                "buffers": _cpu(model.named_buffers()),
            }
        )

    trainer.run(batches, max_epochs=1)
    record_ = {
        "world_size": world,
        "wrapper": type(wrapped).__name__,
        "broadcast_buffers": getattr(wrapped, "broadcast_buffers", None),
        "steps": steps_record,
        "final_state": _cpu(model.state_dict().items()),
    }
    if out_path is not None and rank == 0:
        torch.save(record_, out_path)
    return record_


def record_training(
    model_factory: str,
    batch_factory: str,
    *,
    steps: int,
    nproc: int = 1,
    backend: str = "gloo",
    cfg: TrainConfig | None = None,
    pythonpath: Sequence[str | Path] = (),
    threads_per_process: int | None = 1,
    step_inputs: str | StepInputs | None = None,
) -> dict[str, Any]:
    """Train `steps` steps on `nproc` processes and return the recording (see the module docstring).

    nproc 1 runs in this process (and re-seeds its global RNGs); nproc > 1 spawns workers through
    `launch` and reads rank 0's recording back from a temporary file. `pythonpath`: folders the
    factories' modules live in. `threads_per_process`: torch threads per spawned worker (None: default).
    `step_inputs`: the engine's per-step model inputs ("module:attribute" or a picklable callable).
    """
    # fp32 by default: parity is about the math of N processes (all-reduce, gathers), which bf16's rounding
    # of a split batch would blur.
    cfg_dict = to_dict(cfg or TrainConfig(precision="fp32"))
    for folder in reversed([str(f) for f in pythonpath]):
        if folder not in sys.path:
            sys.path.insert(0, folder)  # spawned workers inherit sys.path
    if nproc == 1:
        return launch(_record_worker, model_factory, batch_factory, steps, cfg_dict, None, None, step_inputs)
    with tempfile.TemporaryDirectory(prefix="nas-parity-") as tmp:
        out = Path(tmp) / "record.pt"
        launch(
            _record_worker,
            model_factory,
            batch_factory,
            steps,
            cfg_dict,
            str(out),
            threads_per_process,
            step_inputs,
            nproc_per_node=nproc,
            backend=backend,
        )
        return torch.load(out, weights_only=True)


def compare_records(
    reference: dict[str, Any], candidate: dict[str, Any], *, rtol: float = 1e-5, atol: float = 1e-6
) -> list[str]:
    """Every difference between two recordings beyond `allclose(rtol, atol)`, as readable lines."""
    problems: list[str] = []

    def close(where: str, a: Any, b: Any) -> None:
        if torch.is_tensor(a):
            if a.shape != b.shape:
                problems.append(f"{where}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
            elif not torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol):
                diff = (a.double() - b.double()).abs().max().item()
                problems.append(f"{where}: max abs difference {diff:.3g}")
        elif abs(a - b) > atol + rtol * abs(b):
            problems.append(f"{where}: {a} vs {b}")

    def close_maps(where: str, a: dict[str, Any], b: dict[str, Any]) -> None:
        if set(a) != set(b):
            problems.append(f"{where}: keys differ: {sorted(set(a) ^ set(b))}")
        for key in sorted(set(a) & set(b)):
            close(f"{where}[{key}]", a[key], b[key])

    if len(reference["steps"]) != len(candidate["steps"]):
        problems.append(f"steps: {len(reference['steps'])} vs {len(candidate['steps'])}")
    for i, (ref, cand) in enumerate(zip(reference["steps"], candidate["steps"])):
        for part in ("output", "grads", "buffers"):
            close_maps(f"step {i} {part}", ref[part], cand[part])
    close_maps("final_state", reference["final_state"], candidate["final_state"])
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_factory")
    parser.add_argument("batch_factory")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2, help="ignored under torchrun")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--config", default="{}", help="TrainConfig as JSON")
    parser.add_argument(
        "--step-inputs", default=None, help="module:attribute of the per-step model inputs hook (ALBEF's α)"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cfg = to_dict(from_dict(TrainConfig, json.loads(args.config)))  # fail here, not in every worker
    launch(
        _record_worker,
        args.model_factory,
        args.batch_factory,
        args.steps,
        cfg,
        args.out,
        None,
        args.step_inputs,
        nproc_per_node=args.nproc,
        backend=args.backend,
    )


if __name__ == "__main__":
    main()
