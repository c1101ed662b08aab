"""The step benchmarks, each run in a fresh worker process against one source tree (benchmarks/__main__.py).

A case builds its models through the project's own code (params.yaml resolved per variant by
`nas.recipes.stage.load_config`, models by `nas.models.registry` via `nas.recipes.pretrain.build_model`,
the optimizer by `nas.engine.optim.build_optimizer`, training batches by the stage's own loader) and
times its arms' training steps. Arms of a case share the batches and start from the same seed; they are
timed in alternating blocks (arm A `steps` steps, arm B `steps` steps, A, B, ...) after `warmup`
untimed steps each, so drifting machine load hits every arm alike. Each step is timed in wall-clock
and in process CPU time.

The engine's step (`nas.engine.trainer.create_trainer`: autocast, loss checks, the all-reduce of the
loss terms, backward, the non-finite gradient / weight checks, AdamW, the lr schedule) is what ALBEF,
NAS and MUG time: the exact step `fit` runs, without data loading (timed apart: `data`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEXT_LENGTH_PAPER = 25  # ALBEF Pretrain.py tokenizer(max_length=25)


# ---- timing ------------------------------------------------------------------------------------------


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_arms(
    arms: dict[str, Callable[[int], Any]], *, warmup: int, steps: int, blocks: int
) -> dict[str, dict[str, Any]]:
    """`arms`: name -> step(i) (one training step on batch i). Returns per arm the wall / CPU seconds of
    every timed step and the value the first step returned (its losses)."""
    out: dict[str, dict[str, Any]] = {name: {"wall": [], "cpu": [], "first": None} for name in arms}
    counters = dict.fromkeys(arms, 0)
    for name, step in arms.items():
        for _ in range(warmup):
            result = step(counters[name])
            if out[name]["first"] is None:
                out[name]["first"] = result
            counters[name] += 1
    for _ in range(blocks):
        for name, step in arms.items():
            for _ in range(steps):
                _sync()
                wall, cpu = time.perf_counter(), time.process_time()
                result = step(counters[name])
                _sync()
                out[name]["wall"].append(time.perf_counter() - wall)
                out[name]["cpu"].append(time.process_time() - cpu)
                if out[name]["first"] is None:
                    out[name]["first"] = result
                counters[name] += 1
    for name in arms:
        out[name]["median_wall"] = statistics.median(out[name]["wall"])
        out[name]["median_cpu"] = statistics.median(out[name]["cpu"])
    return out


def _losses(value: Any) -> dict[str, float] | None:
    if isinstance(value, dict):
        return {k: round(float(v), 6) for k, v in value.items() if isinstance(v, (int, float))}
    return None


# ---- the engine's step -------------------------------------------------------------------------------


def engine_step(
    model, train_cfg, *, epoch_length: int = 1000, step_inputs: Callable[[int, int], Any] | None = None
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The step `fit` runs: the engine's process function, after its ITERATION_STARTED handlers (lr).
    `step_inputs`: the recipe's per-step model inputs (ALBEF's α; None in trees where α was a train param)."""
    from ignite.engine import Events

    from nas.engine.optim import build_optimizer
    from nas.engine.trainer import create_trainer

    try:
        from nas.engine.fit import seed_model_streams

        seed_model_streams(model, train_cfg.seed)
    except ImportError:  # older trees
        pass
    import ignite.distributed as idist

    model.to(idist.device())  # the engine moves each batch there (CUDA when there is one)
    optimizer = build_optimizer(model, train_cfg.optim, lr=train_cfg.schedule.lr)
    extra = {} if step_inputs is None else {"step_inputs": step_inputs}
    engine = create_trainer(model, optimizer, train_cfg, epoch_length=epoch_length, **extra)
    from ignite.engine import State

    engine.state = State(iteration=0, epoch=1, max_epochs=1, epoch_length=epoch_length)

    def step(batch: dict[str, Any]) -> dict[str, Any]:
        engine.state.iteration += 1
        engine._fire_event(Events.ITERATION_STARTED)
        return engine._process_function(engine, batch)

    return step


