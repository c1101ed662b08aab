"""The text encoder and the fusion encoder: one BERT-compatible stack, written here.

ALBEF (NAS_METHOD §2) splits BERT-base in two: layers 1–6 encode the text alone, layers 7–12 (the
fusion encoder) add a cross-attention to the image tokens after each self-attention. Self-attention
is bidirectional in both. The cross-attention weights are new; everything else loads from a
Hugging Face BERT checkpoint with `load_hf_bert`.

BERT layers are post-LayerNorm: `x = LN(x + Dropout(Dense(Attention(x))))`, then the same around
the feed-forward `Dense(GELU(Dense(x)))`. Attention runs through
`torch.nn.functional.scaled_dot_product_attention` (fused kernels on every device).

The MLM head (BERT's transform Dense + GELU + LayerNorm, then a decoder tied to the word embeddings
plus a bias) is a separate call, so callers apply it to the masked positions only (§2).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# bert-base-uncased WordPiece ids: defined once, by the data layer that produces them (re-exported here).
from nas.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID  # noqa: F401
from nas.data.tokenizer import VOCAB_SIZE as BERT_VOCAB_SIZE
from nas.models.pretrained import LoadReport, PretrainedWeightsError, load_checked, read_state_dict

logger = logging.getLogger(__name__)

_BERT_INIT_STD = 0.02  # BERT's initializer_range; used for the new (cross-attention) weights too [B]


@dataclass
class TextConfig:
    """BERT text + fusion encoder. Defaults: the tiny CPU profile; paper values in comments."""

    vocab_size: int = BERT_VOCAB_SIZE  # bert-base-uncased [P]
    hidden_size: int = 192  # BERT-base: 768
    num_heads: int = 3  # BERT-base: 12
    intermediate_size: int = 768  # BERT-base: 3072
    num_text_layers: int = 2  # ALBEF: BERT-base layers 1-6 [B]
    num_fusion_layers: int = 2  # ALBEF: BERT-base layers 7-12, + cross-attention [B]
    max_position_embeddings: int = 512  # BERT
    type_vocab_size: int = 2  # BERT; we always use token type 0
    layer_norm_eps: float = 1e-12  # BERT
    # BERT's initializer_range (0.02) for every weight trained from scratch (all of them without a
    # checkpoint; the cross-attention with one). A tiny encoder trained from scratch for a few hundred
    # steps needs a wider init: at 0.02 every caption's [CLS] starts at cosine ~0.997 to every other,
    # and ALBEF's ITC, whose targets are momentum features, stays stuck at that fixed point.
    init_std: float = _BERT_INIT_STD
    dropout: float = 0.0  # BERT-base: 0.1 (hidden and attention probabilities); 0 keeps tiny CPU runs fast
    # Hugging Face BERT folder/file (config.json + model.safetensors or pytorch_model.bin); None: random.
    pretrained: str | None = None
    # Recompute each layer's activations in backward (torch.utils.checkpoint, non-reentrant): less
    # activation memory at paper size, about one more forward of compute; same values and gradients.
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_text_layers", "num_fusion_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.type_vocab_size < 1:
            raise ValueError(f"type_vocab_size must be >= 1, got {self.type_vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")


class Embeddings(nn.Module):
    """Word + absolute position + token-type embeddings, LayerNorm, dropout (BERT)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=PAD_ID)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position.num_embeddings:
            raise ValueError(
                f"text length {length} exceeds max_position_embeddings {self.position.num_embeddings}"
            )
        positions = torch.arange(length, device=input_ids.device)
        x = self.word(input_ids) + self.token_type.weight[0] + self.position(positions)
        return self.dropout(self.norm(x))


