from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nas.config.base import ConfigError, from_dict, to_dict
from nas.data.synthetic import (
    NUM_TEMPLATES,
    ROLES,
    SPLITS,
    SyntheticConfig,
    caption_for,
    generate,
    make_scene,
    render_scene,
)

SMALL = {"n_train": 24, "n_val": 8, "n_test": 24, "test_heldout_fraction": 0.5}

# The test's own reading of relation phrases (independent of the generator's tables).
PHRASE_TO_RELATION = {
    "left of": "left",
    "to the left of": "left",
    "right of": "right",
    "to the right of": "right",
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(seed=3, **SMALL), out)
    return out


def _load(out: Path, name: str):
    return json.loads((out / name).read_text())


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path, dataset_dir: Path):
    generate(SyntheticConfig(seed=3, **SMALL), tmp_path / "again")
    generate(SyntheticConfig(seed=4, **SMALL), tmp_path / "other")
    first = _all_files(dataset_dir)
    assert first == _all_files(tmp_path / "again")
    other = _all_files(tmp_path / "other")
    assert other.keys() == first.keys()
    assert other["train.json"] != first["train.json"]
    assert other["images/train/train_00000.png"] != first["images/train/train_00000.png"]


def test_split_sizes_files_and_manifest(dataset_dir: Path):
    manifest = _load(dataset_dir, "manifest.json")
    for split in SPLITS:
        n = SMALL[f"n_{split}"]
        pngs = sorted((dataset_dir / "images" / split).glob("*.png"))
        assert [p.name for p in pngs] == [f"{split}_{i:05d}.png" for i in range(n)]
        assert len(_load(dataset_dir, f"{split}_scenes.json")) == n
        assert len(_load(dataset_dir, f"{split}.json")) == 2 * n  # captions_per_image = 2
        assert manifest["counts"][split]["images"] == n
    # every written file is hashed, and the hashes are right
    n_images = SMALL["n_train"] + SMALL["n_val"] + SMALL["n_test"]
    assert len(manifest["files"]) == n_images + 2 * len(SPLITS)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((dataset_dir / name).read_bytes()).hexdigest() == digest
    assert manifest["vocabulary"]["colour"] == sorted(SyntheticConfig().colours)


def test_annotation_files_are_exactly_the_albef_list_format(dataset_dir: Path):
    for split in SPLITS:
        pairs = _load(dataset_dir, f"{split}.json")
        scenes = _load(dataset_dir, f"{split}_scenes.json")
        assert isinstance(pairs, list)
        for pair in pairs:
            assert set(pair) == {"image", "caption"}
            assert isinstance(pair["caption"], str) and pair["caption"]
            assert not Path(pair["image"]).is_absolute() and (dataset_dir / pair["image"]).is_file()
        expected = [{"image": s["image"], "caption": c["text"]} for s in scenes for c in s["captions"]]
        assert pairs == expected


def test_heldout_combos_only_in_test_and_flagged(dataset_dir: Path):
    held = {"red triangle", "blue circle"}
    for split in ("train", "val"):
        for scene in _load(dataset_dir, f"{split}_scenes.json"):
            assert not scene["heldout"]
            assert not {f"{o['colour']} {o['shape']}" for o in scene["objects"]} & held
            assert not any(combo in c["text"] for c in scene["captions"] for combo in held)
    test_scenes = _load(dataset_dir, "test_scenes.json")
    flagged = [s for s in test_scenes if s["heldout"]]
    assert 0 < len(flagged) < len(test_scenes)
    for scene in test_scenes:
        has_combo = bool({f"{o['colour']} {o['shape']}" for o in scene["objects"]} & held)
        assert scene["heldout"] == has_combo


def _parse_clauses(
    text: str, vocab: dict[str, list[str]]
) -> list[tuple[tuple[str, str, str], str, tuple | None]]:
    """Read a caption back from its text alone: [(subject description, relation, object description)]."""
    clauses = []
    for clause in text.split(" and "):
        words = clause.split(" ")
        triples = [
            (i, (words[i], words[i + 1], words[i + 2]))
            for i in range(len(words) - 2)
            if words[i] in vocab["size"]
            and words[i + 1] in vocab["colour"]
            and words[i + 2] in vocab["shape"]
        ]
        if len(triples) == 1:
            clauses.append((triples[0][1], "", None))
            continue
        assert len(triples) == 2, clause
        (i, subject), (j, obj) = triples
        between = words[i + 3 : j]
        while between[-1] in vocab["det"]:  # the object's own determiner(s)
            between.pop()
        clauses.append((subject, PHRASE_TO_RELATION[" ".join(between)], obj))
    return clauses


