"""The image encoder: a timm Vision Transformer whose output is every token, `[CLS] + patches`.

We do not fork timm's ViT: `timm.create_model` builds it from a config and `forward_features`
returns the final-LayerNormed tokens `[B, 1 + L, D]`, which is what ALBEF's own ViT returns.
Pretrained weights (DeiT-B/16 in the paper) come from a local file; position embeddings are
resampled to the model's patch grid with `timm.layers.resample_abs_pos_embed` (NAS_METHOD §2:
14×14 → 16×16 at 256 px, 24×24 at 384 px).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from nas.models.pretrained import LoadReport, PretrainedWeightsError, load_checked, read_state_dict

# What to put in `vision.pretrained` when the weights are missing (used in error messages).
_EXPECTED = (
    "a local DeiT/timm ViT checkpoint: a .pth file (a state dict, or {'model': state_dict} as DeiT "
    "releases it), a .safetensors file, or a folder holding model.safetensors — for the paper, "
    "DeiT-base 224/16 (deit_base_patch16_224-b5f2ef4d.pth)"
)
# Classifier heads of ImageNet checkpoints: our encoder has none (num_classes=0), so these are dropped.
_CLASSIFIER_PREFIXES = ("head.", "head_dist.", "fc_norm.")


@dataclass
class VisionConfig:
    """ViT image encoder. Defaults: the tiny CPU profile (ENVIRONMENT.md, "Speed on 2 CPU cores")."""

    # timm architecture whose defaults the fields below override; paper: deit_base_patch16_224 [P].
    model_name: str = "vit_tiny_patch16_224"
    img_size: int = 64  # paper: 256 pretraining, 384 fine-tuning [P]
    patch_size: int = 8  # paper: 16 (DeiT-224/16) [P]
    embed_dim: int = 192  # paper: 768 (ViT-B) [B]
    depth: int = 4  # paper: 12
    num_heads: int = 3  # paper: 12
    mlp_ratio: float = 4.0  # ViT-B: 4
    drop_path_rate: float = 0.0  # ALBEF builds its ViT without stochastic depth [B]
    # Local file/folder, or a timm hub name (needs the hub or its local cache); None: random init.
    pretrained: str | None = None
    # Recompute block activations in backward (timm's `set_grad_checkpointing`): less activation
    # memory for ViT-B at 384 px, about one more forward of compute. Same values and gradients.
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


def build_vision_encoder(cfg: VisionConfig) -> nn.Module:
    """A timm ViT from `cfg`, with pretrained weights loaded when `cfg.pretrained` is set.

    Call `.forward_features(image)` for all tokens `[B, 1 + L, embed_dim]`.
    """
    model = timm.create_model(
        cfg.model_name,
        pretrained=False,
        num_classes=0,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        drop_path_rate=cfg.drop_path_rate,
    )
    if not hasattr(model, "pos_embed") or not hasattr(model, "forward_features"):
        raise ValueError(
            f"vision.model_name={cfg.model_name!r} is not a ViT with absolute position embeddings"
        )
    if cfg.pretrained is not None:
        load_vision_weights(model, cfg.pretrained)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model


def load_vision_weights(model: nn.Module, source: str, *, param: str = "vision.pretrained") -> LoadReport:
    """Load ViT weights from a local file/folder or a timm hub name into `model`.

    Position embeddings are resampled to the model's grid; classifier heads are dropped. Any ViT
    parameter left without a value is an error (a half-initialised encoder would train silently).
    """
    state = _read_vision_state(source, param=param)
    report = LoadReport(source=str(source))
    own = model.state_dict()
    filtered: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if key == "pos_embed" and value.shape[1] != own[key].shape[1] and value.shape[2] == own[key].shape[2]:
            value = resample_abs_pos_embed(
                value,
                new_size=list(model.patch_embed.grid_size),
                num_prefix_tokens=model.num_prefix_tokens,
            )
            report.resampled.append(f"pos_embed {tuple(state[key].shape)} -> {tuple(value.shape)}")
        filtered[key] = value
    unknown = [k for k in report.unexpected if not k.startswith(_CLASSIFIER_PREFIXES)]
    if unknown:
        raise PretrainedWeightsError(
            f"{param}: {source} does not look like a checkpoint of this ViT: unknown keys {unknown[:8]}"
        )
    load_checked(model, filtered, report, param=param)
    if report.missing:
        raise PretrainedWeightsError(
            f"{param}: {source} lacks ViT parameters {report.missing[:8]} (is it a checkpoint of "
            f"{type(model).__name__} with depth {len(model.blocks)}?)"
        )
    return report


def _read_vision_state(source: str, *, param: str) -> dict[str, torch.Tensor]:
    path = Path(source).expanduser()
    is_hub_name = source.startswith("hf-hub:") or timm.is_model(source)
    if path.exists() or not is_hub_name:
        return read_state_dict(path, param=param, expected=_EXPECTED)
    # A timm model name (optionally with .tag) or an hf-hub: id: timm resolves and downloads it, which
    # works only online or from the local Hugging Face cache.
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        hub_model = timm.create_model(source, pretrained=True, num_classes=0)
    except (LocalEntryNotFoundError, OSError) as exc:
        raise PretrainedWeightsError(
            f"{param}={source!r} names timm hub weights that are not in the local cache (the hub is "
            f"unreachable offline). Set {param} to {_EXPECTED}. Cause: {type(exc).__name__}"
        ) from exc
    return hub_model.state_dict()


def resize_position_embeddings(model: nn.Module, img_size: int) -> None:
    """Change the input resolution of a built ViT in place (e.g. 256 → 384 px for fine-tuning [P]).

    timm's `set_input_size` resamples the position embeddings with `resample_abs_pos_embed` (bicubic,
    [CLS] kept) and updates the patch embedding's expected size. It replaces the `pos_embed`
    Parameter, so build the optimizer afterwards.
    """
    patch = model.patch_embed.patch_size[0]
    if img_size % patch:
        raise ValueError(f"img_size ({img_size}) must be a multiple of the patch size ({patch})")
    model.set_input_size(img_size=(img_size, img_size))
