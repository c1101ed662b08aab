"""The one training step every recipe uses (ALBEF, NAS stages, ablations, MUG, UTA), as an Ignite Engine.

The contract with the model (fixed): `model(batch, **inputs) -> {term: scalar loss}`, already
weighted; the total loss is their sum. `inputs` is what the recipe's step-input hook returns for the
step (`step_inputs(iteration, epoch_length) -> {name: float}`, e.g. ALBEF's distillation weight
{"alpha": α}, nas.config.distillation); without a hook the model is called `model(batch)`. The model
updates its momentum copies and queues inside forward. Recipes differ only by which terms their model
returns, by their step inputs and by this config.

One step: the step inputs, forward (optionally under bf16 autocast), one all-reduce of the loss terms
and the image counts (so every rank sees the same global means and a non-finite loss stops every
rank at the same step, before any rank enters backward), backward, optional clipping, AdamW step.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers.param_scheduler import ParamScheduler
from torch import nn

from nas.config.train import TrainConfig  # the `train` params block (pure data), re-exported here
from nas.distributed import all_reduce_sum
from nas.engine.schedules import build_lr_scheduler
from nas.finite import NonFiniteTensorError

# Keys of the step output besides the model's loss terms (and the recipe's step inputs).
TOTAL, LR, IMAGES, SKIPPED = "total", "lr", "images", "skipped"
# Caption counts a collate may add to a batch (nas.data.loader.COUNT_KEYS) -> step-output names; summed
# over ranks each step and over the epoch in the run record, so no input problem passes silently.
CAPTION_COUNTS = {
    "num_truncated_words": "captions_truncated_words",  # cut to data.max_words words
    "num_truncated_tokens": "captions_truncated_tokens",  # cut to data.text_max_length tokens
    "num_unk_only": "captions_unk_only",  # tokenised to [UNK] only
}
COUNTS = (IMAGES, SKIPPED, *CAPTION_COUNTS.values())
RESERVED_KEYS = (TOTAL, LR, *COUNTS)

# A recipe's per-step model inputs: (0-based global iteration, steps per epoch) -> {keyword: value}. Each
# value is passed as `model(batch, keyword=value)` and logged with the step's scalars under its keyword.
StepInputs = Callable[[int, int], Mapping[str, float]]
# Names the run record gives its own fields (the logged step's "step", the epoch's counts and seconds).
_RECORD_KEYS = ("step", "epoch", "steps", "images_seen", "images_skipped", "seconds")


_ADVICE = (
    "Lower the learning rate, use fp32, or set train.grad_clip_norm; the last checkpoint is still intact "
    "(checkpoints are written at epoch ends, never from this step)."
)


class NonFiniteTrainingError(FloatingPointError):
    """Training met a NaN or inf: a loss term, a gradient, a weight, or a tensor the step samples from.
    Names what (`what`), the iteration and the epoch."""

    def __init__(self, what: str, detail: str, *, iteration: int, epoch: int, when: str) -> None:
        self.what, self.iteration, self.epoch = what, iteration, epoch
        super().__init__(
            f"{what} {detail} at iteration {iteration} (epoch {epoch}); training stopped {when}. {_ADVICE}"
        )


class NonFiniteLossError(NonFiniteTrainingError):
    """A loss term became NaN or infinite; names the term, the iteration and the epoch."""

    def __init__(self, term: str, value: float, *, iteration: int, epoch: int) -> None:
        self.term, self.value = term, value
        super().__init__(
            f"loss term {term!r}",
            f"is {value}",
            iteration=iteration,
            epoch=epoch,
            when="before the optimizer step",
        )


def first_non_finite(named: list[tuple[str, torch.Tensor]]) -> str:
    """The name of the first tensor of `named` holding a NaN or inf (for the error message)."""
    return next((name for name, t in named if not bool(torch.isfinite(t).all())), "?")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: CUDA with bf16 support, or a CPU with AVX-512-BF16 or AMX
    tiles (oneDNN's bf16 kernels; without them bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        hardware = any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
        return hardware and _cpu_kernels_use_bf16()
    return False


# oneDNN ISA caps below AVX512_CORE_BF16: its bf16 kernels are then emulated.
_NO_BF16_ISA = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def _cpu_kernels_use_bf16() -> bool:
    """Whether the CPU kernels this process runs may use the hardware's bf16: not when ATen is held to an
    older code path (ATEN_CPU_CAPABILITY=avx2) or oneDNN's ISA is capped below AVX512_CORE_BF16
    (ONEDNN_MAX_CPU_ISA). Measured: with both held to AVX2 on an AVX512-BF16 CPU, a bf16 step of the tiny
    profile took 7.8 s against 0.34 s (benchmarks/reproducibility.py)."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() not in _NO_BF16_ISA


