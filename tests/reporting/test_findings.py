"""The findings: claims judged from per-case outcomes with a planted effect, findings.json, results.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nas.reporting.findings import (
    BENCHMARKS,
    FINE_GRAINED,
    RETRIEVAL,
    FindingsConfig,
    compute_findings,
    load_cases,
)
from nas.reporting.results import ReportConfig, collect, itm_table, training_table, write_report

SEEDS = (0, 1, 2)
N_CASES = 240  # per fine-grained benchmark; retrieval: 100 queries
PLANTED = "vg_relation"
CFG = FindingsConfig(resamples=300)
METRIC = {
    "coco_order": "precision_at_1",
    "sugarcrepe": "accuracy",
    "valse": "acc_r",
    "vg_attribution": "macro",
    "vg_relation": "macro",
    "winoground": "group",
    "retrieval_i2t_r1": "i2t_r1",
    "retrieval_t2i_r1": "t2i_r1",
}
CHANCE = {"coco_order": 0.2, "winoground": 1 / 6}


def _flip(rng: np.random.Generator, x: np.ndarray, up: int, down: int) -> np.ndarray:
    """x with `up` of its zeros set to 1 and `down` of its ones set to 0 (random positions)."""
    out = x.copy()
    zeros, ones = np.flatnonzero(x == 0), np.flatnonzero(x == 1)
    out[rng.choice(zeros, up, replace=False)] = 1
    out[rng.choice(ones, down, replace=False)] = 0
    return out


def _outcomes(rng, stage: str, benchmark: str, variant: str, effect: float, base: dict) -> np.ndarray:
    """One seed's 0/1 outcomes. Fine-tuned: a base per (seed, benchmark) shared by the variants, each
    variant = base with as many flips up as down (no net effect), nas + `effect` on PLANTED (exactly
    effect x cases flipped). Untrained: at chance; pretrained: 0.5."""
    n = 100 if benchmark in RETRIEVAL else N_CASES
    if stage == "untrained":
        p = 0.005 if benchmark in RETRIEVAL else CHANCE.get(benchmark, 0.5)
        return (rng.random(n) < p).astype(float)
    if stage == "pretrain_stage2":
        return (rng.random(n) < (0.1 if benchmark in RETRIEVAL else 0.5)).astype(float)
    x = _flip(rng, base[benchmark], 12, 12) if variant != "albef" else base[benchmark]
    if variant == "nas" and benchmark == PLANTED and effect:
        k = round(abs(effect) * n)
        x = _flip(rng, x, k, 0) if effect > 0 else _flip(rng, x, 0, k)
    return x


def _evaluate_metrics(variant: str) -> dict:
    """A minimal metrics/evaluate/<variant>.json: retrieval (chance 0.5 %) and winoground (group chance)."""
    r = {k: 20.0 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}
    replicate = {
        "retrieval": {
            "n_images": 100,
            "n_texts": 200,
            "chance": {"i2t_r1": 0.5, "t2i_r1": 0.5},
            "scorer": "ITC cosine",
            "metrics": r,
        },
        "fine_grained": {
            "winoground": {
                "itm_probability": {
                    "unit": "percent",
                    "metrics": {"text": 30.0, "image": 20.0, "group": 10.0},
                    "n_cases": N_CASES,
                    "chance": {"text": 25.0, "image": 25.0, "group": 16.666666666666668},
                }
            }
        },
    }
    models = {
        stage: {"replicates": [replicate] * 3} for stage in ("untrained", "pretrain_stage2", "finetune")
    }
    return {"variant": variant, "models": models}


def _pretrain_summary(itm: float) -> dict:
    final = {"epoch": 1, "itc": 3.0, "itm": itm, "mlm": 0.3, "total": 3.3 + itm, "steps": 4, "seconds": 1.0}
    return {"final": final, "epochs": [final]}


def _pretrain_metrics(itms: list[float]) -> dict[int, dict]:
    """A training stage's per-replicate metric files (`<stage>/<variant>/seed<k>.json`), by seed offset."""
    replicates = {k: _pretrain_summary(v) for k, v in enumerate(itms)}
    replicates[0]["steps"] = [
        {"step": s, "itc": 3.0, "itm": itms[0], "mlm": 0.3, "total": 3.3 + itms[0]} for s in (1, 2)
    ]
    return replicates


