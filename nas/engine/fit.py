"""`fit`: one call that trains a model for a stage, resumable after a kill, on 1 or N processes.

Wiring, in order:
1. seed every RNG with `seed + rank` (ALBEF Pretrain.py), wrap the model (DDP when N > 1), build AdamW,
   the warm-up + cosine schedule and the trainer;
2. if `output_dir/checkpoints` holds a checkpoint, resume from the newest one (every object, RNGs
   included); otherwise, if given, load the named objects of another stage's checkpoint;
3. run the remaining epochs: per-epoch means -> history -> checkpoint -> `on_epoch_end` (rank 0);
4. write `output_dir/last.pt` (atomic) for the next stage.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.utils import manual_seed
from torch import nn

from nas.engine.checkpoint import (
    atomic_save,
    collect_state,
    epoch_checkpointer,
    latest_checkpoint,
    load_objects,
    read_checkpoint,
)
from nas.engine.handlers import EpochHistory, EpochMeter, attach_progress_bar, attach_tensorboard
from nas.engine.launch import unwrap_model, wrap_model
from nas.engine.optim import build_optimizer
from nas.engine.rng import RngState
from nas.engine.schedules import build_lr_scheduler
from nas.engine.trainer import TrainConfig, create_trainer

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
        raise ValueError("the train loader is empty (0 batches per epoch)")
    return length if max_steps is None else min(length, max_steps)


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
) -> dict[str, Any]:
    """Train `model` (a plain nn.Module honouring the engine contract) for `cfg.epochs` epochs.

    `init_checkpoint` starts a new stage from another stage's file (e.g. its `last.pt`), loading only
    `init_objects` ("model", "optimizer", "lr_scheduler", "trainer", "rng", "history"); it is ignored
    once this stage has a checkpoint of its own. `init_strict=False` lets the model load partially
    (the unmatched keys are logged and returned).

    Returns, on every rank: {"history": [per-epoch metrics...], "last_checkpoint": path,
    "resumed_from": path or None, "init_report": {"missing": [...], "unexpected": [...]} or None}.
    """
    output_dir = Path(output_dir)
    rank, world = idist.get_rank(), idist.get_world_size()
    manual_seed(cfg.seed + rank)

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
        forward_model, optimizer, cfg, epoch_length=epoch_length, lr_scheduler=lr_scheduler
    )

    history = EpochHistory()
    to_save: dict[str, Any] = {
        "model": raw,  # parameters and buffers: momentum copies, queues, queue pointers
        "optimizer": optimizer,
        "lr_scheduler": lr_scheduler,
        "trainer": trainer,  # epoch, iteration, epoch_length, max_epochs
        "rng": RngState(),
        "history": history,
    }
    checkpoint_dir = output_dir / "checkpoints"
    resumed_from = latest_checkpoint(checkpoint_dir)
    init_report = None
    if resumed_from is not None:
        _resume(to_save, resumed_from, epoch_length)
        if init_checkpoint is not None:
            logger.info(
                "init_checkpoint %s ignored: the stage resumes from its own checkpoint", init_checkpoint
            )
    elif init_checkpoint is not None:
        init_report = load_objects(to_save, init_checkpoint, init_objects, strict=init_strict)
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
        if not (output_dir / "last.pt").is_file():
            _write_last(to_save, output_dir / "last.pt")
        return result()

    checkpointer = epoch_checkpointer(to_save, checkpoint_dir, keep=cfg.keep_checkpoints)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=cfg.log_every_steps),
        lambda engine: history.log_step(engine.state.iteration, dict(engine.state.output)),
    )
    _attach_epoch_handlers(trainer, cfg, train_loader, history, checkpointer, on_epoch_end)
    trainer.add_event_handler(Events.COMPLETED, lambda _: _write_last(to_save, output_dir / "last.pt"))
    tensorboard = None
    if rank == 0:
        if cfg.progress_bar:
            attach_progress_bar(trainer)
        tensorboard = attach_tensorboard(trainer, output_dir / "tb", every=cfg.log_every_steps)
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
        trainer.run(data, max_epochs=cfg.epochs, epoch_length=epoch_length)
    finally:
        if tensorboard is not None:
            tensorboard.close()
    return result()


def _resume(to_save: dict[str, Any], path: Path, epoch_length: int) -> None:
    state = read_checkpoint(path)
    missing = [name for name in to_save if name not in state]
    if missing:
        raise KeyError(f"checkpoint {path} lacks {missing}; it holds {sorted(state)}")
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


def _attach_epoch_handlers(
    trainer: Engine,
    cfg: TrainConfig,
    loader: Iterable[Any],
    history: EpochHistory,
    checkpointer: Checkpoint,
    on_epoch_end: EpochCallback | None,
) -> None:
    meter = EpochMeter()
    sampler = getattr(loader, "sampler", None)

    @trainer.on(Events.EPOCH_STARTED)
    def start_epoch(engine: Engine) -> None:
        # DistributedSampler reshuffles only when told the epoch; Ignite's Engine does not do it.
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(engine.state.epoch - 1)
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


def _write_last(to_save: dict[str, Any], path: Path) -> None:
    state = collect_state(to_save)  # collective: every rank takes part
    if idist.get_rank() == 0:
        atomic_save(state, path)
    if idist.get_world_size() > 1:
        idist.barrier()  # the file exists for every rank once fit returns
