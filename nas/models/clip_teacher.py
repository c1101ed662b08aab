"""The frozen CLIP teacher of UTA: an open_clip `CLIP`, its image tokens, and loading/freezing it.

MUG_UTA.md §2: at paper scale the teacher is an open_clip EVA-CLIP checkpoint read from a local path;
on the CPU profile no pretrained CLIP can be downloaded, so the `uta_teacher` stage trains a tiny
open_clip `CLIP` (built from a config dict, offline) with open_clip's symmetric contrastive loss
(`ClipLoss`) on the synthetic image-caption set and then freezes it.

The teacher tokens UTA aligns to are the vision tower's CLS and patch tokens *after its final norm
and projection* (spec §2 "Decisions"): for open_clip's own ViT that is `ln_post` then `proj`, for a
timm trunk (EVA-CLIP) the trunk's final norm then its head (and the adapter's projection, if any).
The projected CLS token is exactly the CLIP image embedding (before L2 normalisation), which is why
the student inherits the text alignment (tested).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.models.registry import register_model

# open_clip's CLIP BPE vocabulary (MUG_UTA.md §2: 49,408 tokens).
CLIP_VOCAB_SIZE = 49408
# open_clip clamps the learned logit scale to <= 100 (its training loop, `main.py`).
MAX_LOGIT_SCALE = math.log(100.0)


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint that does not fit the configured architecture; names the file."""


