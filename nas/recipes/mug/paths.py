"""Where the MUG stages write (relative to the run's output root, `nas.config.params.output_root`).

  runs/mug_vocabulary/vocabulary.json            the training file, its BPE ids and label ids (census)
  runs/mug_vocabulary/captions.json              the census: pairs, empty captions skipped, truncated
  runs/mug_vocabulary/<train>.nonempty.json      the training pairs without the skipped captions (if any)
  checkpoints/mug/<arm>/seed<k>/<digest>/        one run's resumable epoch checkpoints (DVC persist)
  runs/mug_pretrain/<arm>/seed<k>/               {checkpoint.pt,config.json} (the run layer's hand-off),
                                                 summary.json (the run's losses)
  runs/mug_evaluate/                             score files, per-case outcomes, sample figure
  metrics/mug/pretrain.json                      the census and every run's summary (by mug_evaluate)
  metrics/mug/evaluate.json, metrics/fine_grained/mug.json

An ad-hoc run (`--set`, another `--params`) writes the same tree under runs/adhoc/<tag>/ instead; a
stage then reads the upstream outputs of its own folder where it has them, else the pipeline's.
"""

from __future__ import annotations

from pathlib import Path

from nas.config.params import PIPELINE_ROOT

STAGES = ("mug_vocabulary", "mug_pretrain", "mug_evaluate")
VOCABULARY_DIR = Path("runs/mug_vocabulary")
VOCABULARY = "vocabulary.json"
CAPTIONS = "captions.json"
RUNS = Path("runs/mug_pretrain")
EVAL_DIR = Path("runs/mug_evaluate")
CHECKPOINTS = Path("checkpoints/mug")
TENSORBOARD = Path("runs/tensorboard/mug_pretrain")  # training curves per arm and seed (no DVC output)
METRICS = Path("metrics/mug")
FINE_GRAINED = Path("metrics/fine_grained/mug.json")
SUMMARY = "summary.json"  # a run folder's training summary


def run_dir(arm: str, seed: int, root: Path = PIPELINE_ROOT) -> Path:
    """The hand-off folder of one run (load with `nas.engine.run.load_run`)."""
    return root / RUNS / arm / f"seed{seed}"


def run_checkpoints(arm: str, seed: int, root: Path = PIPELINE_ROOT) -> Path:
    return root / CHECKPOINTS / arm / f"seed{seed}"
