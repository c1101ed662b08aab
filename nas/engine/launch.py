"""Starting the processes and wrapping the model, through `ignite.distributed` (idist).

Three ways to run, one code path (`idist.Parallel`):
- under torchrun (WORLD_SIZE and LOCAL_RANK in the environment): join the process group torchrun set up;
- `nproc_per_node > 1` without torchrun: spawn that many processes on this node;
- otherwise: run in this process, no process group.

The model wrapper is DistributedDataParallel or nothing. Never DataParallel: it replicates the module
on every forward and throws the replicas away, so what a forward writes into the module (ALBEF's
momentum-encoder update, the feature queues and their pointer) is silently lost (ENVIRONMENT.md).
`idist.auto_model` picks DataParallel by itself on a multi-GPU host without a process group, so that
situation is an error here.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import ignite.distributed as idist
import torch
from torch import nn

from nas.config.train import LaunchConfig  # noqa: F401  (the `train.launch` params block, re-exported)

logger = logging.getLogger(__name__)

TORCHRUN_ENV = ("WORLD_SIZE", "LOCAL_RANK")


def resolve_backend(backend: str) -> str:
    """'auto' -> 'nccl' when CUDA is available, else 'gloo'; an explicit nccl without CUDA is an error."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be one of 'auto', 'gloo', 'nccl', got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend='nccl' needs CUDA, which is not available here; use 'gloo' or 'auto'")
    return backend


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def _free_port() -> int:
    # Several runs may share a host (tests, other jobs): never rely on a fixed default port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(fn: Callable[..., Any], *args: Any, nproc_per_node: int = 1, backend: str = "auto") -> Any:
    """Run `fn(local_rank, *args)` on every process; see the module docstring for the three modes.

    Returns `fn`'s result when it ran in this process (single process or torchrun), None when spawned:
    spawned workers report through files (e.g. checkpoints), not return values.
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    if under_torchrun():
        if nproc_per_node > 1 and int(os.environ["WORLD_SIZE"]) == 1:
            logger.warning("nproc_per_node=%d ignored: torchrun started a single process", nproc_per_node)
        result: list[Any] = []
        with idist.Parallel(backend=resolve_backend(backend)) as parallel:
            parallel.run(_keep_result, fn, result, *args)
        return result[0]
    if nproc_per_node > 1:
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        with idist.Parallel(
            backend=resolve_backend(backend), nproc_per_node=nproc_per_node, master_port=port
        ) as parallel:
            parallel.run(fn, *args)
        return None
    return fn(0, *args)


def _keep_result(local_rank: int, fn: Callable[..., Any], result: list[Any], *args: Any) -> None:
    result.append(fn(local_rank, *args))


def wrap_model(model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
    """Move `model` to this process's device; wrap it in DDP when there is more than one process.

    DDP gets `broadcast_buffers=False`: the buffers (queues, pointers) are updated identically on
    every rank from all-gathered features, and re-broadcasting rank 0's copy every step is waste.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise TypeError(f"wrap_model expects the plain model, got a {type(model).__name__}")
    world = idist.get_world_size()
    if world == 1 and torch.cuda.device_count() > 1:
        raise RuntimeError(
            f"{torch.cuda.device_count()} GPUs are visible but no process group is initialised: "
            "idist.auto_model would fall back to DataParallel, which silently drops the updates ALBEF "
            "makes inside forward (momentum model, queues). Launch with `torchrun --nproc_per_node=N` "
            "or set train.launch.nproc_per_node=N, or make one GPU visible (CUDA_VISIBLE_DEVICES=0)."
        )
    if world == 1:
        return model.to(idist.device())
    wrapped = idist.auto_model(model, broadcast_buffers=False, find_unused_parameters=find_unused_parameters)
    if not isinstance(wrapped, nn.parallel.DistributedDataParallel):
        raise RuntimeError(f"expected DistributedDataParallel for world size {world}, got {type(wrapped)}")
    return wrapped


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP (or torch.compile) wrapper: what checkpoints must hold."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