def resolve_precision(precision: str, device: torch.device) -> str:
    """`train.precision` as the run uses it: 'auto' becomes 'bf16' where `native_bf16(device)`, else 'fp32'."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_context(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the forward's autocast context; bf16 where the device supports it, else an error."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext
    if precision != "bf16":
        raise ValueError(f"train.precision must be 'fp32', 'bf16' or 'auto', got {precision!r}")
    supported = torch.amp.is_autocast_available(device.type) and (
        device.type != "cuda" or torch.cuda.is_bf16_supported()
    )
    if not supported:
        raise ValueError(f"train.precision='bf16' is not supported on device {device}; use 'fp32'")
    if device.type == "cpu":
        return _cpu_bf16_forward
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def _cpu_bf16_forward() -> Any:
    """bf16 autocast on a CPU, attention on SDPA's math path. The same attention as the default path's
    flash kernel, but its backward in bf16 is several times faster on CPU: at the tiny profile, batch 32,
    2 threads, the step took 502 ms with the flash path and 383 ms with the math path (fp32: 789 ms);
    `python -m benchmarks` measures it (benchmarks/steps.py). The choice is made in the forward and
    recorded in the autograd graph, so the backward follows it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.MATH]):
        yield


def move_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def count_images(batch: Mapping[str, Any], image_key: str) -> tuple[int, int]:
    """(images in this batch, images the collate skipped), with clear errors for a malformed batch."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"a batch must be a dict of tensors, got {type(batch).__name__}")
    if image_key not in batch or not torch.is_tensor(batch[image_key]):
        raise KeyError(f"batch has no tensor {image_key!r} (train.image_key); keys: {sorted(batch)}")
    skipped = batch.get("num_skipped")
    if isinstance(skipped, bool) or not isinstance(skipped, int):
        raise KeyError(f"batch must carry an int 'num_skipped' (images the collate dropped), got {skipped!r}")
    return int(batch[image_key].shape[0]), skipped


def _batch_count(batch: Mapping[str, Any], key: str) -> int:
    """An optional int count a collate put in the batch (absent: 0)."""
    value = batch.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise KeyError(f"batch[{key!r}] must be an int count, got {value!r}")
    return value


def check_step_inputs(inputs: Any, names: Sequence[str] | None = None) -> dict[str, float]:
    """A step-input hook's return value as {keyword: float}: a mapping of identifier keywords that are
    not the engine's own output names to finite numbers; the same keywords every step (`names`)."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"step_inputs must return a dict of keyword -> number, got {type(inputs).__name__}")
    out: dict[str, float] = {}
    for name, value in inputs.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"step input {name!r} is not a keyword argument name")
        if name in (*RESERVED_KEYS, *_RECORD_KEYS):
            raise ValueError(f"step input name {name!r} is reserved for the engine's own output")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"step input {name!r} must be a finite number, got {value!r}")
        out[name] = float(value)
    if names is not None and set(out) != set(names):
        raise ValueError(f"step_inputs returned {sorted(out)} at this step, {sorted(names)} at step 0")
    return out


def step_input_names(step_inputs: StepInputs | None, epoch_length: int) -> tuple[str, ...]:
    """The keywords a step-input hook gives (its step-0 dict, checked); () without a hook."""
    if step_inputs is None:
        return ()
    return tuple(check_step_inputs(step_inputs(0, epoch_length)))


