"""Two gloo processes on the CPU compute what one process computes, and `fit` works under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas.engine import ScheduleConfig, TrainConfig, read_checkpoint
from nas.engine.parity import compare_records, record_training

HERE = Path(__file__).parent
# fp32: the check is that N processes compute the same math as one (gradient all-reduce, gathered queues);
# under bf16 autocast the split batch rounds differently, which says nothing about that math.
PARITY_CFG = TrainConfig(schedule=ScheduleConfig(lr=1e-2, min_lr=1e-3, warmup_steps=0), precision="fp32")


@pytest.fixture(scope="module")
def recordings():
    args = ("engine_toy:parity_model", "engine_toy:parity_batch")
    # α-weighted distillation as ALBEF's, its hook named for the spawned workers
    inputs = {"step_inputs": "engine_toy:toy_step_inputs"}
    single = record_training(*args, steps=3, nproc=1, cfg=PARITY_CFG, pythonpath=[HERE], **inputs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo workers on the CPU even on a 1-GPU host
        double = record_training(*args, steps=3, nproc=2, cfg=PARITY_CFG, pythonpath=[HERE], **inputs)
    return single, double


def test_two_processes_equal_one_process_on_the_same_global_batch(recordings):
    single, double = recordings
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert double["wrapper"] == "DistributedDataParallel" and double["broadcast_buffers"] is False
    # per-step loss terms and total, every gradient, queue + pointer, and the final state
    assert compare_records(single, double) == []
    trainable = {"encoder.0.weight", "encoder.0.bias", "encoder.1.weight", "encoder.1.bias"}
    trainable |= {"encoder.4.weight", "encoder.4.bias", "head.weight", "head.bias"}
    assert all(set(step["grads"]) == trainable for step in double["steps"])
    assert [s["output"]["images"] for s in double["steps"]] == [8, 8, 8]  # summed over ranks
    assert [s["output"]["skipped"] for s in double["steps"]] == [2, 2, 2]
    assert [int(s["buffers"]["queue_ptr"]) for s in double["steps"]] == [8, 4, 0]  # queue of 12
    # the hook reached the workers: α ramps over the 3-step epoch, and the distillation term follows it
    assert [s["output"]["alpha"] for s in double["steps"]] == pytest.approx([0.0, 0.4 / 3, 0.8 / 3])
    assert double["steps"][0]["output"]["distill"] == 0.0 and double["steps"][1]["output"]["distill"] > 0


def test_the_comparison_notices_a_difference(recordings):
    single, double = recordings
    tampered = {**double, "steps": [dict(step) for step in double["steps"]]}
    tampered["steps"][1] = {**tampered["steps"][1], "buffers": dict(tampered["steps"][1]["buffers"])}
    queue = tampered["steps"][1]["buffers"]["queue"].clone()
    queue[3, 0] += 1e-3
    tampered["steps"][1]["buffers"]["queue"] = queue
    tampered["steps"][0] = {
        **tampered["steps"][0],
        "output": {**tampered["steps"][0]["output"], "total": 9.0},
    }
    problems = compare_records(single, tampered)
    assert len(problems) == 2
    assert problems[0].startswith("step 0 output[total]") and problems[1].startswith("step 1 buffers[queue]")


def test_fit_under_torchrun_with_two_gloo_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(HERE / "engine_fit_worker.py"), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in ranks[0]["state"].items():  # replicas in sync, buffers included
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert ranks[0]["state"]["queue_ptr"].item() == (2 * 2 * 8) % 12
    history = ranks[0]["history"]
    assert ranks[1]["history"][0]["total"] == history[0]["total"]  # every rank returns the global means
    assert [(e["steps"], e["images_seen"], e["images_skipped"]) for e in history] == [(2, 16, 4), (2, 16, 4)]

    last = read_checkpoint(tmp_path / "last.pt")
    assert (last["trainer"]["iteration"], last["trainer"]["epoch_length"]) == (4, 2)
    rng = last["rng"]["per_rank"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # seed + rank streams
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint_1.pt",
        "checkpoint_2.pt",
    ]
    assert (tmp_path / "tb").is_dir()
