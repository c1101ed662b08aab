"""Checkpoints that survive a kill: Ignite `Checkpoint` + an atomic saver, and the helpers around it.

Layout under a stage's output directory:
    checkpoints/checkpoint_<epoch>.pt   the last `keep` epochs, written by Ignite `Checkpoint`
    last.pt                             the same objects after the final epoch, for the next stage

Why `SafeDiskSaver`: Ignite's `Checkpoint` deletes the oldest kept file *before* writing the new one,
so with `n_saved=1` a crash while saving would leave no checkpoint at all. The saver below writes
atomically (temporary file + os.replace, Ignite's `DiskSaver(atomic=True)`) and postpones every
deletion until the new file is in place.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.handlers import Checkpoint, DiskSaver
from torch import nn

from nas.engine.launch import unwrap_model

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")


class SafeDiskSaver(DiskSaver):
    """Atomic `DiskSaver` (rank 0 writes) that removes superseded files only after a successful save."""

    def __init__(self, dirname: str | Path, **torch_save_kwargs: Any) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, **torch_save_kwargs)
        self._pending_removal: list[str] = []

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


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` to a temporary file in the same folder, then `os.replace`: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
) -> dict[str, list[str]]:
    """Load the objects `names` of `to_load` from the checkpoint file `path`.

    Modules load strictly unless `strict=False`; then the keys that did not match are logged and
    returned as {"missing": [...], "unexpected": [...]}.
    """
    names = list(names)
    unknown = [name for name in names if name not in to_load]
    if unknown:
        raise ValueError(f"cannot load {unknown} from {path}: known objects are {sorted(to_load)}")
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
