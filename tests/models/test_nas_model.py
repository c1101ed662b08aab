"""The NAS model (spec NAS_METHOD.md §3, §4, §6): ITM rows and labels, the NVA row's gradient paths, one
EMA update per training step, the γ ramp, the frozen codebook of stage 2, exact resume of NVA draws,
stage-1 → stage-2 checkpoints, and a 2-process gloo parity run of the VD update."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread
from nas_parity_worker import SMALL

import nas.models.albef as albef_module
import nas.models.nas_model as nas_module
from nas.config.base import ConfigError
from nas.config.distillation import DistillationConfig
from nas.engine import ScheduleConfig, TrainConfig
from nas.engine.parity import record_training
from nas.models.nas_model import NAS, NAS_BASE, NASConfig, nva_step_seed
from nas.models.registry import build_config, create_model, list_models
from nas.reporting.nva_figure import nva_figure

HERE = Path(__file__).parent
B, T, SIDE = 4, 8, 4  # 32 px images, patch 8: a 4 x 4 grid
VD_KEYS = ("vd.codebook", "vd.ema_counts", "vd.ema_sums", "vd.step")


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, 1000, (B, T), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    return {
        "image": torch.randn(B, 3, 32, 32, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "image_id": torch.arange(B),
        "num_skipped": 0,
    }


def _build(seed: int = 0, **overrides) -> NAS:
    torch.manual_seed(seed)
    model = create_model("nas_tiny", **{**SMALL, **overrides})
    model.set_total_steps(5)
    return model.train()


@pytest.fixture(scope="module")
def stage1_state() -> dict:
    return _build().state_dict()


def _stage(state: dict, **overrides) -> NAS:
    model = _build(seed=1, **overrides)
    model.load_state_dict(state)  # strict: every stage has the same keys
    return model


def _stage2(state: dict, **overrides) -> NAS:
    return _stage(state, nva_enabled=True, vd={"num_codes": 16, "frozen": True}, **overrides)


class _Recorder:
    """Records what the ITM loss and NVA saw (wraps the real functions, changes nothing)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model: NAS) -> None:
        self.itm: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.nva: list = []
        self.vd: list = []
        real_loss, real_nva = albef_module.itm_loss, nas_module.negative_visual_augmentation
        real_fused = model.fused_itm_logits
        images_seen: list[torch.Tensor] = []

        def fused(images, texts, masks):
            images_seen.append(images.detach())
            return real_fused(images, texts, masks)

        def loss(logits, labels):
            self.itm.append((images_seen[-1], logits.detach(), labels))
            return real_loss(logits, labels)

        def nva(*args, **kwargs):
            self.nva.append(real_nva(*args, **kwargs))
            return self.nva[-1]

        monkeypatch.setattr(model, "fused_itm_logits", fused)
        monkeypatch.setattr(albef_module, "itm_loss", loss)
        monkeypatch.setattr(nas_module, "negative_visual_augmentation", nva)
        model.vd.register_forward_hook(lambda module, args, output: self.vd.append(output))


