"""The UTA stages end to end on a tiny synthetic set: teacher, students (a context arm on one seed, its
own stage),
fine-tuning with its convergence guard, evaluation with the untrained baseline and the findings, and
the report section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.config.params import load_params, resolve
from nas.recipes.stage import Recorder

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "uta.teacher.loader.batch_size_per_gpu=8",
    "uta.teacher.train={epochs: 1, max_steps_per_epoch: 2, progress_bar: false, schedule: {warmup_steps: 1}}",
    "uta.student.loader.batch_size_per_gpu=8",
    "uta.student.train={epochs: 1, max_steps_per_epoch: 2, progress_bar: false, log_every_steps: 1, schedule: {warmup_steps: 1}}",
    "uta.finetune.enabled=true",
    "uta.finetune.loader.batch_size_per_gpu=8",
    "uta.finetune.train={epochs: 1, max_steps_per_epoch: 2, progress_bar: false, log_every_steps: 1, schedule: {warmup_steps: 1}}",
    "uta.seeds=[0, 1]",
    "uta.context_arms={random: {scheme: random}}",
    "uta.context_seeds=[0]",
    "uta.arms={none: {scheme: none}, reversed_blockwise: {scheme: reversed_blockwise}}",
    "uta.torch_threads=1",
    "uta.evaluation.probe_train_images=40",
    "uta.evaluation.visibility_draws=20",
    "uta.evaluation.benchmarks=[vg_relation]",
    "uta.evaluation.findings.resamples=200",
]


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    from nas.data.probes import ProbeConfig, write_probes
    from nas.data.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("utaproject")
    generate(SyntheticConfig(n_train=48, n_val=8, n_test=40), root / "data/synthetic")
    probes = ProbeConfig(
        vg_relation=3,
        vg_attribution=3,
        order_images=2,
        winoground=3,
        valse_per_instrument=2,
        sugarcrepe_per_file=2,
    )
    write_probes(root / "data/synthetic", root / "data/probes", probes)
    return root


@pytest.mark.slow
def test_stages_end_to_end_with_baseline_guards_and_report(tiny_project, monkeypatch):
    from nas.config.base import ConfigError
    from nas.engine.run import load_run
    from nas.models.clip_teacher import ClipTeacher
    from nas.models.uta import UTAStudent
    from nas.recipes.uta.evaluate import evaluate
    from nas.recipes.uta.train import train_context, train_finetune, train_student, train_teacher
    from nas.reporting.uta_section import section

    threads = torch.get_num_threads()
    monkeypatch.chdir(tiny_project)
    try:
        cfg = resolve(load_params(ROOT / "params.yaml"), None, TINY)
        train_teacher(dict(cfg, stage="uta_teacher"), Recorder())
        for arm in ("none", "reversed_blockwise"):  # the dvc.yaml matrices: one call per entry
            for seed in (0, 1):
                train_student(dict(cfg, stage="uta_pretrain"), Recorder(), arm=arm, seed=seed)
        train_context(dict(cfg, stage="uta_context"), Recorder(), arm="random", seed=0)
        # Each stage trains its own axes only: an entry of the other's is refused by name, before training.
        with pytest.raises(ConfigError, match=r"--run seed=1: not among uta\.context_seeds \[0\]"):
            train_context(dict(cfg, stage="uta_context"), Recorder(), arm="random", seed=1)
        with pytest.raises(ConfigError, match=r"--run arm=random: not among uta\.arms"):
            train_student(dict(cfg, stage="uta_pretrain"), Recorder(), arm="random", seed=0)
        with pytest.raises(ConfigError, match=r"--run arm=none: not among uta\.context_arms"):
            train_context(dict(cfg, stage="uta_context"), Recorder(), arm="none", seed=0)
        for seed in (0, 1):
            train_finetune(dict(cfg, stage="uta_finetune"), Recorder(), seed=seed)
        evaluate(dict(cfg, stage="uta_evaluate"), Recorder())
    finally:
        torch.set_num_threads(threads)
    # Every run is in the run layer's format and comes back through load_run.
    teacher, config = load_run(Path("runs/uta_teacher"))
    assert isinstance(teacher, ClipTeacher) and config["run"]["export"] == "teacher"
    student, config = load_run(Path("runs/uta_pretrain/none/seed1"))
    assert isinstance(student, UTAStudent) and config["run"]["export"] == "student"
    tuned, _ = load_run(Path("runs/uta_finetune/seed0/student"))
    text, config = load_run(Path("runs/uta_finetune/seed0/text"))
    assert (
        isinstance(tuned, UTAStudent) and isinstance(text, ClipTeacher) and config["run"]["export"] == "text"
    )
    assert not torch.equal(tuned.head.weight, student.head.weight)
    # A context arm trains only its uta.context_seeds: no folder for its other seeds.
    context, _ = load_run(Path("runs/uta_pretrain/random/seed0"))
    assert isinstance(context, UTAStudent) and not Path("runs/uta_pretrain/random/seed1").exists()

    pretrain = json.loads(Path("metrics/uta/pretrain.json").read_text())
    assert set(pretrain["runs"]) == {"none", "random", "reversed_blockwise"}
    assert set(pretrain["runs"]["random"]) == {"0"} and set(pretrain["runs"]["none"]) == {"0", "1"}
    finetune = json.loads(Path("metrics/uta/finetune.json").read_text())
    assert set(finetune["runs"]) == {"0", "1"}
    assert all("converged" in run and run["chance_loss"] > 0 for run in finetune["runs"].values())

    result = json.loads(Path("metrics/uta/evaluate.json").read_text())
    assert result["untrained"]["seeds"] == [0, 1]
    assert set(result["untrained"]["per_seed"][0]["probes"]) == set(result["teacher"]["probes"])
    assert result["arms"]["random"]["seeds"] == [0]
    tuned = result["finetuned"]
    assert set(tuned["converged_seeds"]) | set(tuned["diverged_seeds"]) == {0, 1}
    keys = {row["key"] for row in result["findings"]}
    assert {
        "student_vs_teacher.pooled",
        "reversed_vs_none.pooled",
        "aligned.none",
        "finetuned_vs_student.pooled",
    } <= keys
    # two steps cannot align a student: the claim that needs alignment is not judged, by name
    first = next(row for row in result["findings"] if row["key"] == "student_vs_teacher.pooled")
    assert first["verdict"] == "not judged" and "no aligned seed" in first["method"]
    assert Path("runs/uta_evaluate/cases/untrained/seed1.json").is_file()
    figure = json.loads(Path("metrics/uta/figure.json").read_text())
    assert set(figure["visibility"]) == {"none", "random", "reversed_blockwise"}

    text = "\n".join(section(Path("metrics"), Path("reports")))
    assert "### Findings" in text and "student, untrained (same seeds)" in text
    assert "A seed converges when its last loss is below chance" in text


@pytest.mark.slow
def test_a_killed_student_run_resumes_after_an_unrelated_params_edit(tiny_project, monkeypatch, tmp_path):
    """The digest of a student run covers only what it reads: an edit to the evaluation's batch, the
    report's title or another arm keeps the checkpoint folder, so the run resumes instead of restarting;
    an edit to what it reads (its training) is another run."""
    from nas.recipes.uta.train import train_student, train_teacher

    threads = torch.get_num_threads()
    monkeypatch.chdir(tiny_project)
    root = tmp_path / "out"
    one_epoch = [*TINY, "uta.student.train.epochs=1"]

    def run(*edits):
        cfg = resolve(load_params(ROOT / "params.yaml"), None, [*one_epoch, *edits])
        cfg["output_root"] = str(root)
        train_student(dict(cfg, stage="uta_pretrain"), Recorder(), arm="none", seed=0)
        return json.loads((root / "runs/uta_pretrain/none/seed0/summary.json").read_text())

    try:
        cfg = resolve(load_params(ROOT / "params.yaml"), None, one_epoch)
        cfg["output_root"] = str(root)
        train_teacher(dict(cfg, stage="uta_teacher"), Recorder())
        first = run()
        unrelated = run(
            "uta.evaluation.batch_size=7",
            "report.title=another title",
            "uta.context_arms.random={scheme: random, ratio: 0.25}",
            "uta.context_seeds=[0, 1]",
            "pretrain_stage1.distillation.alpha=0.4",  # ALBEF's α: no UTA run reads it
        )
        assert unrelated["config_digest"] == first["config_digest"]
        assert unrelated["resumed_from"] is not None and unrelated["final"] == first["final"]
        other = run("uta.student.train.schedule.lr=0.001")
        assert other["config_digest"] != first["config_digest"] and other["resumed_from"] is None
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_context_arm_run_is_the_run_uta_pretrain_would_train(tiny_project, monkeypatch, tmp_path):
    """`uta_context` runs `uta_pretrain`'s training: an arm moved between uta.context_arms and uta.arms
    keeps its run's identity and folders (the second call finds the finished run)."""
    from nas.recipes.uta.train import train_context, train_student, train_teacher

    threads = torch.get_num_threads()
    monkeypatch.chdir(tiny_project)
    root = tmp_path / "out"

    def config(*edits):
        cfg = resolve(load_params(ROOT / "params.yaml"), None, [*TINY, *edits])
        cfg["output_root"] = str(root)
        return cfg

    summary = root / "runs/uta_pretrain/random/seed0/summary.json"
    try:
        train_teacher(dict(config(), stage="uta_teacher"), Recorder())
        train_context(dict(config(), stage="uta_context"), Recorder(), arm="random", seed=0)
        context = json.loads(summary.read_text())
        compared = config(
            "uta.arms={none: {scheme: none}, random: {scheme: random}, reversed_blockwise: {scheme: reversed_blockwise}}",
            "uta.context_arms={}",
            "uta.context_seeds=[]",
        )
        train_student(dict(compared, stage="uta_pretrain"), Recorder(), arm="random", seed=0)
        again = json.loads(summary.read_text())
        assert again["config_digest"] == context["config_digest"] and context["resumed_from"] is None
        assert again["resumed_from"] is not None and again["final"] == context["final"]
    finally:
        torch.set_num_threads(threads)
