"""The inference API (nas.inference): run folders in the pipeline's format, exported inference files and
registered names through `create_model_and_transforms`; `model.score` against the evaluation's scorers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nas
from nas.config import from_dict
from nas.config.data import DataConfig
from nas.data.synthetic import SyntheticConfig, render_scene
from nas.data.tokenizer import load_tokenizer
from nas.data.transforms import build_eval_transform
from nas.engine.checkpoint import atomic_save, atomic_write_text, read_checkpoint
from nas.engine.run import load_run
from nas.evaluation.model_scorers import ScorerConfig, scorer_from_config
from nas.inference import FORMAT, PairScores, inference_state_dict, load_model, training_only_keys
from nas.models.registry import create_model
from nas.recipes.evaluate import data_as_trained
from nas.recipes.stage import load_config

ROOT = Path(__file__).resolve().parents[1]
# A small model on the real BERT vocabulary: 32 px images, patch 8 (a 4 x 4 grid), one layer each.
SMALL = {
    "vision": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 1, "num_heads": 2},
    "text": {
        "hidden_size": 64,
        "num_heads": 2,
        "intermediate_size": 128,
        "num_text_layers": 1,
        "num_fusion_layers": 1,
        "init_std": 0.1,
    },
    "embed_dim": 32,
    "queue_size": 64,
}
SMALL_NAS = {**SMALL, "vd": {"num_codes": 16, "dim": 64}}
CAPTIONS = ["a red circle", "a small blue square above a red circle", "a green cross"]


def scenes() -> list[Image.Image]:
    cfg = SyntheticConfig(image_size=48)
    red_circle = {"shape": "circle", "colour": "red", "x": 24, "y": 24, "radius": 9}
    blue_square = {"shape": "square", "colour": "blue", "x": 24, "y": 12, "radius": 7}
    return [render_scene([red_circle], cfg, 1), render_scene([blue_square, red_circle], cfg, 2)]


def write_run(folder: Path, variant: str, name: str, overrides: dict, *, full: bool) -> Path:
    """A run folder as the stages write it: config.json (the resolved params of the variant, with the
    effective model overrides and image size, as finetune records them) and checkpoint.pt: pretraining's
    complete checkpoint (`full`) or fine-tuning's `{"model": state_dict}`."""
    cfg = load_config(ROOT / "params.yaml", variant, [])
    cfg["stage"] = "finetune"
    cfg["model"] = {"name": name, "overrides": overrides}
    cfg["data"]["transform"]["image_size"] = overrides["vision"]["img_size"]
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    with torch.no_grad():  # a trained-looking state: queues moved, VD counts and steps non-zero
        model.itc.image_queue.ptr.fill_(5)
        if hasattr(model, "vd"):
            model.vd.ema_counts.uniform_(0.5, 2.0)
            model.vd.step.fill_(7)
            model.training_steps.fill_(11)
    state = {"model": model.state_dict()}
    if full:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        state |= {"optimizer": optimizer.state_dict(), "history": {"epochs": []}}
    folder.mkdir(parents=True)
    atomic_save(state, folder / "checkpoint.pt")
    atomic_write_text(folder / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return folder


@pytest.fixture(scope="module")
def nas_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return write_run(root / "finetune" / "nas" / "seed0", "nas", "nas_tiny", SMALL_NAS, full=False)


@pytest.fixture(scope="module")
def albef_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return write_run(root / "pretrain_stage2" / "albef", "albef", "albef_tiny", SMALL, full=True)


def evaluation_scores(run: Path, images: list[Image.Image], texts: list[str]) -> dict[str, np.ndarray]:
    """What the evaluate stage computes for every (image, text) pair: its loader, its input size, its
    scorers (nas/recipes/evaluate.py: load_run, data_as_trained, fine_grained)."""
    model, recorded = load_run(run)
    data = data_as_trained(from_dict(DataConfig, recorded["data"], "data"), recorded)
    transform, tokenizer = build_eval_transform(data.transform), load_tokenizer()
    rows = [image for image in images for _ in texts]
    cols = [text for _ in images for text in texts]
    return {
        kind: scorer_from_config(ScorerConfig(kind=kind), model, transform, tokenizer)
        .score(rows, cols)
        .reshape(len(images), len(texts))
        for kind in ("itm", "itc")
    }


def api_scores(source, **kwargs) -> PairScores:
    model, preprocess, tokenizer = nas.create_model_and_transforms(source, **kwargs)
    return model.score(torch.stack([preprocess(image) for image in scenes()]), tokenizer(CAPTIONS))


@pytest.mark.parametrize("run_name", ["nas_run", "albef_run"])
def test_run_folder_scores_are_the_evaluation_scores(run_name: str, request) -> None:
    run = request.getfixturevalue(run_name)
    scores = api_scores(run)
    assert isinstance(scores, PairScores)
    for kind, expected in evaluation_scores(run, scenes(), CAPTIONS).items():
        got = getattr(scores, kind)
        assert got.shape == (2, 3) and got.dtype == torch.float64
        np.testing.assert_array_equal(got.numpy(), expected)  # bit for bit
    assert ((scores.itm > 0) & (scores.itm < 1)).all() and (scores.itc.abs() <= 1).all()
    assert len({round(float(s), 12) for s in scores.itc.flatten()}) == 6  # distinct pairs, distinct scores


def test_factory_outputs_and_the_score_contract(nas_run: Path) -> None:
    model, preprocess, tokenizer = nas.create_model_and_transforms(nas_run)
    assert type(model).__name__ == "NAS" and not model.training
    assert next(model.parameters()).device == torch.device("cpu")
    assert preprocess(scenes()[0]).shape == (3, 32, 32)  # the trained size from config.json
    encoded = tokenizer(CAPTIONS)
    assert encoded["input_ids"].shape == encoded["attention_mask"].shape == (3, 32)
    assert tokenizer("A red circle!")["input_ids"].shape == (1, 32)
    images = torch.stack([preprocess(image) for image in scenes()])

    # NAS scores ITM with its visual-dictionary tokens: not what the raw ViT tokens would give.
    with torch.no_grad():
        image_tokens, _ = model.encode_image(images[:1])
        text_tokens, _ = model.encode_text(encoded["input_ids"][:1], encoded["attention_mask"][:1])
        raw = model.fused_itm_logits(image_tokens, text_tokens, encoded["attention_mask"][:1])
    scores = model.score(images, encoded)
    assert not torch.isclose(scores.itm[0, 0], torch.softmax(raw.double(), -1)[0, 1])

    # Eval mode and no_grad inside, the caller's mode restored, the codebook never moved.
    codebook = model.vd.codebook.clone()
    model.train()
    again = model.score(images, encoded)
    assert model.training and torch.equal(model.vd.codebook, codebook)
    assert torch.equal(again.itm, scores.itm) and not again.itm.requires_grad
    model.eval()
    # Batching changes nothing but the last bits; a single image and a tuple of tensors are accepted.
    small_batches = model.score(images, encoded, batch_size=2)
    torch.testing.assert_close(small_batches.itm, scores.itm)
    one = model.score(images[1], (encoded["input_ids"], encoded["attention_mask"]))
    assert one.itm.shape == (1, 3)
    torch.testing.assert_close(one.itc, scores.itc[1:])
    with pytest.raises(TypeError, match=r"tokenizer\(captions\)"):
        model.score(images, CAPTIONS)


def test_export_drops_momentum_and_queues_and_reloads_to_the_same_scores(nas_run: Path, tmp_path) -> None:
    reference = api_scores(nas_run)
    model, _ = load_run(nas_run)
    dropped = set(training_only_keys(model))
    full = read_checkpoint(nas_run / "checkpoint.pt")["model"]
    assert {"visual_encoder_m.cls_token", "text_proj_m.weight", "itc.image_queue.features"} <= dropped
    assert {"itc.text_queue.ptr", "vd.ema_sums", "vd.step"} <= dropped
    assert all(k.split(".")[0].endswith("_m") or "queue" in k or k.startswith("vd.") for k in dropped)
    recorded = json.loads((nas_run / "config.json").read_text())

    for name in ("model.safetensors", "model.pt"):
        out = nas.export_inference_weights(nas_run, tmp_path / name)
        assert out == tmp_path / name
        assert out.stat().st_size < 0.6 * (nas_run / "checkpoint.pt").stat().st_size
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(out), framework="pt") as handle:
                keys, meta = set(handle.keys()), handle.metadata()  # noqa: SIM118
            assert meta["format"] == FORMAT and json.loads(meta["config"]) == recorded
        else:
            stored = read_checkpoint(out)
            keys = set(stored["model"])
            assert stored["format"] == FORMAT and stored["config"] == recorded
        assert keys == set(full) - dropped
        assert not any("_m." in k or "queue" in k for k in keys)
        assert {"vd.codebook", "vd.ema_counts", "itc.temp", "training_steps"} <= keys

        reloaded = api_scores(out)
        assert torch.equal(reloaded.itm, reference.itm) and torch.equal(reloaded.itc, reference.itc)
        # The evaluation's loader reads it too; the kept buffers are the run's, the momentum copies
        # restart from the online weights.
        loaded, config = load_model(out)
        assert config == recorded and int(loaded.training_steps) == 11
        assert torch.equal(loaded.vd.codebook, full["vd.codebook"])
        assert torch.equal(loaded.visual_encoder_m.pos_embed, loaded.visual_encoder.pos_embed)

    # Exporting an exported file (a format conversion) gives the same weights.
    again = nas.export_inference_weights(tmp_path / "model.pt", tmp_path / "again.safetensors")
    assert torch.equal(api_scores(again).itm, reference.itm)


