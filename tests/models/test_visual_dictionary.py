"""Visual dictionary (spec NAS_METHOD.md §3): neck, gate, position encoding, EMA codebook, γ ramp,
initialisations, health, and the distributed EMA update."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import vd_ema_worker
from hypothesis import given
from hypothesis import strategies as st

from nas.config.base import ConfigError, from_dict
from nas.models.visual_dictionary import (
    VisualDictionary,
    VisualDictionaryConfig,
    ema_momentum,
    sine_position_encoding,
)

E_SIGMOID = math.e / (1 + math.e)  # softmax((1, 0))[0] = 0.7310586


def make_vd(num_codes: int = 8, dim: int = 16, seed: int = 0, **overrides) -> VisualDictionary:
    torch.manual_seed(seed)
    return VisualDictionary(VisualDictionaryConfig(num_codes=num_codes, dim=dim, **overrides))


def random_tokens(batch: int, side: int, dim: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1 + side * side, dim, generator=generator, dtype=dtype)


# ------------------------------------------------------------------------------------------ config
def test_config_from_dict_is_strict_and_validated():
    cfg = from_dict(VisualDictionaryConfig, {"num_codes": 2048, "dim": 768, "init": "random"}, "vd")
    assert (cfg.num_codes, cfg.dim, cfg.init, cfg.epsilon, cfg.gamma_start) == (
        2048,
        768,
        "random",
        1e-5,
        0.2,
    )
    with pytest.raises(ConfigError, match="vd.num_code"):
        from_dict(VisualDictionaryConfig, {"num_code": 3}, "vd")
    with pytest.raises(ConfigError, match="vd.init"):
        from_dict(VisualDictionaryConfig, {"init": "zeros"}, "vd")
    with pytest.raises(ConfigError, match="dim"):
        from_dict(VisualDictionaryConfig, {"dim": 190}, "vd")
    with pytest.raises(ValueError, match="freeze_fraction"):
        VisualDictionaryConfig(freeze_fraction=0.0)
    with pytest.raises(ValueError, match="gamma_start"):
        VisualDictionaryConfig(gamma_start=1.5)


# ------------------------------------------------------------------------------------------ γ ramp
@pytest.mark.parametrize(
    ("step", "total", "expected"),
    [
        (1, 100, 0.2),  # floor: max(0.2, 1/90)
        (18, 100, 0.2),  # 18/90 = 0.2 exactly
        (45, 100, 0.5),
        (89, 100, 89 / 90),
        (90, 100, 1.0),  # frozen after ⌈0.9 T⌉ steps
        (150, 100, 1.0),
        (2, 10, 2 / 9),
        (62, 70, 62 / 63),  # ⌈0.9 · 70⌉ = 63 despite 0.9 · 70 = 63.000000000000014 in floating point
        (63, 70, 1.0),
        (6, 7, 6 / 7),  # ⌈6.3⌉ = 7
        (1, 1, 1.0),
    ],
)
def test_gamma_ramp_values(step, total, expected):
    assert ema_momentum(step, total, gamma_start=0.2, freeze_fraction=0.9) == pytest.approx(
        expected, abs=1e-15
    )


def test_gamma_ramp_rejects_step_zero():
    with pytest.raises(ValueError, match="step"):
        ema_momentum(0, 10, 0.2, 0.9)


def test_training_without_total_steps_is_an_error():
    vd = make_vd().train()
    with pytest.raises(RuntimeError, match="set_total_steps"):
        vd(random_tokens(2, 2, 16))


# ------------------------------------------------------------------------------------------ position encoding
def test_sine_position_encoding_on_a_2x2_grid_by_hand():
    # dim 8: y in channels 0-3, x in 4-7; frequencies 10000^(2·floor(k/2)/4) = 1, 1, 100, 100.
    # Positions 1, 2 → 2π·1/(2+1e-6) ≈ π and 2π·2/(2+1e-6) ≈ 2π.
    at_pi = [1.5707955e-06, -1.0, 0.031410743, 0.99950656]  # sin u, cos u, sin u/100, cos u/100 at u ≈ π
    at_2pi = [-3.1415911e-06, 1.0, 0.062790488, 0.99802673]  # at u ≈ 2π
    expected = torch.tensor(
        [
            at_pi + at_pi,  # patch 0: row 1, column 1
            at_pi + at_2pi,  # patch 1: row 1, column 2
            at_2pi + at_pi,  # patch 2: row 2, column 1
            at_2pi + at_2pi,  # patch 3: row 2, column 2
        ]
    )
    encoding = sine_position_encoding(4, 8, temperature=10000.0)
    torch.testing.assert_close(encoding, expected, atol=1e-6, rtol=0)


@given(side=st.integers(1, 6), quarter=st.integers(1, 6))
def test_sine_position_encoding_structure(side, quarter):
    dim = 4 * quarter
    enc = sine_position_encoding(side * side, dim).reshape(side, side, dim)
    half = dim // 2
    # sin/cos pairs share one frequency.
    pairs = enc.reshape(side, side, dim // 2, 2)
    torch.testing.assert_close(pairs.pow(2).sum(-1), torch.ones(side, side, dim // 2))
    # The first half depends on the row only, the second half on the column only; they are the same table.
    assert torch.equal(enc[:, :, :half], enc[:, :1, :half].expand(side, side, half))
    assert torch.equal(enc[:, :, half:], enc[:1, :, half:].expand(side, side, half))
    assert torch.equal(enc[:, 0, :half], enc[0, :, half:])


def test_sine_position_encoding_rejects_non_square_grid():
    with pytest.raises(ValueError, match="L=6"):
        sine_position_encoding(6, 8)


# ------------------------------------------------------------------------------------------ init
def test_neck_linears_are_xavier_normal_with_zero_bias():
    vd = make_vd(num_codes=64, dim=192)
    for name in ("input_proj", "pos_line", "gate_proj"):
        layer = getattr(vd, name)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), name
        fan_out, fan_in = layer.weight.shape
        expected_std = math.sqrt(2.0 / (fan_in + fan_out))
        assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.1), name
    assert vd.codebook.shape == (64, 192)
    assert abs(vd.codebook.mean().item()) < 0.03 and vd.codebook.std().item() == pytest.approx(1.0, abs=0.02)
    assert not any(name == "codebook" for name, _ in vd.named_parameters())


def test_gate_is_nearly_binary_at_init():
    # LN over 2 channels → ≈ ±(1, −1) → ReLU → (1, 0) or (0, 1) → softmax ≈ (0.731, 0.269) either way.
    vd = make_vd(dim=64).eval()
    gate = vd(random_tokens(4, 4, 64)).gate.detach()
    larger = gate.max(dim=-1).values
    torch.testing.assert_close(gate.sum(-1), torch.ones_like(larger))
    assert (larger <= E_SIGMOID + 1e-6).all()
    assert larger.median().item() == pytest.approx(E_SIGMOID, abs=1e-4)
    assert (larger > 0.72).float().mean() > 0.9


# ------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_shapes_dtypes_and_cls_passthrough(dtype):
    vd = make_vd(num_codes=8, dim=16).to(dtype).eval()
    tokens = random_tokens(3, 3, 16, dtype=dtype)
    out = vd(tokens)
    assert out.tokens.shape == (3, 10, 16) and out.tokens.dtype == dtype
    assert out.tokens.device == tokens.device
    assert out.features.shape == out.quantized.shape == out.pre_position.shape == (3, 9, 16)
    assert out.codes.shape == (3, 9) and out.codes.dtype == torch.long
    assert out.distances.shape == (3, 9, 8) and out.gate.shape == (3, 9, 2)
    assert torch.equal(out.tokens[:, 0], tokens[:, 0])  # the raw ViT [CLS] is passed through
    # The output tokens are LN(t + position encoding) of the gated tokens.
    recomputed = vd.output_norm(out.pre_position + sine_position_encoding(9, 16, dtype=dtype))
    torch.testing.assert_close(out.tokens[:, 1:], recomputed)
    # t = g0 · pos_line(q) + g1 · x.
    gated = out.gate[..., :1] * vd.pos_line(out.quantized) + out.gate[..., 1:] * out.features
    torch.testing.assert_close(out.pre_position, gated)


def test_assignment_is_squared_l2_argmin():
    vd = make_vd(num_codes=12, dim=16).eval()
    out = vd(random_tokens(2, 4, 16) * 3)
    x = out.features.detach().double()
    exact = (x[:, :, None, :] - vd.codebook.double()).pow(2).sum(-1)
    torch.testing.assert_close(out.distances.double(), exact, atol=1e-4, rtol=1e-5)
    assert torch.equal(out.codes, exact.argmin(-1))
    torch.testing.assert_close(out.quantized, vd.codebook[out.codes])  # eval: no update


def test_step_order_assign_before_update_quantize_after():
    vd = make_vd(num_codes=8, dim=16).train()
    vd.set_total_steps(100)
    before = vd.codebook.clone()
    out = vd(random_tokens(2, 3, 16))
    after = vd.codebook.clone()
    assert not torch.equal(before, after)
    x = out.features.detach()
    old_distances = (x[:, :, None, :] - before).pow(2).sum(-1)
    torch.testing.assert_close(out.distances, old_distances, atol=1e-4, rtol=1e-5)
    assert torch.equal(out.codes, old_distances.argmin(-1))
    torch.testing.assert_close(out.quantized, after[out.codes])
    assert int(vd.step) == 1


def test_straight_through_gradient_reaches_tokens_and_neck_not_codebook():
    vd = make_vd().eval()
    tokens = random_tokens(2, 2, 16).requires_grad_()
    vd(tokens).tokens[:, 1:].sum().backward()
    assert tokens.grad is not None and tokens.grad[:, 1:].abs().sum() > 0
    for layer in (vd.input_proj, vd.pos_line, vd.gate_proj, vd.output_norm):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert not vd.codebook.requires_grad


def test_bad_token_shapes_are_named():
    vd = make_vd(dim=16)
    with pytest.raises(ValueError, match="width 8"):
        vd(torch.zeros(1, 5, 8))
    with pytest.raises(ValueError, match="L=5"):
        vd.eval()(torch.zeros(1, 6, 16))


# ------------------------------------------------------------------------------------------ EMA
def test_ema_step_follows_the_laplace_formula_by_hand():
    vd = VisualDictionary(VisualDictionaryConfig(num_codes=3, dim=4)).double()
    vd.init_random()  # EMA state zero, as in the sources
    vd.set_total_steps(10)  # ramp over ⌈9⌉ = 9 steps
    features = torch.tensor([[1.0, 0, 0, 0], [3, 0, 0, 0], [0, 2, 0, 0]], dtype=torch.float64)
    codes = torch.tensor([0, 0, 1])
    vd.update_codebook(features, codes)
    # Step 1, γ = 0.2: N = 0.8 · (2, 1, 0); m = 0.8 · ((4,0,0,0), (0,2,0,0), 0).
    eps, total = 1e-5, 2.4
    torch.testing.assert_close(vd.ema_counts, torch.tensor([1.6, 0.8, 0.0], dtype=torch.float64))
    smoothed = [(n + eps) / (total + 3 * eps) * total for n in (1.6, 0.8, 0.0)]
    expected = torch.tensor(
        [[3.2 / smoothed[0], 0, 0, 0], [0, 1.6 / smoothed[1], 0, 0], [0, 0, 0, 0]], dtype=torch.float64
    )
    torch.testing.assert_close(vd.codebook, expected, atol=1e-12, rtol=0)
    assert torch.equal(vd.codebook[2], torch.zeros(4, dtype=torch.float64))  # unhit code → exactly zero

    # Step 2, γ = max(0.2, 2/9) = 2/9, one feature (0, 0, 5, 0) on code 2.
    vd.update_codebook(torch.tensor([[0.0, 0, 5, 0]], dtype=torch.float64), torch.tensor([2]))
    g = 2 / 9
    counts = [g * 1.6, g * 0.8, (1 - g) * 1.0]
    sums = [[g * 3.2, 0, 0, 0], [0, g * 1.6, 0, 0], [0, 0, (1 - g) * 5, 0]]
    total = sum(counts)
    smoothed = [(n + eps) / (total + 3 * eps) * total for n in counts]
    expected = torch.tensor([[v / s for v in row] for row, s in zip(sums, smoothed)], dtype=torch.float64)
    torch.testing.assert_close(vd.ema_counts, torch.tensor(counts, dtype=torch.float64))
    torch.testing.assert_close(vd.codebook, expected, atol=1e-12, rtol=0)
    assert int(vd.step) == 2


@given(
    num_codes=st.integers(2, 6),
    prior_counts=st.lists(st.floats(1.0, 10.0), min_size=6, max_size=6),
    batch_codes=st.lists(st.integers(0, 5), min_size=1, max_size=12),
    step=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_ema_step_moves_each_used_code_toward_its_batch_mean(
    num_codes, prior_counts, batch_codes, step, seed
):
    dim = 4
    generator = torch.Generator().manual_seed(seed)
    vd = VisualDictionary(VisualDictionaryConfig(num_codes=num_codes, dim=dim)).double()
    vd.set_total_steps(30)  # ramp over 27 steps; step <= 20 keeps γ < 1
    vd.step.fill_(step - 1)
    codebook = torch.randn(num_codes, dim, generator=generator, dtype=torch.float64)
    counts = torch.tensor(prior_counts[:num_codes], dtype=torch.float64)
    vd.codebook.copy_(codebook)
    vd.ema_counts.copy_(counts)
    vd.ema_sums.copy_(codebook * counts[:, None])  # consistent state: m = d · N
    codes = torch.tensor(batch_codes) % num_codes
    # Features around a target far (≥ 3) from every code, so each move is well above rounding.
    features = 5.0 + torch.rand(len(batch_codes), dim, generator=generator, dtype=torch.float64)
    vd.update_codebook(features, codes)
    for code in codes.unique():
        mean = features[codes == code].mean(0)
        assert (vd.codebook[code] - mean).norm() < (codebook[code] - mean).norm() - 1e-3


def test_eval_mode_never_updates():
    vd = make_vd().eval()
    state = {k: v.clone() for k, v in vd.state_dict().items()}
    for seed in range(3):
        vd(random_tokens(2, 3, 16, seed=seed))
    assert all(torch.equal(state[k], v) for k, v in vd.state_dict().items())


@pytest.mark.parametrize("how", ["frozen_flag", "ramp_done"])
def test_frozen_dictionary_never_changes_but_the_neck_trains(how):
    vd = make_vd().train()
    vd.set_total_steps(10)
    if how == "frozen_flag":
        vd.freeze()
    else:
        vd.step.fill_(9)  # γ_10 = min(1, 10 / 9) = 1
    state = {k: v.clone() for k, v in vd.state_dict().items() if k in ("codebook", "ema_counts", "ema_sums")}
    optimizer = torch.optim.SGD(vd.parameters(), lr=0.1)
    neck_before = vd.input_proj.weight.detach().clone()
    for seed in range(3):
        optimizer.zero_grad()
        vd(random_tokens(2, 3, 16, seed=seed)).tokens.pow(2).mean().backward()
        optimizer.step()
    for key, value in state.items():
        assert torch.equal(vd.state_dict()[key], value), key
    assert int(vd.step) == (0 if how == "frozen_flag" else 12)
    assert not torch.equal(vd.input_proj.weight, neck_before)


def test_frozen_config_flag():
    vd = make_vd(frozen=True).train()
    before = vd.codebook.clone()
    vd(random_tokens(2, 2, 16))  # no set_total_steps needed: a frozen dictionary has no schedule
    assert torch.equal(vd.codebook, before) and int(vd.step) == 0


def test_state_dict_checkpoints_codebook_ema_state_and_step():
    vd = make_vd().train()
    vd.set_total_steps(50)
    for seed in range(3):
        vd(random_tokens(2, 2, 16, seed=seed))
    state = vd.state_dict()
    assert {"codebook", "ema_counts", "ema_sums", "step"} <= set(state)
    restored = make_vd(seed=5)
    restored.load_state_dict(state)
    assert int(restored.step) == 3
    for key in ("codebook", "ema_counts", "ema_sums"):
        assert torch.equal(getattr(restored, key), getattr(vd, key))


def test_fake_two_rank_reduction_equals_the_duplicated_batch():
    # Two ranks holding the same shard reduce to twice the local statistics.
    torch.manual_seed(0)
    fake = VisualDictionary(VisualDictionaryConfig(num_codes=8, dim=16), reduce_sum=lambda t: 2 * t)
    torch.manual_seed(0)
    single = VisualDictionary(VisualDictionaryConfig(num_codes=8, dim=16))
    for vd in (fake, single):
        vd.double().train().set_total_steps(20)
    shard = random_tokens(2, 3, 16, dtype=torch.float64)
    fake(shard)
    single(torch.cat([shard, shard]))
    torch.testing.assert_close(fake.ema_counts, single.ema_counts, atol=1e-12, rtol=0)
    torch.testing.assert_close(fake.codebook, single.codebook, atol=1e-12, rtol=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch(tmp_path: Path):
    batches = vd_ema_worker.make_batches()
    payload, result = tmp_path / "batches.pt", tmp_path / "rank0_state.pt"
    torch.save(batches, payload)
    completed = subprocess.run(
        [sys.executable, vd_ema_worker.__file__, str(payload), str(result), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    distributed = torch.load(result)

    single = vd_ema_worker.make_vd()
    for batch in batches:
        single(batch)  # the whole global batch in one process
    assert int(distributed["step"]) == int(single.step) == len(batches)
    for key in ("codebook", "ema_counts", "ema_sums"):
        torch.testing.assert_close(distributed[key], getattr(single, key), atol=1e-12, rtol=0)

    # Sanity check that the comparison can fail: rank 0's shard alone gives a different dictionary.
    alone = vd_ema_worker.make_vd()
    for batch in batches:
        alone(batch.chunk(2)[0])
    assert not torch.allclose(distributed["codebook"], alone.codebook)


# ------------------------------------------------------------------------------------------ initialisation
def test_random_init_zeroes_every_code_the_first_batch_misses():
    vd = make_vd(num_codes=32, dim=16).train()
    vd.init_random(torch.Generator().manual_seed(3))
    assert vd.ema_counts.abs().sum() == 0 and vd.ema_sums.abs().sum() == 0
    vd.set_total_steps(100)
    out = vd(random_tokens(1, 2, 16))  # 4 tokens hit at most 4 of 32 codes
    used = out.codes.unique()
    unused = torch.ones(32, dtype=torch.bool)
    unused[used] = False
    assert torch.equal(vd.codebook[unused], torch.zeros(int(unused.sum()), 16))
    health = vd.health(codes=out.codes)
    assert health["zero_codes"] == health["dead_codes"] == 32 - len(used)


def test_kmeans_init_finds_clusters_and_survives_the_first_update():
    dim, centres = 8, torch.zeros(3, 8)
    centres[0, 0], centres[1, 1], centres[2, 2] = 10.0, 10.0, 10.0
    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor([30, 20, 10])
    labels = torch.repeat_interleave(torch.arange(3), sizes)
    features = centres[labels] + 0.1 * torch.randn(60, dim, generator=generator)
    vd = make_vd(num_codes=3, dim=dim)
    vd.init_from_kmeans(features, torch.Generator().manual_seed(1))
    order = vd.codebook.argmax(dim=1)  # which axis each code sits on
    assert sorted(order.tolist()) == [0, 1, 2]
    for code, cluster in enumerate(order.tolist()):
        torch.testing.assert_close(vd.codebook[code], features[labels == cluster].mean(0))
        assert vd.ema_counts[code].item() == sizes[cluster].item()
    torch.testing.assert_close(vd.ema_sums, vd.codebook * vd.ema_counts[:, None])
    assert int(vd.step) == 0

    # The first EMA update (γ = 0.2) on a batch that hits only one code keeps the other two (a zero EMA
    # state would have zeroed them), and moves the hit one only within its cluster.
    before = vd.codebook.clone()
    hit = int(vd.codebook[:, 0].argmax())
    missed = [code for code in range(3) if code != hit]
    vd.set_total_steps(100)
    vd.update_codebook(features[:5], torch.full((5,), hit))
    torch.testing.assert_close(vd.codebook[missed], before[missed], atol=1e-4, rtol=1e-4)
    assert (vd.codebook[hit] - before[hit]).norm() < 0.1


def test_kmeans_init_with_duplicate_features_reports_the_dead_code():
    # Two distinct points for three codes: one code cannot own a feature; it is dead, not NaN.
    features = torch.tensor([[1.0, 0, 0, 0]] * 4 + [[0.0, 5, 0, 0]] * 2)
    vd = VisualDictionary(VisualDictionaryConfig(num_codes=3, dim=4, kmeans_iters=3))
    vd.init_from_kmeans(features, torch.Generator().manual_seed(0))
    assert torch.isfinite(vd.codebook).all()
    assert sorted(vd.ema_counts.tolist()) == [0.0, 2.0, 4.0]
    health = vd.health(counts=vd.ema_counts)
    assert health["codes_in_use"] == 2 and health["dead_codes"] == 1


def test_initialize_follows_the_config():
    features = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    kmeans = make_vd(init="kmeans")
    kmeans.initialize(features, torch.Generator().manual_seed(0))
    assert kmeans.ema_counts.sum().item() == 40  # every feature counted once
    with pytest.raises(ValueError, match="kmeans"):
        make_vd(init="kmeans").initialize(None)
    random = make_vd(init="random")
    random.ema_counts.fill_(3.0)
    random.initialize(features)  # features are ignored: the sources' random init
    assert random.ema_counts.abs().sum() == 0 and random.ema_sums.abs().sum() == 0


def test_kmeans_init_needs_enough_features():
    vd = make_vd(num_codes=8, dim=16)
    with pytest.raises(ValueError, match="cannot seed 8 codes"):
        vd.init_from_kmeans(torch.randn(5, 16))
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        vd.init_from_kmeans(torch.randn(20, 8))


# ------------------------------------------------------------------------------------------ health
def test_health_by_hand():
    vd = VisualDictionary(VisualDictionaryConfig(num_codes=4, dim=4))
    vd.codebook[1] = 0.0  # used but all-zero: dead
    health = vd.health(codes=torch.tensor([[0, 0], [1, 1]]))
    assert health == {
        "num_codes": 4,
        "codes_in_use": 2,
        "perplexity": pytest.approx(2.0),
        "unused_codes": 2,
        "zero_codes": 1,
        "dead_codes": 3,
    }
    uniform = vd.health(counts=torch.tensor([5.0, 5.0, 5.0, 5.0]))
    assert uniform["perplexity"] == pytest.approx(4.0) and uniform["codes_in_use"] == 4
    with pytest.raises(ValueError, match="exactly one"):
        vd.health()
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        vd.health(codes=torch.tensor([4]))
