"""The frozen CLIP teacher: its tokens, freezing, and loading an open_clip checkpoint with clear
errors for a missing file, a wrong architecture and a wrong width (MUG_UTA.md §2)."""

from __future__ import annotations

import pytest
import torch
from uta_fixtures import TEACHER, tiny_teacher

from nas.models.clip_teacher import (
    ClipTeacher,
    TeacherCheckpointError,
    TinyClipConfig,
    build_open_clip,
    load_teacher,
)


def _config(**overrides) -> dict:
    return TinyClipConfig(**{**TEACHER, **overrides}).open_clip_config()


def test_the_projected_cls_token_is_the_clip_image_embedding():
    teacher = tiny_teacher().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = teacher.image_tokens(images)
        assert tokens.shape == (2, 1 + 16, 16) and teacher.grid == (4, 4)
        torch.testing.assert_close(tokens[:, 0], teacher.clip.encode_image(images))


def test_an_eva_clip_timm_tower_gives_its_tokens_the_same_way():
    # open_clip's EVA-CLIP configs wrap a timm EVA trunk (TimmModel, token pooling, trunk head as
    # projection); eva02_tiny is the smallest such trunk.
    torch.manual_seed(0)
    clip = build_open_clip(
        {
            "embed_dim": 16,
            "vision_cfg": {
                "image_size": 224,
                "timm_model_name": "eva02_tiny_patch14_224",
                "timm_pool": "token",
                "timm_proj": None,
            },
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
            "custom_text": True,
        }
    )
    teacher = ClipTeacher(clip).freeze()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = teacher.image_tokens(images)
        assert tokens.shape == (1, 1 + 256, 16) and teacher.grid == (16, 16) and teacher.image_size == 224
        torch.testing.assert_close(tokens[:, 0], clip.encode_image(images))


def test_freezing_removes_gradients_and_pins_eval_mode():
    teacher = tiny_teacher().freeze()
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.clip.visual.training
    text = tiny_teacher().freeze().unfreeze_text()
    trainable = {name for name, p in text.clip.named_parameters() if p.requires_grad}
    assert trainable and not any(name.startswith(("visual.", "logit_")) for name in trainable)
    assert "text_projection" in trainable and "token_embedding.weight" in trainable


def test_a_saved_teacher_loads_frozen_and_identical(tmp_path):
    teacher = tiny_teacher()
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in teacher.clip.state_dict().items()}}, path)
    loaded = load_teacher(path, _config(), expected_dim=16)  # DDP + "state_dict" wrapping accepted
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_tokens(images), teacher.eval().image_tokens(images))


def test_a_missing_checkpoint_says_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt \(uta\.teacher\.checkpoint\).*EVA02-E-14"):
        load_teacher(tmp_path / "missing.pt", "EVA02-E-14")


def test_a_checkpoint_of_another_architecture_is_named(tmp_path):
    path = tmp_path / "two_layers.pt"
    torch.save(tiny_teacher(vision_layers=2).clip.state_dict(), path)
    with pytest.raises(
        TeacherCheckpointError, match=r"two_layers\.pt is not a checkpoint of .*wrong architecture"
    ):
        load_teacher(path, _config())


def test_a_checkpoint_of_another_width_is_named(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(tiny_teacher(embed_dim=24).clip.state_dict(), path)
    with pytest.raises(
        TeacherCheckpointError, match=r"wide\.pt: embedding width 24 .* width 16 .*wrong width"
    ):
        load_teacher(path, _config())
    path = tmp_path / "narrow_tower.pt"
    torch.save(tiny_teacher(vision_width=48, vision_head_width=16).clip.state_dict(), path)
    with pytest.raises(TeacherCheckpointError, match=r"narrow_tower\.pt: .* wrong shape .*wrong width"):
        load_teacher(path, _config())


def test_a_teacher_narrower_than_the_student_head_is_named(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(tiny_teacher().clip.state_dict(), path)
    with pytest.raises(TeacherCheckpointError, match=r"width is 16.*projects to 1024.*teacher_dim"):
        load_teacher(path, _config(), expected_dim=1024)


def test_a_file_that_is_not_a_state_dict_is_named(tmp_path):
    path = tmp_path / "notes.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(TeacherCheckpointError, match=r"notes\.pt: not a state dict"):
        load_teacher(path, _config())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(TeacherCheckpointError, match=r"garbage\.pt: unreadable checkpoint"):
        load_teacher(garbage, _config())


def test_unknown_open_clip_model_names_the_param():
    with pytest.raises(
        ValueError, match=r"uta\.teacher\.open_clip_model='EVA99-Z' is not an open_clip model"
    ):
        build_open_clip("EVA99-Z")


def test_a_teacher_resolution_without_a_grid_names_the_param():
    with pytest.raises(
        ValueError, match=r"uta\.teacher\.model: image_size=60 with patch_size=8 leaves no valid"
    ):
        TinyClipConfig(image_size=60)


def test_the_teacher_loss_is_symmetric_contrastive_cross_entropy():
    from nas.models.clip_teacher import ClipTrainer

    teacher = tiny_teacher()
    batch = {"image": torch.randn(3, 3, 32, 32), "input_ids": torch.randint(1, 63, (3, 8))}
    loss = ClipTrainer(teacher)(batch)["clip"]
    logits = (
        teacher.logit_scale()
        * teacher.encode_image(batch["image"])
        @ teacher.encode_text(batch["input_ids"]).T
    )
    labels = torch.arange(3)
    f = torch.nn.functional.cross_entropy
    assert loss.item() == pytest.approx(((f(logits, labels) + f(logits.T, labels)) / 2).item(), rel=1e-6)
    assert teacher.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's initial temperature
