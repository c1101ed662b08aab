from __future__ import annotations

import socket

import ignite.distributed as idist
import pytest
import torch
from engine_toy import ToyMomentumModel

from nas.engine import launch, resolve_backend, unwrap_model, wrap_model


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only choice")
def test_backend_auto_is_gloo_without_cuda():
    assert resolve_backend("auto") == "gloo"
    assert resolve_backend("gloo") == "gloo"
    with pytest.raises(ValueError, match="nccl"):
        resolve_backend("nccl")
    with pytest.raises(ValueError, match="'mpi'"):
        resolve_backend("mpi")


def _where(local_rank, tag):
    return local_rank, tag, idist.get_world_size(), idist.backend()


def test_single_process_runs_in_this_process():
    assert launch(_where, "x", nproc_per_node=1) == (0, "x", 1, None)


def test_under_torchrun_the_environment_is_used(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "WORLD_SIZE": "1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launch(_where, "y", backend="auto") == (0, "y", 1, "gloo")
    assert idist.backend() is None  # the process group is torn down afterwards


def test_data_parallel_is_never_chosen(monkeypatch):
    # A multi-GPU host with no process group: idist.auto_model would pick DataParallel.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match="torchrun.*nproc_per_node"):
        wrap_model(ToyMomentumModel())


def test_wrap_model_single_process_and_refusals():
    model = ToyMomentumModel()
    assert wrap_model(model) is model
    assert unwrap_model(model) is model
    with pytest.raises(TypeError, match="DataParallel"):
        wrap_model(torch.nn.DataParallel(model))
    with pytest.raises(ValueError, match="nproc_per_node"):
        launch(_where, "z", nproc_per_node=0)