def test_every_stated_relation_is_true_in_the_image(dataset_dir: Path):
    manifest = _load(dataset_dir, "manifest.json")
    margin = manifest["relation_margin_px"]
    vocab = manifest["vocabulary"]
    checked = 0
    for split in SPLITS:
        for scene in _load(dataset_dir, f"{split}_scenes.json"):
            by_description = {(o["size"], o["colour"], o["shape"]): o for o in scene["objects"]}
            assert len(by_description) == len(scene["objects"])  # every object nameable unambiguously
            for caption in scene["captions"]:
                for subject, relation, obj in _parse_clauses(caption["text"], vocab):
                    if obj is None:
                        assert len(scene["objects"]) == 1
                        continue
                    a, b = by_description[subject], by_description[obj]
                    dx, dy = b["x"] - a["x"], b["y"] - a["y"]  # image y grows downward
                    ok = {
                        "left": dx >= margin,
                        "right": -dx >= margin,
                        "above": dy >= margin,
                        "below": -dy >= margin,
                    }
                    assert ok[relation], (scene["image"], caption["text"])
                    checked += 1
    assert checked > 20


def test_caption_word_tags_match_the_scene(dataset_dir: Path):
    for scene in _load(dataset_dir, "train_scenes.json"):
        assert len({c["template"] for c in scene["captions"]}) == len(scene["captions"])
        for caption in scene["captions"]:
            words, roles, owners = caption["words"], caption["roles"], caption["word_objects"]
            assert caption["text"] == " ".join(words)
            assert len(words) == len(roles) == len(owners)
            for word, role, owner in zip(words, roles, owners):
                assert role in ROLES
                assert (owner is None) == (role in ("relation", "conj"))
                if role in ("size", "colour", "shape"):
                    assert scene["objects"][owner][role] == word
            assert roles.count("conj") == max(0, len(scene["objects"]) - 2)
            assert {r["relation"] for r in caption["relations"]} <= {"left of", "right of", "above", "below"}


def test_objects_inside_image_apart_and_rendered_where_recorded(dataset_dir: Path):
    cfg = SyntheticConfig(seed=3, **SMALL)
    for scene in _load(dataset_dir, "val_scenes.json"):
        boxes = [o["bbox"] for o in scene["objects"]]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= cfg.image_size - 1 and 0 <= y0 < y1 <= cfg.image_size - 1
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
        # the written PNG is exactly the scene re-rendered from its record
        written = np.asarray(Image.open(dataset_dir / scene["image"]))
        again = np.asarray(render_scene(scene["objects"], cfg, scene["noise_seed"]))
        assert written.shape == (cfg.image_size, cfg.image_size, 3)
        assert np.array_equal(written, again)


def test_render_without_noise_draws_colours_only_inside_boxes():
    cfg = SyntheticConfig(noise_std=0.0)
    objects = [
        {
            "shape": s,
            "colour": c,
            "size": "large",
            "x": x,
            "y": 32,
            "radius": 6,
            "bbox": [x - 6, 26, x + 6, 38],
        }
        for s, c, x in (
            ("circle", "red", 8),
            ("triangle", "blue", 24),
            ("cross", "green", 40),
            ("diamond", "purple", 56),
        )
    ]
    pixels = np.asarray(render_scene(objects, cfg, noise_seed=0)).astype(int)
    outside = np.ones(pixels.shape[:2], dtype=bool)
    for o in objects:
        x0, y0, x1, y1 = o["bbox"]
        outside[y0 : y1 + 1, x0 : x1 + 1] = False
        assert tuple(pixels[o["y"], o["x"]]) == cfg.colours[o["colour"]]
    assert (pixels[outside] == cfg.background_level).all()


