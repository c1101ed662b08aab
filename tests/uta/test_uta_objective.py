"""UTA's loss (MUG_UTA.md §2): 1 - cos over CLS + visible patches, fp32; grid resampling."""

from __future__ import annotations

import math

import pytest
import torch
from uta_fixtures import tiny_student, tiny_teacher

from nas.models.block_masking import MaskingConfig, sample_visible
from nas.models.uta import UTAPretrainer
from nas.objectives.uta import alignment_loss, gather_tokens, resample_token_grid, token_cosine


def test_hand_checked_values():
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 4.0]]])
    teacher = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [4.0, 3.0]]])
    # cosines 1, 0, -1, 24/25: losses 0, 1, 2, 0.04 -> mean 0.76
    torch.testing.assert_close(token_cosine(student, teacher), torch.tensor([[1.0, 0.0, -1.0, 0.96]]))
    assert math.isclose(alignment_loss(student, teacher).item(), 0.76, rel_tol=1e-6)
    assert alignment_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_the_loss_is_computed_in_fp32_even_for_bf16_tokens():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = alignment_loss(student.bfloat16(), teacher.bfloat16())
    assert loss.dtype == torch.float32
    expected = alignment_loss(student.bfloat16().float(), teacher.bfloat16().float())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_gather_keeps_cls_and_the_kept_patches_in_order():
    tokens = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)  # CLS + 4 patches
    keep = torch.tensor([[1, 3], [0, 2]])
    assert gather_tokens(tokens, keep).squeeze(-1).tolist() == [[0.0, 2.0, 4.0], [5.0, 6.0, 8.0]]


def test_grid_resampling():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 1 + 16, 3, generator=g)
    assert resample_token_grid(tokens, (4, 4), (4, 4)) is tokens  # equal grids: untouched
    resized = resample_token_grid(tokens, (4, 4), (2, 2))
    assert resized.shape == (2, 5, 3) and torch.equal(resized[:, 0], tokens[:, 0])
    constant = torch.ones(1, 1 + 16 * 16, 2)
    torch.testing.assert_close(
        resample_token_grid(constant, (16, 16), (14, 14)), torch.ones(1, 1 + 14 * 14, 2)
    )
    with pytest.raises(ValueError, match=r"17 tokens do not fit CLS \+ a \(3, 3\) grid"):
        resample_token_grid(tokens, (3, 3), (2, 2))


def test_pretrainer_loss_equals_the_loss_written_out():
    student, teacher = tiny_student(), tiny_teacher()
    model = UTAPretrainer(student, teacher, MaskingConfig(ratio=0.5, min_patches=2))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    loss = model({"image": images})["uta"]
    torch.manual_seed(7)
    keep = sample_visible(3, (4, 4), model.masking)
    with torch.no_grad():
        target = gather_tokens(teacher.image_tokens(images), keep)
    expected = (1 - torch.nn.functional.cosine_similarity(student(images, keep), target, dim=-1)).mean()
    assert keep.shape == (3, 8) and loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_teacher_on_another_grid_is_resampled_to_the_students():
    teacher = tiny_teacher(image_size=48, patch_size=8)  # 6 x 6 grid, 48 px
    model = UTAPretrainer(tiny_student(), teacher, MaskingConfig())
    images = torch.randn(2, 3, 32, 32)
    assert model.teacher_tokens(images).shape == (2, 1 + 16, 16)
    assert model({"image": images})["uta"].requires_grad


def test_the_token_cache_gives_the_same_targets():
    student, teacher = tiny_student(), tiny_teacher()
    batch = {"image": torch.randn(4, 3, 32, 32), "image_id": torch.tensor([3, 1, 3, 2])}
    batch["image"][2] = batch["image"][0]  # the same image id means the same image
    cache: dict = {}
    cached = UTAPretrainer(student, teacher, MaskingConfig(), cache)
    online = UTAPretrainer(student, teacher, MaskingConfig())
    torch.testing.assert_close(cached.targets(batch), online.targets(batch))
    assert sorted(cache) == [1, 2, 3]
    torch.testing.assert_close(cached.targets(batch), online.targets(batch))  # from the cache


def test_a_head_width_unlike_the_teachers_is_an_error():
    with pytest.raises(ValueError, match=r"teacher_dim=24 does not match the teacher's embedding width 16"):
        UTAPretrainer(tiny_student(teacher_dim=24), tiny_teacher(), MaskingConfig())