def _write_replicates(folder: Path, replicates: dict[int, dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, payload in replicates.items():
        (folder / f"seed{k}.json").write_text(json.dumps(payload))


def build_tree(
    root: Path,
    *,
    effect: float = 0.10,
    variants: tuple[str, ...] = ("albef", "vd", "nas"),
    seeds: tuple[int, ...] = SEEDS,
) -> Path:
    """runs/evaluate/<variant>/cases/<stage>/seed<k>.json and metrics/ under `root` (3 variants x 3 seeds
    x 3 stages); nas beats albef (and vd) by `effect` on PLANTED only. Returns root."""
    rng = np.random.default_rng(1234)
    for seed in seeds:
        base = {b: (rng.random(100 if b in RETRIEVAL else N_CASES) < 0.8).astype(float) for b in BENCHMARKS}
        for variant in variants:
            for stage in ("untrained", "pretrain_stage2", "finetune"):
                payload = {
                    b: {
                        "metric": METRIC[b],
                        "unit": "fraction",
                        "case_ids": [f"{b}-{j}" for j in range(100 if b in RETRIEVAL else N_CASES)],
                        "outcomes": _outcomes(rng, stage, b, variant, effect, base).tolist(),
                    }
                    for b in BENCHMARKS
                }
                path = root / "runs" / "evaluate" / variant / "cases" / stage / f"seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(payload))
    metrics = root / "metrics"
    for variant in variants:
        (metrics / "evaluate").mkdir(parents=True, exist_ok=True)
        (metrics / "evaluate" / f"{variant}.json").write_text(json.dumps(_evaluate_metrics(variant)))
        stage2 = _pretrain_metrics([0.55, 0.56, 0.54] if variant == "nas" else [0.62, 0.63, 0.61])
        _write_replicates(metrics / "pretrain_stage2" / variant, stage2)
        # nas starts stage 2 from vd's stage 1 (study.stage1_of): its stage-1 metrics are notes saying so
        note = {"stage": "pretrain_stage1", "variant": variant, "shared_with": "vd"}
        stage1 = (
            {k: {**note, "seed_offset": k} for k in seeds}
            if variant == "nas"
            else _pretrain_metrics([0.636] * 3)
        )
        _write_replicates(metrics / "pretrain_stage1" / variant, stage1)
    return root


def findings_of(root: Path, cfg: FindingsConfig = CFG):
    cases = load_cases(root / "runs" / "evaluate", cfg.seeds)
    return {
        row.key: row for row in compute_findings(cases, collect(root / "metrics")["evaluate"], cfg).rows()
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def planted_rows(planted):
    return findings_of(planted)


def test_the_planted_effect_is_reproduced(planted_rows):
    row = planted_rows[f"nas_vs_albef.{PLANTED}"]
    assert row.effect == pytest.approx(10.0)  # exactly 24 of 240 cases flipped up, the noise nets out
    assert row.verdict == "reproduced" and row.verdict_code == 1
    assert 0 < row.low < 10.0 < row.high
    assert (row.n_seeds, row.n_cases) == (3, N_CASES)
    assert "paired bootstrap over seeds and cases (300 resamples" in row.method
    assert planted_rows[f"nas_vs_vd.{PLANTED}"].verdict == "reproduced"
    pooled = planted_rows["nas_vs_albef.pooled"]
    assert pooled.effect == pytest.approx(10.0 / 6)  # the mean of six per-benchmark differences
    assert pooled.n_cases == 6 * N_CASES and pooled.method.startswith(
        "wider of Student t over 3 seeds (df=2)"
    )
    # every seed's pooled difference is exactly 10/6 here: the t interval has no width, the joint
    # bootstrap over seeds and cases still does, and the hull keeps it
    assert pooled.low < 10.0 / 6 < pooled.high and pooled.verdict == "reproduced"


def test_no_effect_is_inconclusive(planted_rows):
    for name in FINE_GRAINED:
        if name != PLANTED:
            row = planted_rows[f"nas_vs_albef.{name}"]
            assert row.effect == pytest.approx(0.0, abs=1e-9)
            assert row.verdict == "inconclusive" and row.verdict_code == 0 and row.low < 0 < row.high
    for name in RETRIEVAL:
        assert planted_rows[f"vd_vs_albef.{name}"].verdict == "inconclusive"


def test_the_sanity_checks_pass_on_trained_models(planted_rows):
    for variant in ("albef", "vd", "nas"):
        for check in ("trained_vs_untrained", "trained_vs_chance"):
            assert planted_rows[f"sanity.{variant}.{check}.pooled"].verdict == "reproduced"
            for name in BENCHMARKS:
                assert planted_rows[f"sanity.{variant}.{check}.{name}"].verdict == "reproduced"
    # chance from the evaluate metrics (winoground: the "group" headline the cases name; retrieval) or
    # BENCHMARKS.md §0.3 (coco_order 20 %)
    assert "minus chance 16.67" in planted_rows["sanity.albef.trained_vs_chance.winoground"].method
    assert "minus chance 0.50" in planted_rows["sanity.albef.trained_vs_chance.retrieval_i2t_r1"].method
    assert "minus chance 20.00" in planted_rows["sanity.albef.trained_vs_chance.coco_order"].method


def test_a_reversed_planting_is_opposite(tmp_path):
    rows = findings_of(build_tree(tmp_path, effect=-0.10))
    assert rows[f"nas_vs_albef.{PLANTED}"].verdict == "opposite"
    assert rows[f"nas_vs_albef.{PLANTED}"].verdict_code == -1
    assert rows[f"nas_vs_albef.{PLANTED}"].effect == pytest.approx(-10.0)


def test_a_missing_variant_is_not_run(tmp_path):
    rows = findings_of(build_tree(tmp_path, variants=("albef", "vd")))
    for key in ("nas_vs_albef.pooled", f"nas_vs_albef.{PLANTED}", "nas_vs_vd.winoground"):
        assert rows[key].verdict == "not run" and rows[key].verdict_code is None
        assert rows[key].to_json()["effect"] is None
        assert rows[key].to_json()["method"] == "not run: no per-case outcomes of nas"
    assert rows["sanity.nas.trained_vs_chance.pooled"].verdict == "not run"
    assert rows["vd_vs_albef.retrieval_i2t_r1"].verdict == "inconclusive"  # the others still run


def test_one_seed_pools_with_a_bootstrap_over_cases(planted):
    rows = findings_of(planted, FindingsConfig(resamples=300, seeds=(1,)))
    pooled = rows["nas_vs_albef.pooled"]
    assert pooled.n_seeds == 1 and "cases within each benchmark (1 seed)" in pooled.method
    assert rows[f"nas_vs_albef.{PLANTED}"].n_seeds == 1


def test_unpaired_cases_are_refused(tmp_path):
    root = build_tree(tmp_path, variants=("albef", "nas"), seeds=(0,))
    path = root / "runs" / "evaluate" / "nas" / "cases" / "finetune" / "seed0.json"
    payload = json.loads(path.read_text())
    payload["winoground"]["case_ids"] = payload["winoground"]["case_ids"][::-1]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="case_ids of .* differ"):
        findings_of(root)


def test_findings_config_from_the_study_section():
    assert FindingsConfig.from_study(None) == FindingsConfig(0.95, 2000, 0, None)
    cfg = FindingsConfig.from_study({"seeds": [0, 1, 2], "resamples": 500, "stage1_of": {"nas": "vd"}})
    assert cfg.seeds == (0, 1, 2) and cfg.resamples == 500 and cfg.level == 0.95


def test_report_writes_findings_json_and_puts_the_table_first(planted, tmp_path):
    findings_path = tmp_path / "metrics" / "findings.json"
    out = write_report(
        planted / "metrics",
        tmp_path / "reports",
        ReportConfig(title="t"),
        findings_path=findings_path,
        study=CFG,
        nva_variants={"nas"},
    )
    payload = json.loads(findings_path.read_text())
    for claim in ("nas_vs_albef", "nas_vs_vd", "vd_vs_albef"):  # the paper's three-way component ablation
        assert {f"{claim}.pooled", *(f"{claim}.{b}" for b in FINE_GRAINED)} <= set(payload)
    assert {"vd_vs_albef.retrieval_i2t_r1", "vd_vs_albef.retrieval_t2i_r1"} <= set(payload)
    assert "sanity.nas.trained_vs_untrained.pooled" in payload
    row = payload[f"nas_vs_albef.{PLANTED}"]
    expected_fields = {
        "claim",
        "effect",
        "low",
        "high",
        "verdict",
        "verdict_code",
        "n_seeds",
        "n_cases",
        "method",
    }
    assert expected_fields <= set(row)
    assert (row["verdict"], row["verdict_code"], row["n_seeds"], row["effect"]) == ("reproduced", 1, 3, 10.0)
    codes = {"reproduced": 1, "inconclusive": 0, "opposite": -1, "not run": None}
    assert all(r["verdict_code"] == codes[r["verdict"]] for r in payload.values())

    lines = out.read_text().splitlines()
    assert lines[:3] == ["# t", "", "## Findings"]
    table = lines.index(next(line for line in lines if line.startswith("| claim | comparison |")))
    assert table < lines.index("## ITM learned?") < lines.index("## Zero-shot retrieval on the test split")
    assert any(
        line.startswith(f"| NAS beats ALBEF on fine-grained probes | nas − albef | {PLANTED} | +10.0 |")
        and "**reproduced**" in line
        for line in lines
    )
    assert "## Sanity checks per benchmark" in lines and "## Headline per benchmark, with intervals" in lines


def test_itm_table_sets_each_stage_beside_its_prior(planted):
    results = collect(planted / "metrics")
    lines = itm_table(results["stage1"], results["stage2"], nva_variants={"nas"})
    stage1_nas = next(line for line in lines if line.startswith("| nas | stage 1 |"))
    assert "shares vd's run (`study.stage1_of`)" in stage1_nas
    without = {k: v for k, v in results["stage1"].items() if k != "nas"}  # no stage-1 metrics at all
    assert any(
        line.startswith("| nas | stage 1 |") and "no run of its own" in line
        for line in itm_table(without, results["stage2"], nva_variants={"nas"})
    )
    stage2_nas = next(line for line in lines if line.startswith("| nas | stage 2 |"))
    assert "| 3 | 0.550 ± 0.010 | 4 (NVA) | 0.5623 |" in stage2_nas
    assert stage2_nas.endswith(f"| {0.55 / 0.5623:.3f} |")
    stage2_albef = next(line for line in lines if line.startswith("| albef | stage 2 |"))
    assert "| 0.620 ± 0.010 | 3 | 0.6365 |" in stage2_albef
    unknown = itm_table(results["stage1"], results["stage2"])
    assert any("0.6365 / 0.5623" in line and "NVA not known" in line for line in unknown)


def test_training_table_is_mean_and_std_over_replicates(planted):
    results = collect(planted / "metrics")
    row = next(
        line for line in training_table(results["stage1"], results["stage2"]) if "| nas | stage 2 |" in line
    )
    assert "| 3 | 1 | 4 |" in row and "itm 0.550 ± 0.010" in row and "itc 3.000 ± 0.000" in row
    assert row.endswith("| 3 |")  # seconds summed over the three replicates
    shared = next(line for line in training_table(results["stage1"], {}) if "| nas | stage 1 |" in line)
    assert "shares vd's run" in shared


def test_nva_variants_of_the_params_file():
    from nas.recipes.report import nva_variants

    assert nva_variants(Path(__file__).parents[2] / "params.yaml") == {"nas"}
    assert nva_variants("no-such-params.yaml") is None


def test_headline_table_marks_above_chance(planted_rows, planted):
    from nas.reporting.findings import headline_table

    cases = load_cases(planted / "runs" / "evaluate")
    findings = compute_findings(cases, collect(planted / "metrics")["evaluate"], CFG)
    lines = headline_table(findings)
    assert lines[0].startswith("| model | seeds | coco_order (precision_at_1, 240 cases) |")
    fine_tuned = next(line for line in lines if line.startswith("| albef (fine-tuned) | 3 |"))
    assert fine_tuned.count("]*") == len(BENCHMARKS)
    assert lines[-1].startswith("| chance | | 20.0 (BENCHMARKS.md §0.3) |")
    assert not math.isnan(findings.headline_std["winoground"][("nas", "finetune")])


def test_pooled_bootstrap_of_one_benchmark_is_the_stats_bootstrap():
    from nas.evaluation.stats import seed_case_bootstrap
    from nas.reporting.findings import pooled_bootstrap

    x = (np.random.default_rng(0).random((3, 50)) < 0.6).astype(float)
    ours = pooled_bootstrap([x], level=0.95, resamples=300, seed=7)
    theirs = seed_case_bootstrap(x, resamples=300, seed=7)
    assert (ours.estimate, ours.low, ours.high) == pytest.approx((theirs.estimate, theirs.low, theirs.high))
    # benchmarks weigh the same whatever their case counts
    both = pooled_bootstrap([np.ones((3, 10)), np.zeros((3, 1000))], level=0.95, resamples=300, seed=0)
    assert both.estimate == 0.5 and both.low == both.high == 0.5 and both.n_cases == 1010


def test_the_report_stage_writes_findings_under_its_output_root(tmp_path, capsys):
    from nas.recipes.report import stage
    from nas.recipes.stage import Recorder

    root = build_tree(tmp_path, seeds=(0, 1))
    cfg = {
        "output_root": str(root),
        "report": {"title": "adhoc"},
        "study": {"seeds": [0, 1], "resamples": 300},
    }
    stage(cfg, Recorder(None), nva={"nas"})
    payload = json.loads((root / "metrics" / "findings.json").read_text())
    assert payload[f"nas_vs_albef.{PLANTED}"]["n_seeds"] == 2
    assert (root / "reports" / "results.md").read_text().startswith("# adhoc\n\n## Findings\n")
    assert "(300 resamples" in capsys.readouterr().out
