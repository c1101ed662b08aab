"""Checkpoints that survive a kill: Ignite `Checkpoint` + an atomic saver, and the helpers around it.

Layout under a stage's output directory:
    checkpoints/checkpoint_<epoch>.pt   the last `keep` epochs, written by Ignite `Checkpoint`
    last.pt                             the same objects after the final epoch, for the next stage

Why `SafeDiskSaver`: Ignite's `Checkpoint` deletes the oldest kept file *before* writing the new one,
so with `n_saved=1` a crash while saving would leave no checkpoint at all. The saver below writes
atomically (`atomic_save`: temporary file, fsync, os.replace, fsync of the folder) and postpones every
deletion until the new file is in place. A save killed half-way leaves only a temporary file, which
`remove_orphans` deletes at the next start; `RunLock` keeps a second writer out of a checkpoint folder.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.handlers import Checkpoint, DiskSaver
from torch import nn

from nas.atomic import (  # noqa: F401  (re-exported: the engine's writers)
    ORPHAN_PATTERNS,
    atomic_copy,
    atomic_link,
    atomic_save,
    atomic_write,
    atomic_write_text,
    fsync_dir,
    remove_orphans,
)
from nas.engine.launch import unwrap_model

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")


class SafeDiskSaver(DiskSaver):
    """Atomic `DiskSaver` (rank 0 writes) that removes superseded files only after a successful save."""

    def __init__(self, dirname: str | Path, **torch_save_kwargs: Any) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, **torch_save_kwargs)
        self._pending_removal: list[str] = []

    def _save_func(self, checkpoint: Mapping, path: Path, func: Any) -> None:
        atomic_save(checkpoint, path)  # Ignite's atomic save does not fsync

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, filename, metadata)
        pending, self._pending_removal = self._pending_removal, []
        for name in pending:
            if name != filename and idist.get_rank() == self.save_on_rank:
                (self.dirname / name).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._pending_removal.append(filename)


def list_checkpoints(dirname: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every `checkpoint_<epoch>.pt` in `dirname`, oldest first."""
    dirname = Path(dirname)
    if not dirname.is_dir():
        return []
    found = []
    for path in dirname.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(dirname: str | Path) -> Path | None:
    found = list_checkpoints(dirname)
    return found[-1][1] if found else None