def check_loss_terms(terms: Any, inputs: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    if not isinstance(terms, Mapping) or not terms:
        raise TypeError(f"the model must return a non-empty dict of loss terms, got {type(terms).__name__}")
    for name, value in terms.items():
        if name in RESERVED_KEYS:
            raise ValueError(f"loss term name {name!r} is reserved for the engine's own output")
        if name in inputs:
            raise ValueError(f"loss term name {name!r} is also a step input's name")
        if not torch.is_tensor(value) or value.numel() != 1:
            raise ValueError(f"loss term {name!r} must be a scalar tensor, got {value!r:.100}")
    if not any(value.requires_grad for value in terms.values()):
        raise ValueError(f"no loss term carries a gradient ({sorted(terms)}): is the model in no_grad mode?")
    return dict(terms)


def _named_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    inner = getattr(model, "_orig_mod", model)  # torch.compile
    inner = getattr(inner, "module", inner)  # DDP
    return list(inner.named_parameters())


def create_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    *,
    epoch_length: int,
    lr_scheduler: ParamScheduler | None = None,
    step_inputs: StepInputs | None = None,
) -> Engine:
    """Ignite Engine whose step trains `model` once; the lr schedule is attached on ITERATION_STARTED.

    `lr_scheduler` defaults to the config's warm-up + cosine over `cfg.epochs * epoch_length` steps.
    `step_inputs(iteration, epoch_length)` (0-based global iteration): the recipe's per-step keyword
    arguments of the model (ALBEF: {"alpha": α}); None: `model(batch)`.
    The step output: every loss term, "total", "lr", each step input (floats; the terms and total are
    means over all ranks) and "images", "skipped" and the caption counts (counts summed over ranks).
    """
    if epoch_length < 1:
        raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
    input_names = step_input_names(step_inputs, epoch_length)  # checked here, before any step
    device = idist.device()
    autocast = autocast_context(cfg.precision, device)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names = {id(p): n for n, p in _named_parameters(model)}
    named_params = [(names.get(id(p), f"parameter {i}"), p) for i, p in enumerate(params)]
    world = idist.get_world_size()

    def stop(engine: Engine, what: str, detail: str, when: str) -> NonFiniteTrainingError:
        return NonFiniteTrainingError(
            what, detail, iteration=engine.state.iteration, epoch=engine.state.epoch, when=when
        )

    def train_step(engine: Engine, batch: Mapping[str, Any]) -> dict[str, float]:
        iteration = engine.state.iteration - 1  # Ignite counts from 1, the hooks (ALBEF's ramp) from 0
        inputs = (
            {}
            if step_inputs is None
            else check_step_inputs(step_inputs(iteration, epoch_length), input_names)
        )
        images, skipped = count_images(batch, cfg.image_key)
        batch = move_batch(batch, device)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        try:
            with autocast():
                terms = check_loss_terms(model(batch, **inputs), input_names)
        except NonFiniteTensorError as exc:  # a sampling distribution or similar inside forward
            raise stop(engine, exc.name, f"is not finite ({exc.detail})", "in the forward pass") from exc
        total = torch.stack([t.reshape(()).float() for t in terms.values()]).sum()

        summary = torch.stack([t.detach().reshape(()).float() for t in terms.values()])
        captions = [_batch_count(batch, key) for key in CAPTION_COUNTS]
        counts = torch.tensor([images, skipped, *captions], dtype=summary.dtype, device=summary.device)
        reduced = all_reduce_sum(torch.cat([summary, counts])).tolist()
        means = {name: value / world for name, value in zip(terms, reduced)}
        for name, value in means.items():
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    name, value, iteration=engine.state.iteration, epoch=engine.state.epoch
                )

        total.backward()
        # Finite losses can still give non-finite gradients (an overflow in backward) and a finite
        # update can still overflow a weight: both stop here, before they reach a checkpoint. Every rank
        # sees the same (all-reduced) gradients and weights, so every rank stops at the same step.
        grads = [(n, p.grad) for n, p in named_params if p.grad is not None]
        # The max-abs norm: finite exactly when every value is (a 2-norm could overflow on finite values).
        if not math.isfinite(float(torch.nn.utils.get_total_norm([g for _, g in grads], norm_type=math.inf))):
            raise stop(
                engine,
                f"the gradient of {first_non_finite(grads)}",
                "is not finite",
                "before the optimizer step",
            )
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
        optimizer.step()
        if not math.isfinite(float(torch.nn.utils.get_total_norm(params, norm_type=math.inf))):
            raise stop(
                engine,
                f"the weight {first_non_finite(named_params)}",
                "is not finite",
                "after the optimizer step",
            )
        return {
            **means,
            TOTAL: sum(means.values()),
            LR: float(optimizer.param_groups[0]["lr"]),
            **inputs,
            **{name: int(value) for name, value in zip(COUNTS, reduced[len(terms) :])},
        }

    trainer = Engine(train_step)
    if lr_scheduler is None:
        lr_scheduler = build_lr_scheduler(optimizer, cfg.schedule, total_steps=cfg.epochs * epoch_length)
    trainer.add_event_handler(Events.ITERATION_STARTED, lr_scheduler)
    return trainer