def test_itm_rows_labels_and_the_nva_block(stage1_state, monkeypatch):
    stage1 = _stage(stage1_state)
    seen1 = _Recorder(monkeypatch, stage1)
    assert set(stage1(_batch(), alpha=0.4)) == {"itc", "itm", "mlm"}
    images, logits, labels = seen1.itm[0]
    assert logits.shape == (3 * B, 2) and labels.tolist() == [1] * B + [0] * 2 * B
    assert seen1.nva == [] and len(seen1.vd) == 1
    assert torch.equal(images[:B], seen1.vd[0].tokens.detach())  # ITM sees [V_cls ; VD tokens]

    stage2 = _stage2(stage1_state)
    seen2 = _Recorder(monkeypatch, stage2)
    stage2(_batch(), alpha=0.4)
    images, logits, labels = seen2.itm[0]
    assert logits.shape == (4 * B, 2) and labels.tolist() == [1] * B + [0] * 3 * B
    positive, negative = seen2.vd[0], seen2.nva[0]
    assert torch.equal(images[:B], positive.tokens.detach())
    assert torch.equal(images[B : 2 * B], negative.tokens)  # NVA right after the positives (§4.8)
    # The properties of spec §4, inside the model: [CLS] untouched, bitwise equal outside M, M is the
    # anchor's code class, every token of M carries the one code c ≠ h_a.
    rows = torch.arange(B)
    assert torch.equal(negative.tokens[:, 0], positive.tokens[:, 0].detach())
    outside = ~negative.replaced
    assert torch.equal(negative.tokens[:, 1:][outside], positive.tokens[:, 1:][outside].detach())
    assert torch.equal(negative.replaced, positive.codes == positive.codes[rows, negative.anchor][:, None])
    assert (negative.code != negative.anchor_code).all()
    with torch.no_grad():
        code_tokens = stage2.vd.pos_line(stage2.vd.codebook[negative.code])[:, None].expand(-1, SIDE**2, -1)
    torch.testing.assert_close(negative.pre_position[negative.replaced], code_tokens[negative.replaced])


def _itm_rows_only(monkeypatch: pytest.MonkeyPatch, rows: slice) -> None:
    real = albef_module.itm_loss
    monkeypatch.setattr(albef_module, "itm_loss", lambda logits, labels: real(logits[rows], labels[rows]))


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("detach", [True, False])
def test_the_nva_row_reaches_only_fusion_and_itm_head_when_detached(stage1_state, monkeypatch, detach):
    model = _stage2(stage1_state, itc_weight=0.0, mlm_weight=0.0, nva={"detach": detach})
    _itm_rows_only(monkeypatch, slice(B, 2 * B))  # the loss of the NVA rows alone
    model(_batch(), alpha=0.4)["itm"].backward()
    text = model.text_encoder
    assert _grad_norm(text.fusion_layers) > 0 and _grad_norm(model.itm_head) > 0
    upstream = {
        "ViT": _grad_norm(model.visual_encoder),
        "neck": _grad_norm(model.vd),
        "text encoder": _grad_norm(text.text_layers) + _grad_norm(text.embeddings),
    }
    if detach:  # pretraining (§4.6, §4.8)
        assert upstream == {"ViT": 0.0, "neck": 0.0, "text encoder": 0.0}
    else:  # fine-tuning: the row reaches the ViT, the neck and the text encoder
        assert all(value > 0 for value in upstream.values()), upstream


def test_positive_rows_carry_gradient_into_vit_and_neck_in_pretraining(stage1_state, monkeypatch):
    model = _stage2(stage1_state, itc_weight=0.0, mlm_weight=0.0)
    _itm_rows_only(monkeypatch, slice(0, B))
    model(_batch(), alpha=0.4)["itm"].backward()
    assert _grad_norm(model.visual_encoder) > 0 and _grad_norm(model.vd.input_proj) > 0
    assert model.vd.codebook.grad is None  # a buffer, never trained by gradient


def test_vd_runs_and_updates_once_per_training_step_never_in_eval_or_scoring(stage1_state, monkeypatch):
    model = _stage(stage1_state, nva_enabled=True)
    seen = _Recorder(monkeypatch, model)
    for step in range(2):
        before = model.vd.codebook.clone()
        model(_batch(step), alpha=0.4)
        assert len(seen.vd) == step + 1  # one VD forward per step: the negatives index its tokens
        assert int(model.vd.step) == int(model.training_steps) == step + 1
        assert not torch.equal(model.vd.codebook, before)

    state = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("vd.")}
    with torch.no_grad():  # the scoring API, even in training mode, leaves the dictionary alone
        image_tokens, _ = model.encode_image(_batch()["image"])
        text_tokens, _ = model.encode_text(_batch()["input_ids"], _batch()["attention_mask"])
        model.itm_logits(image_tokens, text_tokens, _batch()["attention_mask"])
    model.eval()(_batch(), alpha=0.4)  # an evaluation forward neither
    assert model.vd.training is False and model.training is False
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert int(model.training_steps) == 2