def newest_readable_checkpoint(dirname: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest `checkpoint_<epoch>.pt` that loads, with its contents; an unreadable newer one (a
    damaged disk, a truncated copy) is skipped with a warning, so the run resumes from the one before."""
    for _, path in reversed(list_checkpoints(dirname)):
        try:
            return path, read_checkpoint(path)
        except (RuntimeError, ValueError) as exc:
            logger.warning("skipping unreadable checkpoint %s: %s; trying the previous one", path, exc)
    return None


def epoch_checkpointer(to_save: Mapping[str, Any], dirname: str | Path, *, keep: int) -> Checkpoint:
    """Ignite `Checkpoint` writing `checkpoint_<epoch>.pt`, keeping the newest `keep` files.

    Files already in `dirname` (from a run that was killed) count towards `keep`, so re-running a
    stage keeps pruning the old ones instead of forgetting them.
    """

    if len(to_save) < 2:
        # Ignite stores a lone object's bare state_dict, not {name: state_dict}; resuming expects the dict.
        raise ValueError(f"a training checkpoint holds several objects, got only {sorted(to_save)}")

    def epoch_of(engine: Any, _event: Any) -> int:
        return int(engine.state.epoch)

    saver = SafeDiskSaver(dirname)
    checkpointer = Checkpoint(
        to_save,
        saver,
        n_saved=keep,
        global_step_transform=epoch_of,
        filename_pattern="checkpoint_{global_step}.{ext}",
    )
    existing = [(epoch, path.name) for epoch, path in list_checkpoints(dirname)]
    surplus, kept = existing[: max(0, len(existing) - keep)], existing[-keep:]
    checkpointer.load_state_dict({"_saved": kept})
    for _, name in surplus:  # e.g. `keep` was lowered; removed once the next checkpoint is safe
        saver.remove(name)
    return checkpointer


def collect_state(to_save: Mapping[str, Any]) -> dict[str, Any]:
    """`{name: obj.state_dict()}` with DDP/compile wrappers removed. Collective: call on every rank."""
    return {
        name: (unwrap_model(obj) if isinstance(obj, nn.Module) else obj).state_dict()
        for name, obj in to_save.items()
    }


class RunLockError(RuntimeError):
    """Another live process holds the run lock of a checkpoint folder."""


class RunLock:
    """A PID file (`run.lock`) that keeps a second writer out of one checkpoint folder.

    `acquire` creates it exclusively with this process's pid, host and start time; if it exists and its
    pid is alive on this host, the second run is refused with the holder named; a lock whose process is
    gone (a killed run) is stale and replaced. A lock from another host is never taken over: delete it
    by hand once that run is known to be dead (the error says so)."""

    NAME = "run.lock"

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / self.NAME
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            fields = dict(line.split("=", 1) for line in self.path.read_text().splitlines() if "=" in line)
            return {
                "pid": int(fields["pid"]),
                "host": fields.get("host", ""),
                "since": fields.get("since", ""),
            }
        except (OSError, ValueError, KeyError):
            return None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"pid={os.getpid()}\nhost={socket.gethostname()}\nsince={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not _alive_here(holder):
                    logger.warning(
                        "removing the stale run lock %s (pid %s is gone)", self.path, holder["pid"]
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                who = (
                    "an unreadable lock"
                    if holder is None
                    else (f"pid {holder['pid']} on {holder['host']} since {holder['since']}")
                )
                raise RunLockError(
                    f"another run is writing {self.path.parent} ({who}); wait for it to finish, or, if that "
                    f"run is dead, delete {self.path}"
                ) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(me)
            self.held = True
            return self
        raise RunLockError(f"could not take the run lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _alive_here(holder: dict[str, Any]) -> bool:
    """Is the lock holder alive? Only decidable on its own host; elsewhere assume it is."""
    if holder["host"] != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU; a missing or unreadable file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict of objects")
    return state


def load_objects(
    to_load: Mapping[str, Any],
    path: str | Path,
    names: Iterable[str],
    *,
    strict: bool = True,
    state: Mapping[str, Any] | None = None,
) -> dict[str, list[str]]:
    """Load the objects `names` of `to_load` from the checkpoint file `path` (or from `state`, that
    file's contents when the caller has already read it; `path` then only names it in errors).

    Modules load strictly unless `strict=False`; then the keys that did not match are logged and
    returned as {"missing": [...], "unexpected": [...]}.
    """
    names = list(names)
    unknown = [name for name in names if name not in to_load]
    if unknown:
        raise ValueError(f"cannot load {unknown} from {path}: known objects are {sorted(to_load)}")
    if state is None:
        state = read_checkpoint(path)
    absent = [name for name in names if name not in state]
    if absent:
        raise KeyError(f"checkpoint {path} has no {absent}; it holds {sorted(state)}")
    report: dict[str, list[str]] = {"missing": [], "unexpected": []}
    for name in names:
        obj = to_load[name]
        try:
            if isinstance(obj, nn.Module):
                result = unwrap_model(obj).load_state_dict(state[name], strict=strict)
                report["missing"] += [f"{name}.{key}" for key in result.missing_keys]
                report["unexpected"] += [f"{name}.{key}" for key in result.unexpected_keys]
            else:
                obj.load_state_dict(state[name])
        except Exception as exc:
            raise RuntimeError(f"cannot load {name!r} from checkpoint {path}: {exc}") from exc
    if report["missing"] or report["unexpected"]:
        logger.warning(
            "non-strict load from %s: missing %s, unexpected %s",
            path,
            report["missing"],
            report["unexpected"],
        )
    return report
