from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from nas.data.captions import (
    AnnotationError,
    BadImageError,
    CaptionDataset,
    ImagePathError,
    load_pairs,
    stack_images,
)
from nas.data.transforms import TransformConfig, build_eval_transform

EVAL = build_eval_transform(TransformConfig(image_size=16))


def _png_bytes(mode: str = "RGB", size: tuple[int, int] = (20, 12), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(0)  # noise: incompressible, so truncation lands inside pixel data
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "P":
        image = image.quantize(16)
        image.info["transparency"] = 0
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _write(root: Path, records, images: dict[str, bytes] | None = None) -> Path:
    for name, data in (images or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    path = root / "ann.json"
    path.write_text(json.dumps(records))
    return path


def test_items_list_captions_and_stable_image_ids(tmp_path: Path):
    ann = _write(
        tmp_path,
        [
            {"image": "b.png", "caption": "A Red, Circle!"},
            {"image": "a.png", "caption": ["first one", "second-one"], "image_id": "ignored"},
            {"image": "b.png", "caption": "again"},
        ],
        {"a.png": _png_bytes(), "b.png": _png_bytes()},
    )
    ds = CaptionDataset(ann, tmp_path, EVAL)
    assert len(ds) == 4
    assert [ds[i]["caption"] for i in range(4)] == ["a red circle", "first one", "second one", "again"]
    assert [ds[i]["image_id"] for i in range(4)] == [0, 1, 1, 0]
    assert [ds[i]["index"] for i in range(4)] == [0, 1, 2, 3]
    image = ds[0]["image"]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    raw = CaptionDataset(ann, tmp_path, EVAL, max_words=None)
    assert raw[0]["caption"] == "A Red, Circle!"


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_any_pil_mode_becomes_three_channels(tmp_path: Path, mode: str):
    ann = _write(tmp_path, [{"image": "x.png", "caption": "c"}], {"x.png": _png_bytes(mode)})
    assert CaptionDataset(ann, tmp_path, EVAL)[0]["image"].shape == (3, 16, 16)


def test_missing_annotation_file_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CaptionDataset(tmp_path / "nope.json", tmp_path, EVAL)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ({"image": "a.png", "caption": "c"}, "expected a JSON list"),
        ([{"image": "a.png", "caption": "c"}, "oops"], "record 1: expected an object"),
        ([{"caption": "c"}], "record 0: 'image' must be a non-empty string"),
        ([{"image": 3, "caption": "c"}], "record 0: 'image' must be a non-empty string"),
        ([{"image": "a.png"}], "record 0: missing key 'caption'"),
        ([{"image": "a.png", "caption": 5}], "record 0: 'caption' must be a string or a non-empty list"),
        ([{"image": "a.png", "caption": []}], "record 0: 'caption' must be a string or a non-empty list"),
        ([{"image": "a.png", "caption": ["ok", 7]}], r"record 0: 'caption'\[1\] must be a string"),
        (
            [{"image": "a.png", "caption": "ok"}, {"image": "a.png", "caption": "  "}],
            "record 1: 'caption' is empty",
        ),
        ([{"image": "a.png", "caption": "?!."}], "record 0: 'caption' is empty"),
    ],
)
def test_malformed_annotations_name_file_and_record(tmp_path: Path, records, message: str):
    ann = _write(tmp_path, records)
    with pytest.raises(AnnotationError, match=message) as info:
        load_pairs(ann)
    assert str(ann) in str(info.value)


def test_invalid_json_names_the_file(tmp_path: Path):
    ann = tmp_path / "broken.json"
    ann.write_text('[{"image": "a.png",')
    with pytest.raises(AnnotationError, match="broken.json: not valid JSON"):
        load_pairs(ann)


