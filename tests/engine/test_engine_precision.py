"""train.precision: 'auto' resolves by the device; a short bf16 run of the tiny ALBEF tracks fp32.

Tolerance (stated): over 4 steps on the same batches from the same initial weights, every step's total
loss under bf16 autocast is within 3 % of fp32's (bf16 keeps 8 bits of mantissa; the weights and the
optimizer stay fp32, so the runs drift apart slowly, not at once)."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events

from nas.config.distillation import DistillationConfig
from nas.engine import ScheduleConfig, TrainConfig, build_optimizer, create_trainer
from nas.engine.trainer import native_bf16, resolve_precision
from nas.models import create_model

B, T = 4, 12


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return {
        "image": torch.randn(B, 3, 64, 64, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones(B, T, dtype=torch.long),
        "index": torch.arange(B),
        "image_id": torch.arange(B),
        "num_skipped": 0,
    }


def _losses(model, precision: str) -> list[float]:
    cfg = TrainConfig(
        precision=precision, schedule=ScheduleConfig(lr=1e-3, warmup_steps=0), progress_bar=False
    )
    optimizer = build_optimizer(model, cfg.optim, lr=cfg.schedule.lr)
    # ALBEF's distillation (α 0.4, ramped over the 4-step epoch) as the engine's step input
    distillation = DistillationConfig(alpha=0.4, ramp=True)
    trainer = create_trainer(model, optimizer, cfg, epoch_length=4, step_inputs=distillation.step_inputs)
    totals: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: totals.append(e.state.output["total"]))
    torch.manual_seed(0)
    trainer.run([_batch(i) for i in range(4)], max_epochs=1)
    return totals


def test_auto_is_bf16_only_where_native(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert resolve_precision("auto", cpu) == "bf16"
    # bf16 hardware, but kernels held to an older path: bf16 would be emulated (20x slower), so fp32.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert resolve_precision("auto", cpu) == "fp32"


def test_a_short_bf16_run_tracks_fp32():
    torch.manual_seed(0)
    model = create_model("albef_tiny")
    fp32 = _losses(copy.deepcopy(model), "fp32")
    bf16 = _losses(copy.deepcopy(model), "bf16")
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 == pytest.approx(fp32, rel=0.03)
    assert bf16 != fp32  # autocast did run in bf16


def test_cpu_bf16_runs_attention_on_the_math_path():
    """On a CPU, bf16 autocast runs SDPA's math path (its backward is several times faster there than the
    flash kernel's): the forward context gives exactly the math path's attention."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from nas.engine.trainer import autocast_context

    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 16, generator=g) for _ in range(3))
    with autocast_context("bf16", torch.device("cpu"))():
        assert torch.is_autocast_enabled("cpu")
        ours = F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.MATH]):
        math = F.scaled_dot_product_attention(q, k, v)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, math)