def _hand_scene(*objects: tuple[str, str, str, int, int]) -> dict:
    return {
        "objects": [
            {"size": size, "colour": colour, "shape": shape, "x": x, "y": y, "radius": 5}
            for size, colour, shape, x, y in objects
        ]
    }


def test_caption_templates_hand_checked():
    two = _hand_scene(("small", "red", "circle", 10, 30), ("large", "blue", "square", 45, 33))
    texts = [caption_for(two, t)["text"] for t in range(NUM_TEMPLATES)]
    assert texts == [
        "a small red circle left of a large blue square",
        "a large blue square right of a small red circle",
        "the small red circle to the left of the large blue square",
        "the large blue square to the right of the small red circle",
    ]
    three = _hand_scene(
        ("large", "green", "cross", 20, 10),
        ("small", "red", "square", 22, 40),
        ("small", "blue", "circle", 55, 42),
    )
    caption = caption_for(three, 0)
    assert (
        caption["text"]
        == "a large green cross above a small red square and a small red square left of a small blue circle"
    )
    assert caption["roles"][:6] == ["det", "size", "colour", "shape", "relation", "det"]
    assert caption["roles"][8:10] == ["shape", "conj"]
    assert caption["relations"] == [
        {"subject": 0, "relation": "above", "object": 1},
        {"subject": 1, "relation": "left of", "object": 2},
    ]
    singles = {
        caption_for(_hand_scene(("small", "red", "circle", 9, 9)), t)["text"] for t in range(NUM_TEMPLATES)
    }
    assert len(singles) == NUM_TEMPLATES
    with pytest.raises(ValueError, match="template_id"):
        caption_for(two, NUM_TEMPLATES)


def test_counterfactual_caption_follows_the_scene():
    scene = _hand_scene(("small", "red", "circle", 10, 30), ("large", "blue", "square", 45, 33))
    scene["objects"][0]["x"], scene["objects"][1]["x"] = 45, 10  # swap places
    assert caption_for(scene, 0)["text"] == "a small red circle right of a large blue square"


def test_scene_does_not_depend_on_split_sizes():
    small, big = SyntheticConfig(n_train=5), SyntheticConfig(n_train=500)
    assert make_scene(small, "val", 3) == make_scene(big, "val", 3)
    assert make_scene(small, "train", 3) != make_scene(small, "train", 4)


def test_more_test_scenes_leave_train_and_val_byte_identical(tmp_path: Path):
    # The probes grow the test split (ProbeConfig); training and validation must not move.
    fewer, more = tmp_path / "fewer", tmp_path / "more"
    generate(SyntheticConfig(seed=4, n_train=6, n_val=4, n_test=3), fewer)
    generate(SyntheticConfig(seed=4, n_train=6, n_val=4, n_test=9), more)
    a, b = _all_files(fewer), _all_files(more)
    kept = [n for n in a if n.startswith(("train", "val", "images/train/", "images/val/"))]
    assert len(kept) == 4 + 6 + 4 and all(a[n] == b[n] for n in kept)
    assert _load(more, "test_scenes.json")[:3] == _load(fewer, "test_scenes.json")  # a prefix
    assert all(a[n] == b[n] for n in a if n.startswith("images/test/"))


def test_config_validation_and_strict_loading():
    with pytest.raises(ValueError, match="holdout"):
        SyntheticConfig(holdout=("pink circle",))
    with pytest.raises(ValueError, match="max_objects"):
        SyntheticConfig(shapes=("circle", "square"), max_objects=3)
    with pytest.raises(ValueError, match="captions_per_image"):
        SyntheticConfig(captions_per_image=NUM_TEMPLATES + 1)
    with pytest.raises(ConfigError, match="synthetic.n_trian"):
        from_dict(SyntheticConfig, {"n_trian": 5}, "synthetic")
    cfg = SyntheticConfig(seed=7, holdout=("green cross",))
    assert from_dict(SyntheticConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_refuses_to_write_into_a_non_empty_folder(tmp_path: Path):
    (tmp_path / "keep.txt").write_text("user data")
    cfg = SyntheticConfig(n_train=2, n_val=1, n_test=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(cfg, tmp_path)
    generate(cfg, tmp_path, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "user data"
    assert len(json.loads((tmp_path / "train.json").read_text())) == 4