def test_a_missing_non_training_key_is_an_error_naming_it(nas_run: Path, tmp_path) -> None:
    out = nas.export_inference_weights(nas_run, tmp_path / "model.pt")
    stored = read_checkpoint(out)
    del stored["model"]["vd.codebook"]
    stored["model"]["extra.weight"] = torch.zeros(1)
    atomic_save(stored, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match=r"broken\.pt.*'vd\.codebook'.*'extra\.weight'"):
        nas.create_model_and_transforms(tmp_path / "broken.pt")
    # A pipeline checkpoint still loads strictly: every key, momentum and queues included.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((nas_run / "config.json").read_text())
    state = read_checkpoint(nas_run / "checkpoint.pt")
    del state["model"]["itc.text_queue.features"]
    atomic_save(state, run / "checkpoint.pt")
    with pytest.raises(RuntimeError, match="itc.text_queue.features"):
        nas.create_model_and_transforms(run)


def test_a_registered_name_with_and_without_pretrained_weights(albef_run: Path, tmp_path) -> None:
    torch.manual_seed(3)
    model, preprocess, tokenizer = nas.create_model_and_transforms("albef_tiny", **SMALL)
    assert type(model).__name__ == "ALBEF" and not model.training
    assert preprocess(scenes()[0]).shape == (3, 32, 32) and tokenizer.max_length == 32
    random_init = model.score(torch.stack([preprocess(i) for i in scenes()]), tokenizer(CAPTIONS))
    assert random_init.itm.shape == (2, 3)

    reference = api_scores(albef_run)
    exported = nas.export_inference_weights(albef_run, tmp_path / "albef.safetensors")
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"  # a bare state dict in safetensors, no metadata
    save_file(inference_state_dict(load_run(albef_run)[0]), str(plain))
    # an exported file, a training checkpoint, plain safetensors
    for weights in (exported, albef_run / "checkpoint.pt", plain):
        scores = api_scores("albef_tiny", pretrained=weights, **SMALL)
        assert torch.equal(scores.itm, reference.itm) and torch.equal(scores.itc, reference.itc)
    with pytest.raises(RuntimeError, match="does not fit ALBEF"):  # other overrides, other shapes
        nas.create_model_and_transforms("albef_tiny", pretrained=exported)
    assert nas.create_model is create_model
    from nas.models import create_model as reexported

    assert reexported is create_model


