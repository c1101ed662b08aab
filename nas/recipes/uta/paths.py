"""Where the UTA stages write (relative to the run's output root, `nas.config.params.output_root`).

checkpoints/uta_teacher/<digest>/                  the tiny CLIP's resumable checkpoints (persist)
runs/uta_teacher/teacher.json                      which teacher: the run below, or an EVA-CLIP file
runs/uta_teacher/{checkpoint.pt,config.json}       the trained teacher (run layer; export "teacher")
checkpoints/uta/<arm>/seed<k>/<digest>/            one student run's resumable checkpoints (persist)
runs/uta_pretrain/<arm>/seed<k>/                   {checkpoint.pt,config.json} (export "student"),
                                                   summary.json (the run's losses); written by
                                                   uta_pretrain (uta.arms) or uta_context (uta.context_arms)
checkpoints/uta_finetune/seed<k>/<digest>/         one fine-tuning run's checkpoints (persist)
runs/uta_finetune/seed<k>/{student,text}/          the fine-tuned student and text tower: two hand-off
                                                   folders over one checkpoint (exports "student", "text")
runs/uta_finetune/seed<k>/summary.json             the run's losses and convergence (or "disabled")
runs/uta_evaluate/{cases,scores}/                  per-case outcomes, per-pair probe scores
metrics/uta/teacher.json                           written by uta_teacher
metrics/uta/{pretrain,finetune,evaluate,figure}.json, metrics/fine_grained/uta.json: uta_evaluate
"""

from __future__ import annotations

from pathlib import Path

from nas.config.params import PIPELINE_ROOT

TEACHER_RUN = Path("runs/uta_teacher")
TEACHER_RECORD = TEACHER_RUN / "teacher.json"
PRETRAIN_RUN = Path("runs/uta_pretrain")
FINETUNE_RUN = Path("runs/uta_finetune")
EVAL_RUN = Path("runs/uta_evaluate")
TEACHER_CHECKPOINTS = Path("checkpoints/uta_teacher")
STUDENT_CHECKPOINTS = Path("checkpoints/uta")
FINETUNE_CHECKPOINTS = Path("checkpoints/uta_finetune")
TENSORBOARD = Path("runs") / "tensorboard"  # training curves per stage, arm and seed
METRICS = Path("metrics/uta")
FINE_GRAINED = Path("metrics/fine_grained/uta.json")
SUMMARY = "summary.json"  # a run folder's training summary (or why it did not train)


def student_run(arm: str, seed: int, root: Path = PIPELINE_ROOT) -> Path:
    """The hand-off folder of the student of `arm` and `seed` (load with `nas.engine.run.load_run`)."""
    return root / PRETRAIN_RUN / arm / f"seed{seed}"


def student_checkpoints(arm: str, seed: int, root: Path = PIPELINE_ROOT) -> Path:
    return root / STUDENT_CHECKPOINTS / arm / f"seed{seed}"


def finetune_run(seed: int, root: Path = PIPELINE_ROOT) -> Path:
    """The folder of fine-tuning run `seed`: `student/` and `text/` hand-offs, `summary.json`."""
    return root / FINETUNE_RUN / f"seed{seed}"


def finetune_checkpoints(seed: int, root: Path = PIPELINE_ROOT) -> Path:
    return root / FINETUNE_CHECKPOINTS / f"seed{seed}"
