"""Scene ground-truth attributes, linear probes and seed aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nas.evaluation.linear_probe import LinearProbeConfig, probe_attribute, probe_attributes
from nas.evaluation.scene_attributes import load_split_attributes, scene_attributes, zero_shot_prompts
from nas.evaluation.seeds import aggregate, fmt_mean_std, mean_std


def _obj(shape, colour, size, x, y, radius):
    return {"shape": shape, "colour": colour, "size": size, "x": x, "y": y, "radius": radius}


def test_main_object_is_the_unique_largest_and_relation_is_the_pair_by_palette():
    scene = {
        "image": "a.png",
        "image_size": 64,
        "objects": [_obj("circle", "blue", "small", 50, 10, 6), _obj("square", "red", "large", 10, 40, 11)],
    }
    assert scene_attributes(scene) == {
        "count": "2",
        "colour": "red",
        "shape": "square",
        "size": "mixed",
        "relation": "left of",  # red (first in the palette, x 10) is left of blue (x 50): |dx| 40 > |dy| 30
        "hpos": "left",  # x 10 of 64: first third
        "vpos": "middle",  # y 40 of 64: second third
    }
    swapped = dict(scene, objects=scene["objects"][::-1])  # the same image
    assert scene_attributes(swapped) == scene_attributes(scene)


def test_single_object_has_no_relation_and_a_tie_has_no_main_object():
    scene = {"image": "b.png", "image_size": 64, "objects": [_obj("cross", "green", "small", 60, 63, 6)]}
    assert scene_attributes(scene)["relation"] is None and scene_attributes(scene)["size"] == "small"
    assert scene_attributes(scene)["hpos"] == "right" and scene_attributes(scene)["vpos"] == "bottom"
    two = {
        "image": "c.png",
        "image_size": 64,
        "objects": [_obj("cross", "green", "small", 5, 5, 6), _obj("circle", "red", "small", 50, 50, 6)],
    }
    labels = scene_attributes(two)
    assert labels["colour"] is labels["shape"] is labels["hpos"] is None and labels["size"] == "small"
    assert (
        labels["relation"] == "right of"
    )  # red (x 50) is right of green (x 5): |dx| 45 = |dy| 45, horizontal


def test_malformed_scene_file_names_file_and_record(tmp_path):
    (tmp_path / "test_scenes.json").write_text(json.dumps([{"image": "x.png", "image_size": 64}]))
    with pytest.raises(ValueError, match=r"test_scenes.json: record 0"):
        load_split_attributes(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="val_scenes.json"):
        load_split_attributes(tmp_path, "val")


def test_zero_shot_prompts_cover_every_value_and_ensemble_the_rest():
    prompts = zero_shot_prompts("colour")
    assert sorted(prompts) == ["blue", "green", "orange", "purple", "red", "yellow"]
    assert len(prompts["red"]) == 2 * 5 and all(" red " in p for p in prompts["red"])
    with pytest.raises(ValueError, match="relation"):
        zero_shot_prompts("relation")


def test_probe_separable_feature_is_perfect_and_noise_is_near_chance():
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"] * 40
    onehot = np.eye(3)[[ord(c) - 97 for c in labels]]
    noise = rng.normal(size=(120, 4))
    good = probe_attribute(onehot + 0.01 * noise[:, :3], labels, onehot, labels, LinearProbeConfig())
    assert good["accuracy"] == 100.0 and good["chance"] == pytest.approx(100 / 3)
    bad = probe_attribute(noise[:60], labels[:60], noise[60:], labels[60:])
    assert bad["accuracy"] < 60.0 and bad["n_train"] == 60 and bad["n_classes"] == 3


def test_probe_drops_none_rows_and_checks_shapes():
    x = np.arange(8, dtype=float).reshape(4, 2)
    out = probe_attributes(x, {"k": ["a", None, "b", "b"]}, x, {"k": [None, "a", "b", "a"]})
    assert out["k"]["n_train"] == 3 and out["k"]["n_test"] == 3
    with pytest.raises(ValueError, match="3 labels"):
        probe_attribute(x, ["a", "b", "a"], x, ["a"] * 4)


def test_mean_std_and_nested_aggregate():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3, "values": [1.0, 2.0, 3.0]}
    assert mean_std([5])["std"] == 0.0
    agg = aggregate([{"a": {"x": 1.0, "name": "s"}}, {"a": {"x": 3.0, "name": "s"}}])
    assert agg["a"]["name"] == "s" and agg["a"]["x"]["mean"] == 2.0
    assert fmt_mean_std(agg["a"]["x"]) == f"2.0 ± {np.sqrt(2):.1f}"
    with pytest.raises(ValueError, match="seed 1"):
        aggregate([{"a": 1}, {"b": 1}])
