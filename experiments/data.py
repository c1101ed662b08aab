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

from experiments.common import Recorder, run_stage
from nas.config import from_dict
from nas.config.data import DataConfig

METRICS = Path("metrics/data.json")


def stage(cfg: dict, record: Recorder) -> None:
    from nas.engine.checkpoint import atomic_write_text

    data = from_dict(DataConfig, cfg["data"], "data")
    if data.source == "files":
        from nas.data.real import prepare_files

        summary = prepare_files(data)
        if summary.get("dry_run"):
            return  # a plan, not a data set: nothing to record
        atomic_write_text(METRICS, json.dumps(summary, indent=2) + "\n")
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
    atomic_write_text(METRICS, json.dumps(summary, indent=2) + "\n")
    for key, value in summary.items():
        if isinstance(value, int):
            record.log_scalar(f"data.{key}", value)
    record.add_artifact(Path(data.root) / "manifest.json")


def main(argv=None) -> None:
    run_stage("data", stage, argv, needs_variant=False)


if __name__ == "__main__":
    main()
