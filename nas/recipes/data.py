"""Stage `data`: produce the image-caption pairs every later stage reads.

Embedded default (`data.source: synthetic`): the seeded synthetic compositional scenes, written in
the same on-disk format as the real corpora (ALBEF JSON list + image folder), and the fine-grained
probes in the official ARO / Winoground / VALSE / SugarCrepe formats.
Paper scale (`data.source: files`): fetch, shard and list the real corpora (nas/data/real.py);
`--set data.download.dry_run=true` prints what would be fetched and the disk it needs.
"""

from __future__ import annotations

import json
from pathlib import Path

from nas.config import from_dict
from nas.config.data import DataConfig
from nas.config.params import PIPELINE_ROOT, output_root
from nas.recipes.stage import Recorder, parse_stage_args, run_stage

METRICS = Path("metrics/data.json")


def dvc_outs() -> tuple[Path, ...]:
    """This stage's data folders as dvc.yaml names them: `${data.root}` and `${data.probes_root}` of the
    params.yaml beside it (the working folder: the repository root or a profile's folder)."""
    from nas.config.params import TRACKED_PARAMS, load_params

    defaults = DataConfig()
    data = load_params(TRACKED_PARAMS).get("data", {}) if Path(TRACKED_PARAMS).is_file() else {}
    return (Path(data.get("root", defaults.root)), Path(data.get("probes_root", defaults.probes_root)))


def prepare_real(data: DataConfig, echo=print) -> dict:
    """`data.source: files`: fetch, shard and list the corpora (nas.data.real.prepare_files), then list the
    real benchmark folders in data.probes_root's manifest, checked with the evaluation loaders. Last, so a
    benchmark that cannot be scored (an image or text tool missing) stops the stage only once the corpora
    are done, and a rerun finds them in place."""
    from nas.data.real import prepare_files
    from nas.evaluation.benchmark_folders import write_benchmarks

    summary = prepare_files(data, echo)
    if not summary.get("dry_run"):
        summary.update(write_benchmarks(data, echo))
    return summary


def stage(cfg: dict, record: Recorder) -> None:
    from nas.engine.checkpoint import atomic_write_text

    data = from_dict(DataConfig, cfg["data"], "data")
    root = output_root(cfg)
    if root != PIPELINE_ROOT:  # an ad-hoc run (--set, --params): its data set never replaces the pipeline's
        for key, folder in (("data.root", data.root), ("data.probes_root", data.probes_root)):
            here = Path(folder).resolve()
            if any(here == out.resolve() or out.resolve() in here.parents for out in dvc_outs()):
                raise ValueError(
                    f"an ad-hoc data run would overwrite {folder} ({key}), a DVC output: give it a folder of "
                    f"its own (--set {key}={root.as_posix()}/{folder}) and the same --set to the stages that "
                    "read it, or run `dvc exp run -S ...`"
                )
    if data.source == "files":
        summary = prepare_real(data)
        if summary.get("dry_run"):
            return  # a plan, not a data set: nothing to record
        atomic_write_text(root / METRICS, json.dumps(summary, indent=2) + "\n")
        for key, value in summary.items():
            if key.startswith("probe_") and isinstance(value, int):
                record.log_scalar(f"data.{key}", value)
        return
    from nas.data.synthetic import generate

    manifest = generate(data.synthetic, data.root, overwrite=True)
    from nas.data.probes import write_probes

    probes = write_probes(data.root, data.probes_root, data.probes, overwrite=True)
    counts = manifest["counts"]
    print(f"data: synthetic scenes in {data.root} ({manifest['seconds']:.1f} s): {json.dumps(counts)}")
    summary = {f"{split}_{key}": value for split, c in counts.items() for key, value in c.items()}
    summary["sha256"] = manifest["sha256"]
    summary.update({f"probe_{name}_cases": int(n) for name, n in probes["counts"].items()})
    atomic_write_text(root / METRICS, json.dumps(summary, indent=2) + "\n")
    for key, value in summary.items():
        if isinstance(value, int):
            record.log_scalar(f"data.{key}", value)
    record.add_artifact(Path(data.root) / "manifest.json")


def main(argv=None) -> None:
    args = parse_stage_args("data", argv)
    run_stage(args.stage, stage, args=args)


if __name__ == "__main__":
    main()
