"""Stage `report`: reports/results.md, reports/figures/*.png and metrics/findings.json from the metric
files and the evaluate stage's per-case outcomes (runs/evaluate/<variant>/cases/)."""

from __future__ import annotations

import functools
from collections.abc import Collection
from pathlib import Path
from typing import Any

from nas.config import from_dict
from nas.config.params import input_root, output_root
from nas.recipes.stage import Recorder, parse_stage_args, run_stage


def nva_variants(params_path: str | Path) -> set[str] | None:
    """The variants of the params file that run NVA in pretraining stage 2 (`nva_enabled` in
    `pretrain_stage2.model_overrides` or `model.overrides` as the variant resolves); None when the file
    cannot be read (the report then shows both ITM priors for stage 2)."""
    from nas.config.params import load_params, resolve, variants_of

    try:
        params = load_params(params_path)
        out = set()
        for name in variants_of(params, str(params_path)):
            resolved = resolve(params, name, source=str(params_path))
            stage2 = (resolved.get("pretrain_stage2") or {}).get("model_overrides") or {}
            model = (resolved.get("model") or {}).get("overrides") or {}
            if stage2.get("nva_enabled", model.get("nva_enabled", False)):
                out.add(name)
        return out
    except (OSError, ValueError, TypeError, AttributeError):  # ConfigError is a ValueError
        return None


def stage(cfg: dict[str, Any], record: Recorder, *, nva: Collection[str] | None = None) -> None:
    from nas.reporting.findings import FindingsConfig
    from nas.reporting.results import ReportConfig, write_report

    report_cfg = from_dict(ReportConfig, cfg.get("report", {}), "report")
    # `study`: seeds and how findings are judged (level 0.95, resamples 2000, bootstrap_seed 0 by default).
    study = FindingsConfig.from_study(cfg.get("study"))
    # An ad-hoc run reports its own folder's metrics where it has them (else the pipeline's) into its own
    # reports/ (reports/ is a DVC output). metrics/evaluate is what decides: an ad-hoc folder's metrics/
    # may hold nothing but the findings.json an earlier report wrote there.
    root = output_root(cfg)
    metrics = input_root(root, Path("metrics") / "evaluate", "evaluate") / "metrics"
    runs = input_root(root, Path("runs") / "evaluate", "evaluate") / "runs"
    findings = root / "metrics" / "findings.json"
    out = write_report(
        metrics,
        root / "reports",
        report_cfg,
        runs_dir=runs,
        findings_path=findings,
        study=study,
        nva_variants=nva,
    )
    print(out.read_text())
    record.add_artifact(out)
    record.add_artifact(findings)


def main(argv=None) -> None:
    args = parse_stage_args("report", argv)
    run_stage(args.stage, functools.partial(stage, nva=nva_variants(args.params)), args=args)


if __name__ == "__main__":
    main()
