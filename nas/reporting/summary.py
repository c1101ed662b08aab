"""The study's headline numbers and its loss plots, in the shapes DVC shows well.

`metrics/summary.json` is the pipeline's one DVC metric (`dvc metrics show`, `dvc metrics diff`): about
thirty numbers, everything else (per-case outcomes, per-replicate losses, timings) stays in plain output
files. Its keys, all of the fine-tuned models, means over pretraining seeds, in percent (points):

    claims.<claim>.effect / .low / .high / .verdict   the pooled findings (verdict 1 / 0 / -1: reproduced /
                                                      inconclusive / opposite; nas.reporting.findings)
    retrieval_r1.<variant>                            mean of i2t and t2i R@1 (ITC)
    probes.<variant>.<benchmark>                      each benchmark's headline figure under the headline
                                                      scorer (nas.evaluation.benchmarks.runner: `headline`)

`reports/plots/loss_<stage>.csv`: one file per training stage, `step` then one column per variant (the
total loss, mean over the replicates that logged that step; a variant that shares another's run, as NAS
shares VD's stage 1, shows that run's curve), so `dvc plots show` draws one line per
variant per stage instead of one line through every run.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nas.reporting.atomic import write_text

# The pooled rows of the findings that make the headline (nas.reporting.findings.CLAIMS keys).
HEADLINE_CLAIMS = ("nas_vs_albef", "nas_vs_vd", "vd_vs_albef")
HEADLINE_STAGE = "finetune"  # the models the paper evaluates


def _mean(block: Any) -> float | None:
    """The mean of an evaluate-summary cell ({"mean", "std", "n", "values"}) or a plain number."""
    if isinstance(block, Mapping):
        block = block.get("mean")
    return None if block is None else round(float(block), 4)


def headline_numbers(
    findings: Mapping[str, Mapping[str, Any]], evaluations: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The summary dict from metrics/findings.json's content and {variant: metrics/evaluate/<v>.json}."""
    from nas.evaluation.benchmarks.runner import headline_node

    out: dict[str, Any] = {"claims": {}, "retrieval_r1": {}, "probes": {}}
    for claim in HEADLINE_CLAIMS:
        row = findings.get(f"{claim}.pooled")
        if row:
            out["claims"][claim] = {
                "effect": row.get("effect"),
                "low": row.get("low"),
                "high": row.get("high"),
                "verdict": row.get("verdict_code"),
            }
    for variant, evaluation in sorted(evaluations.items()):
        summary = (evaluation.get("summary") or {}).get(HEADLINE_STAGE)
        if not summary:
            continue
        metrics = (summary.get("retrieval") or {}).get("metrics") or {}
        r1 = [_mean(metrics.get(key)) for key in ("i2t_r1", "t2i_r1")]
        if all(value is not None for value in r1):
            out["retrieval_r1"][variant] = round(sum(r1) / 2, 4)
        probes = {}
        for name, by_scorer in sorted((summary.get("fine_grained") or {}).items()):
            if not by_scorer:
                continue
            result = next(iter(by_scorer.values()))  # the headline scorer comes first (evaluate's order)
            value = _mean(headline_node(name, result.get("metrics") or {}))
            if value is not None:
                probes[name] = value
        if probes:
            out["probes"][variant] = probes
    return out


def write_summary(findings_path: Path, evaluate_dir: Path, out: Path) -> Path:
    """metrics/summary.json from metrics/findings.json and metrics/evaluate/*.json."""
    findings = (
        json.loads(Path(findings_path).read_text(encoding="utf-8")) if Path(findings_path).is_file() else {}
    )
    evaluations = {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(Path(evaluate_dir).glob("*.json"))
    }
    return write_text(out, json.dumps(headline_numbers(findings, evaluations), indent=2) + "\n")


def loss_by_step(run: Mapping[str, Any]) -> dict[int, float]:
    """{step: total loss, mean over the replicates that logged it} of one stage metrics file."""
    replicates = [r for r in (run.get("replicates") or {}).values() if r.get("steps")] or [run]
    sums: dict[int, list[float]] = {}
    for replicate in replicates:
        for row in replicate.get("steps") or []:
            if row.get("total") is not None:
                sums.setdefault(int(row["step"]), []).append(float(row["total"]))
    return {step: sum(values) / len(values) for step, values in sorted(sums.items())}


def write_loss_plots(stages: Mapping[str, Mapping[str, Mapping[str, Any]]], out_dir: Path) -> list[Path]:
    """reports/plots/loss_<stage>.csv for every stage of `{stage: {variant: stage metrics}}`; a variant
    without a logged step at some step has an empty cell there."""
    from nas.reporting.results import variant_colours

    written = []
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # a DVC output even before any step is logged
    for stage, runs in stages.items():
        if not runs:
            continue
        # A variant that shares another's run (NAS continues VD's stage 1: study.stage1_of) has that run's curve.
        curves = {
            variant: loss_by_step(runs.get(run.get("shared_with"), run)) for variant, run in runs.items()
        }
        variants = list(variant_colours(curves))  # the paper's ablation order, then by name
        steps = sorted({step for curve in curves.values() for step in curve})
        table = io.StringIO(newline="")
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["step", *variants])
        for step in steps:
            writer.writerow([step, *(_cell(curves[v].get(step)) for v in variants)])
        written.append(write_text(Path(out_dir) / f"loss_{stage}.csv", table.getvalue()))
    return written


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
