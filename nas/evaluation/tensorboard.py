"""An evaluated model's figures as TensorBoard scalars and hparams, beside the training curves.

`runs/tensorboard/evaluate/<variant>/<checkpoint stage>/seed<k>/`: scalars `retrieval/<metric>` and
`probes/<benchmark>` (each benchmark's headline figure under the headline scorer), and one hparams
record (variant, checkpoint stage, seed, and what the caller adds) with the same figures as its metrics,
so TensorBoard's HPARAMS tab lines up every evaluated model. `tensorboard --logdir runs/tensorboard`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def headline_figures(replicate: Mapping[str, Any]) -> dict[str, float]:
    """{tag: value} of one evaluated replicate (percent)."""
    from nas.evaluation.benchmarks.runner import headline_node

    out: dict[str, float] = {}
    for key, value in ((replicate.get("retrieval") or {}).get("metrics") or {}).items():
        if isinstance(value, (int, float)):
            out[f"retrieval/{key}"] = float(value)
    for name, by_scorer in sorted((replicate.get("fine_grained") or {}).items()):
        if not by_scorer:
            continue
        result = next(iter(by_scorer.values()))  # the headline scorer comes first
        value = headline_node(name, result.get("metrics") or {})
        if isinstance(value, (int, float)):
            out[f"probes/{name}"] = float(value)
    return out


def log_evaluation(log_dir: str | Path, replicate: Mapping[str, Any], hparams: Mapping[str, Any]) -> Path:
    """Write one replicate's figures (replacing what the folder held: one evaluation per folder)."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    if log_dir.is_dir():
        shutil.rmtree(log_dir)
    figures = headline_figures(replicate)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for tag, value in figures.items():
            writer.add_scalar(tag, value, 0)
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        writer.add_hparams(clean, {f"hparam/{tag}": value for tag, value in figures.items()}, run_name=".")
    finally:
        writer.close()
    return log_dir
