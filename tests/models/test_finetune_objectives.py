"""NTA fine-tuning objectives (NAS_METHOD §5): 2B-text ITC, the (T_nta, I) ITM block, and the
resolution change of a loaded checkpoint."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

import nas.models.albef as albef_module
from nas.config.stages import ModelSpec
from nas.models.registry import create_model
from nas.objectives.itc import ContrastiveLoss, itc_with_negative_texts
from nas.objectives.itm import MATCH, NO_MATCH
from nas.recipes.finetune import FinetuneConfig, build_finetune_model, effective_overrides

B, T = 4, 8


def _ids(g: torch.Generator) -> torch.Tensor:
    ids = torch.randint(1000, 30000, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def _batch(seed: int = 0, image_size: int = 64, negatives: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randn(B, 3, image_size, image_size, generator=g),
        "input_ids": _ids(g),
        "attention_mask": torch.ones(B, T, dtype=torch.long),
        "index": torch.arange(B),
        "image_id": torch.arange(B),
        "num_skipped": 0,
    }
    if negatives:
        batch["neg_input_ids"] = _ids(g)
        batch["neg_attention_mask"] = torch.ones(B, T, dtype=torch.long)
    return batch


def _unit(*rows: tuple[float, float]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_two_b_itc_by_hand() -> None:
    # B = 2, E = 2, one queued text/image; α = 0 so targets are the diagonal one-hots.
    itc = ContrastiveLoss(2, 1, temp=0.5)
    itc.image_queue.features.copy_(_unit((0.0, -1.0)))
    itc.text_queue.features.copy_(_unit((-1.0, 0.0)))
    image = _unit((1.0, 0.0), (0.0, 1.0))
    text = _unit((1.0, 0.0), (0.0, 1.0))
    negative = _unit((0.0, 1.0), (1.0, 0.0))  # each image's NTA caption looks like the other's text
    out = itc_with_negative_texts(itc, image, text, image, text, negative, alpha=0.0)
    # i2t columns: [t0, t1, nta0, nta1, queue]; image 0 scores 1, 0, 0, 1, -1 (÷ τ = 0.5).
    assert out.sim_i2t.shape == (2, 5)
    torch.testing.assert_close(out.sim_i2t[0], torch.tensor([2.0, 0.0, 0.0, 2.0, -2.0]))
    torch.testing.assert_close(out.sim_i2t[1], torch.tensor([0.0, 2.0, 2.0, 0.0, 0.0]))
    i2t_row0 = -(2 - math.log(2 * math.exp(2) + 2 + math.exp(-2)))
    i2t_row1 = -(2 - math.log(2 * math.exp(2) + 3))
    t2i = -(2 - math.log(math.exp(2) + 1 + 1))  # columns [i0, i1, queue]: t0 -> 2, 0, 0; t1 -> 0, 2, -2
    t2i_row1 = -(2 - math.log(math.exp(2) + 1 + math.exp(-2)))
    expected = ((i2t_row0 + i2t_row1) / 2 + (t2i + t2i_row1) / 2) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_negative_texts_change_only_the_image_to_text_side() -> None:
    g = torch.Generator().manual_seed(0)
    feats = [torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1) for _ in range(5)]
    image, text, image_m, text_m, negative_m = feats
    itc = ContrastiveLoss(8, 6)
    plain = itc(image, text, image_m, text_m, alpha=0.4)
    extended = itc_with_negative_texts(itc, image, text, image_m, text_m, negative_m, alpha=0.4)
    torch.testing.assert_close(extended.sim_t2i, plain.sim_t2i)
    torch.testing.assert_close(extended.sim_i2t[:, :3], plain.sim_i2t[:, :3])
    torch.testing.assert_close(extended.sim_i2t[:, 6:], plain.sim_i2t[:, 3:])
    torch.testing.assert_close(extended.sim_i2t[:, 3:6], image @ negative_m.t() / itc.temp.detach())
    # An NTA caption equal to its own positive text makes i2t strictly harder.
    harder = itc_with_negative_texts(itc, image, text, image_m, text_m, text_m, alpha=0.0)
    assert harder.loss > itc(image, text, image_m, text_m, alpha=0.0).loss
    with pytest.raises(ValueError, match="negative_text_feat_m"):
        itc_with_negative_texts(itc, image, text, image_m, text_m, negative_m[:2], alpha=0.0)


@pytest.fixture(scope="module")
def nas_finetune():
    torch.manual_seed(0)
    return create_model(
        "nas_tiny", vd={"frozen": True}, nva_enabled=True, nva={"detach": False}, mlm_weight=0.0
    )


def _capture_itm(monkeypatch) -> dict:
    seen: dict = {}
    original = albef_module.concat_blocks

    def spy(blocks):
        seen["blocks"] = list(blocks)
        out = original(blocks)
        seen["labels"] = out[3]
        return out

    monkeypatch.setattr(albef_module, "concat_blocks", spy)
    return seen


def test_nas_finetune_itm_rows_labels_and_gradients(nas_finetune, monkeypatch) -> None:
    model = copy.deepcopy(nas_finetune).train()
    seen = _capture_itm(monkeypatch)
    batch = _batch()
    losses = model(batch, alpha=0.4, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"itc", "itm"}  # mlm_weight 0: no MLM term
    # positives, NVA, two in-batch hard-negative blocks, then the NTA block: 5B rows.
    assert seen["labels"].tolist() == [MATCH] * B + [NO_MATCH] * (4 * B)
    nta_block = seen["blocks"][-1]
    with torch.no_grad():
        expected = model.text_encoder.encode(batch["neg_input_ids"], batch["neg_attention_mask"])
    torch.testing.assert_close(nta_block.text_tokens, expected)
    torch.testing.assert_close(nta_block.image_tokens, seen["blocks"][0].image_tokens)  # (T_nta, I)
    sum(losses.values()).backward()
    assert model.visual_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.text_encoder.text_layers[0].self_attn.query.weight.grad.abs().sum() > 0


def test_plain_batches_keep_the_pretraining_rows(nas_finetune, monkeypatch) -> None:
    model = copy.deepcopy(nas_finetune).train()
    seen = _capture_itm(monkeypatch)
    model(_batch(negatives=False), alpha=0.4, generator=torch.Generator().manual_seed(0))
    assert seen["labels"].tolist() == [MATCH] * B + [NO_MATCH] * (3 * B)
    half = {k: v for k, v in _batch().items() if k != "neg_attention_mask"}
    with pytest.raises(KeyError, match="neg_attention_mask"):
        model(half, alpha=0.4)


def test_nta_itc_term_differs_from_plain_itc() -> None:
    torch.manual_seed(0)
    model = create_model("albef_tiny", mlm_weight=0.0).eval()  # eval: no momentum step, same queues
    with_negatives = model(_batch(), alpha=0.0, generator=torch.Generator().manual_seed(0))
    plain = model(_batch(negatives=False), alpha=0.0, generator=torch.Generator().manual_seed(0))
    assert with_negatives["itc"] > plain["itc"]  # extra negatives only add to the i2t softmax denominator


def test_checkpoint_at_64_px_resized_to_96(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("albef_tiny")
    # A smooth position embedding (a linear ramp over the 8 × 8 grid), so interpolation is checkable.
    grid = torch.linspace(-1.0, 1.0, 8)
    ramp = (grid[:, None] + 2 * grid[None, :]).reshape(64, 1).expand(64, source.cfg.vision.embed_dim)
    with torch.no_grad():
        source.visual_encoder.pos_embed[0, 1:] = ramp
        source.visual_encoder_m.pos_embed.copy_(source.visual_encoder.pos_embed)
    torch.save({"model": source.state_dict()}, tmp_path / "checkpoint.pt")
    cls_before = source.visual_encoder.pos_embed[0, 0].clone()

    cfg = FinetuneConfig(image_size=96)
    model = build_finetune_model(ModelSpec("albef_tiny"), cfg, tmp_path / "checkpoint.pt")
    for encoder in (model.visual_encoder, model.visual_encoder_m):
        assert encoder.pos_embed.shape == (1, 1 + 12 * 12, model.cfg.vision.embed_dim)
        torch.testing.assert_close(encoder.pos_embed[0, 0], cls_before)  # [CLS] kept
        new = encoder.pos_embed[0, 1:, 0].reshape(12, 12)
        old = ramp[:, 0].reshape(8, 8)
        for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            assert new[corner].item() == pytest.approx(old[corner].item(), abs=0.15)
        assert new.min() >= old.min() - 0.15 and new.max() <= old.max() + 0.15
    assert model.cfg.vision.img_size == 96
    losses = model.train()(_batch(image_size=96), alpha=0.4, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())
    # The recorded overrides rebuild the fine-tuned shape.
    overrides = effective_overrides(ModelSpec("albef_tiny"), cfg, image_size=96)
    rebuilt = create_model("albef_tiny", **overrides)
    rebuilt.load_state_dict(model.state_dict())


def test_finetune_config_validation() -> None:
    with pytest.raises(ValueError, match="image_size"):
        FinetuneConfig(image_size=0)
    with pytest.raises(ValueError, match="mlm_weight"):
        FinetuneConfig(mlm_weight=-1.0)
    with pytest.raises(ValueError, match="finetune.image_size"):
        FinetuneConfig(model_overrides={"vision": {"img_size": 96}})


def test_unfrozen_dictionary_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save({"model": create_model("nas_tiny").state_dict()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="vd.frozen"):
        build_finetune_model(ModelSpec("nas_tiny"), FinetuneConfig(), tmp_path / "checkpoint.pt")
