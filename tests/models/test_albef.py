from __future__ import annotations

import copy

import pytest
import torch

import nas.models.albef as albef_module
from nas.models.albef import ALBEF, ALBEFConfig, ITMContext
from nas.models.registry import create_model
from nas.objectives.itm import NO_MATCH, ITMBlock

B, T = 4, 8


def _batch(seed: int = 0, image_size: int = 64) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(B, T, dtype=torch.long)
    ids[1, 5:], mask[1, 5:] = 0, 0  # one padded text
    ids[1, 4] = 102
    return {
        "image": torch.randn(B, 3, image_size, image_size, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "index": torch.arange(B),
        "image_id": torch.tensor([0, 1, 2, 3]),
        "num_skipped": 0,
    }


@pytest.fixture(scope="module")
def tiny() -> ALBEF:
    torch.manual_seed(0)
    return create_model("albef_tiny")


@pytest.fixture
def model(tiny: ALBEF) -> ALBEF:
    return copy.deepcopy(tiny).train()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_forward_backward_losses_and_gradient_paths(model: ALBEF):
    losses = model(_batch(), alpha=0.4, generator=_gen())
    assert set(losses) == {"itc", "itm", "mlm"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()

    def has_grad(param: torch.Tensor) -> bool:
        return param.grad is not None and bool(param.grad.abs().sum() > 0)

    for name, param in [
        ("vision patch embedding", model.visual_encoder.patch_embed.proj.weight),
        ("vision last block", model.visual_encoder.blocks[-1].mlp.fc2.weight),
        ("text layer", model.text_encoder.text_layers[0].self_attn.query.weight),
        ("fusion cross-attention", model.text_encoder.fusion_layers[-1].cross_attn.key.weight),
        ("mlm head", model.text_encoder.mlm_head.dense.weight),
        ("itm head", model.itm_head.weight),
        ("projections", model.vision_proj.weight),
        ("projections", model.text_proj.weight),
        ("temperature", model.itc.temp),
    ]:
        assert has_grad(param), name
    momentum_params = [p for n, p in model.named_parameters() if "_m." in n]
    assert momentum_params and all(p.grad is None and not p.requires_grad for p in momentum_params)


def test_momentum_parameters_move_by_one_minus_m_of_the_gap(model: ALBEF):
    # One optimizer step first, so online and momentum parameters differ.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    sum(model(_batch(), alpha=0.4, generator=_gen()).values()).backward()
    optimizer.step()
    online = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    momentum = {n: p.detach().clone() for n, p in model.named_parameters() if "_m." in n}
    model(_batch(1), alpha=0.4, generator=_gen())
    after = dict(model.named_parameters())
    weight = 1 - model.cfg.momentum
    moved, expected = [], []
    for name, before in momentum.items():
        source = online[name.replace("_m.", ".", 1)]
        moved.append((after[name].detach() - before).flatten())
        expected.append((weight * (source - before)).flatten())
    moved, expected = torch.cat(moved), torch.cat(expected)
    assert expected.abs().max() > 1e-3 and (expected != 0).float().mean() > 0.5  # the gap is real
    # Exact up to float32 rounding of parameters of magnitude ~1 (one ulp = 1.2e-7).
    torch.testing.assert_close(moved, expected, rtol=0, atol=5e-7)
    # Online parameters are untouched by the forward pass (the temperature is only clamped).
    assert all(torch.equal(after[n], online[n]) for n in online if n != "itc.temp")


def test_queue_advances_by_the_gathered_batch_in_training_only(tiny: ALBEF):
    def fake_gather(x: torch.Tensor) -> torch.Tensor:  # world size 3
        return torch.cat([x, x, x])

    model = ALBEF(tiny.cfg, gather=fake_gather)
    model.load_state_dict(tiny.state_dict())
    model.train()(_batch(), alpha=0.4, generator=_gen())
    assert int(model.itc.image_queue.ptr) == int(model.itc.text_queue.ptr) == 3 * B
    # The queue holds the momentum model's features (computed after this step's update), per rank.
    with torch.no_grad():
        tokens_m = model.visual_encoder_m.forward_features(_batch()["image"])
        image_feat_m = torch.nn.functional.normalize(model.vision_proj_m(tokens_m[:, 0]), dim=-1)
    torch.testing.assert_close(model.itc.image_queue.features[: 3 * B], image_feat_m.repeat(3, 1))

    momentum_before = model.visual_encoder_m.cls_token.clone()
    model.eval()(_batch(), alpha=0.4, generator=_gen())
    assert int(model.itc.image_queue.ptr) == 3 * B
    assert torch.equal(model.visual_encoder_m.cls_token, momentum_before)

    no_update = ALBEF(ALBEFConfig(queue_update=False), gather=fake_gather).train()
    no_update(_batch(), alpha=0.4, generator=_gen())
    assert int(no_update.itc.image_queue.ptr) == 0


def test_state_dict_holds_momentum_model_and_queues(tiny: ALBEF):
    keys = set(tiny.state_dict())
    for key in [
        "visual_encoder_m.pos_embed",
        "text_encoder_m.fusion_layers.0.cross_attn.query.weight",
        "vision_proj_m.weight",
        "text_proj_m.bias",
        "itc.image_queue.features",
        "itc.text_queue.ptr",
        "itc.temp",
    ]:
        assert key in keys, key
    torch.testing.assert_close(tiny.visual_encoder_m.pos_embed, tiny.visual_encoder.pos_embed)


def test_generator_makes_the_randomness_reproducible(model: ALBEF):
    model.eval()  # no momentum/queue update: the same state for every call
    first = model(_batch(), alpha=0.4, generator=_gen(3))
    again = model(_batch(), alpha=0.4, generator=_gen(3))
    other = model(_batch(), alpha=0.4, generator=_gen(4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["mlm"], other["mlm"])


def test_evaluation_api_shapes(model: ALBEF):
    model.eval()
    batch = _batch()
    with torch.no_grad():
        image_tokens, image_feat = model.encode_image(batch["image"])
        text_tokens, text_feat = model.encode_text(batch["input_ids"], batch["attention_mask"])
        logits = model.itm_logits(image_tokens, text_tokens, batch["attention_mask"])
    assert image_tokens.shape == (B, 65, 192) and text_tokens.shape == (B, T, 192)
    torch.testing.assert_close(image_feat.norm(dim=1), torch.ones(B))
    torch.testing.assert_close(text_feat.norm(dim=1), torch.ones(B))
    assert logits.shape == (B, 2)


class _WithHooks(ALBEF):
    """A NAS-like subclass: replaces the ITM image tokens and adds one block of negatives."""

    def itm_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return image_tokens * 0.0

    def extra_itm_blocks(self, context: ITMContext) -> list[ITMBlock]:
        shuffled = context.itm_image_tokens.flip(0).detach()
        return [ITMBlock(shuffled, context.text_tokens.detach(), context.attention_mask, NO_MATCH)]


def test_hooks_change_itm_only(tiny: ALBEF, monkeypatch):
    hooked = _WithHooks(tiny.cfg)
    hooked.load_state_dict(tiny.state_dict())
    plain = copy.deepcopy(tiny)
    hooked.eval()
    plain.eval()
    batch = _batch()
    with torch.no_grad():
        image_tokens, _ = plain.encode_image(batch["image"])
        text_tokens, _ = plain.encode_text(batch["input_ids"], batch["attention_mask"])
        zero_image = plain.fused_itm_logits(image_tokens * 0, text_tokens, batch["attention_mask"])
        torch.testing.assert_close(
            hooked.itm_logits(image_tokens, text_tokens, batch["attention_mask"]), zero_image
        )

    labels_seen: list[torch.Tensor] = []
    real_loss = albef_module.itm_loss

    def recording_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels_seen.append(labels)
        return real_loss(logits, labels)

    monkeypatch.setattr(albef_module, "itm_loss", recording_loss)
    hooked_losses = hooked(batch, alpha=0.4, generator=_gen())
    plain_losses = plain(batch, alpha=0.4, generator=_gen())
    assert labels_seen[0].tolist() == [1] * B + [0] * 3 * B  # positives, the extra block, ALBEF's two
    assert labels_seen[1].tolist() == [1] * B + [0] * 2 * B
    assert torch.equal(hooked_losses["itc"], plain_losses["itc"])  # ITC uses the raw [CLS]
    assert torch.equal(hooked_losses["mlm"], plain_losses["mlm"])  # MLM uses the raw tokens


def test_switches_weights_distillation_and_resolution(tiny: ALBEF):
    model = ALBEF(ALBEFConfig(mlm_weight=0.0, itc_weight=2.0, distill=False)).eval()
    losses = model(_batch(), alpha=0.4, generator=_gen())
    assert set(losses) == {"itc", "itm"}
    # distill off: α is ignored, ITC targets are one-hot whatever α says.
    torch.testing.assert_close(losses["itc"], model(_batch(), alpha=0.0, generator=_gen())["itc"])

    resized = copy.deepcopy(tiny).eval()
    resized.set_image_size(96)
    assert resized.cfg.vision.img_size == 96 and resized.visual_encoder_m.pos_embed.shape == (1, 145, 192)
    assert (
        not resized.visual_encoder_m.pos_embed.requires_grad
        and resized.visual_encoder.pos_embed.requires_grad
    )
    assert set(resized(_batch(image_size=96), alpha=0.4, generator=_gen())) == {"itc", "itm", "mlm"}


def test_bad_batches_are_errors(model: ALBEF):
    batch = _batch()
    del batch["image_id"]
    with pytest.raises(KeyError, match="lacks \\['image_id'\\]"):
        model(batch, alpha=0.4)
    batch = _batch()
    batch["attention_mask"] = batch["attention_mask"][:, :5]
    with pytest.raises(ValueError, match="attention_mask the same shape"):
        model(batch, alpha=0.4)
    with pytest.raises(ValueError, match="alpha"):
        model(_batch(), alpha=1.5)
    batch = _batch()
    batch["image_id"] = torch.zeros(B, dtype=torch.long)
    with pytest.raises(ValueError, match="two distinct image_ids"):
        model(batch, alpha=0.4)