class Attention(nn.Module):
    """Multi-head attention with BERT's output sub-layer: `LN(x + Dropout(Dense(attn)))`.

    Self-attention when `context` is `x`; cross-attention when `context` is the image tokens, whose
    width (`context_width`) may differ from the text's.
    """

    def __init__(self, cfg: TextConfig, context_width: int) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(context_width, hidden)
        self.value = nn.Linear(context_width, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """`key_mask`: bool `[B, 1, 1, S]`, True where a key may be attended to; None: all keys."""
        attended = F.scaled_dot_product_attention(
            self._heads(self.query(x)),
            self._heads(self.key(context)),
            self._heads(self.value(context)),
            attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        attended = attended.transpose(1, 2).reshape(x.shape)
        return self.norm(x + F.dropout(self.out(attended), self.dropout, self.training))


class FeedForward(nn.Module):
    """BERT's intermediate + output sub-layers: `LN(x + Dropout(Dense(GELU(Dense(x)))))`."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BERT's "gelu" is the exact (erf) GELU, nn.functional.gelu's default.
        return self.norm(x + F.dropout(self.fc2(F.gelu(self.fc1(x))), self.dropout, self.training))


class EncoderLayer(nn.Module):
    """Self-attention, then (fusion layers only) cross-attention to the image, then feed-forward."""

    def __init__(self, cfg: TextConfig, image_width: int | None = None) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, cfg.hidden_size)
        self.cross_attn = Attention(cfg, image_width) if image_width is not None else None
        self.ffn = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, image_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.self_attn(x, x, key_mask)
        if self.cross_attn is not None:
            # Every image token is valid (ALBEF's image attention mask is all ones).
            x = self.cross_attn(x, image_tokens, None)
        return self.ffn(x)


class MLMHead(nn.Module):
    """BERT's prediction head; the decoder weight is the word-embedding matrix, passed at call time."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


class TextEncoder(nn.Module):
    """BERT text layers, fusion layers (with cross-attention to `image_width`-wide tokens), MLM head."""

    def __init__(self, cfg: TextConfig, image_width: int | None = None) -> None:
        super().__init__()
        if cfg.num_fusion_layers and image_width is None:
            raise ValueError("TextEncoder: fusion layers need image_width (the image tokens' width)")
        self.cfg = cfg
        self.image_width = image_width
        self.embeddings = Embeddings(cfg)
        self.text_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_text_layers))
        self.fusion_layers = nn.ModuleList(
            EncoderLayer(cfg, image_width) for _ in range(cfg.num_fusion_layers)
        )
        self.mlm_head = MLMHead(cfg)
        self.apply(functools.partial(_init_bert_weights, std=cfg.init_std))
        if cfg.pretrained is not None:
            load_hf_bert(self, cfg.pretrained)

    @staticmethod
    def _key_mask(attention_mask: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        if attention_mask.shape != input_shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != text shape {tuple(input_shape)}"
            )
        return attention_mask.bool()[:, None, None, :]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-only tokens `[B, T, hidden]` (the text encoder; ITC uses token 0, [CLS])."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        key_mask = self._key_mask(attention_mask, input_ids.shape)
        x = self.embeddings(input_ids)
        for layer in self.text_layers:
            x = self._run(layer, x, key_mask)
        return x

    def _run(self, layer: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        """One layer, under activation checkpointing when configured and a backward will follow
        (the momentum copies run under no_grad and are never checkpointed)."""
        if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def fuse(
        self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Fusion encoder: text tokens attend to themselves and to `image_tokens` `[B, N, image_width]`."""
        if image_tokens.dim() != 3 or image_tokens.shape[-1] != self.image_width:
            raise ValueError(
                f"image_tokens must be [B, N, {self.image_width}], got shape {tuple(image_tokens.shape)}"
            )
        if image_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(
                f"batch sizes differ: {image_tokens.shape[0]} images, {text_tokens.shape[0]} texts"
            )
        key_mask = self._key_mask(attention_mask, text_tokens.shape[:2])
        x = text_tokens
        for layer in self.fusion_layers:
            x = self._run(layer, x, key_mask, image_tokens)
        return x

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text encoder, then the fusion encoder when `image_tokens` is given."""
        x = self.encode(input_ids, attention_mask)
        return x if image_tokens is None else self.fuse(x, attention_mask, image_tokens)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits `[..., vocab]` for the given (masked-position) hidden states."""
        return self.mlm_head(hidden, self.embeddings.word.weight)


def _init_bert_weights(module: nn.Module, std: float = _BERT_INIT_STD) -> None:
    """BERT's initialisation: N(0, std) weights (BERT: 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Loading a Hugging Face BERT checkpoint
# ---------------------------------------------------------------------------------------------

_EXPECTED = (
    "a Hugging Face BERT folder (config.json + model.safetensors or pytorch_model.bin; a BertModel or "
    "BertForMaskedLM checkpoint, e.g. bert-base-uncased for the paper)"
)
# Sub-module names inside one HF BertLayer -> ours. `crossattention` exists in ALBEF's xbert checkpoints.
_LAYER_PARTS = {
    "attention.self.query": "self_attn.query",
    "attention.self.key": "self_attn.key",
    "attention.self.value": "self_attn.value",
    "attention.output.dense": "self_attn.out",
    "attention.output.LayerNorm": "self_attn.norm",
    "crossattention.self.query": "cross_attn.query",
    "crossattention.self.key": "cross_attn.key",
    "crossattention.self.value": "cross_attn.value",
    "crossattention.output.dense": "cross_attn.out",
    "crossattention.output.LayerNorm": "cross_attn.norm",
    "intermediate.dense": "ffn.fc1",
    "output.dense": "ffn.fc2",
    "output.LayerNorm": "ffn.norm",
}
_OTHER_PARTS = {
    "embeddings.word_embeddings": "embeddings.word",
    "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.token_type",
    "embeddings.LayerNorm": "embeddings.norm",
    "cls.predictions.transform.dense": "mlm_head.dense",
    "cls.predictions.transform.LayerNorm": "mlm_head.norm",
}
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
# config.json fields that change the function without changing any tensor shape.
_CONFIG_MUST_MATCH = {"num_attention_heads": "num_heads", "hidden_size": "hidden_size"}


def hf_bert_key_to_ours(key: str, num_text_layers: int) -> str | None:
    """Our parameter name for a Hugging Face BERT key, or None when we have no such parameter."""
    key = key.removeprefix("bert.")
    # Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta.
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
    if key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        return "mlm_head.bias"
    match = _LAYER_KEY.match(key)
    if match:
        index, part, kind = int(match.group(1)), match.group(2), match.group(3)
        if part not in _LAYER_PARTS:
            return None
        stack = (
            f"text_layers.{index}" if index < num_text_layers else f"fusion_layers.{index - num_text_layers}"
        )
        return f"{stack}.{_LAYER_PARTS[part]}.{kind}"
    stem, _, kind = key.rpartition(".")
    return f"{_OTHER_PARTS[stem]}.{kind}" if stem in _OTHER_PARTS else None


def load_hf_bert(encoder: TextEncoder, path: str | Path, *, param: str = "text.pretrained") -> LoadReport:
    """Load a Hugging Face BertModel / BertForMaskedLM checkpoint into `encoder`.

    HF layers 0..n_text-1 become the text layers, n_text.. the fusion layers' self-attention and
    feed-forward; cross-attention (new in ALBEF) and, for a BertModel checkpoint, the MLM head stay
    at their initialisation and are listed as missing. The embeddings and every text layer must
    come from the checkpoint (error otherwise); a width mismatch is an error naming the parameter.
    """
    _check_hf_config(encoder.cfg, Path(path).expanduser(), param=param)
    state = read_state_dict(path, param=param, expected=_EXPECTED)
    report = LoadReport(source=str(path))
    own = encoder.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours = hf_bert_key_to_ours(key, encoder.cfg.num_text_layers)
        if ours is None or ours not in own:
            # Pooler, NSP head, position_ids, the tied decoder weight, layers beyond ours, ...
            report.unexpected.append(key)
            continue
        mapped[ours] = value
    load_checked(encoder, mapped, report, param=param)
    required = [k for k in report.missing if k.startswith(("embeddings.", "text_layers."))]
    if required:
        raise PretrainedWeightsError(
            f"{param}: {path} is not a BERT checkpoint for this encoder: it lacks {required[:8]} "
            f"(unused keys: {report.unexpected[:8]})"
        )
    if report.missing or report.unexpected:
        logger.warning("text encoder from %s", report)
    return report


def _check_hf_config(cfg: TextConfig, path: Path, *, param: str) -> None:
    """Compare config.json (when present) with our config on what tensor shapes cannot reveal."""
    config_file = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if not config_file.is_file():
        return
    hf = json.loads(config_file.read_text())
    for hf_key, our_key in _CONFIG_MUST_MATCH.items():
        if hf_key in hf and hf[hf_key] != getattr(cfg, our_key):
            raise PretrainedWeightsError(
                f"{param}: {config_file} has {hf_key}={hf[hf_key]} but text.{our_key}={getattr(cfg, our_key)}"
            )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise PretrainedWeightsError(
            f"{param}: {config_file} uses hidden_act={hf['hidden_act']!r}; we implement gelu"
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise PretrainedWeightsError(
            f"{param}: {config_file} uses {hf['position_embedding_type']!r} positions"
        )
    if "layer_norm_eps" in hf and abs(hf["layer_norm_eps"] - cfg.layer_norm_eps) > 1e-15:
        raise PretrainedWeightsError(
            f"{param}: {config_file} has layer_norm_eps={hf['layer_norm_eps']} but text.layer_norm_eps={cfg.layer_norm_eps}"
        )
