"""Kill -9 campaign: a training run killed at any point and run again ends bit-identical to a run that
was never killed.

For each recipe (ALBEF, NAS stage 1, NAS stage 2, MUG, UTA: tiny models, a shuffled loader, dropout,
MLM / ITM / NVA / masking draws) the campaign trains once without interruption, then, for every kill
point, starts a fresh run that SIGKILLs itself at that point, starts it again without a kill (it resumes
from what the kill left on disk), and compares the final `last.pt` with the uninterrupted one:
weights, momentum copies, queues, VD state, optimizer moments, schedule, trainer counters, every RNG,
the logged history (wall-clock seconds excepted). It also checks that no temporary file and no run
lock survive the resume.

Kill points (`KillPoint.parse`):
  step:K        after training step K (Ignite iteration K) completed
  save:N:F      during the N-th atomic write (epoch checkpoints, then last.pt): fraction F of the bytes
                written to the temporary file, then killed
  rename:N      the N-th write complete in its temporary file, killed before `os.replace`
  after:N       killed right after the N-th `os.replace`

Each run is a forked child of the campaign process (a fresh process for the trainer: its own RNG
states, model init and file handles; no re-import). Run it:

    .venv/bin/python -m nas.testing.crash_resume            # every recipe, 12 kill points each
    .venv/bin/python -m nas.testing.crash_resume --recipes albef --points step:2 save:2:0.5
    .venv/bin/python -m nas.testing.crash_resume --short      # what the test suite runs (5 kill points)
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EPOCHS, STEPS_PER_EPOCH, BATCH, TEXT_LENGTH, IMAGE_SIZE = 2, 3, 4, 8, 32
# Atomic writes of one run, in order: checkpoint_1.pt, checkpoint_2.pt, last.pt.
WRITES = EPOCHS + 1
DEFAULT_POINTS = (
    "step:1",
    "step:3",
    "step:4",
    "step:6",
    "save:1:0.5",
    "save:2:0.1",
    "save:3:0.9",
    "rename:1",
    "rename:2",
    "rename:3",
    "after:1",
    "after:3",
)
# The short form the test suite runs: one kill point of each kind, spread over the recipes.
SHORT_FORM = {
    "albef": ("step:4",),
    "nas_stage1": ("save:2:0.5",),
    "nas_stage2": ("rename:3",),
    "mug": ("after:1",),
    "uta": ("step:5",),
}


@dataclass(frozen=True)
class KillPoint:
    kind: str  # step | save | rename | after
    index: int
    fraction: float = 0.5

    @classmethod
    def parse(cls, text: str) -> KillPoint:
        parts = text.split(":")
        kinds = {"step": 2, "save": 3, "rename": 2, "after": 2}
        if parts[0] not in kinds or len(parts) != kinds[parts[0]]:
            raise ValueError(f"kill point {text!r}: expected step:K, save:N:F, rename:N or after:N")
        fraction = float(parts[2]) if parts[0] == "save" else 0.5
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"kill point {text!r}: the fraction must be in [0, 1)")
        return cls(parts[0], int(parts[1]), fraction)

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}" + (f":{self.fraction:g}" if self.kind == "save" else "")


# ---- recipes -------------------------------------------------------------------------------------------


class _Items:
    """A map-style dataset of pre-made items (the loader shuffles it from the global RNG)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
    batch["num_skipped"] = 0
    return batch


def _loader(items: list[dict[str, Any]]):
    from torch.utils.data import DataLoader

    return DataLoader(_Items(items), batch_size=BATCH, shuffle=True, drop_last=True, collate_fn=_collate)