def _stage_cfg(cfg: dict[str, Any], stage: str):
    from nas.config import from_dict
    from nas.config.stages import TrainStageConfig

    section = dict(cfg[stage])
    section["train"] = {**section.get("train", {}), "seed": cfg["seed"]}
    return from_dict(TrainStageConfig, section, stage)


def _training_batches(cfg: dict[str, Any], batch: int, count: int) -> tuple[list[dict[str, Any]], float]:
    """`count` batches of `batch` pairs through the stage's own loader (pretraining augmentation, the
    tokenizer, the collate); and the seconds per batch it took (data loading, timed apart)."""
    import torch

    from nas.config import from_dict
    from nas.config.data import DataConfig
    from nas.config.stages import LoaderConfig
    from nas.recipes.pretrain import build_train_loader

    data = from_dict(DataConfig, cfg["data"], "data")
    loader_cfg = from_dict(
        LoaderConfig, {**cfg["loader"], "batch_size_per_gpu": batch, "num_workers": 0}, "loader"
    )
    torch.manual_seed(cfg["seed"])
    loader = build_train_loader(data, loader_cfg)
    batches, start = [], time.perf_counter()
    for item in loader:
        batches.append(item)
        if len(batches) == count:
            break
    seconds = (time.perf_counter() - start) / max(1, len(batches))
    if len(batches) < count:
        raise RuntimeError(f"the training set gave {len(batches)} batches of {batch}, {count} needed")
    return batches, seconds


def _load_config(variant: str, params: str = "params.yaml") -> dict[str, Any]:
    from nas.recipes.stage import load_config

    return load_config(params, variant, [])


def _model_for(cfg: dict[str, Any], stage: str):
    import torch

    from nas.config import from_dict
    from nas.config.stages import ModelSpec
    from nas.recipes.pretrain import build_model

    stage_cfg = _stage_cfg(cfg, stage)
    torch.manual_seed(cfg["seed"])
    model = build_model(from_dict(ModelSpec, cfg["model"], "model"), stage_cfg.model_overrides)
    if hasattr(model, "set_total_steps"):
        model.set_total_steps(1000)  # the VD's gamma ramp needs a length (stage 1)
    return model.train(), stage_cfg.train


def _step_inputs(cfg: dict[str, Any], stage: str):
    """The stage's distillation hook (ALBEF's α), or None in a tree where α was still a `train` param."""
    distillation = getattr(_stage_cfg(cfg, stage), "distillation", None)
    return None if distillation is None else distillation.step_inputs


def _paper_step_inputs():
    """ALBEF's paper distillation (α 0.4, ramped) as the engine's hook; None in a tree without one."""
    try:
        from nas.config.distillation import DistillationConfig
    except ImportError:  # older trees: α came from TrainConfig
        return None
    return DistillationConfig().step_inputs


# ---- cases -------------------------------------------------------------------------------------------


def case_albef(
    batch: int, precisions: list[str], warmup: int, steps: int, blocks: int, **_: Any
) -> dict[str, Any]:
    """ALBEF's stage-1 step at the tiny profile (params.yaml, variant albef), one arm per precision."""
    cfg = _load_config("albef")
    n = max(2, min(8, warmup + steps))
    batches, data_seconds = _training_batches(cfg, batch, n)
    arms, meta = {}, {}
    default_precision = _stage_cfg(cfg, "pretrain_stage1").train.precision
    for precision in precisions:
        model, train_cfg = _model_for(cfg, "pretrain_stage1")
        train_cfg = dataclasses.replace(
            train_cfg, precision=default_precision if precision == "default" else precision
        )
        step = engine_step(model, train_cfg, step_inputs=_step_inputs(cfg, "pretrain_stage1"))
        arms[precision] = (lambda s: lambda i: s(batches[i % n]))(step)
        meta[precision] = {"precision": train_cfg.precision}
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    timed = time_arms(arms, warmup=warmup, steps=steps, blocks=blocks)
    return {
        "arms": timed,
        "arm_meta": meta,
        "baseline": precisions[0],
        "data_seconds_per_batch": data_seconds,
        "trainable_parameters": params,
        "default_precision": default_precision,
        "batch": batch,
    }


