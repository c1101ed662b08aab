"""Per-case outcomes for paired statistics: for every benchmark their mean is the headline figure the
metrics report, their case ids do not depend on the model; the evaluate stage writes them per model
(`cases/<stage>/seed<k>.json`), untrained models included."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.config import from_dict
from nas.config.data import DataConfig
from nas.config.stages import study_seeds
from nas.data.probes import ProbeConfig, probe_benchmarks, write_probes
from nas.data.synthetic import SyntheticConfig, generate
from nas.evaluation.benchmarks import BENCHMARKS
from nas.evaluation.benchmarks.runner import metric_value
from nas.evaluation.probe_suite import run_probe_suite
from nas.evaluation.retrieval import hits_at_k, query_ranks, recall_at_k
from nas.recipes.evaluate import (
    UNTRAINED,
    EvaluateConfig,
    evaluate_model,
    model_runs,
    untrained_model,
)

HEADLINES = {
    "vg_relation": "micro_all",
    "vg_attribution": "micro_all",
    "coco_order": "precision_at_1",
    "flickr30k_order": "precision_at_1",
    "winoground": "group",
    "valse": "micro.acc_r",
    "sugarcrepe": "pooled.accuracy",
}
# The probe sizes of tests/evaluation/test_model_scorers.py's end-to-end run.
SIZES = ProbeConfig(
    vg_relation=4,
    vg_attribution=4,
    order_images=2,
    winoground=3,
    valse_per_instrument=2,
    sugarcrepe_per_file=2,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(synthetic data root with a 24-scene test split, its probe folder)."""
    root = tmp_path_factory.mktemp("case_outcomes")
    generate(SyntheticConfig(seed=2, n_train=0, n_val=0, n_test=24), root / "data")
    write_probes(root / "data", root / "probes", SIZES)
    return root / "data", root / "probes"


class HashScorer:
    """A deterministic score in {0, 1/(levels-1), ..., 1} per (image file, crop box, text), from a
    hash: few levels, many ties."""

    def __init__(self, levels: int, name: str) -> None:
        self.levels, self.name = levels, name

    def score(self, images, texts) -> np.ndarray:
        keys = [f"{self.name}|{im.info['path']}|{im.info['box']}|{t}" for im, t in zip(images, texts)]
        return np.array([(zlib.crc32(k.encode()) % self.levels) / (self.levels - 1) for k in keys])


class ConstantScorer:
    name = "constant"

    def score(self, images, texts) -> np.ndarray:
        return np.full(len(texts), 0.5)


def test_every_benchmark_has_a_headline_its_outcomes_average_to():
    assert {name: d.headline for name, d in BENCHMARKS.items()} == HEADLINES


def test_outcomes_average_to_the_headline_and_their_case_ids_do_not_depend_on_the_scorer(synthetic):
    _, probes = synthetic
    scorers = [HashScorer(3, "coarse"), HashScorer(1000, "fine")]
    outcomes: dict = {}
    results = run_probe_suite(scorers, probes, outcomes=outcomes)
    assert sorted(outcomes) == sorted(results) == sorted(probe_benchmarks(probes))
    for name, by_scorer in results.items():
        case_ids = None
        for scorer in scorers:
            result = by_scorer[scorer.name]
            assert "outcomes" not in result and "scores" not in result  # stripped from the metrics JSON
            entry = outcomes[name][scorer.name]
            assert set(entry) == {"metric", "unit", "case_ids", "outcomes"}
            assert (entry["metric"], entry["unit"]) == (HEADLINES[name], "fraction")
            values = entry["outcomes"]
            assert len(values) == len(entry["case_ids"]) == result["n_cases"]
            assert all(0.0 <= v <= 1.0 for v in values)
            headline = metric_value(result["metrics"], entry["metric"])
            assert 100.0 * math.fsum(values) / len(values) == pytest.approx(headline, abs=1e-9), name
            if case_ids is None:
                case_ids = entry["case_ids"]
            assert entry["case_ids"] == case_ids, name  # paired by position across models
        assert len(set(case_ids)) == len(case_ids)
    # The coarse scorer ties often: the tie rules are the benchmarks' own (checked below).
    assert any(0.0 < np.mean(outcomes[n]["coarse"]["outcomes"]) < 1.0 for n in outcomes)


def test_ties_count_as_each_benchmark_counts_them(synthetic):
    """A constant scorer ties every comparison: right only for the Order sets (the official argmax
    returns the original on a tie), wrong everywhere else."""
    _, probes = synthetic
    outcomes: dict = {}
    results = run_probe_suite([ConstantScorer()], probes, outcomes=outcomes)
    for name in results:
        values = outcomes[name]["constant"]["outcomes"]
        expected = 1.0 if name == "coco_order" else 0.0
        assert set(values) == {expected}, name
        assert metric_value(results[name]["constant"]["metrics"], HEADLINES[name]) == 100.0 * expected


def test_retrieval_hits_average_to_recall_at_1():
    rng = np.random.default_rng(0)
    txt2img = np.array([0, 0, 1, 2, 2, 3])
    itc = rng.integers(0, 3, size=(4, 6)).astype(float)  # small integers: ties, broken by index
    rank_i2t, rank_t2i = query_ranks(itc, itc.T, txt2img)
    recall = recall_at_k(itc, itc.T, txt2img, (1, 5))
    for k in (1, 5):
        assert 100.0 * hits_at_k(rank_i2t, k).mean() == recall[f"i2t_r{k}"]
        assert 100.0 * hits_at_k(rank_t2i, k).mean() == recall[f"t2i_r{k}"]
    assert set(hits_at_k(rank_i2t, 1)) <= {0.0, 1.0}


