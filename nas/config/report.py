"""The `report` section of params.yaml, read by the `report` stage (nas.reporting.results.write_report)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    title: str = "nas-harness results"
