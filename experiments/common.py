"""What every stage shares: command line, params resolution, launch, and the Sacred record.

A stage is `main(cfg: dict, record: Recorder) -> None`. This module turns
`python -m experiments.<stage> --variant X --set key=value` into that call:

1. read params.yaml, resolve it for the variant and check it whole (nas.config.schema): a user error
   (unknown key or variant, wrong value, malformed --set) is one line `nas <stage>: error: ...` on
   stderr and exit status 2, before any stage work and before Sacred records a run;
2. launch through idist (single process, spawned gloo/nccl processes, or under torchrun);
3. on rank 0 only, wrap the stage in a Sacred run with a FileStorageObserver, so the run folder
   holds the resolved config (the values the stage really used), metrics, artifacts, the git
   commit and package versions. Other ranks get a recorder that drops everything.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at run time: fail in 0.1 s, not 46 s
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from nas.config.base import ConfigError  # noqa: E402
from nas.config.params import load_params  # noqa: E402
from nas.config.schema import Section, check_init_from, check_params, register_section  # noqa: E402

StageMain = Callable[[dict[str, Any], "Recorder"], None]


# ---- the params sections typed in experiment modules ------------------------------------------------


def _finetune_model_overrides(spec: Any, finetune: Any) -> dict[str, Any]:
    from experiments.finetune import effective_overrides

    return effective_overrides(spec, finetune, image_size=finetune.image_size)


# Stages whose trained models `evaluate` scores (experiments.evaluate.model_runs).
SCORED_STAGES = ("pretrain_stage1", "pretrain_stage2", "finetune")


def _check_evaluate(name: str, evaluate: Any, sections: Any) -> None:
    from nas.config.base import did_you_mean

    for index, stage in enumerate(evaluate.checkpoint_stages):
        if stage not in SCORED_STAGES:
            raise ConfigError(
                f"{name}.checkpoint_stages[{index}]: {stage!r} is not a stage with a model to score"
                f"{did_you_mean(stage, SCORED_STAGES)}; choose from {list(SCORED_STAGES)}",
                path=f"{name}.checkpoint_stages",
            )


# String targets: the experiment modules import this one, so they are imported on first use.
register_section(
    "finetune",
    Section(
        "experiments.finetune:FinetuneConfig",
        model_overrides=_finetune_model_overrides,
        check=check_init_from,
    ),
)
register_section("evaluate", Section("experiments.evaluate:EvaluateConfig", check=_check_evaluate))


def load_config(
    params_path: str | Path, variant: str | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The params a run sees (file, `variants.<variant>`, `--set` overrides), checked whole before any
    stage work (`nas.config.schema.check_params`). Every user error is a ConfigError: a missing or
    malformed params file, an unknown variant, a malformed override, any unknown key or wrong value."""
    try:
        params = load_params(params_path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    return check_params(params, variant, overrides, source=str(params_path))


def report_user_error(prog: str, exc: BaseException) -> int:
    """Print `<prog>: error: <message>` (one line, no traceback) on stderr; returns the exit status, 2."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


class Recorder:
    """Metrics and artifacts of one stage run; a no-op unless backed by a Sacred run (rank 0)."""

    def __init__(self, run: Any | None = None):
        self._run = run

    @property
    def active(self) -> bool:
        return self._run is not None

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        if self._run is not None:
            self._run.log_scalar(name, float(value), step)

    def add_artifact(self, path: str | Path, name: str | None = None) -> None:
        if self._run is not None and Path(path).is_file():
            self._run.add_artifact(str(path), name=name)

    def info(self, key: str, value: Any) -> None:
        if self._run is not None:
            self._run.info[key] = value


class PrefixedRecorder(Recorder):
    """One Sacred record for many runs: every scalar name starts with the run's name."""

    def __init__(self, inner: Recorder, prefix: str) -> None:
        super().__init__(None)
        self.inner, self.prefix = inner, prefix

    @property
    def active(self) -> bool:
        return self.inner.active

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        self.inner.log_scalar(f"{self.prefix}{name}", value, step)


def parse_args(stage: str, argv: Sequence[str] | None, needs_variant: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"nas {stage}", description=f"Run the `{stage}` stage.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if needs_variant:
        parser.add_argument("--variant", required=True, help="a key of `variants` in params.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param for this run (dotted key, YAML value); unknown keys are errors",
    )
    parser.add_argument("--runs-dir", default="runs", help="where Sacred run records go (default: runs)")
    return parser.parse_args(argv)


def run_stage(
    stage: str,
    main: StageMain,
    argv: Sequence[str] | None = None,
    *,
    needs_variant: bool = True,
    nproc_key: tuple[str, ...] | None = None,
) -> None:
    """Entry point of every experiment module. `nproc_key` points into the resolved params at the
    process count of a distributed stage (e.g. ("pretrain_stage1", "train", "nproc_per_node"))."""
    args = parse_args(stage, argv, needs_variant)
    try:  # before any stage work and before Sacred: a user error leaves no failed run record
        cfg = load_config(args.params, getattr(args, "variant", None), args.overrides)
    except ConfigError as exc:
        raise SystemExit(report_user_error(f"nas {stage}", exc)) from None
    cfg["stage"] = stage
    observer_dir = Path(args.runs_dir) / "sacred" / stage / (cfg.get("variant") or "all")

    nproc, backend = 1, "auto"
    if nproc_key is not None:
        node: Any = cfg
        for key in nproc_key:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        train = node if isinstance(node, dict) else {}
        nproc = int(train.get("nproc_per_node", 1))
        backend = str(train.get("backend", "auto"))

    if nproc == 1 and "WORLD_SIZE" not in os.environ:
        _run_on_rank(0, stage, main, cfg, observer_dir)
        return
    from nas.engine.launch import launch

    launch(_run_on_rank, stage, main, cfg, observer_dir, nproc_per_node=nproc, backend=backend)


def _run_on_rank(local_rank: int, stage: str, main: StageMain, cfg: dict, observer_dir: Path) -> None:
    import ignite.distributed as idist

    if idist.get_rank() != 0:
        main(cfg, Recorder(None))
        return
    from sacred import SETTINGS, Experiment
    from sacred.observers import FileStorageObserver

    SETTINGS.CAPTURE_MODE = "sys"  # "fd" tees through a pipe that breaks progress bars and children
    SETTINGS.DISCOVER_SOURCES = "dir"  # record the sources of this project, not every import
    ex = Experiment(stage, save_git_info=_git_head_exists())
    mark_interrupted_runs(observer_dir)
    ex.observers.append(FileStorageObserver(str(observer_dir)))
    ex.add_config(cfg)

    @ex.main
    def _sacred_main(_run):
        _run.info["pid"] = os.getpid()  # lets the next start tell a killed run from a live one
        main(to_plain(_run.config), Recorder(_run))

    ex.run(options={"--name": f"{stage}:{cfg.get('variant') or 'all'}"})


# A run without a pid (older records) counts as dead once its heartbeat (Sacred: every 10 s) is this old.
_STALE_HEARTBEAT_SECONDS = 300


def mark_interrupted_runs(observer_dir: Path) -> list[Path]:
    """Sacred records that still say RUNNING although their process is gone (killed, machine lost) are
    marked INTERRUPTED, with a `fail_trace` saying so; returns their folders. A record's process is gone
    when its pid (info.json) no longer runs on this host, or, without a pid, when its last heartbeat is
    older than five minutes."""
    import datetime
    import json
    import socket

    marked = []
    for run_json in sorted(Path(observer_dir).glob("*/run.json")):
        try:
            entry = json.loads(run_json.read_text())
            info_file = run_json.parent / "info.json"
            info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        except (OSError, ValueError):
            continue
        if entry.get("status") != "RUNNING":
            continue
        pid, host = info.get("pid"), (entry.get("host") or {}).get("hostname")
        if isinstance(pid, int) and host == socket.gethostname():
            try:
                os.kill(pid, 0)
                continue  # alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        else:
            beat = entry.get("heartbeat") or entry.get("start_time")
            try:
                age = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - (
                    datetime.datetime.fromisoformat(beat)
                )
            except (TypeError, ValueError):
                continue
            if age.total_seconds() < _STALE_HEARTBEAT_SECONDS:
                continue
        entry["status"] = "INTERRUPTED"
        entry["stop_time"] = entry.get("heartbeat") or entry.get("start_time")
        entry["fail_trace"] = [
            "The process of this run was gone while its record still said RUNNING (killed or lost); "
            "marked INTERRUPTED when the stage next started. A rerun resumes from its last checkpoint."
        ]
        from nas.engine.checkpoint import atomic_write_text

        atomic_write_text(run_json, json.dumps(entry, indent=2, sort_keys=True))
        marked.append(run_json.parent)
    if marked:
        print(f"sacred: marked {len(marked)} killed run record(s) INTERRUPTED: {[p.name for p in marked]}")
    return marked


_PREFLIGHTED: set[str] = set()


def preflight_once(dataset: Any, data: Any) -> None:
    """The pre-flight of a training list (images decoded before step 1; nas.data.training_set.preflight),
    once per list and process, for stages that train several runs (arms x seeds) on one list. Their
    captions are BPE, so only the images are checked."""
    from nas.data.training_set import preflight

    key = str(getattr(dataset, "annotation_file", id(dataset)))
    if key not in _PREFLIGHTED:
        print(f"pre-flight of {key}: {preflight(dataset, data, seed=0)}")
        _PREFLIGHTED.add(key)


def _git_head_exists() -> bool:
    """Sacred records the commit only where there is one: outside a repository, or in a fresh
    `git init` without commits, its git lookup raises instead of skipping."""
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def to_plain(obj: Any) -> Any:
    """Sacred hands back read-only dict/list subclasses; stages get plain containers."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a stage module, e.g. python -m experiments.pretrain --help")
