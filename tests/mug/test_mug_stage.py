"""The MUG stages on a tiny synthetic set: caption checks (empty, too long), grayscale/RGBA/palette
images through the MUG data path, and the three stages end to end (one run per arm x seed, resume
included, also after an edit to params the runs do not read), then the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.config.base import ConfigError
from nas.config.params import load_params, resolve
from nas.data.bpe_tokenizer import BpeTokenizer, EmptyCaptionError
from nas.recipes.stage import Recorder

ROOT = Path(__file__).resolve().parents[2]


def _write_pairs(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_empty_captions_error_or_are_skipped_and_counted(tmp_path):
    from nas.recipes.mug.data import caption_census

    tokenizer = BpeTokenizer(context_length=8)
    records = [
        {"image": "a.png", "caption": ["a red circle", "  "]},
        {"image": "b.png", "caption": ""},
        {"image": "c.png", "caption": "a large blue square left of a small red circle and more words"},
    ]
    pairs = _write_pairs(tmp_path / "train.json", records)
    with pytest.raises(EmptyCaptionError, match=r"train.json, record 0, caption 1: empty"):
        caption_census(pairs, tokenizer, "error", tmp_path / "out")
    census = caption_census(pairs, tokenizer, "skip", tmp_path / "out")
    assert census["empty_skipped"] == 2 and census["pairs"] == 2 and census["truncated"] == 1
    kept = json.loads(Path(census["annotation"]).read_text())
    assert [r["image"] for r in kept] == ["a.png", "c.png"] and kept[0]["caption"] == ["a red circle"]
    assert tokenizer.sot_id in census["bpe_ids"] and tokenizer.eot_id in census["bpe_ids"]
    assert len(census["targets"]) == (3 + 1) + (8 - 1)  # labels after SOT, EOT included


def test_grayscale_rgba_palette_images_reach_the_model_as_rgb(tmp_path):
    from nas.recipes.mug.card import effective_sections
    from nas.recipes.mug.data import build_train_loader, caption_census
    from nas.recipes.mug.train import build_mug

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels[..., 0], mode="L").save(tmp_path / "images" / "gray.png")
    Image.fromarray(np.dstack([pixels, pixels[..., :1]]), mode="RGBA").save(tmp_path / "images" / "rgba.png")
    Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "images" / "palette.png"
    )
    records = [{"image": f"images/{n}.png", "caption": f"a {n} image"} for n in ("gray", "rgba", "palette")]
    pairs = _write_pairs(tmp_path / "train.json", records)
    cfg = resolve(
        load_params(ROOT / "params.yaml"), None, [f"data.root={tmp_path}", "mug.loader.batch_size_per_gpu=3"]
    )
    typed = effective_sections(cfg)
    tokenizer = BpeTokenizer(context_length=32)
    census = caption_census(pairs, tokenizer, "error", tmp_path)
    batch = next(iter(build_train_loader(typed, census["annotation"], tokenizer)))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["num_skipped"] == 0
    model = build_mug(typed["section"], "mug", 0, census["bpe_ids"])
    terms = model(batch)
    assert set(terms) == {"recon", "caption"} and all(torch.isfinite(t) for t in terms.values())


def test_a_runs_digest_reads_only_what_the_run_reads():
    """What a run is named by (its checkpoint digest): not other sections, not the evaluation knobs,
    not the other arms or seeds; its own arm, seed and training params are."""
    from nas.recipes.mug.card import read_section
    from nas.recipes.mug.train import run_reads

    cfg = resolve(load_params(ROOT / "params.yaml"), None)

    def reads(edit=lambda c: None, arm="mug", seed=0):
        c = json.loads(json.dumps(cfg))
        edit(c)
        return run_reads(c, arm, seed, read_section(c))

    base = reads()
    for same in (
        lambda c: c["report"].update(title="another"),
        lambda c: c["uta"]["evaluation"].update(batch_size=7),
        lambda c: c["mug"]["evaluate"].update(batch_size=7),
        lambda c: c["mug"].update(seeds=[0, 1, 2, 3], torch_threads=2),
        lambda c: c["mug"]["arms"].update(mae_only={"cap_weight": 0.5}),
        # ALBEF's distillation α is the ALBEF stages' section, which no MUG run reads
        lambda c: c["pretrain_stage1"]["distillation"].update(alpha=0.4, ramp=False),
        lambda c: c["finetune"]["distillation"].update(alpha=0.4),
    ):
        assert reads(same) == base
    for other in (
        lambda c: c["mug"]["train"].update(epochs=3),
        lambda c: c["mug"]["arms"].update(mug={"mask_ratio": 0.75}),
        lambda c: c["loader"].update(batch_size_per_gpu=7),
    ):
        assert reads(other) != base
    assert reads(seed=1) != base and reads(arm="mae_only") != base


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A tiny synthetic data set and its probes, as the `data` stage writes them."""
    from nas.data.probes import ProbeConfig, write_probes
    from nas.data.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("mugproject")
    generate(SyntheticConfig(n_train=40, n_val=8, n_test=24), root / "data/synthetic")
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


TINY = [
    "mug.arms={mae_only: {cap_weight: 0.0}, mug: {}}",
    "mug.seeds=[0, 1]",
    "mug.loader.batch_size_per_gpu=8",
    "mug.train.epochs=2",
    "mug.train.max_steps_per_epoch=1",
    "mug.train.log_every_steps=1",
    "mug.train.schedule.warmup_steps=1",
    "mug.evaluate.figure_images=2",
    "mug.evaluate.generation={max_length: 6, beam_size: 2}",
    "mug.evaluate.caption_images=4",
    "mug.evaluate.benchmarks=[winoground, vg_relation]",
]


