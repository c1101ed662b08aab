"""The `data` stage for the real corpora (`data.source: files`): fetch, shard, list.

In order: (1) fetch and verify every file of `data.download.selection` (nas/data/download.py:
checksums, resume, atomic moves, safe extraction); gated or manual steps stop the stage with the
one thing a person must do; (2) turn the URL-list corpora (CC3M, SBU) into webdataset shards with
img2dataset (resumable: a finished shard folder is kept, its success/failure counts are read from
img2dataset's own stats files); (3) merge ALBEF's pair lists into `data.train_file` with local image
paths; (4) list the benchmark folders the selection fetched in the probe manifest of
`data.probes_root` (nas/evaluation/benchmark_folders.py), which `evaluate` scores. `dry_run` prints what
would be fetched, from where, and the disk it needs, and touches nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.config.data import DataConfig


def shard_folder_done(folder: Path) -> bool:
    """img2dataset writes `<n>_stats.json` next to each finished shard; a .tar without its stats is
    an interrupted run, which a new img2dataset run resumes (its default incremental mode)."""
    from nas.data.download import read_img2dataset_stats

    if not folder.is_dir():
        return False
    stats = read_img2dataset_stats(folder)
    return bool(stats.shards) and not stats.unfinished


def prepare_files(data: DataConfig, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the four steps for `data` (source: files); returns the counts for metrics/data.json. The `data`
    recipe then lists the real benchmark folders in the probe manifest of `data.probes_root`
    (`nas.evaluation.benchmark_folders.write_benchmarks`, which checks them with the evaluation loaders)."""
    from nas.data.catalog import select
    from nas.data.download import (
        dry_run,
        fetch,
        prepare_cc3m_url_list,
        read_img2dataset_stats,
        run_img2dataset,
    )
    from nas.data.pair_lists import merge_pair_lists

    cfg, root = data.download, Path(data.root)
    if not cfg.selection:
        raise ValueError(
            "data.download.selection is empty: name the corpora to fetch (e.g. [pretrain, benchmarks])"
        )
    if cfg.dry_run:
        items = dry_run(cfg.selection, root, echo=echo)
        return {"dry_run": True, "items": len(items), "bytes_known": sum(i.bytes_needed or 0 for i in items)}

    report = fetch(cfg.selection, root, retries=cfg.retries, timeout=cfg.timeout)
    report.raise_for_manual()
    echo(f"data: fetched {len(report.fetched)}, already present {len(report.present)}")

    summary: dict[str, Any] = {"fetched": len(report.fetched), "present": len(report.present), "shards": {}}
    _, jobs = select(cfg.selection)
    for job in jobs:
        folder = root / job.output_folder
        if not shard_folder_done(folder):
            if not cfg.run_img2dataset:
                raise RuntimeError(
                    f"{job.key}: shards missing in {folder}; run img2dataset as printed by --dry-run, or set "
                    "data.download.run_img2dataset: true"
                )
            if job.key == "cc3m.shards" and not (root / job.url_list).is_file():
                prepare_cc3m_url_list(root / "cc3m" / "Train_GCC-training.tsv", root / job.url_list)
            run_img2dataset(
                job,
                root,
                image_size=cfg.img2dataset_image_size,
                processes=cfg.img2dataset_processes,
                threads=cfg.img2dataset_threads,
            )
        stats = read_img2dataset_stats(folder)
        summary["shards"][job.key] = {
            "successes": stats.successes,
            "failures": stats.failed_to_download + stats.failed_to_resize,
            "success_rate": stats.success_rate,
        }
        echo(f"data: {job.key}: {stats.successes} of {stats.count} URLs became images ({folder})")

    if cfg.pair_lists:
        merged = merge_pair_lists(
            cfg.pair_lists,
            data.path(data.train_file),
            root,
            cfg.path_anchors,
            skip_missing=data.skip_bad_images,
        )
        echo(f"data: {merged['pairs']} pairs from {list(cfg.pair_lists)} -> {data.path(data.train_file)}")
        summary["train_pairs"] = merged["pairs"]
        summary["pair_lists"] = merged["sources"]
    return summary