def test_itm_scoring_uses_vd_tokens_in_eval_mode(stage1_state):
    model = _stage(stage1_state)
    batch = _batch()
    with torch.no_grad():
        image_tokens, _ = model.encode_image(batch["image"])
        text_tokens, _ = model.encode_text(batch["input_ids"], batch["attention_mask"])
        scores = model.itm_logits(image_tokens, text_tokens, batch["attention_mask"])
        expected = model.fused_itm_logits(
            model.vd.eval()(image_tokens).tokens, text_tokens, batch["attention_mask"]
        )
    assert torch.equal(scores, expected)


def test_gamma_ramp_follows_set_total_steps(stage1_state, monkeypatch):
    model = _stage(stage1_state)  # random init: EMA state zero, so N after each step is checkable by hand
    model.set_total_steps(5)  # ramp over ⌈0.9 · 5⌉ = 5 steps: γ_1 = 0.2, γ_2 = 0.4
    seen = _Recorder(monkeypatch, model)
    counts = []
    for step in range(2):
        model(_batch(step), alpha=0.4)
        counts.append(torch.bincount(seen.vd[-1].codes.flatten(), minlength=16).float())
    expected = 0.8 * counts[0]
    expected = 0.4 * expected + 0.6 * counts[1]
    torch.testing.assert_close(model.vd.ema_counts, expected)
    assert model.dictionary_health()["codes_in_use"] == int((expected > 0).sum())

    unscheduled = NAS(model.cfg).train()
    with pytest.raises(RuntimeError, match="set_total_steps"):
        unscheduled(_batch(), alpha=0.4)


def test_stage2_freezes_the_codebook_while_the_neck_trains(stage1_state):
    model = _stage2(stage1_state)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k in VD_KEYS}
    neck = {n: p.detach().clone() for n, p in model.vd.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(2):
        optimizer.zero_grad()
        sum(model(_batch(step), alpha=0.4).values()).backward()
        optimizer.step()
    for key, value in frozen.items():
        assert torch.equal(model.state_dict()[key], value), key
    moved = [n for n, p in model.vd.named_parameters() if not torch.equal(p, neck[n])]
    assert sorted(moved) == sorted(neck)  # every neck layer trains: Linear + LN, pos_line, gate, final LN
    assert int(model.training_steps) == 2

    late = _stage(stage1_state)  # a model built for stage 1 can be frozen afterwards
    late.freeze_dictionary()
    before = late.vd.codebook.clone()
    late(_batch(), alpha=0.4)
    assert torch.equal(late.vd.codebook, before)


def test_exact_resume_draws_the_same_nva_negatives(stage1_state, monkeypatch):
    model = _stage2(stage1_state)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    seen = _Recorder(monkeypatch, model)

    def train_step(target: NAS, opt: torch.optim.Optimizer, step: int) -> None:
        opt.zero_grad()
        sum(target(_batch(step), alpha=0.4).values()).backward()
        opt.step()

    train_step(model, optimizer, 0)
    checkpoint = copy.deepcopy(model.state_dict())
    train_step(model, optimizer, 1)

    resumed = _stage2(checkpoint)
    resumed_seen = _Recorder(monkeypatch, resumed)
    train_step(resumed, torch.optim.SGD([p for p in resumed.parameters() if p.requires_grad], lr=0.1), 1)
    original, again = seen.nva[1], resumed_seen.nva[0]
    for field in ("anchor", "code", "replaced", "tokens"):
        assert torch.equal(getattr(original, field), getattr(again, field)), field


def test_the_nva_draw_follows_the_step_counter(stage1_state, monkeypatch):
    model = _stage2(stage1_state).eval()  # eval: the weights and the counter stay as set
    seen = _Recorder(monkeypatch, model)
    for step in (0, 1, 0):
        model.training_steps.fill_(step)
        model(_batch(), alpha=0.4)
    draws = [torch.stack([nva.anchor, nva.code]) for nva in seen.nva]
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])


