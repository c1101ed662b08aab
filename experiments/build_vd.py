"""Stage `build_vd`: the initial visual dictionary of a variant (NAS_METHOD.md §3).

Variants without a visual dictionary (the ALBEF baseline) record that they have none, so every
variant runs the same stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.common import Recorder, run_stage


def stage(cfg: dict[str, Any], record: Recorder) -> None:
    variant = cfg["variant"]
    out_dir = Path("runs/build_vd") / variant
    out_dir.mkdir(parents=True, exist_ok=True)
    vd = (cfg.get("model", {}).get("overrides", {}) or {}).get("vd", {}) or {}
    if not vd.get("enabled", False):
        note = f"variant {variant!r} has no visual dictionary: nothing to build"
        (out_dir / "vd_init.json").write_text(json.dumps({"variant": variant, "vd": False, "note": note}) + "\n")
        print(f"build_vd[{variant}]: {note}")
        metrics = {"vd": False}
    else:
        raise NotImplementedError("build_vd for a VD variant is not implemented yet (issue 3)")
    out = Path("metrics/build_vd") / f"{variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv=None) -> None:
    run_stage("build_vd", stage, argv)


if __name__ == "__main__":
    main()
