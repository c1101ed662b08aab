"""Stage `report`: reports/results.md and reports/figures/*.png from the metric files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.common import Recorder, parse_stage_args, run_stage
from nas.config import from_dict
from nas.config.params import input_root, output_root
from nas.reporting.results import ReportConfig, write_report


def stage(cfg: dict[str, Any], record: Recorder) -> None:
    report_cfg = from_dict(ReportConfig, cfg.get("report", {}), "report")
    # An ad-hoc run reports its own folder's metrics where it has them (else the pipeline's) into its own
    # reports/ (reports/ is a DVC output).
    root = output_root(cfg)
    metrics = input_root(root, Path("metrics"), "metrics") / "metrics"
    out = write_report(metrics, root / "reports", report_cfg)
    print(out.read_text())
    record.add_artifact(out)


def main(argv=None) -> None:
    args = parse_stage_args("report", argv)
    run_stage(args.stage, stage, args=args)


if __name__ == "__main__":
    main()
