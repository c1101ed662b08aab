"""Stage `report`: reports/results.md and reports/figures/*.png from the metric files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.common import Recorder, run_stage
from nas.config import from_dict
from nas.reporting.results import ReportConfig, write_report


def stage(cfg: dict[str, Any], record: Recorder) -> None:
    report_cfg = from_dict(ReportConfig, cfg.get("report", {}), "report")
    out = write_report(Path("metrics"), Path("reports"), report_cfg)
    print(out.read_text())
    record.add_artifact(out)


def main(argv=None) -> None:
    run_stage("report", stage, argv, needs_variant=False)


if __name__ == "__main__":
    main()