def test_bad_sources_name_themselves(tmp_path, nas_run: Path) -> None:
    missing = tmp_path / "runs" / "finetune" / "nas" / "seed9"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        nas.create_model_and_transforms(missing)
    with pytest.raises(FileNotFoundError, match="nas_tinny"):
        nas.create_model_and_transforms("nas_tinny")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty / "config.json")):
        nas.create_model_and_transforms(empty)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((nas_run / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=str(no_weights / "checkpoint.pt")):
        nas.create_model_and_transforms(no_weights)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "w.pt")):
        nas.create_model_and_transforms("albef_tiny", pretrained=tmp_path / "w.pt", **SMALL)
    stray = tmp_path / "stray.pt"
    atomic_save({"model": {}}, stray)
    with pytest.raises(ValueError, match="stray.pt"):
        nas.create_model_and_transforms(stray)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="plain.safetensors"):  # weights without a config
        nas.create_model_and_transforms(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="registered model name"):
        nas.create_model_and_transforms(nas_run, pretrained=stray)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        nas.export_inference_weights(nas_run, tmp_path / "model.npz")
    with pytest.raises(TypeError, match="ALBEF evaluation API"):
        nas.create_model_and_transforms("uta_clip_tiny")


def test_import_nas_stays_light() -> None:
    code = (
        "import sys, nas; assert 'torch' not in sys.modules, 'import nas imported torch'; "
        "assert {'create_model_and_transforms', 'export_inference_weights', 'create_model'} <= set(dir(nas)); "
        "import nas.models; assert 'torch' not in sys.modules, 'import nas.models imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