def test_model_runs_one_folder_per_study_seed():
    cfg = {"study": {"seeds": [0, 2]}}
    assert study_seeds(cfg) == (0, 2) and study_seeds({}) == (0,)
    assert model_runs("pretrain_stage2", "nas", cfg) == [
        Path("runs/pretrain_stage2/nas/seed0"),
        Path("runs/pretrain_stage2/nas/seed2"),
    ]
    assert model_runs("finetune", "albef", {}) == [Path("runs/finetune/albef/seed0")]
    with pytest.raises(ValueError, match="untrained"):
        model_runs(UNTRAINED, "nas", cfg)
    with pytest.raises(ValueError, match="distinct"):
        study_seeds({"study": {"seeds": [1, 1]}})
    assert EvaluateConfig().checkpoint_stages == (UNTRAINED, "pretrain_stage2", "finetune")


NAS_CFG = {
    "seed": 42,
    "model": {"name": "nas_tiny", "overrides": {"vision": {"patch_size": 16}, "vd": {"num_codes": 8}}},
    "pretrain_stage1": {"model_overrides": {}},
}


def test_an_untrained_nas_model_scores_with_its_random_codebook():
    from PIL import Image

    from nas.data.tokenizer import load_tokenizer
    from nas.data.transforms import TransformConfig, build_eval_transform
    from nas.evaluation.model_scorers import build_scorer

    model, recorded = untrained_model(NAS_CFG, 1)
    assert recorded is NAS_CFG and not model.training
    again, _ = untrained_model(NAS_CFG, 1)
    other, _ = untrained_model(NAS_CFG, 2)
    assert torch.equal(model.vd.codebook, again.vd.codebook)  # seed + offset decides the init
    assert not torch.equal(model.vd.codebook, other.vd.codebook)
    assert model.vd.total_steps is None and int(model.vd.step) == 0  # never trained, never scheduled

    transform, tokenizer = build_eval_transform(TransformConfig()), load_tokenizer()
    images = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    texts = ["a red circle", "a blue square left of a red circle"]
    codebook = model.vd.codebook.clone()
    scores = build_scorer("itm", model, transform, tokenizer).score(images, texts)
    assert torch.equal(model.vd.codebook, codebook) and int(model.vd.step) == 0  # scoring moves nothing
    with torch.no_grad():
        tokens, _ = model.encode_image(torch.stack([transform(im) for im in images]))
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
        text_tokens, _ = model.encode_text(enc["input_ids"], enc["attention_mask"])
        logits = model.itm_logits(tokens, text_tokens, enc["attention_mask"]).double()
    np.testing.assert_allclose(scores, torch.softmax(logits, -1)[:, 1].numpy(), rtol=1e-5)
    health = model.dictionary_health(torch.stack([transform(im) for im in images]))
    assert health["codes_in_use"] >= 1


def test_evaluate_model_writes_the_cases_of_an_untrained_model(synthetic, tmp_path):
    from nas.data.captions import load_split_images

    data_root, probes = synthetic
    data = from_dict(DataConfig, {"root": str(data_root), "probes_root": str(probes)}, "data")
    cfg = {
        "seed": 42,
        "model": {"name": "albef_tiny", "overrides": {"vision": {"patch_size": 16}}},
        "pretrain_stage1": {"model_overrides": {}},
    }
    model, _ = untrained_model(cfg, 0)
    eval_cfg = from_dict(
        EvaluateConfig,
        {"scorers": [{"kind": "itc"}, {"kind": "itm"}], "retrieval": {"k_test": 2}},
        "evaluate",
    )
    images = load_split_images(data, annotation_file=data.test_file)
    cases_file = tmp_path / "cases" / UNTRAINED / "seed0.json"
    result = evaluate_model(model, data, eval_cfg, images, tmp_path / "scores", "test", cases_file)
    assert "outcomes" not in result["retrieval"]
    cases = json.loads(cases_file.read_text())
    assert sorted(cases) == sorted([*result["fine_grained"], "retrieval_i2t_r1", "retrieval_t2i_r1"])
    for name, by_scorer in result["fine_grained"].items():
        assert "outcomes" not in by_scorer["itc_cosine"]
        headline = metric_value(by_scorer["itc_cosine"]["metrics"], cases[name]["metric"])  # the first scorer
        assert 100.0 * np.mean(cases[name]["outcomes"]) == pytest.approx(headline, abs=1e-9)
        assert len(cases[name]["case_ids"]) == by_scorer["itc_cosine"]["n_cases"]
    retrieval = result["retrieval"]
    for direction, count in (("i2t", retrieval["n_images"]), ("t2i", retrieval["n_texts"])):
        entry = cases[f"retrieval_{direction}_r1"]
        assert (entry["metric"], entry["unit"]) == (f"{direction}_r1", "fraction")
        assert len(entry["case_ids"]) == len(set(entry["case_ids"])) == count
        assert 100.0 * np.mean(entry["outcomes"]) == pytest.approx(retrieval["metrics"][f"{direction}_r1"])
    assert cases["retrieval_t2i_r1"]["case_ids"][0] == cases["retrieval_i2t_r1"]["case_ids"][0] + "#0"
