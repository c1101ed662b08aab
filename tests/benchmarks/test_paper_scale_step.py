"""benchmarks/paper_scale_step.py on a test-sized form of the paper models (few, narrow layers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "paper_scale_step.py"
# albef_base / nas_base with 1 + 1 + 1 narrow layers, 32 px images (a 2 x 2 patch grid), a small
# vocabulary, queue and dictionary: the same code paths as the paper size, in well under a second.
SMALL = {
    "vision": {"img_size": 32, "embed_dim": 64, "depth": 1, "num_heads": 2},
    "text": {"hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "vocab_size": 2000}
    | {"num_text_layers": 1, "num_fusion_layers": 1},
    "embed_dim": 32,
    "queue_size": 16,
}
SMALL_NAS = SMALL | {"vd": {"num_codes": 8, "dim": 64}, "nva_enabled": True}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("paper_scale_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("name", "overrides"), [("albef_base", SMALL), ("nas_base", SMALL_NAS)])
def test_small_form_counts_and_steps(script, name, overrides):
    torch.manual_seed(0)
    model = script.build(name, overrides)
    counts = script.count_parameters(model)
    online = sum(p.numel() for online, _ in model.momentum_pairs() for p in online.parameters())
    assert counts["momentum"] == online > 0  # the momentum copies mirror the online encoders
    assert counts["total"] == counts["without_momentum"] + counts["momentum"]
    assert counts["trainable"] == counts["without_momentum"]  # momentum copies take no gradient
    assert counts["buffer_elements"] >= 2 * 16 * 32  # the two ITC queues

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = script.measure(
        model,
        device=torch.device("cpu"),
        batch_size=2,
        image_size=32,
        text_length=8,
        steps=1,
        count_flops=True,
    )
    assert set(result["losses"]) == {"itc", "itm", "mlm"}
    assert all(torch.isfinite(torch.tensor(v)) for v in result["losses"].values())
    assert result["median_step_seconds"] > 0 and result["flops_per_step"] > 0
    assert result["images_per_second"] == pytest.approx(2 / result["median_step_seconds"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "itm_head.weight" in changed and "visual_encoder_m.cls_token" in changed  # AdamW + momentum EMA
    text = script.report(name, counts, result, peak_tflops=100.0)
    assert "incl. momentum copies" in text and "MFU" in text


def test_mfu_and_batch_shapes(script):
    assert script.mfu(2e12, 1.0, 4.0) == pytest.approx(0.5)
    batch = script.make_batch(3, 32, 8, 2000, torch.device("cpu"))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["input_ids"].shape == (3, 8)
    assert batch["input_ids"][:, 0].eq(101).all() and batch["input_ids"][:, -1].eq(102).all()
