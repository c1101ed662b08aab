"""Stage `finetune`: text-augmented fine-tuning (NAS_METHOD.md §5).

Not built yet (issue 4): this stage passes the variant's stage-2 checkpoint through unchanged and
says so in its output and metrics, so the pipeline's shape is final and `evaluate` reads one path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from experiments.common import Recorder, run_stage


def stage(cfg: dict[str, Any], record: Recorder) -> None:
    variant = cfg["variant"]
    source, target = Path("runs/pretrain_stage2") / variant, Path("runs/finetune") / variant
    if not (source / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"finetune: {source / 'checkpoint.pt'} is missing; run pretrain_stage2 first")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint.pt", "config.json"):
        shutil.copyfile(source / name, target / name)
    note = "PASS-THROUGH: fine-tuning is not implemented yet (issue 4); this is the stage-2 checkpoint"
    print(f"finetune[{variant}]: {note}")
    record.info("pass_through", note)
    out = Path("metrics/finetune") / f"{variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"variant": variant, "pass_through": True, "note": note}, indent=2) + "\n")


def main(argv=None) -> None:
    run_stage("finetune", stage, argv)


if __name__ == "__main__":
    main()
