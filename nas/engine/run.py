"""The run layer: one training run of any recipe, from a run spec to one saved format and back.

Every stage that trains (the pretraining stages, fine-tuning, MUG, the UTA teacher, students and
fine-tuning) describes a run as a `RunSpec` and calls `train_run`, which in this order

1. seeds every RNG with `seed + rank` and calls the recipe's `build()` for (model, loader): the model's
   initial weights follow `seed` alone;
2. names the run by what it reads (`run_identity`: the params sections in `spec.reads`, the harness code,
   the training files, the init checkpoint): the checkpoint folder is `spec.checkpoints/<digest>`, so a
   changed param, loss or data never resumes a stale run, while an edit to a section the run does not
   read (another recipe's, the report's, the evaluation's) keeps its digest and the run resumes;
3. trains through `nas.engine.fit.fit` (the one training loop), printing and recording per-epoch means;
4. on rank 0 hands the run over in the one saved format: `run_dir/checkpoint.pt` (the run's `last.pt`,
   a hard link, so one copy on disk: {"model": state dict, "identity", "history", ...}) and
   `run_dir/config.json` (the resolved config as it ran, with a `run` block naming the model spec that
   rebuilds the saved weights and, for a module trained inside a wrapper, the `export` prefix).

`load_run(run_dir)` is the one reloader: it rebuilds the model from `config.json` through the registry and
loads the checkpoint's weights strictly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from nas.atomic import atomic_link, atomic_write_text
from nas.engine.trainer import StepInputs, TrainConfig

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"


class ScalarLog(Protocol):
    """What a run reports metrics to (a Sacred-backed recorder on rank 0, a no-op elsewhere)."""

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None: ...


class _NoLog:
    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        pass


@dataclass
class RunSpec:
    """One training run. `reads` is every params section the run's result depends on, and only those:
    it is hashed into the checkpoint digest. `model` is the registry spec ({"name", "overrides"}) that
    rebuilds the saved module; `export` the attribute prefix of that module inside the trained one
    (e.g. "student" for a student trained inside a distillation wrapper; "" for the trained module).
    `step_inputs` is the recipe's per-step hook of model keyword arguments (ALBEF's distillation α, from
    the stage's `distillation` section; None: the model takes the batch alone); the hook is not hashed,
    so the section it is built from must be among `reads`."""

    stage: str
    label: str  # for logs and metric names, e.g. "albef/seed0"
    seed: int
    reads: Mapping[str, Any]
    train: TrainConfig
    checkpoints: Path  # the digest folder goes below
    run_dir: Path | None  # the hand-off folder (checkpoint.pt + config.json); None: keep only checkpoints
    model: Mapping[str, Any] | None = None  # {"name", "overrides"} of the saved module
    export: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)  # recorded as config.json (with a `run` block)
    data_files: Sequence[str | Path] = ()
    init_checkpoint: Path | None = None
    init_objects: Sequence[str] = ("model",)
    init_by_build: bool = False  # build() loads init_checkpoint itself (e.g. resized): it only names the run
    tensorboard_dir: Path | None = None
    metric_prefix: str = ""  # before every recorded scalar name (several runs in one record)
    step_inputs: StepInputs | None = None  # per-step model kwargs (ALBEF: {"alpha": α}), logged per step


def epoch_printer(stage: str, label: str, record: ScalarLog, prefix: str = ""):
    """(on_epoch_end, on_log_step) for `fit`: per-epoch means and per-step totals go to the record, and
    one line per epoch is printed. (Loss curves come from fit's checkpointed history, which survives a
    resume.)"""

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                record.log_scalar(f"{prefix}train.{key}", value, epoch)
        print(
            f"{stage}[{label}] epoch {epoch}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        )

    def on_log_step(iteration: int, output: dict[str, Any]) -> None:
        record.log_scalar(f"{prefix}step.total", float(output.get("total", float("nan"))), iteration)

    return on_epoch_end, on_log_step


def run_digest(spec: RunSpec) -> tuple[dict[str, str], str]:
    """(identity, its 12-hex digest) of a run: what it reads, the code, its data files, its init weights."""
    import ignite.distributed as idist

    from nas.engine.identity import identity_digest, run_identity
    from nas.engine.trainer import resolve_precision

    # `precision: auto` resolves per machine (bf16 where native): the resolved one names the run, so a
    # checkpoint never resumes under the other precision.
    precision = resolve_precision(spec.train.precision, idist.device())
    identity = run_identity(
        dict(spec.reads) | {"stage": spec.stage, "precision": precision},
        data_files=spec.data_files,
        init_checkpoint=spec.init_checkpoint,
    )
    return identity, identity_digest(identity)


def recorded_config(spec: RunSpec, digest: str) -> dict[str, Any]:
    """config.json of a run: its resolved config and the `run` block `load_run` rebuilds the model from."""
    config = json.loads(json.dumps(dict(spec.config)))
    run = dict(config.get("run") or {})
    run.update(stage=spec.stage, seed=spec.seed, config_digest=digest)
    if spec.model is not None:
        run["model"] = json.loads(json.dumps(dict(spec.model)))
        run["export"] = spec.export
    config["run"] = run
    return config


def train_run(
    spec: RunSpec,
    build: Callable[[], tuple[nn.Module, Iterable[Any]]],
    record: ScalarLog | None = None,
    *,
    after_build: Callable[[nn.Module, Iterable[Any]], None] | None = None,
) -> dict[str, Any]:
    """Seed, build, name, train and hand over one run (module docstring). Returns, on every rank, the
    run's summary ({"config_digest", "identity", "resumed_from", "final", "epochs", "steps", "seconds"})
    plus "model" (the trained module) and "last_checkpoint"."""
    import ignite.distributed as idist
    from ignite.utils import manual_seed

    from nas.engine.fit import fit

    record = record if record is not None else _NoLog()
    start = time.perf_counter()
    manual_seed(spec.seed + idist.get_rank())
    model, loader = build()
    if after_build is not None:
        after_build(model, loader)
    identity, digest = run_digest(spec)
    on_epoch_end, on_log_step = epoch_printer(spec.stage, spec.label, record, spec.metric_prefix)
    result = fit(
        model,
        loader,
        spec.train,
        output_dir=spec.checkpoints / digest,
        init_checkpoint=None if spec.init_by_build else spec.init_checkpoint,
        init_objects=spec.init_objects,
        on_epoch_end=on_epoch_end,
        on_log_step=on_log_step,
        identity=identity,
        tensorboard_dir=spec.tensorboard_dir,
        step_inputs=spec.step_inputs,
    )
    if idist.get_rank() == 0 and spec.run_dir is not None:
        # The next stage reads these: written atomically (never a truncated copy beside an older config).
        atomic_link(result["last_checkpoint"], spec.run_dir / CHECKPOINT_FILE)
        config = recorded_config(spec, digest)
        atomic_write_text(spec.run_dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    history = result["history"]
    return {
        "config_digest": digest,
        "identity": identity,
        "resumed_from": result["resumed_from"],
        "final": history[-1] if history else {},
        "epochs": history,
        "steps": result["steps"],
        "seconds": round(time.perf_counter() - start, 2),
        "model": model,
        "last_checkpoint": result["last_checkpoint"],
    }


def summary_of(result: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """The JSON-able part of a `train_run` result (no module, no path), `keys` first if given."""
    names = keys or ("config_digest", "identity", "resumed_from", "final", "epochs", "steps")
    return {k: result[k] for k in names}


# ---- the one reloader ---------------------------------------------------------------------------------


def model_spec_of(config: Mapping[str, Any], where: str) -> tuple[dict[str, Any], str]:
    """({"name", "overrides"}, export prefix) of a recorded run config: its `run` block, or (runs of the
    NAS stages recorded before the block existed) its top-level `model`."""
    run = config.get("run") or {}
    spec = run.get("model") or config.get("model")
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"{where}: no model spec (run.model or model with a 'name') to rebuild the run from")
    return {"name": spec["name"], "overrides": dict(spec.get("overrides") or {})}, str(
        run.get("export") or ""
    )


def build_from_spec(spec: Mapping[str, Any], where: str) -> nn.Module:
    from nas.config import from_dict
    from nas.config.stages import ModelSpec
    from nas.models.registry import create_model

    typed = from_dict(ModelSpec, dict(spec), f"{where}:model")
    return create_model(typed.name, **typed.overrides)


def exported_state(state: Mapping[str, Any], export: str, where: str) -> dict[str, Any]:
    """The saved module's weights inside a checkpoint's "model" entry (keys under `export.`, stripped)."""
    if not export:
        return dict(state)
    prefix = export + "."
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        raise KeyError(f"{where}: no weights under {prefix!r} (keys start {sorted(state)[:4]})")
    return picked


def load_run(
    source: str | Path, device: Any = "cpu", *, state: Mapping[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, recorded config) of a run folder (`config.json` + `checkpoint.pt`) or of a run's
    checkpoint file with its `config.json` beside it: the model the run's `run` block names, built through
    the registry, with the run's weights loaded strictly. `state`: the checkpoint, if already read."""
    from nas.engine.checkpoint import read_checkpoint

    path = Path(source)
    folder, checkpoint = (path, path / CHECKPOINT_FILE) if path.is_dir() else (path.parent, path)
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {folder} is not the output of a training run")
    if state is None and not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} is missing: the run in {folder} did not finish")
    config = json.loads(config_file.read_text())
    spec, export = model_spec_of(config, str(config_file))
    model = build_from_spec(spec, str(config_file))
    stored = read_checkpoint(checkpoint) if state is None else state
    if "model" not in stored:
        raise KeyError(f"{checkpoint} holds no 'model' entry (it has {sorted(stored)})")
    model.load_state_dict(exported_state(stored["model"], export, str(checkpoint)))
    return model.to(device).eval(), config
