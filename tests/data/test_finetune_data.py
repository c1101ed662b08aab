"""NTA fine-tuning data (NAS_METHOD §5): annotation files, the dataset and its collate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nas.data.captions import AnnotationError, ImagePathError
from nas.data.finetune_data import (
    NTACaptionDataset,
    make_nta_collate,
    names_holdout,
    write_nta_annotations,
    write_spacy_nta_annotations,
)
from nas.data.nta import EDIT_KINDS, NTAConfig, all_edits, caption_truth
from nas.data.synthetic import SyntheticConfig, generate
from nas.data.tokenizer import UnkOnlyCaptionError, load_tokenizer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(n_train=24, n_val=1, n_test=1), root)
    return root


def _scenes(root: Path) -> list[dict]:
    return json.loads((root / "train_scenes.json").read_text())


def test_annotations_follow_the_pairs_and_every_negative_is_false(data_root: Path, tmp_path: Path) -> None:
    counts = write_nta_annotations(data_root, "train", tmp_path / "nta.json", NTAConfig(), seed=3)
    records = json.loads((tmp_path / "nta.json").read_text())
    pairs = json.loads((data_root / "train.json").read_text())
    assert counts == {"split": "train", "pairs": 48, "written": 48, "dropped": 0, "seed": 3}
    assert [(r["image"], r["caption"]) for r in records] == [(p["image"], p["caption"]) for p in pairs]
    margin = SyntheticConfig().margin_px
    captions = [(scene, c) for scene in _scenes(data_root) for c in scene["captions"]]
    for record, (scene, caption) in zip(records, captions):
        edits = {e["text"]: e for kind in EDIT_KINDS for e in all_edits(caption, kind)}
        assert record["neg_caption"] in edits  # an NTA edit of its own caption
        edit = edits[record["neg_caption"]]
        assert caption_truth(edit["words"], edit["roles"], scene["objects"], margin) == "false"
        assert not names_holdout(edit["words"], edit["roles"], frozenset(SyntheticConfig().holdout))
    # Seeded per pair: the same seed writes the same file, another seed other negatives.
    write_nta_annotations(data_root, "train", tmp_path / "again.json", NTAConfig(), seed=3)
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "nta.json").read_bytes()
    write_nta_annotations(data_root, "train", tmp_path / "other.json", NTAConfig(), seed=4)
    assert (tmp_path / "other.json").read_bytes() != (tmp_path / "nta.json").read_bytes()


def test_pairs_without_a_negative_are_dropped_and_counted(data_root: Path, tmp_path: Path) -> None:
    # Relation edits need a relation: single-object captions get none.
    cfg = NTAConfig(kinds=("replace_relation",))
    counts = write_nta_annotations(data_root, "train", tmp_path / "nta.json", cfg)
    single = sum(len(s["captions"]) for s in _scenes(data_root) if len(s["objects"]) == 1)
    assert single > 0
    assert counts["dropped"] == single and counts["written"] == 48 - single
    assert len(json.loads((tmp_path / "nta.json").read_text())) == counts["written"]


def test_holdout_pairs_are_never_written() -> None:
    words = ["a", "small", "red", "triangle"]
    roles = ["det", "size", "colour", "shape"]
    assert names_holdout(words, roles, frozenset({"red triangle"}))
    assert not names_holdout(words, roles, frozenset({"blue circle"}))


def test_missing_scenes_file_is_named(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope_scenes.json"):
        write_nta_annotations(data_root, "nope", tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        write_nta_annotations(tmp_path, "train", tmp_path / "x.json")


def test_dataset_and_collate_add_negative_tokens(data_root: Path, tmp_path: Path) -> None:
    write_nta_annotations(data_root, "train", tmp_path / "nta.json", seed=0)
    dataset = NTACaptionDataset(tmp_path / "nta.json", data_root, lambda image: image.size)
    records = json.loads((tmp_path / "nta.json").read_text())
    assert len(dataset) == len(records)
    item = dataset[5]
    assert item["caption"] == records[5]["caption"] and item["neg_caption"] == records[5]["neg_caption"]
    tokenizer = load_tokenizer()
    collate = make_nta_collate(tokenizer, 32)
    items = [{**dataset[i], "image": torch.zeros(3, 4, 4)} for i in range(3)]
    batch = collate([items[0], None, items[1], items[2]])
    assert batch["num_skipped"] == 1
    assert (
        batch["neg_input_ids"].shape[0] == 3
        and batch["neg_attention_mask"].shape == batch["neg_input_ids"].shape
    )
    for row, item in zip(batch["neg_input_ids"], items):
        assert tokenizer.decode(row, skip_special_tokens=True) == item["neg_caption"]


def test_dataset_rejects_a_record_without_negative(data_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    record = json.loads((data_root / "train.json").read_text())[0]
    path.write_text(json.dumps([{**record, "neg_caption": "a red circle"}, record]))
    with pytest.raises(AnnotationError, match=r"bad.json, record 1: 'neg_caption'"):
        NTACaptionDataset(path, data_root, lambda image: image)


@dataclass
class FakeToken:
    text: str
    tag_: str
    whitespace_: str = " "


def fake_nlp(text: str) -> list[FakeToken]:
    tags = {"dog": "NN", "cat": "NN", "chases": "VBZ", "the": "DT", "a": "DT"}
    words = text.split(" ")
    return [FakeToken(w, tags.get(w, "XX"), " " if k < len(words) - 1 else "") for k, w in enumerate(words)]


def test_real_captions_use_the_spacy_swaps(tmp_path: Path) -> None:
    source = tmp_path / "coco.json"
    source.write_text(json.dumps([{"image": "a.jpg", "caption": ["the dog chases a cat", "a dog"]}]))
    counts = write_spacy_nta_annotations(source, tmp_path / "nta.json", seed=0, nlp=fake_nlp)
    assert counts == {"pairs": 2, "written": 1, "dropped": 1, "seed": 0}
    records = json.loads((tmp_path / "nta.json").read_text())
    assert records == [
        {"image": "a.jpg", "caption": "the dog chases a cat", "neg_caption": "the cat chases a dog"}
    ]


def test_nta_paths_and_unk_only_captions_follow_the_data_params(data_root: Path, tmp_path: Path) -> None:
    record = json.loads((data_root / "train.json").read_text())[0]
    val_image = json.loads((data_root / "val.json").read_text())[0]["image"]  # images/val/...
    train_images = data_root / "images" / "train"
    path = tmp_path / "nta.json"
    inside = {"image": Path(record["image"]).name, "caption": "a red circle", "neg_caption": "a blue circle"}
    outside = {"image": f"../val/{Path(val_image).name}", "caption": "a red circle", "neg_caption": "x"}
    path.write_text(json.dumps([inside, outside]))
    with pytest.raises(ImagePathError, match=r"nta.json, record 1: image path '\.\./val/"):
        NTACaptionDataset(path, train_images, lambda image: image.size)
    allowed = NTACaptionDataset(path, train_images, lambda image: image.size, allow_outside_root=True)
    assert allowed[1]["image"] == allowed[0]["image"]  # read from images/val

    emoji = {**record, "caption": "\U0001f600", "neg_caption": "a red circle"}
    path.write_text(json.dumps([{**record, "neg_caption": "a blue circle"}, emoji]))
    dataset = NTACaptionDataset(path, data_root, lambda image: torch.zeros(3, 4, 4))
    tokenizer = load_tokenizer()
    assert make_nta_collate(tokenizer, 32)([dataset[0], dataset[1]])["num_unk_only"] == 1
    with pytest.raises(UnkOnlyCaptionError) as info:
        make_nta_collate(tokenizer, 32, unk_only="error")([dataset[0], dataset[1]])
    assert f"{path}, record 1: {emoji['caption']!r}" in str(info.value)
