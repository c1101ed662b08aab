"""MUG's caption decoder: ours (nas.models.mug.CaptionDecoder) against open_clip's CoCa decoder blocks.

The open_clip arm is the thin adapter a replacement would be: the same token embedding, learned
positions, image projection and tied output head, with open_clip's blocks in between —
`open_clip.transformer.Transformer` (causal, the unimodal layers) then `MultimodalTransformer` (CoCa's
decoder: per layer a causal self-attention block with its MLP, then a cross-attention block with its
MLP; `ln_final`; `text_projection` dropped for the tied head). Both arms are MUG at the default
profile (params.yaml `mug.model`, arm `mug`, resolved by the registry), batch `mug.loader`, threads
`mug.torch_threads`, same encoder and MAE decoder weights; each arm's caption decoder is initialised
by MUG's own rule (truncated normal `init_std`, zero biases; also open_clip's packed attention
`in_proj_weight`, which is not an nn.Linear).

Timed: the engine's training step (benchmarks/steps.py `engine_step`: autocast as `train.precision`
resolves it, backward, AdamW), bf16 (the default on this CPU: `auto`) and fp32; and the caption
branch alone (caption loss forward + backward on a fixed latent). Arms alternate in blocks in one
process (benchmarks/steps.py `time_arms`), the same masks per step index for both. Writes
benchmarks/results/mug_caption_decoder.json. Not a test.

    .venv/bin/python benchmarks/mug_caption_decoder.py [--blocks 16 --steps 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from timm.layers import trunc_normal_  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.steps import engine_step, time_arms  # noqa: E402
from nas.models.mug import CLIP_EOT_ID, CLIP_SOT_ID, CaptionDecoderConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "mug_caption_decoder.json"
CAPTION_TOKENS = 20  # as benchmarks/steps.py case_mug: the synthetic captions run to ~20-25 BPE tokens
DISTINCT_WORDS = 28  # the synthetic captions use 28 distinct BPE ids


class OpenClipCaptionDecoder(nn.Module):
    """Token ids [B, T] + image tokens [B, M, D_img] -> logits [B, T, V], open_clip's blocks inside."""

    def __init__(self, cfg: CaptionDecoderConfig, image_dim: int, vocab_size: int) -> None:
        from open_clip.transformer import MultimodalTransformer, Transformer

        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.width))
        # open_clip's cross-attention block normalises keys/values itself (ln_1_kv): a projection only.
        self.image_proj = nn.Linear(image_dim, cfg.width)
        self.unimodal = (
            Transformer(cfg.width, cfg.unimodal_layers, cfg.num_heads, cfg.mlp_ratio)
            if cfg.unimodal_layers
            else None
        )
        self.multimodal = MultimodalTransformer(
            cfg.width,
            cfg.multimodal_layers,
            cfg.num_heads,
            context_length=cfg.context_length,
            mlp_ratio=cfg.mlp_ratio,
            output_dim=cfg.width,
        )
        # torch.empty in open_clip (its init_parameters raises AttributeError); the head is tied instead.
        self.multimodal.text_projection = None

    def forward(self, tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(
                f"{length} text positions exceed caption.context_length={self.cfg.context_length}"
            )
        x = self.token_embed(tokens) + self.pos_embed[:, :length]
        if self.unimodal is not None:
            x = self.unimodal(x, attn_mask=self.multimodal.attn_mask[:length, :length])
        x = self.multimodal(self.image_proj(image_tokens), x)  # ln_final applied
        return x @ self.token_embed.weight.T


def init_like_mug(decoder: nn.Module, std: float) -> None:
    """MUG._init_decoders' rule on one caption decoder, plus nn.MultiheadAttention's packed in_proj."""
    for module in decoder.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            trunc_normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, nn.MultiheadAttention):
            trunc_normal_(module.in_proj_weight, std=std)
            nn.init.zeros_(module.in_proj_bias)
    trunc_normal_(decoder.pos_embed, std=std)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_arms(params: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The two MUG models (same weights outside the caption decoder), one batch, the section."""
    from nas.models.registry import create_model
    from nas.recipes.mug.card import read_section
    from nas.recipes.stage import load_config

    section = read_section(load_config(params, None, []))
    spec = section.arm_model("mug")
    torch.manual_seed(0)
    ours = create_model(spec.name, **spec.overrides)
    cfg = ours.cfg
    batch = section.loader.get("batch_size_per_gpu", 32)
    g = torch.Generator().manual_seed(0)
    context = cfg.caption.context_length
    length = min(CAPTION_TOKENS, context - 2)
    ids = torch.zeros(batch, context, dtype=torch.long)
    mask = torch.zeros(batch, context, dtype=torch.long)
    ids[:, 0] = CLIP_SOT_ID
    ids[:, 1 : length + 1] = torch.randint(1000, 1000 + DISTINCT_WORDS, (batch, length), generator=g)
    ids[:, length + 1], mask[:, : length + 2] = CLIP_EOT_ID, 1
    data = {
        "image": torch.randn(batch, 3, cfg.vision.img_size, cfg.vision.img_size, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "num_skipped": 0,
    }
    ours.set_vocabulary(ids[mask.bool()].unique().tolist())
    torch.manual_seed(0)
    theirs = create_model(spec.name, **spec.overrides)
    theirs.load_state_dict(ours.state_dict())
    theirs.text_decoder = OpenClipCaptionDecoder(cfg.caption, cfg.vision.embed_dim, ours.vocab_size)
    torch.manual_seed(1)
    init_like_mug(theirs.text_decoder, cfg.init_std)
    models = {"hand-written": ours.train(), "open_clip": theirs.train()}
    return models, data, section


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    models, data, section = build_arms(args.params)
    if section.torch_threads is not None:
        torch.set_num_threads(section.torch_threads)
    spec = section.arm_model("mug")
    result: dict[str, Any] = {
        "what": __doc__.splitlines()[0],
        "model": {"name": spec.name, "overrides": spec.overrides},
        "caption": dataclasses.asdict(models["hand-written"].cfg.caption),
        "batch": data["image"].shape[0],
        "caption_tokens": CAPTION_TOKENS + 2,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "open_clip": __import__("open_clip").__version__,
        "machine": platform.processor() or platform.machine(),
        "timing": {"warmup": args.warmup, "steps_per_block": args.steps, "blocks": args.blocks},
        "parameters": {
            name: {"caption_decoder": count(m.text_decoder), "model": count(m)} for name, m in models.items()
        },
    }
    print(json.dumps(result["parameters"]), flush=True)

    for precision in ("bf16", "fp32"):
        train_cfg = dataclasses.replace(section.train, precision=precision, progress_bar=False)
        arms = {}
        for name, model in models.items():
            step = engine_step(model, train_cfg)

            def run(i: int, step=step) -> dict[str, Any]:
                torch.manual_seed(i)  # the same masks in both arms
                return step(data)

            arms[name] = run
        timed = time_arms(arms, warmup=args.warmup, steps=args.steps, blocks=args.blocks)
        result[f"step_{precision}"] = summarise(timed)
        print(precision, "step", json.dumps(result[f"step_{precision}"]), flush=True)

    # The caption branch alone: loss forward + backward on a fixed latent (no optimizer).
    from nas.engine.trainer import autocast_context

    for precision in ("bf16", "fp32"):
        autocast = autocast_context(precision, torch.device("cpu"))
        arms = {}
        for name, model in models.items():
            with torch.no_grad():
                torch.manual_seed(0)
                latent = model.encode(data["image"], model.mask(data["image"]))

            def run(i: int, model=model, latent=latent, autocast=autocast) -> None:
                model.zero_grad(set_to_none=True)
                with autocast():
                    loss = model.caption_loss(latent, data["input_ids"], data["attention_mask"])
                loss.backward()

            arms[name] = run
        timed = time_arms(arms, warmup=args.warmup, steps=args.steps, blocks=args.blocks)
        result[f"caption_branch_{precision}"] = summarise(timed)
        print(precision, "caption branch", json.dumps(result[f"caption_branch_{precision}"]), flush=True)

    # One unimodal block, the same parameterisation and weights: implementation against implementation.
    result["unimodal_block"] = block_arms(models["hand-written"], data, args)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


def block_arms(model: nn.Module, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Our first (unimodal) CaptionBlock against open_clip's ResidualAttentionBlock holding its weights:
    the largest output difference (fp32) and forward + backward timings, causal mask, MUG's shapes."""
    from open_clip.transformer import ResidualAttentionBlock

    from nas.engine.trainer import autocast_context

    ours = model.text_decoder.blocks[0]
    cfg = model.cfg.caption
    theirs = ResidualAttentionBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio)
    with torch.no_grad():
        theirs.ln_1.load_state_dict(ours.norm1.state_dict())
        theirs.attn.in_proj_weight.copy_(ours.qkv.weight)
        theirs.attn.in_proj_bias.copy_(ours.qkv.bias)
        theirs.attn.out_proj.load_state_dict(ours.proj.state_dict())
        theirs.ln_2.load_state_dict(ours.norm2.state_dict())
        theirs.mlp.c_fc.load_state_dict(ours.mlp[0].state_dict())
        theirs.mlp.c_proj.load_state_dict(ours.mlp[2].state_dict())
    length = data["input_ids"].shape[1] - 1
    causal = torch.full((length, length), float("-inf")).triu_(1)
    x = torch.randn(data["input_ids"].shape[0], length, cfg.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(x, None) - theirs(x, attn_mask=causal)).abs().max().item()
    out: dict[str, Any] = {"max_abs_diff_fp32": diff}
    for precision in ("bf16", "fp32"):
        autocast = autocast_context(precision, torch.device("cpu"))
        calls = {"hand-written": lambda h: ours(h, None), "open_clip": lambda h: theirs(h, attn_mask=causal)}
        arms = {}
        for name, call in calls.items():

            def run(i: int, call=call, autocast=autocast) -> None:
                for _ in range(10):
                    h = x.clone().requires_grad_(True)
                    with autocast():
                        y = call(h)
                    y.float().sum().backward()

            arms[name] = run
        out[f"x10_fwd_bwd_{precision}"] = summarise(
            time_arms(arms, warmup=args.warmup, steps=args.steps, blocks=args.blocks)
        )
        print(precision, "unimodal block x10", json.dumps(out[f"x10_fwd_bwd_{precision}"]), flush=True)
    return out


def summarise(timed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {
        name: {
            "median_ms": round(1000 * arm["median_wall"], 2),
            "median_cpu_ms": round(1000 * arm["median_cpu"], 2),
            "iqr_ms": [round(1000 * q, 2) for q in statistics.quantiles(arm["wall"], n=4)[::2]],
            "n": len(arm["wall"]),
        }
        for name, arm in timed.items()
    }
    ours, theirs = timed["hand-written"]["wall"], timed["open_clip"]["wall"]
    # paired by position in the alternation (same block, same step index)
    out["open_clip_over_hand_written"] = round(statistics.median(t / o for o, t in zip(ours, theirs)), 3)
    return out


if __name__ == "__main__":
    main()
