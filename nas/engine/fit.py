"""`fit`: one call that trains a model for a stage, resumable after a kill, on 1 or N processes.

Wiring, in order:
1. seed every RNG with `seed + rank` (ALBEF Pretrain.py) and the model's own streams with `seed`
   (`seed_random_streams`, e.g. NAS's NVA draws), wrap the model (DDP when N > 1), build AdamW, the
   warm-up + cosine schedule and the trainer;
2. if `output_dir/checkpoints` holds a checkpoint, resume from the newest one (every object, RNGs
   included); otherwise, if given, load the named objects of another stage's checkpoint. With "rng"
   among them the stage *continues* that run: its random streams go on where the previous stage
   stopped and a DistributedSampler's epoch counts on from the previous stage's epochs (as [A]'s stage
   2 resumed at epoch 30 with a fresh shuffle), so the first epoch does not replay the previous stage's
   first epoch. Carried-over optimizer state keeps this stage's own hyperparameters (weight decay,
   betas, eps): the record always equals what ran;
3. run the remaining epochs under deterministic kernels (`train.deterministic`): per-epoch means ->
   history -> checkpoint -> `on_epoch_end` (rank 0);
4. write `output_dir/last.pt` (atomic) for the next stage.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.utils import manual_seed
from torch import nn

from nas.engine.checkpoint import (
    RunLock,
    atomic_save,
    collect_state,
    epoch_checkpointer,
    list_checkpoints,
    load_objects,
    newest_readable_checkpoint,
    read_checkpoint,
    remove_orphans,
)
from nas.engine.handlers import EpochHistory, EpochMeter, attach_progress_bar, attach_tensorboard
from nas.engine.launch import unwrap_model, wrap_model
from nas.engine.optim import build_optimizer
from nas.engine.rng import RngState
from nas.engine.schedules import build_lr_scheduler
from nas.engine.trainer import StepInputs, TrainConfig, create_trainer, step_input_names

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]


class EpochLimitedLoader:
    """At most `steps` batches of `loader` per pass, and a fresh pass (fresh shuffle) every epoch.

    Ignite alone would keep one iterator across epochs when `epoch_length < len(loader)`, so a run
    resumed at an epoch boundary would read different batches than the uninterrupted run.
    """

    def __init__(self, loader: Iterable[Any], steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.steps)

    def __len__(self) -> int:
        return self.steps


def epoch_length_of(loader: Iterable[Any], max_steps: int | None) -> int:
    try:
        length = len(loader)  # type: ignore[arg-type]
    except TypeError:
        if max_steps is None:
            raise ValueError("the train loader has no len(): set train.max_steps_per_epoch") from None
        return max_steps
    if length < 1:
        sampler = getattr(loader, "sampler", None)
        items = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else "?"
        raise ValueError(
            f"the train loader is empty (0 batches per epoch): {items} training items per process, batch size "
            f"{getattr(loader, 'batch_size', '?')} per process, drop_last={getattr(loader, 'drop_last', '?')}; "
            "lower the stage's loader batch_size_per_gpu or train on more pairs"
        )
    return length if max_steps is None else min(length, max_steps)


class DataOrder:
    """Checkpointable offset added to the epoch a DistributedSampler is told (0 for a fresh run; the
    previous stage's epochs for a stage that continues it), so a resumed stage keeps its offset."""

    def __init__(self, epoch_offset: int = 0) -> None:
        self.epoch_offset = epoch_offset

    def state_dict(self) -> dict[str, int]:
        return {"epoch_offset": self.epoch_offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_offset = int(state["epoch_offset"])


# Hyperparameters a stage sets for itself even when it carries over another stage's optimizer state
# (`Optimizer.load_state_dict` would restore the saved ones). The lr is the schedule's to set.
_OWN_GROUP_KEYS = ("weight_decay", "betas", "eps", "lr_scale")


@contextlib.contextmanager
def deterministic_kernels(enabled: bool, device: torch.device) -> Iterator[None]:
    """`torch.use_deterministic_algorithms(enabled)` for the block, the previous setting restored after.

    Ops without a deterministic kernel warn rather than stop the run (`warn_only`). On CUDA, cuBLAS
    needs `CUBLAS_WORKSPACE_CONFIG` set before its first call for deterministic GEMMs (PyTorch's
    reproducibility notes); it is set here unless the user set it."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if enabled and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def seed_model_streams(model: nn.Module, seed: int) -> None:
    """Give a model that draws from its own generators (NAS's NVA) the run's seed."""
    seed_streams = getattr(model, "seed_random_streams", None)
    if callable(seed_streams):
        seed_streams(seed)


def fit(
    model: nn.Module,
    train_loader: Iterable[dict[str, Any]],
    cfg: TrainConfig,
    *,
    output_dir: str | Path,
    init_checkpoint: str | Path | None = None,
    init_objects: Sequence[str] = ("model",),
    init_strict: bool = True,
    on_epoch_end: EpochCallback | None = None,
    on_log_step: EpochCallback | None = None,
    identity: Mapping[str, str] | None = None,
    tensorboard_dir: str | Path | None = None,
    step_inputs: StepInputs | None = None,
) -> dict[str, Any]:
    """Train `model` (a plain nn.Module honouring the engine contract) for `cfg.epochs` epochs.

    `step_inputs(iteration, epoch_length)`: the recipe's per-step keyword arguments of the model (ALBEF's
    {"alpha": α}, nas.config.distillation), logged with the step's scalars; None: `model(batch)`.

    `init_checkpoint` starts a new stage from another stage's file (e.g. its `last.pt`), loading only
    `init_objects` ("model", "optimizer", "lr_scheduler", "trainer", "rng", "history"); it is ignored
    once this stage has a checkpoint of its own. `init_strict=False` lets the model load partially
    (the unmatched keys are logged and returned).

    `identity` names what the run is (e.g. {"config": digest, "code": ..., "data": ..., "init": ...});
    it is written into every checkpoint, and a checkpoint in `output_dir` whose identity differs (or
    that has none) is refused by name instead of resumed. Rank 0 holds `output_dir/run.lock` for the
    whole call: a second writer of the same folder is refused.

    TensorBoard scalars go to `tensorboard_dir` (default `output_dir/tb`); a run that starts afresh
    (no checkpoint to resume) clears that folder first, so it never mixes two runs' curves.

    Returns, on every rank: {"history": [per-epoch metrics...], "last_checkpoint": path,
    "resumed_from": path or None, "init_report": {"missing": [...], "unexpected": [...]} or None}.
    """
    output_dir = Path(output_dir)

    def run() -> dict[str, Any]:
        return _fit(
            model,
            train_loader,
            cfg,
            output_dir,
            init_checkpoint,
            init_objects,
            init_strict,
            on_epoch_end,
            on_log_step,
            identity,
            Path(tensorboard_dir) if tensorboard_dir is not None else output_dir / "tb",
            step_inputs,
        )

    if idist.get_rank() != 0:
        return run()
    with RunLock(output_dir):
        remove_orphans(output_dir)
        remove_orphans(output_dir / "checkpoints")
        return run()


def _fit(
    model: nn.Module,
    train_loader: Iterable[dict[str, Any]],
    cfg: TrainConfig,
    output_dir: Path,
    init_checkpoint: str | Path | None,
    init_objects: Sequence[str],
    init_strict: bool,
    on_epoch_end: EpochCallback | None,
    on_log_step: EpochCallback | None,
    identity: Mapping[str, str] | None,
    tensorboard_dir: Path,
    step_inputs: StepInputs | None,
) -> dict[str, Any]:
    rank, world = idist.get_rank(), idist.get_world_size()
    manual_seed(cfg.seed + rank)
    seed_model_streams(unwrap_model(model), cfg.seed)

    wrapped = wrap_model(model, find_unused_parameters=cfg.launch.find_unused_parameters)
    raw = unwrap_model(wrapped)
    optimizer = build_optimizer(raw, cfg.optim, lr=cfg.schedule.lr)
    epoch_length = epoch_length_of(train_loader, cfg.max_steps_per_epoch)
    data: Iterable[Any] = train_loader
    if cfg.max_steps_per_epoch is not None:
        data = EpochLimitedLoader(train_loader, epoch_length)
    lr_scheduler = build_lr_scheduler(optimizer, cfg.schedule, total_steps=cfg.epochs * epoch_length)
    forward_model = torch.compile(wrapped) if cfg.compile else wrapped
    trainer = create_trainer(
        forward_model,
        optimizer,
        cfg,
        epoch_length=epoch_length,
        lr_scheduler=lr_scheduler,
        step_inputs=step_inputs,
    )
    inputs = step_input_names(step_inputs, epoch_length)

    history = EpochHistory()
    data_order = DataOrder()
    to_save: dict[str, Any] = {
        "model": raw,  # parameters and buffers: momentum copies, queues, queue pointers
        "optimizer": optimizer,
        "lr_scheduler": lr_scheduler,
        "trainer": trainer,  # epoch, iteration, epoch_length, max_epochs
        "rng": RngState(),
        "history": history,
        "data_order": data_order,
        "identity": RunIdentity(identity),
    }
    checkpoint_dir = output_dir / "checkpoints"
    last = output_dir / "last.pt"
    readable = newest_readable_checkpoint(checkpoint_dir)
    if readable is None and last.is_file():  # a finished run whose epoch checkpoints were pruned
        try:
            readable = (last, read_checkpoint(last))
        except (RuntimeError, ValueError) as exc:
            logger.warning("skipping unreadable %s: %s", last, exc)
    resumed_from = None if readable is None else readable[0]
    init_report = None
    if readable is not None:
        finished = _epochs_done(readable[1].get("trainer", {})) >= cfg.epochs
        # A finished run's last.pt may hold no optimizer state (final_state: weights): nothing is trained.
        _resume(to_save, *readable, epoch_length, optional=("optimizer",) if finished else ())
        if init_checkpoint is not None:
            logger.info(
                "init_checkpoint %s ignored: the stage resumes from its own checkpoint", init_checkpoint
            )
    elif init_checkpoint is not None:
        own_groups = [{k: g[k] for k in _OWN_GROUP_KEYS if k in g} for g in optimizer.param_groups]
        init_state = read_checkpoint(init_checkpoint)  # read once: it can be gigabytes at paper scale
        init_report = load_objects(
            to_save, init_checkpoint, init_objects, strict=init_strict, state=init_state
        )
        if "optimizer" in init_objects:
            _keep_own_hyperparameters(optimizer, own_groups, init_checkpoint)
        if "rng" in init_objects:
            data_order.epoch_offset = _epochs_done(init_state.get("trainer", {}))
        logger.info("stage initialised from %s: %s", init_checkpoint, list(init_objects))

    def result() -> dict[str, Any]:
        return {
            "history": list(history.epochs),
            "steps": list(history.steps),
            "last_checkpoint": str(output_dir / "last.pt"),
            "resumed_from": None if resumed_from is None else str(resumed_from),
            "init_report": init_report,
        }

    done = trainer.state.epoch
    if done > cfg.epochs:
        raise ValueError(f"the loaded trainer state is at epoch {done}, beyond train.epochs={cfg.epochs}")
    if done == cfg.epochs:
        logger.info("all %d epochs already done (%s): nothing to train", cfg.epochs, resumed_from)
        if not last.is_file():
            _write_last(to_save, last, weights_only=cfg.final_state == "weights")
        return result()

    checkpointer = epoch_checkpointer(to_save, checkpoint_dir, keep=cfg.keep_checkpoints)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=cfg.log_every_steps),
        lambda engine: history.log_step(engine.state.iteration, dict(engine.state.output)),
    )
    _attach_epoch_handlers(
        trainer, cfg, train_loader, history, checkpointer, on_epoch_end, data_order, inputs
    )
    trainer.add_event_handler(Events.COMPLETED, lambda _: _finish(to_save, last, checkpoint_dir, cfg))
    tensorboard = None
    if rank == 0:
        if cfg.progress_bar:
            attach_progress_bar(trainer, desc="train " + "/".join(tensorboard_dir.parts[-3:]), inputs=inputs)
        if resumed_from is None and tensorboard_dir.is_dir():
            shutil.rmtree(tensorboard_dir)  # a fresh run: another run's events would mix with its curves
        # A resumed run purges the events logged after its checkpoint: no duplicate steps.
        tensorboard = attach_tensorboard(
            trainer, tensorboard_dir, every=cfg.log_every_steps, purge_step=trainer.state.iteration + 1
        )
        if on_log_step is not None:
            trainer.add_event_handler(
                Events.ITERATION_COMPLETED(every=cfg.log_every_steps),
                lambda engine: on_log_step(engine.state.iteration, dict(engine.state.output)),
            )
    per_gpu = getattr(train_loader, "batch_size", None)
    logger.info(
        "training %d epochs x %d steps on %d process(es) x %s images per process (global batch %s)",
        cfg.epochs,
        epoch_length,
        world,
        per_gpu,
        None if per_gpu is None else per_gpu * world,
    )
    try:
        with deterministic_kernels(cfg.deterministic, idist.device()):
            trainer.run(data, max_epochs=cfg.epochs, epoch_length=epoch_length)
    finally:
        if tensorboard is not None:
            tensorboard.close()
    return result()


class RunIdentityError(RuntimeError):
    """A checkpoint belongs to another run (other params, code, data or init checkpoint)."""


class RunIdentity:
    """What a run is (params digest, code, data, init checkpoint), carried in its checkpoints."""

    def __init__(self, identity: Mapping[str, str] | None) -> None:
        self.identity = None if identity is None else {str(k): str(v) for k, v in identity.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"identity": self.identity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # checked in _resume before anything is loaded; the current identity stays

    def check(self, saved: Mapping[str, Any] | None, path: Path) -> None:
        if self.identity is None:
            return
        theirs = (saved or {}).get("identity")
        if theirs is None:
            raise RunIdentityError(
                f"checkpoint {path} carries no run identity, so it cannot be shown to belong to this run "
                f"({self.identity}); move it away to start afresh"
            )
        differ = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
        if differ:
            detail = ", ".join(
                f"{k}: {theirs.get(k)} in the checkpoint, {self.identity.get(k)} now" for k in differ
            )
            raise RunIdentityError(f"checkpoint {path} belongs to another run ({detail}); it is not resumed")


def _resume(
    to_save: dict[str, Any],
    path: Path,
    state: dict[str, Any],
    epoch_length: int,
    *,
    optional: Sequence[str] = (),
) -> None:
    to_save["identity"].check(state.get("identity"), path)
    missing = [name for name in to_save if name not in state and name not in optional]
    if missing:
        hint = (
            " (a finished run saved with train.final_state: weights cannot be trained further: train a new run)"
            if "optimizer" in missing and "trainer" in state
            else ""
        )
        raise KeyError(f"checkpoint {path} lacks {missing}; it holds {sorted(state)}{hint}")
    to_save = {name: obj for name, obj in to_save.items() if name in state}
    saved_length = state["trainer"].get("epoch_length")
    if saved_length != epoch_length:
        raise ValueError(
            f"checkpoint {path} was written with {saved_length} steps per epoch, this run has {epoch_length}: "
            "the data or train.max_steps_per_epoch changed; use a new output_dir"
        )
    try:
        Checkpoint.load_objects(to_load=to_save, checkpoint=state)
    except Exception as exc:
        raise RuntimeError(f"cannot resume from {path}: {exc}") from exc
    logger.info("resumed from %s (epoch %d)", path, to_save["trainer"].state.epoch)


def _keep_own_hyperparameters(
    optimizer: torch.optim.Optimizer, own_groups: list[dict[str, Any]], source: str | Path
) -> None:
    """Put this stage's weight decay, betas and eps back after loading another stage's optimizer state
    (moments and step counts are carried over; the hyperparameters are this stage's params)."""
    if len(own_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the optimizer state of {source} has {len(optimizer.param_groups)} parameter groups, this "
            f"stage builds {len(own_groups)}: drop 'optimizer' from init_objects or match the optimizer"
        )
    for group, own in zip(optimizer.param_groups, own_groups):
        changed = {k: (group.get(k), v) for k, v in own.items() if group.get(k) != v}
        if changed:
            logger.info(
                "optimizer group hyperparameters from this stage's params (loaded -> own): %s", changed
            )
        group.update(own)


def _epochs_done(trainer_state: Mapping[str, Any]) -> int:
    """Epochs a saved trainer state completed (Ignite saves the iteration and the epoch length)."""
    if "epoch" in trainer_state:
        return int(trainer_state["epoch"])
    length = trainer_state.get("epoch_length")
    return int(trainer_state.get("iteration", 0)) // int(length) if length else 0


def _attach_epoch_handlers(
    trainer: Engine,
    cfg: TrainConfig,
    loader: Iterable[Any],
    history: EpochHistory,
    checkpointer: Checkpoint,
    on_epoch_end: EpochCallback | None,
    data_order: DataOrder,
    inputs: Sequence[str] = (),
) -> None:
    meter = EpochMeter(inputs)
    sampler = getattr(loader, "sampler", None)

    @trainer.on(Events.EPOCH_STARTED)
    def start_epoch(engine: Engine) -> None:
        # DistributedSampler reshuffles only when told the epoch; Ignite's Engine does not do it. A
        # stage that continues another counts on from that stage's epochs (DataOrder).
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(data_order.epoch_offset + engine.state.epoch - 1)
        meter.reset()

    @trainer.on(Events.ITERATION_COMPLETED)
    def record_step(engine: Engine) -> None:
        meter.update(engine.state.output)

    @trainer.on(Events.EPOCH_COMPLETED)
    def end_epoch(engine: Engine) -> None:
        epoch = engine.state.epoch
        metrics = meter.compute()
        history.append(epoch, metrics)
        if epoch % cfg.checkpoint_every_epochs == 0 or epoch == cfg.epochs:
            checkpointer(engine)  # collective (RNG states of every rank); rank 0 writes
        if idist.get_rank() == 0:
            logger.info("epoch %d: %s", epoch, metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(metrics))


def _finish(to_save: dict[str, Any], last: Path, checkpoint_dir: Path, cfg: TrainConfig) -> None:
    """At COMPLETED: last.pt, then (prune_when_done) the epoch checkpoints go; last.pt resumes the run."""
    _write_last(to_save, last, weights_only=cfg.final_state == "weights")
    if cfg.prune_when_done and idist.get_rank() == 0:
        for _, path in list_checkpoints(checkpoint_dir):
            path.unlink(missing_ok=True)
    if idist.get_world_size() > 1:
        idist.barrier()


def _write_last(to_save: dict[str, Any], path: Path, *, weights_only: bool = False) -> None:
    state = collect_state(to_save)  # collective: every rank takes part
    if weights_only:
        state.pop("optimizer", None)
    if idist.get_rank() == 0:
        atomic_save(state, path)
    if idist.get_world_size() > 1:
        idist.barrier()  # the file exists for every rank once fit returns