@dataclass
class TinyClipConfig:
    """The tiny open_clip CLIP the default profile trains as its teacher (CPU, minutes).

    Paper scale loads an EVA-CLIP instead (`uta.teacher.open_clip_model`, `uta.teacher.checkpoint`).
    """

    embed_dim: int = 64  # joint image-text space; EVA02-E-14: 1024
    image_size: int = 64
    patch_size: int = 8  # 64 px / 8 = an 8 x 8 grid, the same as the tiny student's (spec §2)
    vision_width: int = 64
    vision_layers: int = 3
    vision_head_width: int = 16  # open_clip: heads = width / head_width
    context_length: int = 32  # BPE tokens incl. SOT/EOT; the longest synthetic caption needs ~27
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = CLIP_VOCAB_SIZE

    def __post_init__(self) -> None:
        check_grid(self.image_size, self.patch_size, "uta.teacher.model")
        if self.vision_width % self.vision_head_width:
            raise ValueError(
                f"vision_width={self.vision_width} must be a multiple of vision_head_width={self.vision_head_width}"
            )
        if self.text_width % self.text_heads:
            raise ValueError(
                f"text_width={self.text_width} must be a multiple of text_heads={self.text_heads}"
            )
        for name in ("embed_dim", "vision_layers", "text_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context_length < 3:
            raise ValueError(f"context_length must be >= 3 (SOT, a token, EOT), got {self.context_length}")

    def open_clip_config(self) -> dict[str, Any]:
        """The keyword arguments of `open_clip.model.CLIP` (the layout of open_clip's model configs)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "width": self.vision_width,
                "layers": self.vision_layers,
                "head_width": self.vision_head_width,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
            },
        }


def check_grid(image_size: int, patch_size: int, where: str) -> tuple[int, int]:
    """The token grid of a square image; an error naming `where` if no whole grid fits."""
    if patch_size < 1 or image_size < patch_size or image_size % patch_size:
        raise ValueError(
            f"{where}: image_size={image_size} with patch_size={patch_size} leaves no valid token grid "
            "(image_size must be a positive multiple of patch_size)"
        )
    return image_size // patch_size, image_size // patch_size


def build_open_clip(model: str | dict[str, Any]) -> nn.Module:
    """An untrained open_clip CLIP: a model name from open_clip's configs (e.g. "EVA02-E-14") or the
    CLIP keyword arguments as a dict (`TinyClipConfig.open_clip_config()`)."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    if isinstance(model, str):
        if model not in open_clip.list_models():
            raise ValueError(f"uta.teacher.open_clip_model={model!r} is not an open_clip model config")
        return open_clip.create_model(model, pretrained=None)
    kwargs = dict(model)
    # open_clip's configs say "custom_text": true for a text tower outside the CLIP class (EVA-CLIP).
    return (CustomTextCLIP if kwargs.pop("custom_text", False) else CLIP)(**kwargs)


def embedding_width(clip: nn.Module) -> int:
    """Width of the joint image-text space: the text projection's output (CLIP and CustomTextCLIP)."""
    projection = getattr(clip, "text", clip).text_projection
    if isinstance(projection, nn.Linear):
        return int(projection.out_features)
    return int(projection.shape[1])


class ClipTeacher(nn.Module):
    """An open_clip CLIP seen as UTA's teacher: image tokens, image/text embeddings, freezing."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.frozen = False
        visual = clip.visual
        if hasattr(visual, "trunk"):  # open_clip's TimmModel adapter (EVA-CLIP)
            trunk = visual.trunk
            if getattr(trunk, "global_pool", None) != "token" or not hasattr(trunk, "forward_features"):
                raise ValueError(
                    "UTA aligns CLS + patch tokens: the timm vision trunk must pool the CLS token"
                )
            self.grid = tuple(trunk.patch_embed.grid_size)
            self.image_size = int(trunk.patch_embed.img_size[0])
        else:  # open_clip's own VisionTransformer
            if getattr(visual, "pool_type", None) != "tok" or getattr(visual, "attn_pool", None) is not None:
                raise ValueError("UTA aligns CLS + patch tokens: the vision tower must pool the CLS token")
            if getattr(visual, "final_ln_after_pool", False):
                raise ValueError(
                    "UTA needs the final norm on every token (final_ln_after_pool must be false)"
                )
            self.grid = tuple(visual.grid_size)
            self.image_size = int(visual.image_size[0])
        self.embed_dim = embedding_width(clip)
        self.context_length = int(clip.context_length)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """CLS and patch tokens after the final norm and projection, [B, 1 + N, embed_dim]."""
        visual = self.clip.visual
        if hasattr(visual, "trunk"):
            trunk = visual.trunk
            tokens = trunk.fc_norm(trunk.forward_features(images))  # fc_norm: identity for token pooling
            return visual.head(trunk.head(tokens))
        x = visual.transformer(visual._embeds(images))
        return visual.ln_post(x) @ visual.proj

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(input_ids), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.clamp(0.0, MAX_LOGIT_SCALE).exp()

    def freeze(self) -> ClipTeacher:
        """No gradients, eval mode for good (dropout off, no statistics updates)."""
        for param in self.parameters():
            param.requires_grad_(False)
        self.frozen = True
        return super().train(False)

    def unfreeze_text(self) -> ClipTeacher:
        """Make the text tower trainable (contrastive fine-tuning); the vision tower and the learned
        temperature stay frozen."""
        self.frozen = False
        for name, param in self.clip.named_parameters():
            param.requires_grad_(not name.startswith(("visual.", "logit_")))
        return self

    def train(self, mode: bool = True) -> ClipTeacher:
        # A frozen teacher stays in eval mode whatever its parent module does.
        return super().train(mode and not self.frozen)


def build_tiny_teacher(cfg: TinyClipConfig) -> ClipTeacher:
    """A tiny open_clip CLIP built from `cfg`, untrained."""
    return ClipTeacher(build_open_clip(cfg.open_clip_config()))


register_model(
    "uta_clip_tiny",
    config=TinyClipConfig,
    build=build_tiny_teacher,
    family="uta_teacher",
    doc="The CPU profile's teacher before training: a tiny open_clip CLIP (`TinyClipConfig`).",
)


@dataclass
class OpenClipConfig:
    """An open_clip model by name (e.g. "EVA02-E-14"), untrained: what `load_run` rebuilds the fine-tuned
    text tower of an EVA-CLIP teacher as before loading its weights."""

    model: str  # no default: an EVA-CLIP is billions of parameters, never built by accident


def _build_open_clip_teacher(cfg: OpenClipConfig):
    return ClipTeacher(build_open_clip(cfg.model))


register_model(
    "uta_open_clip",
    config=OpenClipConfig,
    build=_build_open_clip_teacher,
    family="uta_teacher",
    doc="An open_clip CLIP by name (`model`), e.g. an EVA-CLIP: UTA's paper-scale teacher towers.",
)


class ClipTrainer(nn.Module):
    """The engine contract for training the tiny teacher: open_clip's symmetric contrastive loss."""

    def __init__(self, teacher: ClipTeacher) -> None:
        super().__init__()
        import ignite.distributed as idist
        from open_clip.loss import ClipLoss

        self.teacher = teacher
        # gather_with_grad: every rank's features join the logits and carry gradients (open_clip
        # recommends it for multi-GPU runs); on one process ClipLoss is plain symmetric CE.
        self.loss = ClipLoss(gather_with_grad=True, rank=idist.get_rank(), world_size=idist.get_world_size())

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = self.teacher.encode_image(batch["image"])
        text = self.teacher.encode_text(batch["input_ids"])
        return {"clip": self.loss(image, text, self.teacher.logit_scale())}


def _state_dict_of(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file in any of the usual wrappings (plain, "state_dict", DDP)."""
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw or not all(torch.is_tensor(v) for v in raw.values()):
        raise TeacherCheckpointError(f"{path}: not a state dict of tensors (open_clip checkpoint expected)")
    if all(key.startswith("module.") for key in raw):
        raw = {key[len("module.") :]: value for key, value in raw.items()}
    return raw


def load_teacher(
    checkpoint: str | Path, model: str | dict[str, Any], *, expected_dim: int | None = None
) -> ClipTeacher:
    """A frozen teacher from an open_clip checkpoint on disk.

    `model`: open_clip model name (paper: an EVA-CLIP such as "EVA02-E-14") or CLIP kwargs dict.
    `expected_dim`: the student head's width (uta.student.model.overrides.teacher_dim), checked.
    Every mismatch is a `TeacherCheckpointError` naming the file.
    """
    path = Path(checkpoint)
    name = model if isinstance(model, str) else "the configured tiny CLIP"
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher checkpoint not found: {path} (uta.teacher.checkpoint). Provide the open_clip "
            f"weights of {name} as a local file, e.g. `open_clip_pytorch_model.bin` from the open_clip "
            "pretrained tag of that model, downloaded by hand, and set uta.teacher.checkpoint to its path"
        )
    clip = build_open_clip(model)
    try:
        state = _state_dict_of(torch.load(path, map_location="cpu", weights_only=True), path)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise TeacherCheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    expected = clip.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TeacherCheckpointError(
            f"{path} is not a checkpoint of {name} (wrong architecture): {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    projection = [k for k in wrong if k.endswith(("text_projection", "text_projection.weight"))]
    if projection:
        k = projection[0]
        got, want = tuple(state[k].shape), tuple(expected[k].shape)
        axis = 0 if k.endswith(".weight") else 1  # nn.Linear weight [out, in]; a matrix [in, out]
        raise TeacherCheckpointError(
            f"{path}: embedding width {got[axis]} ({k} {got}) but {name} has width {want[axis]} "
            f"({k} {want}): wrong width"
        )
    if wrong:
        k = wrong[0]
        raise TeacherCheckpointError(
            f"{path}: {len(wrong)} tensors have the wrong shape for {name} (wrong width), e.g. {k}: "
            f"{tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
        )
    clip.load_state_dict(state)
    teacher = ClipTeacher(clip).freeze()
    if expected_dim is not None and teacher.embed_dim != expected_dim:
        raise TeacherCheckpointError(
            f"{path}: the teacher's embedding width is {teacher.embed_dim}, but the student's head "
            f"projects to {expected_dim} (uta.student.model.overrides.teacher_dim): wrong width"
        )
    return teacher