@pytest.fixture
def keep_torch_threads():
    """The stages set torch's thread count (params `mug.torch_threads`); other tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_stages_end_to_end_resume_and_report(tiny_project, monkeypatch, keep_torch_threads):
    from nas.engine.run import load_run
    from nas.recipes.mug.evaluate import evaluate
    from nas.recipes.mug.paths import run_dir
    from nas.recipes.mug.train import pretrain, vocabulary
    from nas.reporting.mug_section import section

    monkeypatch.chdir(tiny_project)
    cfg = resolve(load_params(ROOT / "params.yaml"), None, TINY)
    runs = [(a, s) for a in ("mae_only", "mug") for s in (0, 1)]

    def train_all(params):
        for arm, seed in runs:  # one DVC matrix entry each: mug_pretrain@<arm>-<seed>
            pretrain(dict(params, stage=f"mug_pretrain@{arm}-{seed}"), Recorder(), arm=arm, seed=seed)
        return {f"{a}/seed{s}": json.loads((run_dir(a, s) / "summary.json").read_text()) for a, s in runs}

    vocabulary(dict(cfg, stage="mug_vocabulary"), Recorder())
    first = train_all(cfg)
    assert all(run["final"]["steps"] == 1 and len(run["epochs"]) == 2 for run in first.values())
    assert (
        set(first["mae_only/seed0"]["final"]) >= {"recon"}
        and "caption" not in first["mae_only/seed0"]["final"]
    )
    with pytest.raises(ConfigError, match="not an arm"):
        pretrain(cfg, Recorder(), arm="caption_only", seed=0)

    # A second run resumes every finished run and trains nothing, also after an edit to params the
    # runs do not read (another section, the evaluation knobs): their digests are unchanged.
    edited = json.loads(json.dumps(cfg))
    edited["report"]["title"] = "another title"
    edited["uta"]["evaluation"]["batch_size"] = 7
    edited["mug"]["evaluate"]["batch_size"] = 7
    again = train_all(edited)
    for name, run in again.items():
        assert run["resumed_from"] and run["epochs"] == first[name]["epochs"]
        assert run["config_digest"] == first[name]["config_digest"]
    model, recorded = load_run(run_dir("mug", 0))  # the one reloader: registry + strict weights
    assert model.vocabulary_set and recorded["run"]["model"] == {
        "name": "mug_tiny",
        "overrides": {"mask_ratio": 0.5},
    }

    evaluate(dict(cfg, stage="mug_evaluate"), Recorder())
    gathered = json.loads(Path("metrics/mug/pretrain.json").read_text())
    assert set(gathered["runs"]) == set(first) and gathered["captions"]["pairs"] == 80
    assert (
        gathered["captions"]["empty_skipped"] == 0
        and gathered["runs"]["mug/seed1"]["epochs"] == first["mug/seed1"]["epochs"]
    )
    result = json.loads(Path("metrics/mug/evaluate.json").read_text())
    mug = result["arms"]["mug"]
    assert mug["summary"]["probes"]["colour"]["accuracy"]["n"] == 2
    assert len(mug["per_seed"][0]["captions"]["greedy"]["texts"]) == 4
    assert result["baselines"]["caption_ce_unigram"] > 0
    fine = json.loads(Path("metrics/fine_grained/mug.json").read_text())
    assert fine["recipe"] == "mug" and set(fine["rows"]) == {"mug"}  # MAE only has no trained captioner
    per_seed = fine["rows"]["mug"]["per_seed"][0]
    assert set(per_seed) == {"winoground", "vg_relation"} and all(
        "caption-ll" in b for b in per_seed.values()
    )
    config = json.loads(Path("runs/mug_pretrain/mae_only/seed1/config.json").read_text())
    # the untrained baseline: same seeds, same probes, its held-out losses are every arm's "initial"
    untrained = result["untrained"]
    assert untrained["seeds"] == [0, 1] and set(untrained["per_seed"][0]["probes"]) == set(
        mug["per_seed"][0]["probes"]
    )
    assert mug["per_seed"][1]["initial"] == untrained["per_seed"][1]["heldout"]
    assert "caption_ce_shuffled_image" in mug["per_seed"][0]["heldout"]
    assert result["findings"] and all(
        row["verdict"] in ("reproduced", "opposite", "inconclusive", "not judged")
        for row in result["findings"]
    )
    assert {"mae_only", "mug", "untrained"} <= set(result["probe_intervals"])
    assert Path("runs/mug_evaluate/cases/untrained/seed1.json").is_file()
    assert result["arms"]["mae_only"]["per_seed"][0]["captions"] == {}  # no trained captioner: not captioned
    overrides = {"mask_ratio": 0.5, "cap_weight": 0.0}
    assert config["mug"]["model"]["overrides"] == overrides and config["stage"] == "mug_pretrain"
    assert {k: config["run"][k] for k in ("arm", "seed", "stage", "export")} == {
        "arm": "mae_only",
        "seed": 1,
        "stage": "mug_pretrain",
        "export": "",
    }
    assert config["run"]["model"] == {"name": "mug_tiny", "overrides": overrides}

    lines = section(Path("metrics"), Path("reports"))
    text = "\n".join(lines)
    assert "### Findings" in text and "MAE only (cap_weight 0)" in text and "chance (1 / classes)" in text
    assert "| untrained encoder (same seeds) | 2 |" in text
    assert Path("reports/figures/mug_samples.png").is_file()
    assert section(Path("nowhere"), Path("reports")) == []