def _nva_draws_of_a_run(state: dict, monkeypatch, out: Path, seed: int, **overrides) -> torch.Tensor:
    """(anchor, code) of every NVA draw of a 2-step run through the engine with `train.seed = seed`."""
    from nas.engine import fit

    model = _stage2(state, **overrides)
    seen = _Recorder(monkeypatch, model)
    cfg = TrainConfig(
        epochs=1, seed=seed, progress_bar=False, schedule=ScheduleConfig(lr=1e-3, warmup_steps=0)
    )
    fit(model, [_batch(0), _batch(1)], cfg, output_dir=out, step_inputs=DistillationConfig().step_inputs)
    return torch.stack([torch.stack([nva.anchor, nva.code]) for nva in seen.nva])


def test_the_run_seed_reaches_nva_replicates_differ_and_a_seed_reproduces(
    stage1_state, monkeypatch, tmp_path
):
    # Fine-tuning replicate k trains with seed + k from the same pretrained weights (experiments/finetune).
    first = _nva_draws_of_a_run(stage1_state, monkeypatch, tmp_path / "a", seed=42)
    other = _nva_draws_of_a_run(stage1_state, monkeypatch, tmp_path / "b", seed=43)
    again = _nva_draws_of_a_run(stage1_state, monkeypatch, tmp_path / "c", seed=42)
    assert first.shape == (2, 2, B)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # An explicit nva_seed pins the stream whatever the run's seed (first step: the weights are still
    # equal; after it the other global draws of the two runs have moved them apart).
    pinned = [
        _nva_draws_of_a_run(stage1_state, monkeypatch, tmp_path / f"p{seed}", seed=seed, nva_seed=5)
        for seed in (42, 43)
    ]
    assert torch.equal(pinned[0][0], pinned[1][0])
    assert not torch.equal(first[0], other[0])


def test_nva_seed_mixes_seed_step_and_rank():
    seeds = {nva_step_seed(s, t, r) for s in range(3) for t in range(50) for r in range(4)}
    assert len(seeds) == 3 * 50 * 4 and all(0 <= s < 2**64 for s in seeds)
    assert nva_step_seed(1, 2, 3) == nva_step_seed(1, 2, 3)


def test_each_rank_draws_its_own_negatives(stage1_state, monkeypatch):
    model = _stage2(stage1_state).eval()  # eval: same state for both calls
    seen = _Recorder(monkeypatch, model)
    model(_batch(), alpha=0.4)
    monkeypatch.setattr(nas_module, "rank", lambda: 1)
    model(_batch(), alpha=0.4)
    first, second = seen.nva
    assert not torch.equal(torch.stack([first.anchor, first.code]), torch.stack([second.anchor, second.code]))


def test_stage1_checkpoint_loads_strictly_into_stage2_and_finetune(stage1_state):
    for overrides in ({}, {"nva": {"detach": False}}):
        model = _stage2(stage1_state, **overrides)
        assert set(model.state_dict()) == set(stage1_state)
        assert model.vd.frozen and model.cfg.nva_enabled and "training_steps" in stage1_state


