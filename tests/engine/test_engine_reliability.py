"""What a run refuses and what it cleans up: a checkpoint of another run, a second writer, non-finite
values anywhere in a step; orphaned temporary files, an unreadable newest checkpoint, duplicate
TensorBoard steps after a resume."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_toy import ToyMomentumModel, make_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nas.engine import NonFiniteTrainingError, ScheduleConfig, TrainConfig, fit
from nas.engine.checkpoint import RunLock, RunLockError, atomic_save, list_checkpoints, remove_orphans
from nas.engine.fit import RunIdentityError

SCHEDULE = ScheduleConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2)


def _cfg(epochs: int = 2, **changes) -> TrainConfig:
    base = dict(
        epochs=epochs, max_steps_per_epoch=3, schedule=SCHEDULE, progress_bar=False, log_every_steps=1
    )
    return TrainConfig(**{**base, **changes})


def _model(seed: int = 0, **kwargs) -> ToyMomentumModel:
    torch.manual_seed(seed)
    return ToyMomentumModel(**kwargs)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Killed(Exception):
    pass


# ---- identity ------------------------------------------------------------------------------------


def test_a_checkpoint_of_another_run_is_refused_by_name(tmp_path):
    fit(
        _model(), make_loader(size=20), _cfg(1), output_dir=tmp_path, identity={"config": "aaa", "code": "c1"}
    )
    with pytest.raises(RunIdentityError, match=r"code: c1 in the checkpoint, c2 now"):
        fit(
            _model(),
            make_loader(size=20),
            _cfg(2),
            output_dir=tmp_path,
            identity={"config": "aaa", "code": "c2"},
        )
    # The same identity resumes.
    result = fit(
        _model(), make_loader(size=20), _cfg(2), output_dir=tmp_path, identity={"config": "aaa", "code": "c1"}
    )
    assert result["resumed_from"].endswith("checkpoint_1.pt")


def test_a_foreign_checkpoint_without_identity_is_refused(tmp_path):
    fit(_model(), make_loader(size=20), _cfg(1), output_dir=tmp_path)  # no identity recorded
    with pytest.raises(RunIdentityError, match="carries no run identity"):
        fit(_model(), make_loader(size=20), _cfg(2), output_dir=tmp_path, identity={"config": "aaa"})


# ---- non-finite values ---------------------------------------------------------------------------


def test_an_exploding_learning_rate_stops_by_name_and_keeps_the_last_good_checkpoint(tmp_path):
    fit(_model(), make_loader(size=20), _cfg(1), output_dir=tmp_path)
    first = tmp_path / "checkpoints" / "checkpoint_1.pt"
    before = _md5(first)
    exploding = _cfg(3, schedule=ScheduleConfig(lr=1e38, min_lr=1e38, warmup_steps=0))
    with pytest.raises(NonFiniteTrainingError, match=r"at iteration [45] \(epoch 2\)") as info:
        fit(_model(), make_loader(size=20), exploding, output_dir=tmp_path)
    assert "the weight encoder" in str(info.value) or "loss term" in str(info.value)
    assert [epoch for epoch, _ in list_checkpoints(tmp_path / "checkpoints")] == [1]
    assert _md5(first) == before


def test_a_non_finite_gradient_stops_before_the_optimizer_step(tmp_path):
    model = _model()
    model.head.weight.register_hook(lambda grad: grad * float("inf"))
    before = model.head.weight.detach().clone()
    with pytest.raises(
        NonFiniteTrainingError, match=r"the gradient of head\.weight is not finite at iteration 1"
    ):
        fit(model, make_loader(size=20), _cfg(1), output_dir=tmp_path)
    assert torch.equal(model.head.weight.detach(), before)  # no step was taken


def test_a_non_finite_sampling_distribution_inside_forward_is_named():
    from nas.objectives.itm import sample_hard_negatives

    sim = torch.tensor([[1.0, float("nan")], [0.5, 0.2]])
    with pytest.raises(
        FloatingPointError, match=r"ITM hard-negative image weights \(text→image\) is not finite"
    ):
        sample_hard_negatives(sim, sim, torch.arange(2))


# ---- files ---------------------------------------------------------------------------------------


def test_orphaned_temporary_files_are_removed_at_the_next_start(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir(parents=True)
    orphans = [
        checkpoints / ".checkpoint_2.pt.k3j4h5.tmp",
        checkpoints / "tmpab12cd34",
        tmp_path / ".last.pt.x1y2.tmp",
    ]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    keep = checkpoints / "notes.txt"
    keep.write_text("not ours")
    fit(_model(), make_loader(size=20), _cfg(1), output_dir=tmp_path)
    assert not any(orphan.exists() for orphan in orphans)
    assert keep.exists()
    assert remove_orphans(tmp_path / "missing") == []


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    fit(_model(), make_loader(size=20), _cfg(2), output_dir=tmp_path)
    newest = tmp_path / "checkpoints" / "checkpoint_2.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # truncated
    result = fit(_model(), make_loader(size=20), _cfg(3), output_dir=tmp_path)
    assert result["resumed_from"].endswith("checkpoint_1.pt")
    assert "skipping unreadable checkpoint" in caplog.text
    assert [entry["epoch"] for entry in result["history"]] == [1, 2, 3]


def test_saved_files_are_readable_like_ordinary_files(tmp_path):
    atomic_save({"x": torch.zeros(1)}, tmp_path / "a.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o666 & ~umask
    fit(_model(), make_loader(size=20), _cfg(1), output_dir=tmp_path / "run")
    for path in [tmp_path / "run" / "last.pt", tmp_path / "run" / "checkpoints" / "checkpoint_1.pt"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# ---- run lock ------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunLockError, match=rf"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    assert not (tmp_path / "run.lock").exists()


def test_a_running_stage_holds_its_folder(tmp_path):
    seen = []

    def during(epoch, metrics):
        try:
            RunLock(tmp_path).acquire()
        except RunLockError as exc:
            seen.append(str(exc))

    fit(_model(), make_loader(size=20), _cfg(1), output_dir=tmp_path, on_epoch_end=during)
    assert seen and "another run is writing" in seen[0]
    assert not (tmp_path / "run.lock").exists()  # released when fit returns


def test_a_stale_lock_of_a_dead_process_is_cleared(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    (tmp_path / "run.lock").write_text(f"pid={int(dead.stdout)}\nhost={socket.gethostname()}\nsince=then\n")
    fit(_model(), make_loader(size=20), _cfg(1), output_dir=tmp_path)
    assert (tmp_path / "last.pt").is_file()


# ---- TensorBoard ---------------------------------------------------------------------------------


def test_tensorboard_holds_each_step_once_after_a_resume(tmp_path):
    def crash_mid_epoch_2(iteration, output):
        if iteration == 5:  # logged steps 4 and 5 of epoch 2, after the epoch-1 checkpoint
            raise Killed

    with pytest.raises(Killed):
        fit(_model(), make_loader(size=20), _cfg(2), output_dir=tmp_path, on_log_step=crash_mid_epoch_2)
    fit(_model(), make_loader(size=20), _cfg(2), output_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/total")] == [1, 2, 3, 4, 5, 6]
