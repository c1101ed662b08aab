"""What the trainer reports: per-epoch means (kept in the checkpoint), a progress bar, TensorBoard scalars."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers.tensorboard_logger import TensorboardLogger
from ignite.handlers.tqdm_logger import ProgressBar

from nas.engine.trainer import CAPTION_COUNTS, COUNTS, IMAGES, LR, SKIPPED


class EpochMeter:
    """Means of the step outputs over one epoch, plus images seen/skipped and wall-clock seconds.

    The step outputs are already means over ranks (the trainer all-reduces them), so these are too. The
    lr and the recipe's step inputs (`inputs`, e.g. ALBEF's "alpha") are schedules, not losses: the
    epoch keeps their values at its last step.
    """

    def __init__(self, inputs: Sequence[str] = ()) -> None:
        self.last_keys = (LR, *inputs)
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._steps = 0
        self._counts = dict.fromkeys(COUNTS, 0)
        self._last: dict[str, float] = {}
        self._start = time.perf_counter()

    def update(self, output: dict[str, float]) -> None:
        self._steps += 1
        for name in COUNTS:
            self._counts[name] += int(output.get(name, 0))
        self._last = {name: float(output[name]) for name in self.last_keys}
        for name, value in output.items():
            if name not in (*COUNTS, *self.last_keys):
                self._sums[name] = self._sums.get(name, 0.0) + float(value)

    def compute(self) -> dict[str, float | int]:
        if self._steps == 0:
            raise RuntimeError("EpochMeter.compute() before any step of the epoch")
        means = {name: total / self._steps for name, total in self._sums.items()}
        return {
            **means,
            **self._last,  # lr and the step inputs at the epoch's last step
            "steps": self._steps,
            "images_seen": self._counts[IMAGES],
            "images_skipped": self._counts[SKIPPED],
            **{name: self._counts[name] for name in CAPTION_COUNTS.values()},
            "seconds": time.perf_counter() - self._start,
        }


class EpochHistory:
    """Per-epoch metrics and the logged steps of a whole stage; checkpointed, so a resumed run still
    returns every epoch and every logged step (the loss curves)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []

    def append(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.epochs.append({"epoch": epoch, **metrics})

    def log_step(self, iteration: int, output: dict[str, Any]) -> None:
        self.steps.append({"step": iteration, **{k: float(v) for k, v in output.items()}})

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(entry) for entry in self.epochs], "steps": [dict(row) for row in self.steps]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epochs = state_dict.get("epochs") if isinstance(state_dict, dict) else None
        if not isinstance(epochs, list):
            raise ValueError(f"history state must be {{'epochs': [...]}}, got {state_dict!r:.200}")
        self.epochs = [dict(entry) for entry in epochs]
        self.steps = [dict(row) for row in state_dict.get("steps", [])]


def _scalars(output: dict[str, float]) -> dict[str, float]:
    """The loss terms, total, lr and step inputs of a step output (the counts are logged per epoch)."""
    return {name: value for name, value in output.items() if name not in COUNTS}


def attach_progress_bar(trainer: Engine, desc: str = "train", inputs: Sequence[str] = ()) -> Any:
    """Ignite's tqdm ProgressBar on a terminal (losses and lr; not the step `inputs`); plain lines every
    10 s elsewhere (`nas.progress`: a log file or CI holds no carriage-return frames); nothing with
    NAS_PROGRESS=off."""
    from nas import progress

    chosen = progress.mode()
    if chosen == "off":
        return None
    if chosen == "bar":
        bar = ProgressBar(persist=False)
        bar.attach(
            trainer, output_transform=lambda out: {k: v for k, v in _scalars(out).items() if k not in inputs}
        )
        return bar
    lines = progress.LineProgress(None, desc)

    @trainer.on(Events.STARTED)
    def _start(engine: Engine) -> None:
        lines.total = engine.state.max_epochs * (engine.state.epoch_length or 0) or None
        lines.n = engine.state.iteration  # a resumed run counts on from its checkpoint

    @trainer.on(Events.ITERATION_COMPLETED)
    def _step(engine: Engine) -> None:
        total = _scalars(engine.state.output).get("total")
        lines.update(postfix="" if total is None else f"loss {total:.4f}")

    trainer.add_event_handler(Events.COMPLETED, lambda _: lines.close())
    return lines


def attach_tensorboard(
    trainer: Engine, log_dir: str | Path, *, every: int, purge_step: int | None = None
) -> TensorboardLogger:
    """Scalars `train/<term>`, `train/total`, `train/lr` and `train/<step input>` (ALBEF: `train/alpha`)
    every `every` iterations.
    `purge_step` (a resumed run: its first new iteration) drops events at or after it that a killed run
    had logged past its checkpoint, so the curves hold each step once."""
    tb = TensorboardLogger(log_dir=str(log_dir), purge_step=purge_step)
    tb.attach_output_handler(
        trainer,
        event_name=Events.ITERATION_COMPLETED(every=every),
        tag="train",
        output_transform=_scalars,
    )
    return tb
