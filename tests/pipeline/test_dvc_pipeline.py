"""End to end: `dvc repro` of the real dvc.yaml on a very small profile, in a scratch repository.

Checks that every stage runs and writes what dvc.yaml declares, that a second `dvc repro` does
nothing, and that changing a training param re-runs only the stages that depend on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")

TINY = {
    "data": {
        "synthetic": {"n_train": 48, "n_val": 8, "n_test": 40},
        "probes": {
            "vg_relation": 4,
            "vg_attribution": 4,
            "order_images": 2,
            "winoground": 3,
            "valse_per_instrument": 2,
            "sugarcrepe_per_file": 2,
        },
    },
    "loader": {"batch_size_per_gpu": 8},
    "pretrain_stage1": {
        "train": {
            "epochs": 1,
            "max_steps_per_epoch": 2,
            "progress_bar": False,
            "schedule": {"warmup_steps": 1},
        }
    },
    "pretrain_stage2": {"train": {"max_steps_per_epoch": 1, "progress_bar": False}},
    "study": {"seeds": [0, 1], "resamples": 200},
    "finetune": {"train": {"max_steps_per_epoch": 1, "progress_bar": False}},
    "evaluate": {"retrieval": {"k_test": 4}},
    "mug": {
        "loader": {"batch_size_per_gpu": 8},
        "seeds": [0],
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "schedule": {"warmup_steps": 1}},
        "evaluate": {
            "generation": {"max_length": 8, "beam_size": 2},
            "caption_images": 8,
            "figure_images": 2,
        },
    },
    "uta": {
        "teacher": {"loader": {"batch_size_per_gpu": 8}, "train": {"epochs": 1, "max_steps_per_epoch": 2}},
        "student": {"loader": {"batch_size_per_gpu": 8}, "train": {"epochs": 1, "max_steps_per_epoch": 2}},
        "seeds": [0, 1],
        "context_seeds": [0],  # uta_context: the context arms' seed 0
        "finetune": {"loader": {"batch_size_per_gpu": 8}, "train": {"max_steps_per_epoch": 1}},
        "evaluation": {"probe_train_images": 40, "visibility_draws": 50},
    },
}


def _merge(base, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _stages_run(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


def training_entries(variants, seeds) -> set[str]:
    """DVC's names of NAS's training entries (`<stage>@<variant>-<seed offset>`)."""
    stages = ("build_vd", "pretrain_stage1", "pretrain_stage2", "finetune")
    return {f"{stage}@{v}-{k}" for stage in stages for v in variants for k in seeds}


@pytest.mark.slow
def test_dvc_repro_small_profile(tmp_path):
    if not DVC.exists():
        pytest.skip("dvc is not installed next to this python")
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("nas", "experiments"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))

    env = {
        **os.environ,
        "PYTHONPATH": str(work),
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    _run(["git", "init", "-q"], work, env)
    _run([str(DVC), "init", "-q"], work, env)
    _run([str(DVC), "config", "core.analytics", "false"], work, env)

    first = _run([str(DVC), "repro"], work, env)
    variants = sorted(params["variants"])
    shared = params["study"]["stage1_of"]
    owners = sorted(v for v in variants if shared.get(v, v) == v)
    assert set(owners) < set(variants), "the default shares a stage 1 (NAS continues VD's)"
    tiny = _merge(params, TINY)
    expected = {"data", "report", "mug_vocabulary", "mug_evaluate", "uta_teacher", "uta_evaluate"}
    # The swept stages (dvc.yaml `matrix:`): one entry per arm x seed, named as DVC names them.
    expected |= {f"mug_pretrain@{arm}-{seed}" for arm in tiny["mug"]["arms"] for seed in tiny["mug"]["seeds"]}
    expected |= {f"uta_pretrain@{arm}-{seed}" for arm in tiny["uta"]["arms"] for seed in tiny["uta"]["seeds"]}
    expected |= {
        f"uta_context@{arm}-{seed}"
        for arm in tiny["uta"]["context_arms"]
        for seed in tiny["uta"]["context_seeds"]
    }
    expected |= {f"uta_finetune@{seed}" for seed in tiny["uta"]["seeds"]}
    # NAS's training stages: one entry per variant x pretraining seed offset (study.seeds).
    expected |= training_entries(variants, tiny["study"]["seeds"])
    expected |= {f"{stage}@{v}" for stage in ("variant_params", "evaluate") for v in variants}
    assert _stages_run(first) == expected
    for v in variants:
        result = json.loads((work / "metrics" / "evaluate" / f"{v}.json").read_text())
        assert sorted(result["models"]) == sorted(params["evaluate"]["checkpoint_stages"])
        replicates = result["models"]["finetune"]["replicates"]
        assert len(replicates) == 2, "one evaluation per pretraining seed"
        for replicate in replicates:
            assert replicate["retrieval"]["n_images"] == 40
            assert replicate["fine_grained"], "no fine-grained probe was scored"
            assert 0.0 <= replicate["retrieval"]["metrics"]["i2t_r1"] <= 100.0
        i2t = result["summary"]["finetune"]["retrieval"]["metrics"]["i2t_r1"]
        assert i2t["n"] == 2 and i2t["mean"] == sum(i2t["values"]) / 2
        for seed in (0, 1):
            recorded = json.loads(
                (work / "runs" / "finetune" / v / f"seed{seed}" / "config.json").read_text()
            )
            assert recorded["seed"] == params["seed"] + seed
            assert (work / "runs" / "pretrain_stage2" / v / f"seed{seed}" / "checkpoint.pt").is_file()
            # every pretraining replicate trains with its own seed
            recorded = json.loads(
                (work / "runs" / "pretrain_stage2" / v / f"seed{seed}" / "config.json").read_text()
            )
            assert recorded["seed"] == params["seed"] + seed
    for v in sorted(shared):  # a shared stage 1 only records whose run it is
        note = json.loads((work / "metrics" / "pretrain_stage1" / v / "seed0.json").read_text())
        assert (
            note["shared_with"] == shared[v]
            and not (work / "runs/pretrain_stage1" / v / "seed0/config.json").exists()
        )
    for v in owners:
        sacred_runs = list((work / "runs" / "sacred" / "pretrain_stage1" / f"{v}-1").glob("*/config.json"))
        assert sacred_runs, "Sacred recorded no stage-1 run"
        recorded = json.loads(sacred_runs[0].read_text())
        assert recorded["pretrain_stage1"]["train"]["max_steps_per_epoch"] == 2
    # NAS's stage 2 continued VD's stage-1 run of the same seed
    for seed in (0, 1):
        replicate = json.loads(
            (work / "metrics" / "pretrain_stage2" / "nas" / f"seed{seed}.json").read_text()
        )
        assert replicate["init_checkpoint"].endswith(f"pretrain_stage1/vd/seed{seed}/checkpoint.pt")
    findings = json.loads((work / "metrics" / "findings.json").read_text())
    assert findings and all(
        row["verdict"] in ("reproduced", "opposite", "inconclusive", "not run") for row in findings.values()
    )
    report = (work / "reports" / "results.md").read_text()
    assert report.index("Findings") < report.index("Zero-shot retrieval")
    assert "Zero-shot retrieval" in report and "chance" in report
    assert "Fine-grained probes" in report and "Hyperparameter audit" in report
    assert "## MUG" in report and "## UTA" in report
    uta = json.loads((work / "metrics" / "uta" / "evaluate.json").read_text())
    assert {arm: block["seeds"] for arm, block in uta["arms"].items()} == {
        "none": [0, 1],
        "reversed_blockwise": [0, 1],
        "random": [0],  # uta_context's runs, read from the same folders
        "blockwise": [0],
    }
    # the recipes' rows join the shared fine-grained tables (MUG: 1 seed, UTA: 2 seeds)
    assert "| mug | caption-ll | 1 |" in report and "| uta | uta | 2 |" in report
    assert (work / "reports" / "figures" / "loss_curves.png").stat().st_size > 1000
    # The DVC metric is the curated summary alone: a screenful, not every per-case file.
    shown = json.loads(_run([str(DVC), "metrics", "show", "--json"], work, env).strip().splitlines()[-1])
    files = next(iter(shown.values()))["data"]
    assert sorted(files) == ["metrics/summary.json"], sorted(files)
    summary = files["metrics/summary.json"]["data"]
    assert sorted(summary["probes"]) == variants and sorted(summary["retrieval_r1"]) == variants
    assert set(summary["claims"]) == {"nas_vs_albef", "nas_vs_vd", "vd_vs_albef"}
    # Loss plots: one file per stage, one column per variant that trains it (the plots of dvc.yaml).
    declared = {
        next(iter(entry)): next(iter(entry.values()))["y"]
        for entry in yaml.safe_load((work / "dvc.yaml").read_text())["plots"]
        if isinstance(entry, dict)
    }
    for path, columns in declared.items():
        header = (work / path).read_text().splitlines()[0].split(",")
        assert header[0] == "step" and sorted(header[1:]) == sorted(columns), (path, header, columns)

    second = _run([str(DVC), "repro"], work, env)
    assert _stages_run(second) == set(), second

    # A new seed is a params edit: its own entries train, and data, the trained seeds' stage 1 and their
    # fine-tuning stay cached (their stage-2 entries depend on every stage-1 run, as study.stage1_of may
    # name another variant's: they re-run, find their finished runs and leave their run folders as they
    # were, so fine-tuning does not re-run).
    finetuned = {v: (work / "runs/finetune" / v / "seed0/checkpoint.pt").stat().st_ino for v in variants}
    params2 = yaml.safe_load((work / "params.yaml").read_text())
    params2["study"]["seeds"] = [0, 1, 2]
    (work / "params.yaml").write_text(yaml.safe_dump(params2, sort_keys=False))
    new_seed = _run([str(DVC), "repro"], work, env)
    assert _stages_run(new_seed) == (
        training_entries(variants, [2])
        | {f"pretrain_stage2@{v}-{k}" for v in variants for k in (0, 1)}
        | {f"evaluate@{v}" for v in variants}
        | {"report"}
    )
    for v in variants:
        assert (work / "runs/finetune" / v / "seed0/checkpoint.pt").stat().st_ino == finetuned[v]
        evaluated = json.loads((work / "metrics/evaluate" / f"{v}.json").read_text())
        assert len(evaluated["models"]["finetune"]["replicates"]) == 3  # the new seed joins the pairs

    # A model-code change (ITC's loss scaled by 10): DVC re-runs stage 1, and the stage trains afresh
    # instead of finding its old checkpoint "already done" (the run identity covers the code).
    before = hashlib.md5((work / "runs/pretrain_stage1/albef/seed0/checkpoint.pt").read_bytes()).hexdigest()
    itc = work / "nas" / "objectives" / "itc.py"
    source = itc.read_text()
    assert "return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()" in source
    itc.write_text(
        source.replace("return -(targets * F.log_softmax", "return -10.0 * (targets * F.log_softmax")
    )
    code_change = _run([str(DVC), "repro", "--single-item", "pretrain_stage1@albef-0"], work, env)
    assert _stages_run(code_change) == {"pretrain_stage1@albef-0"}
    after = hashlib.md5((work / "runs/pretrain_stage1/albef/seed0/checkpoint.pt").read_bytes()).hexdigest()
    assert after != before
    assert len(list((work / "checkpoints/pretrain_stage1/albef/seed0").iterdir())) == 2  # the old run kept
    metrics = json.loads((work / "metrics/pretrain_stage1/albef/seed0.json").read_text())
    assert metrics["resumed_from"] is None and metrics["identity"]["code"]