def _bad_images() -> dict[str, bytes]:
    png, jpeg = _png_bytes(), _png_bytes(fmt="JPEG")
    return {
        "half.png": png[: len(png) // 2],
        "no_end.png": png[:-12],  # pixel data complete, IEND chunk missing: only verify() sees it
        "half.jpg": jpeg[: len(jpeg) // 2],
        "garbage.png": b"this is not an image at all" * 10,
        "empty.png": b"",
    }


@pytest.mark.parametrize("name", sorted(_bad_images()))
def test_bad_image_raises_naming_image_and_annotation_file(tmp_path: Path, name: str):
    ann = _write(tmp_path, [{"image": name, "caption": "c"}], _bad_images())
    ds = CaptionDataset(ann, tmp_path, EVAL)
    with pytest.raises(BadImageError, match="unreadable or truncated") as info:
        ds[0]
    assert str(tmp_path / name) in str(info.value) and str(ann) in str(info.value)


def test_missing_image_raises_naming_it(tmp_path: Path):
    ann = _write(tmp_path, [{"image": "sub/gone.png", "caption": "c"}])
    with pytest.raises(BadImageError, match="not found") as info:
        CaptionDataset(ann, tmp_path, EVAL)[0]
    assert str(tmp_path / "sub" / "gone.png") in str(info.value) and str(ann) in str(info.value)


def test_skip_mode_returns_none_for_bad_items_only(tmp_path: Path):
    ann = _write(
        tmp_path,
        [
            {"image": "ok.png", "caption": "c"},
            {"image": "half.png", "caption": "c"},
            {"image": "gone.png", "caption": "c"},
        ],
        {"ok.png": _png_bytes(), "half.png": _bad_images()["half.png"]},
    )
    ds = CaptionDataset(ann, tmp_path, EVAL, skip_bad_images=True)
    assert ds[0] is not None
    assert ds[1] is None and ds[2] is None


def test_refuses_to_run_with_truncated_images_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ann = _write(tmp_path, [{"image": "ok.png", "caption": "c"}], {"ok.png": _png_bytes()})
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        CaptionDataset(ann, tmp_path, EVAL, skip_bad_images=True)[0]


def test_long_caption_is_flagged_as_cut_by_max_words(tmp_path: Path):
    long = " ".join(["word"] * 250)
    ann = _write(
        tmp_path,
        [{"image": "a.png", "caption": "a red circle"}, {"image": "a.png", "caption": ["ok", long]}],
        {"a.png": _png_bytes()},
    )
    ds = CaptionDataset(ann, tmp_path, EVAL, max_words=30)
    assert ds.words_truncated == [False, False, True] and ds.records == [0, 1, 1]
    item = ds[2]
    assert item["words_truncated"] is True and len(item["caption"].split()) == 30
    assert item["source"] == str(ann) and item["record"] == 1
    assert ds[0]["words_truncated"] is False
    assert CaptionDataset(ann, tmp_path, EVAL, max_words=None).words_truncated == [False] * 3


def _outside_image(tmp_path: Path) -> tuple[Path, Path]:
    """(root, an image next to it, outside it)."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "in.png").write_bytes(_png_bytes())
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png_bytes())
    return root, outside


@pytest.mark.parametrize(
    "kind", ["absolute", "dotdot", "dotdot_via_subdir", "symlinked_file", "symlinked_dir"]
)
def test_image_paths_outside_the_root_are_refused_naming_the_record(tmp_path: Path, kind: str):
    root, outside = _outside_image(tmp_path)
    if kind == "symlinked_file":
        (root / "link.png").symlink_to(outside)
    if kind == "symlinked_dir":
        (root / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    image = {
        "absolute": str(outside),
        "dotdot": "../outside.png",
        "dotdot_via_subdir": "sub/../../outside.png",
        "symlinked_file": "link.png",
        "symlinked_dir": "elsewhere/outside.png",
    }[kind]
    ann = _write(root, [{"image": "in.png", "caption": "fine"}, {"image": image, "caption": "c"}])
    with pytest.raises(ImagePathError, match="outside the image root") as info:
        CaptionDataset(ann, root, EVAL)
    message = str(info.value)
    assert f"{ann}, record 1" in message and repr(image) in message
    assert "data.allow_outside_root" in message
    # allowed with the param: the same image is read
    ds = CaptionDataset(ann, root, EVAL, allow_outside_root=True)
    assert ds[1]["image"].shape == (3, 16, 16)


def test_paths_inside_the_root_pass_including_dotdot_and_symlinks_that_stay_in(tmp_path: Path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "in.png").write_bytes(_png_bytes())
    (root / "alias.png").symlink_to(root / "in.png")
    real_root = tmp_path / "real"
    real_root.mkdir()
    (real_root / "r.png").write_bytes(_png_bytes())
    (tmp_path / "linked_root").symlink_to(real_root, target_is_directory=True)
    ann = _write(
        root,
        [{"image": "sub/../in.png", "caption": "a"}, {"image": "alias.png", "caption": "b"}],
    )
    assert len(CaptionDataset(ann, root, EVAL)) == 2
    # a root that is itself a symlink: its images are inside it
    ann2 = _write(real_root, [{"image": "r.png", "caption": "c"}])
    assert len(CaptionDataset(ann2, tmp_path / "linked_root", EVAL)) == 1


def test_stack_images_refuses_paths_outside_the_root(tmp_path: Path):
    root, outside = _outside_image(tmp_path)
    with pytest.raises(ImagePathError, match=r"ann\.json, image 1: image path '\.\./outside\.png'"):
        stack_images(root, ["in.png", "../outside.png"], EVAL, root / "ann.json")
    stacked = stack_images(root, ["in.png", "../outside.png"], EVAL, "x", allow_outside_root=True)
    assert stacked.shape == (2, 3, 16, 16)