def _caption_items(n: int, seed: int, vocab: tuple[int, int] = (200, 1000)) -> list[dict[str, Any]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n // 2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    items = []
    for i in range(n):  # two captions per image: in-batch hard negatives repeat rows
        ids = torch.randint(*vocab, (TEXT_LENGTH,), generator=generator)
        ids[0] = 101
        items.append(
            {
                "image": images[i // 2],
                "input_ids": ids,
                "attention_mask": torch.ones(TEXT_LENGTH, dtype=torch.long),
                "image_id": torch.tensor(i // 2),
            }
        )
    return items


_ALBEF_SMALL = {
    "vision": {"img_size": IMAGE_SIZE, "depth": 1},
    "text": {"vocab_size": 1000, "num_text_layers": 1, "num_fusion_layers": 1},
    "queue_size": 16,
}


def _albef():
    from nas.models.registry import create_model

    return create_model("albef_tiny", **_ALBEF_SMALL), _loader(_caption_items(16, 0))


def _nas(stage2: bool):
    from nas.models.registry import create_model

    overrides: dict[str, Any] = {**_ALBEF_SMALL, "vd": {"num_codes": 16, "frozen": stage2}}
    if stage2:
        overrides["nva_enabled"] = True
    model = create_model("nas_tiny", **overrides)
    if not stage2:
        model.set_total_steps(EPOCHS * STEPS_PER_EPOCH)
    return model, _loader(_caption_items(16, 1))


def _mug():
    import torch

    from nas.models.registry import create_model

    words = [320, 1746, 736]
    model = create_model(
        "mug_tiny",
        vision={"embed_dim": 24, "depth": 1, "num_heads": 2},
        decoder={"embed_dim": 16, "depth": 1},
        caption={"width": 16, "context_length": 8, "corpus_slots": 8},
    )
    model.set_vocabulary(words)
    generator = torch.Generator().manual_seed(2)
    items = []
    for k in range(16):
        ids, mask = torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)
        sequence = [49406, *words[: 1 + k % 3], 49407]
        ids[: len(sequence)], mask[: len(sequence)] = torch.tensor(sequence), 1
        image = torch.randn(3, 64, 64, generator=generator)
        items.append({"image": image, "input_ids": ids, "attention_mask": mask})
    return model, _loader(items)


def _uta():
    import torch

    from nas.models.block_masking import MaskingConfig
    from nas.models.clip_teacher import ClipTeacher, TinyClipConfig, build_open_clip
    from nas.models.registry import create_model
    from nas.models.uta import UTAPretrainer

    teacher = ClipTeacher(
        build_open_clip(
            TinyClipConfig(
                embed_dim=16,
                image_size=IMAGE_SIZE,
                patch_size=8,
                vision_width=32,
                vision_layers=1,
                vision_head_width=16,
                context_length=8,
                text_width=32,
                text_layers=1,
                text_heads=2,
                vocab_size=64,
            ).open_clip_config()
        )
    )
    student = create_model(
        "uta_tiny", image_size=IMAGE_SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2, teacher_dim=16
    )
    model = UTAPretrainer(student, teacher, MaskingConfig(ratio=0.5, min_patches=2), None)
    generator = torch.Generator().manual_seed(3)
    items = [
        {
            "image": torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            "image_id": torch.tensor(i),
            "input_ids": torch.randint(1, 63, (8,), generator=generator),
        }
        for i in range(16)
    ]
    return model, _loader(items)


RECIPES: dict[str, Callable[[], Any]] = {
    "albef": _albef,
    "nas_stage1": lambda: _nas(stage2=False),
    "nas_stage2": lambda: _nas(stage2=True),
    "mug": _mug,
    "uta": _uta,
}
# The recipes whose models distil (ALBEF's α, ramped over the first epoch: the engine's step input).
DISTILLING = ("albef", "nas_stage1", "nas_stage2")
# nas_stage2 continues nas_stage1's uninterrupted run, as the pipeline's stage 2 does.
INIT_FROM = {"nas_stage2": "nas_stage1"}
INIT_OBJECTS = ("model", "optimizer", "lr_scheduler", "rng")


def _train_config():
    from nas.engine import ScheduleConfig, TrainConfig

    return TrainConfig(
        epochs=EPOCHS,
        max_steps_per_epoch=STEPS_PER_EPOCH,
        schedule=ScheduleConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2),
        progress_bar=False,
        log_every_steps=1,
    )


# ---- one run (in a forked child) ------------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: KillPoint | None) -> Callable[[int, dict], None] | None:
    """Patch the checkpoint writer for write-time kill points; return an `on_log_step` for step kills."""
    if point is None:
        return None
    if point.kind == "step":

        def at_step(iteration: int, _output: dict) -> None:
            if iteration == point.index:
                _die()

        return at_step
    import torch

    import nas.atomic as atomic

    writes = {"n": 0}
    real_replace, real_save = atomic.os.replace, torch.save

    def save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        writes["n"] += 1
        if point.kind == "save" and writes["n"] == point.index:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            handle.write(data[: int(len(data) * point.fraction)])
            handle.flush()
            os.fsync(handle.fileno())
            _die()
        real_save(obj, handle, *args, **kwargs)

    def replace(source: Any, target: Any) -> None:
        if point.kind == "rename" and writes["n"] == point.index:
            _die()
        real_replace(source, target)
        if point.kind == "after" and writes["n"] == point.index:
            _die()

    class _Os:  # the module's `os`, with `replace` patched and everything else as it is
        def __getattr__(self, name: str) -> Any:
            return replace if name == "replace" else getattr(os, name)

    # This child process only: every checkpoint write is nas.atomic.atomic_save -> torch.save.
    atomic.os, torch.save = _Os(), save
    return None


def _child(
    recipe: str, run_dir: str, point: str | None, init: str | None, threads: int, compare_with: str | None
) -> None:
    import random

    import numpy as np
    import torch

    from nas.config.distillation import DistillationConfig
    from nas.engine import fit, read_checkpoint

    torch.set_num_threads(threads)
    kill = None if point is None else KillPoint.parse(point)
    on_log_step = _install(kill)
    # As a stage does: the model is initialised from the run's seed. The other global streams start
    # wherever this process happens to be; fit reseeds them (fresh run) or restores them (resume).
    random.seed(os.getpid())
    np.random.seed(os.getpid() % 2**32)
    torch.manual_seed(0)
    model, loader = RECIPES[recipe]()
    torch.manual_seed(os.getpid())
    fit(
        model,
        loader,
        _train_config(),
        output_dir=run_dir,
        init_checkpoint=init,
        init_objects=INIT_OBJECTS,
        on_log_step=on_log_step,
        identity={"recipe": recipe},
        step_inputs=DistillationConfig(alpha=0.4).step_inputs if recipe in DISTILLING else None,
    )
    if compare_with is not None:  # compared here: the campaign process itself never computes with torch
        diff = differences(read_checkpoint(compare_with), read_checkpoint(Path(run_dir) / "last.pt"))
        (Path(run_dir) / "comparison.json").write_text(json.dumps(diff))


def run_process(
    recipe: str,
    run_dir: Path,
    point: str | None,
    init: Path | None,
    threads: int = 2,
    compare_with: Path | None = None,
) -> int:
    """Train `recipe` into `run_dir` in a forked child (killed at `point`, if given); its exit code
    (-9 when it killed itself). Forked from a process that has not run a torch kernel (an OpenMP pool
    inherited through fork can deadlock the child), so the campaign process never computes with torch."""
    context = multiprocessing.get_context("fork")
    args = (recipe, str(run_dir), point, None if init is None else str(init), threads)
    child = context.Process(target=_child, args=(*args, None if compare_with is None else str(compare_with)))
    child.start()
    child.join()
    return int(child.exitcode)


# ---- comparison -----------------------------------------------------------------------------------------


def differences(a: Any, b: Any, where: str = "last.pt") -> list[str]:
    """Paths where two checkpoint trees differ (tensors bitwise; history wall-clock seconds ignored)."""
    import torch

    if torch.is_tensor(a) or torch.is_tensor(b):
        same = torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a if k != "seconds" for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


@dataclass
class Outcome:
    recipe: str
    point: str
    killed: bool  # the first run died by SIGKILL
    identical: bool  # final state equals the uninterrupted run's
    leftovers: list[str]  # temporary files or a run lock still on disk after the resume
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.killed and self.identical and not self.leftovers


def _leftovers(run_dir: Path) -> list[str]:
    from nas.atomic import ORPHAN_PATTERNS
    from nas.engine.checkpoint import RunLock

    found = [p for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir() for p in folder.iterdir()]
    return [
        str(p.relative_to(run_dir))
        for p in found
        if p.name == RunLock.NAME or any(pattern.match(p.name) for pattern in ORPHAN_PATTERNS)
    ]


def reference_run(recipe: str, root: Path, threads: int = 2) -> Path:
    """The uninterrupted run of `recipe` (and of the recipe it continues) under `root`; its last.pt."""
    init = reference_run(INIT_FROM[recipe], root, threads) if recipe in INIT_FROM else None
    run_dir = root / "reference" / recipe
    if not (run_dir / "last.pt").is_file():
        code = run_process(recipe, run_dir, None, init, threads)
        if code != 0:
            raise RuntimeError(f"the uninterrupted {recipe} run failed (exit {code})")
    return run_dir / "last.pt"


def crash_and_resume(recipe: str, point: str, root: Path, threads: int = 2) -> Outcome:
    reference = reference_run(recipe, root, threads)
    init = reference_run(INIT_FROM[recipe], root, threads) if recipe in INIT_FROM else None
    run_dir = root / "runs" / recipe / point.replace(":", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    first = run_process(recipe, run_dir, point, init, threads)
    second = run_process(recipe, run_dir, None, init, threads, compare_with=reference)
    killed = first == -signal.SIGKILL
    if second != 0:
        return Outcome(recipe, point, killed, False, [], f"the resumed run failed (exit {second})")
    comparison = run_dir / "comparison.json"
    diff = json.loads(comparison.read_text())
    comparison.unlink()
    return Outcome(recipe, point, killed, not diff, _leftovers(run_dir), ", ".join(diff[:3]))


def campaign(recipes: dict[str, tuple[str, ...]], root: Path, threads: int = 2) -> list[Outcome]:
    return [crash_and_resume(r, p, root, threads) for r, points in recipes.items() for p in points]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--points", nargs="+", default=list(DEFAULT_POINTS), help="kill points (see above)")
    parser.add_argument(
        "--short", action="store_true", help="the test suite's short form: one kill point of each kind"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON")
    args = parser.parse_args(argv)
    for point in args.points:
        KillPoint.parse(point)
    started = time.perf_counter()
    plan = SHORT_FORM if args.short else {recipe: tuple(args.points) for recipe in args.recipes}
    with tempfile.TemporaryDirectory(prefix="crash_resume_") as tmp:
        outcomes = []
        print(f"{'recipe':<11} {'kill point':<11} {'killed':<7} {'identical':<10} leftovers")
        for recipe, points in plan.items():
            for point in points:
                outcome = crash_and_resume(recipe, point, Path(tmp), args.threads)
                outcomes.append(outcome)
                print(
                    f"{recipe:<11} {point:<11} {'yes' if outcome.killed else 'NO':<7} "
                    f"{'yes' if outcome.identical else 'NO':<10} {outcome.leftovers or '-'} {outcome.detail}",
                    flush=True,
                )
    good = sum(o.ok for o in outcomes)
    print(
        f"\n{good} of {len(outcomes)} kill points resumed to a bit-identical final state "
        f"({time.perf_counter() - started:.0f} s, {args.threads} threads)"
    )
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ | {"ok": o.ok} for o in outcomes], indent=2) + "\n")
    return 0 if good == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