def case_nva(batch: int, warmup: int, steps: int, blocks: int, **_: Any) -> dict[str, Any]:
    """The stage-2 step of each variant (params.yaml: albef, vd = VD frozen, nas = VD frozen + NVA)."""
    configs = {variant: _load_config(variant) for variant in ("albef", "vd", "nas")}
    n = max(2, min(8, warmup + steps))
    batches, data_seconds = _training_batches(configs["albef"], batch, n)
    arms = {}
    for variant, cfg in configs.items():
        model, train_cfg = _model_for(cfg, "pretrain_stage2")
        step = engine_step(model, train_cfg, step_inputs=_step_inputs(cfg, "pretrain_stage2"))
        arms[variant] = (lambda s: lambda i: s(batches[i % n]))(step)
    timed = time_arms(arms, warmup=warmup, steps=steps, blocks=blocks)
    return {"arms": timed, "baseline": "albef", "data_seconds_per_batch": data_seconds, "batch": batch}


def case_mug(
    batch: int, warmup: int, steps: int, blocks: int, size: str = "tiny", **_: Any
) -> dict[str, Any]:
    """A MUG step (reconstruction + captioning) against the MAE-only arm (cap_weight 0), same weights and
    batch (random images, CLIP BPE captions of ~20 tokens; the corpus vocabulary at tiny size)."""
    import torch

    from nas.models.mug import CLIP_EOT_ID, CLIP_SOT_ID
    from nas.models.registry import create_model

    torch.manual_seed(0)
    mug = create_model(f"mug_{size}", cap_weight=1.0)
    g = torch.Generator().manual_seed(0)
    image_size, context = mug.cfg.vision.img_size, mug.cfg.caption.context_length
    length = min(20, context - 2)
    distinct = 28 if mug.cfg.caption.vocab == "corpus" else 39000  # the synthetic captions use 28 BPE ids
    ids = torch.zeros(batch, context, dtype=torch.long)
    mask = torch.zeros(batch, context, dtype=torch.long)
    ids[:, 0], ids[:, 1 : length + 1] = (
        CLIP_SOT_ID,
        torch.randint(1000, 1000 + distinct, (batch, length), generator=g),
    )
    ids[:, length + 1], mask[:, : length + 2] = CLIP_EOT_ID, 1
    data = {
        "image": torch.randn(batch, 3, image_size, image_size, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "num_skipped": 0,
    }
    mug.set_vocabulary(ids[mask.bool()].unique().tolist())
    torch.manual_seed(0)
    mae = create_model(f"mug_{size}", cap_weight=0.0)
    mae.load_state_dict(mug.state_dict())
    from nas.engine.optim import OptimConfig
    from nas.engine.trainer import TrainConfig

    train_cfg = dataclasses.replace(TrainConfig(), optim=OptimConfig(betas=(0.9, 0.95)), progress_bar=False)
    arms = {}
    for name, model in (("MAE only", mae), ("MUG", mug)):
        step = engine_step(model.train(), train_cfg)

        def run(i: int, step=step) -> dict[str, Any]:
            torch.manual_seed(i)  # the same masks for both arms
            return step(data)

        arms[name] = run
    timed = time_arms(arms, warmup=warmup, steps=steps, blocks=blocks)
    return {"arms": timed, "baseline": "MAE only", "batch": batch, "size": size}


def case_uta(
    batch: int, warmup: int, steps: int, blocks: int, size: str = "tiny", **_: Any
) -> dict[str, Any]:
    """UTA's student step (encoder on the visible tokens only, reversed block-wise mask) against an
    EVA-02-style MIM step (every position encoded, [MASK] on the masked ones) and a no-mask step (every
    token encoded, aligned everywhere); same weights, optimizer and (random, fixed) teacher targets."""
    import torch
    from torch import nn

    from nas.models.block_masking import MaskingConfig, sample_visible
    from nas.models.registry import create_model
    from nas.objectives.uta import alignment_loss, gather_tokens

    ratio = 0.5 if size == "tiny" else 0.4
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    student = create_model(f"uta_{size}").train().to(device)
    grid, n = student.grid, student.num_patches
    masking = MaskingConfig("reversed_blockwise", ratio, min_patches=4 if size == "tiny" else 16)
    mim_masking = MaskingConfig("blockwise", ratio, masking.min_patches)
    mask_token = nn.Parameter(torch.zeros(1, 1, student.cfg.embed_dim, device=device))
    optimizer = torch.optim.AdamW([*student.parameters(), mask_token], lr=1e-4, weight_decay=0.05)
    image_size, dim = student.cfg.image_size, student.cfg.teacher_dim
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=g).to(device)
    teacher = torch.randn(batch, 1 + n, dim, generator=g).to(device)  # stands in for the teacher's tokens

    def mim_tokens(masked: torch.Tensor) -> torch.Tensor:
        vit = student.vit
        x = vit.patch_embed(images)
        x = torch.where(masked.unsqueeze(-1), mask_token.to(x.dtype).expand_as(x), x)
        pos = vit.pos_embed
        cls = (vit.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = vit.norm_pre(torch.cat([cls, x + pos[:, 1:]], dim=1))
        rope = vit.rope.get_embed()
        for block in vit.blocks:
            x = block(x, rope=rope)
        return student.head(vit.norm(x))

    def uta_loss() -> torch.Tensor:
        keep = sample_visible(batch, grid, masking, device=device)
        return alignment_loss(student(images, keep), gather_tokens(teacher, keep))

    def mim_loss() -> torch.Tensor:
        visible = sample_visible(batch, grid, mim_masking, device=device)
        masked = torch.ones(batch, n, dtype=torch.bool, device=device)
        masked.scatter_(1, visible, False)
        out = mim_tokens(masked)[:, 1:]
        return alignment_loss(out[masked].unsqueeze(0), teacher[:, 1:][masked].unsqueeze(0))

    def nomask_loss() -> torch.Tensor:
        return alignment_loss(student(images, None), teacher)

    def bare(loss_fn: Callable[[], torch.Tensor]) -> Callable[[int], dict[str, float]]:
        def step(i: int) -> dict[str, float]:
            torch.manual_seed(i)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            return {"loss": float(loss.detach())}

        return step

    arms = {"MIM": bare(mim_loss), "UTA": bare(uta_loss), "no mask": bare(nomask_loss)}
    timed = time_arms(arms, warmup=warmup, steps=steps, blocks=blocks)
    k = round((1 - ratio) * n)
    return {
        "arms": timed,
        "baseline": "MIM",
        "batch": batch,
        "size": size,
        "ideal_ratio": 1 - ratio,
        "token_ratio": (1 + k) / (1 + n),
    }


# Dense bf16 peak TFLOP/s per GPU (vendor datasheets, without sparsity), for the MFU estimate.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A800": 312.0, "A100": 312.0}


def case_paper(
    batch: int,
    warmup: int,
    steps: int,
    blocks: int,
    model: str = "albef_base",
    precision: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """The paper-size step (albef_base: DeiT-B/16 at 256 px + BERT-base 6 + 6, queue 65,536; random
    batch, text 25 tokens): step time, images/s, peak memory; on a GPU (bf16) FLOPs and MFU."""
    import torch

    from nas.engine.optim import OptimConfig
    from nas.engine.trainer import TrainConfig
    from nas.models.registry import create_model

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = precision or ("bf16" if cuda else "fp32")
    torch.manual_seed(0)
    net = create_model(
        model, **({"nva_enabled": True, "vd": {"frozen": True}} if model.startswith("nas") else {})
    )
    net.to(device).train()
    if hasattr(net, "set_total_steps"):
        net.set_total_steps(1000)
    size, vocab = net.cfg.vision.img_size, net.cfg.text.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, TEXT_LENGTH_PAPER), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    data = {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones(batch, TEXT_LENGTH_PAPER, dtype=torch.long),
        "image_id": torch.arange(batch),
        "num_skipped": 0,
    }
    data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
    train_cfg = dataclasses.replace(
        TrainConfig(), precision=precision, optim=OptimConfig(), progress_bar=False
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        # idist.device() decides the engine's device: CUDA when available.
    step = engine_step(net, train_cfg, step_inputs=_paper_step_inputs())
    timed = time_arms({model: lambda i: step(data)}, warmup=warmup, steps=steps, blocks=blocks)
    arm = timed[model]
    result: dict[str, Any] = {
        "arms": timed,
        "baseline": model,
        "batch": batch,
        "precision": precision,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "images_per_second": batch / arm["median_wall"],
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    if cuda:
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    else:
        status = Path("/proc/self/status")
        if status.is_file():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    result["peak_memory_bytes"] = int(line.split()[1]) * 1024
    if cuda or _.get("count_flops"):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step(data)
        flops = counter.get_total_flops()
        result["flops_per_step"] = flops
        result["achieved_tflops"] = flops / arm["median_wall"] / 1e12
        if cuda and precision == "bf16":
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
            if peak:
                result["peak_tflops"] = peak
                result["mfu"] = flops / arm["median_wall"] / (peak * 1e12)
    return result


def case_eval(
    variant: str = "albef", max_images: int | None = None, benchmarks: list[str] | None = None, **_: Any
) -> dict[str, Any]:
    """Evaluation of one model as the evaluate stage scores it (`nas.recipes.evaluate.evaluate_model`):
    the variant's untrained model (no run needed), retrieval on the test split and every probe, phase by
    phase. Scores go to a temporary folder."""
    import tempfile

    import torch

    from nas.config import from_dict
    from nas.config.data import DataConfig
    from nas.recipes import evaluate as ev

    cfg = _load_config(variant)
    data = from_dict(DataConfig, cfg["data"], "data")
    section = dict(cfg["evaluate"])
    if max_images is not None:
        section["retrieval"] = {**section.get("retrieval", {}), "max_images": max_images}
    if benchmarks is not None:
        section["benchmarks"] = list(benchmarks)
    eval_cfg = from_dict(ev.EvaluateConfig, section, "evaluate")
    phases: dict[str, float] = {}
    start = time.perf_counter()
    model, _cfg = ev.untrained_model(cfg, 0)
    phases["model"] = time.perf_counter() - start
    start = time.perf_counter()
    from nas.data.captions import load_split_images

    images = load_split_images(data, eval_cfg.retrieval.max_images, annotation_file=data.test_file)
    phases["images"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="nas-bench-eval-") as scratch, torch.no_grad():
        start = time.perf_counter()
        retrieval = ev.retrieval_on_split(model, data, data.test_file, eval_cfg.retrieval, images)
        phases["retrieval"] = time.perf_counter() - start
        start = time.perf_counter()
        fine = ev.fine_grained(model, data, eval_cfg, Path(scratch))
        phases["probes"] = time.perf_counter() - start
    arms = {
        name: {"wall": [s], "cpu": [], "median_wall": s, "median_cpu": None, "first": None}
        for name, s in phases.items()
    }
    arms["total"] = {
        "wall": [sum(phases.values())],
        "cpu": [],
        "median_wall": sum(phases.values()),
        "median_cpu": None,
        "first": None,
    }
    return {
        "arms": arms,
        "baseline": "total",
        "n_images": retrieval["n_images"],
        "n_texts": retrieval["n_texts"],
        "probes": {name: next(iter(by.values()))["n_cases"] for name, by in fine.items()},
        "unit": "s",
    }


CASES = {
    "albef": case_albef,
    "nva": case_nva,
    "mug": case_mug,
    "uta": case_uta,
    "paper": case_paper,
    "eval": case_eval,
}


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case spec ({"case": name, "threads": t, ...its arguments}) in this process."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    args = {k: v for k, v in spec.items() if k not in ("case", "threads", "id")}
    result = CASES[spec["case"]](**args)
    for arm in result["arms"].values():
        arm["first"] = _losses(arm["first"])
    import nas

    result["nas_source"] = str(Path(nas.__file__).resolve().parent)
    result["torch_threads"] = torch.get_num_threads()
    return result
