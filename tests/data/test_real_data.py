"""`data.source: files`: ALBEF pair lists with local paths, shards in the training set, the plan."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_shards import BLUE, GREEN, sample, to_tensor, write_shard

from nas.config import from_dict
from nas.config.data import DataConfig
from nas.data.pair_lists import DEFAULT_ANCHORS, PairListError, merge_pair_lists, rewrite_path
from nas.data.real import prepare_files
from nas.data.training_set import build_training_set

CLUSTER = "/export/share/datasets/vision"


def test_anchor_rewrite_keeps_the_tail_whatever_the_prefix():
    assert (
        rewrite_path(f"{CLUSTER}/coco/images/train2014/COCO_1.jpg", DEFAULT_ANCHORS)
        == "coco/train2014/COCO_1.jpg"
    )
    assert rewrite_path("/x/VG_100K_2/7.jpg", DEFAULT_ANCHORS) == "vg/VG_100K_2/7.jpg"  # not VG_100K
    assert rewrite_path("/x/other/7.jpg", DEFAULT_ANCHORS) is None


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)


def test_merge_writes_local_pairs_expands_caption_lists_and_counts_missing(tmp_path):
    _image(tmp_path / "coco/train2014/a.jpg")
    (tmp_path / "albef").mkdir()
    (tmp_path / "albef/coco.json").write_text(
        json.dumps(
            [
                {"image": f"{CLUSTER}/coco/images/train2014/a.jpg", "caption": ["one", "two"]},
                {"image": f"{CLUSTER}/coco/images/train2014/gone.jpg", "caption": "lost"},
            ]
        )
    )
    with pytest.raises(FileNotFoundError, match=r"coco.json: record 1: image .*gone.jpg"):
        merge_pair_lists(["albef/coco.json"], tmp_path / "pairs.json", tmp_path)
    assert not (tmp_path / "pairs.json").exists()
    out = merge_pair_lists(["albef/coco.json"], tmp_path / "pairs.json", tmp_path, skip_missing=True)
    assert out["pairs"] == 2 and out["sources"]["albef/coco.json"]["missing_images"] == 1
    assert json.loads((tmp_path / "pairs.json").read_text()) == [
        {"image": "coco/train2014/a.jpg", "caption": "one"},
        {"image": "coco/train2014/a.jpg", "caption": "two"},
    ]


def test_unmapped_path_names_file_record_and_param(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps([{"image": "/elsewhere/x.jpg", "caption": "c"}]))
    with pytest.raises(PairListError, match=r"l.json: record 0: .*data.download.path_anchors"):
        merge_pair_lists(["l.json"], tmp_path / "o.json", tmp_path)


def test_training_set_appends_shards_with_distinct_ids_and_positions(tmp_path):
    _image(tmp_path / "img/a.png")
    (tmp_path / "train.json").write_text(json.dumps([{"image": "img/a.png", "caption": "a red circle"}] * 2))
    (tmp_path / "cc3m").mkdir()
    write_shard(
        tmp_path / "cc3m/00000.tar", sample("00000/0", GREEN, "green") + sample("00000/1", BLUE, "blue")
    )
    data = from_dict(DataConfig, {"source": "files", "root": str(tmp_path), "train_shards": ["cc3m"]}, "data")
    dataset = build_training_set(data, lambda image: to_tensor(image.convert("RGB")))
    items = [dataset[i] for i in range(len(dataset))]
    assert [i["caption"] for i in items] == ["a red circle", "a red circle", "green", "blue"]
    assert [i["index"] for i in items] == [0, 1, 2, 3]
    assert [i["image_id"] for i in items] == [0, 0, 1, 2]


def test_dry_run_lists_the_plan_and_touches_nothing(tmp_path):
    data = from_dict(
        DataConfig,
        {
            "source": "files",
            "root": str(tmp_path / "paper"),
            "download": {"selection": ["sugarcrepe", "sbu"], "dry_run": True},
        },
        "data",
    )
    lines: list[str] = []
    summary = prepare_files(data, echo=lines.append)
    text = "\n".join(lines)
    assert summary["dry_run"] and summary["items"] > 0
    assert "sugarcrepe.swap_obj" in text and "img2dataset --url_list" in text and "free disk" in text
    assert not (tmp_path / "paper").exists()
    with pytest.raises(ValueError, match="selection is empty"):
        prepare_files(from_dict(DataConfig, {"source": "files", "download": {"selection": []}}, "data"))


def test_uta_selection_lists_gated_imagenet21k_datacomp_shards_and_the_teacher():
    from nas.data.catalog import select

    resources, jobs = select(["uta"])
    by_key = {r.key: r for r in resources}
    assert (
        by_key["imagenet21k.winter21"].method == "manual"
        and "image-net.org" in by_key["imagenet21k.winter21"].instructions
    )
    assert by_key["teachers.eva02_e14"].filename.endswith("open_clip_pytorch_model.bin")
    assert [j.key for j in jobs] == ["datacomp.shards"] and jobs[0].input_format == "parquet"