def test_registry_entrypoints_and_config_checks():
    assert {"nas_tiny", "nas_base"} <= set(list_models())
    model = create_model("nas_tiny", vd={"num_codes": 128}, nva_enabled=True)
    assert isinstance(model, NAS) and model.vd.codebook.shape == (128, 192) and model.cfg.nva_enabled
    assert model.cfg.queue_size == 1024 and model.cfg.vision.grid_size == 8  # albef_tiny underneath
    base = build_config(NASConfig, NAS_BASE, {})  # not built: ~400M parameters with the momentum copies
    assert (base.vd.num_codes, base.vd.dim, base.vision.embed_dim, base.queue_size) == (2048, 768, 768, 65536)
    assert base.text.hidden_size == 768 and not base.nva_enabled and not base.vd.frozen and base.nva.detach

    with pytest.raises(ConfigError, match="vd.num_code"):
        create_model("nas_tiny", vd={"num_code": 8})
    with pytest.raises(ValueError, match=r"vd.dim \(96\) must equal vision.embed_dim"):
        create_model("nas_tiny", vd={"dim": 96})
    with pytest.raises(ValueError, match="text.hidden_size"):
        build_config(NASConfig, {}, {"nva_enabled": True, "text": {"hidden_size": 96}})
    with pytest.raises(ValueError, match="itm_weight"):
        NASConfig(nva_enabled=True, itm_weight=0.0)
    with pytest.raises(ValueError, match="num_candidates"):
        build_config(NASConfig, {}, {"nva_enabled": True, "vd": {"num_codes": 3}})
    with pytest.raises(ValueError, match="nva_seed"):
        NASConfig(nva_seed=-1)


def test_dictionary_health_from_counts_or_from_images(stage1_state):
    model = _stage(stage1_state)
    with pytest.raises(ValueError, match="pass images="):
        model.dictionary_health()  # random init before its first step: no counts yet
    images = _batch()["image"]
    codes = model.assign_codes(images)
    assert codes.shape == (B, SIDE**2)
    health = model.dictionary_health(images)
    assert health["codes_in_use"] == len(codes.unique())
    counts = torch.bincount(codes.flatten(), minlength=16).double()
    probs = counts[counts > 0] / counts.sum()
    assert health["perplexity"] == pytest.approx(float(torch.exp(-(probs * probs.log()).sum())))


def test_nva_figure_writes_a_png(stage1_state, tmp_path):
    model = _stage2(stage1_state)
    batch = _batch()
    path = nva_figure(
        model,
        batch["image"],
        batch["input_ids"],
        batch["attention_mask"],
        tmp_path / "f" / "nva.png",
        max_images=2,
    )
    pixels = imread(path)
    assert pixels.shape[:2] == (600, 900)  # 2 rows x 3 panels at 3 x 3 inches, 100 dpi
    assert model.training and int(model.training_steps) == 0  # left as it was, nothing counted


@pytest.fixture(scope="module")
def parity_recordings():
    cfg = TrainConfig(schedule=ScheduleConfig(lr=1e-12, min_lr=0.0, warmup_steps=0))
    args = ("nas_parity_worker:model", "nas_parity_worker:batch")
    inputs = {"step_inputs": "nas_parity_worker:step_inputs"}  # ALBEF's α, ramped
    single = record_training(*args, steps=3, nproc=1, cfg=cfg, pythonpath=[HERE], **inputs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        double = record_training(*args, steps=3, nproc=2, cfg=cfg, pythonpath=[HERE], **inputs)
    return single, double


def test_two_gloo_processes_update_the_vd_as_one_process_on_the_whole_batch(parity_recordings):
    # lr ≈ 0 keeps the weights identical on both sides (in-batch ITC/ITM negatives legitimately make the
    # gradients differ), so the VD sees the same features: its EMA state must agree step by step.
    single, double = parity_recordings
    assert (single["world_size"], double["world_size"], double["wrapper"]) == (
        1,
        2,
        "DistributedDataParallel",
    )
    for step, (one, two) in enumerate(zip(single["steps"], double["steps"], strict=True)):
        assert int(two["buffers"]["vd.step"]) == int(two["buffers"]["training_steps"]) == step + 1
        for key in VD_KEYS:
            torch.testing.assert_close(two["buffers"][key], one["buffers"][key], rtol=1e-5, atol=1e-5)
    first, last = single["steps"][0]["buffers"], single["steps"][-1]["buffers"]
    assert not torch.allclose(first["vd.codebook"], last["vd.codebook"])  # the dictionary did move
    assert all(math.isfinite(step["output"]["itm"]) for step in double["steps"])
