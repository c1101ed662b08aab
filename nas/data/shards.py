"""Image-caption pairs from webdataset-style tar shards (what img2dataset writes for CC3M and SBU).

A shard is a plain tar whose members are grouped into samples by key: `<key>.jpg` (or .jpeg, .png,
.webp) plus `<key>.txt` (the caption) and/or `<key>.json` (img2dataset's metadata, whose "caption"
is used when there is no .txt). As in webdataset, the key is the member path up to the first dot of
its file name. `ShardDataset` gives the same items as `CaptionDataset`
({"image", "caption", "index", "image_id"}), so the loader, the collate function and the engine do
not care where pairs come from.

Keys are split by webdataset's own rule (`webdataset.tariterators.base_plus_ext`), so a shard
groups here as webdataset groups it (tests/data/test_shards.py reads the same shards with
`webdataset.WebDataset` and gets equal samples). The reading itself stays here, on `tarfile`:
webdataset (1.0.2) streams a shard front to back, gives no member offsets and no random access, and
reads every image's bytes to get past it. This dataset is map-style (DistributedSampler, `len`,
`index` / `image_id` per item): the index (member offsets and captions) is built once when the
dataset is created from the tar headers alone (image bytes are skipped), an item is then one seek +
read in its shard, safe in DataLoader worker processes (files are opened per read, never shared
across a fork). Also kept, as webdataset does not do them: errors naming the shard and the key
(truncated tar, duplicate image, image without caption and caption without image, links), the
.txt-else-.json caption rule, and `skip_bad_images` (a corrupt image gives None, which the collate
function drops and counts).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile
from torch.utils.data import Dataset
from webdataset.tariterators import base_plus_ext

from nas.data.captions import ALBEF_MAX_WORDS, BadImageError
from nas.data.tokenizer import pre_caption

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "json")


class ShardError(ValueError):
    """A shard is unreadable or a sample in it is incomplete; names the shard and the key."""


@dataclass(frozen=True)
class ShardSample:
    shard: Path
    key: str
    offset: int  # byte offset of the image data inside the tar
    size: int  # image bytes
    caption: str  # cleaned


def list_shards(spec: str | Path | Iterable[str | Path]) -> list[Path]:
    """Shard paths from a folder (every *.tar in it, sorted), a glob pattern, a file, or a list of those."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if path.is_dir():
            found = sorted(path.glob("*.tar"))
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(str(spec)))
        if not found:
            raise FileNotFoundError(f"no .tar shards found at {spec}")
        return found
    shards = [shard for item in spec for shard in list_shards(item)]
    if not shards:
        raise FileNotFoundError("no shard given")
    return shards


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: key = path up to the first dot of the file name, extension = the rest
    (lower-cased, as webdataset's `group_by_keys` does); ("", "") for a name it gives no key."""
    key, ext = base_plus_ext(name)
    return (key, ext.lower()) if key is not None else ("", "")


def _caption_from(shard: Path, key: str, ext: str, data: bytes) -> str:
    where = f"{shard}: sample {key!r}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ShardError(f"{where}: .{ext} caption is not UTF-8 ({exc})") from exc
    if ext == "txt":
        return text
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShardError(f"{where}: .json is not valid JSON ({exc})") from exc
    caption = meta.get("caption") if isinstance(meta, dict) else None
    if not isinstance(caption, str):
        raise ShardError(f"{where}: no .txt and the .json has no string 'caption'")
    return caption


def index_shard(shard: str | Path, max_words: int | None = ALBEF_MAX_WORDS) -> list[ShardSample]:
    """The samples of one shard, in member order, with cleaned captions; ShardError on a truncated tar,
    a duplicate key, an image without caption or a caption without image."""
    shard = Path(shard)
    images: dict[str, tarfile.TarInfo] = {}
    captions: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        size = shard.stat().st_size
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if member.offset_data + member.size > size:
                    # tarfile stops quietly at a cut-off end; a member running past it means truncation.
                    raise ShardError(
                        f"{shard}: truncated tar (member {member.name!r} runs past the end of the file); an "
                        "interrupted img2dataset run leaves such shards: delete it and re-run img2dataset"
                    )
                if member.isdir():
                    continue
                key, ext = _split_key(member.name)
                if ext not in IMAGE_EXTENSIONS + CAPTION_EXTENSIONS:
                    continue  # other img2dataset outputs (e.g. none today) are not needed here
                if not member.isfile():
                    raise ShardError(f"{shard}: member {member.name!r} is a link or special file, not data")
                if key not in images and key not in captions:
                    order.append(key)
                if ext in IMAGE_EXTENSIONS:
                    if key in images:
                        raise ShardError(f"{shard}: sample {key!r} has two images ({member.name!r})")
                    images[key] = member
                else:
                    stream = tar.extractfile(member)
                    assert stream is not None  # a regular file always has a stream
                    slot = captions.setdefault(key, {})
                    if ext in slot:
                        raise ShardError(f"{shard}: sample {key!r} has two .{ext} members")
                    slot[ext] = stream.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardError(
            f"{shard}: unreadable or truncated tar ({type(exc).__name__}: {exc}); an interrupted img2dataset "
            "run leaves such shards: delete it and re-run img2dataset"
        ) from exc

    samples = []
    for key in order:
        where = f"{shard}: sample {key!r}"
        if key not in images:
            raise ShardError(f"{where} has a caption but no image ({'/'.join(IMAGE_EXTENSIONS)})")
        parts = captions.get(key, {})
        if not parts:
            raise ShardError(f"{where} has an image but no .txt or .json caption")
        ext = "txt" if "txt" in parts else "json"
        raw = _caption_from(shard, key, ext, parts[ext])
        caption = raw if max_words is None else pre_caption(raw, max_words)
        if not caption.strip():
            raise ShardError(f"{where}: the caption is empty (after cleaning: {raw!r})")
        member = images[key]
        samples.append(ShardSample(shard, key, member.offset_data, member.size, caption))
    return samples


def decode_rgb(data: bytes, where: str) -> Image.Image:
    """Decode image bytes fully as RGB; BadImageError (naming `where`) if corrupt or truncated."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Some libraries set this globally; it makes PIL pad truncated files with grey silently.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; set it back to False")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("P", "PA"):  # palette transparency must go through RGBA first
                image = image.convert("RGBA")
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise BadImageError(f"unreadable or truncated image: {where}: {type(exc).__name__}: {exc}") from exc


class ShardDataset(Dataset):
    """One item per shard sample: {"image": transform(RGB image), "caption": str, "index": int,
    "image_id": int}, like `CaptionDataset`. Each sample is its own image (img2dataset writes one
    image per URL), so `image_id = image_id_offset + index`; pass an offset when concatenating with
    other datasets so ids stay distinct. With `skip_bad_images`, a corrupt image gives None (the
    collate function drops and counts it) instead of raising."""

    def __init__(
        self,
        shards: str | Path | Iterable[str | Path],
        transform: Callable[[Image.Image], Any],
        skip_bad_images: bool = False,
        *,
        max_words: int | None = ALBEF_MAX_WORDS,
        image_id_offset: int = 0,
    ):
        if image_id_offset < 0:
            raise ValueError(f"image_id_offset must be >= 0, got {image_id_offset}")
        self.shards = list_shards(shards)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.image_id_offset = image_id_offset
        self.samples = [sample for shard in self.shards for sample in index_shard(shard, max_words)]

    def __len__(self) -> int:
        return len(self.samples)

    def read_image_bytes(self, index: int) -> bytes:
        sample = self.samples[index]
        with open(sample.shard, "rb") as stream:
            stream.seek(sample.offset)
            data = stream.read(sample.size)
        if len(data) != sample.size:
            raise BadImageError(f"{sample.shard}: sample {sample.key!r}: shard shorter than its index says")
        return data

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            image = decode_rgb(self.read_image_bytes(index), f"{sample.shard} sample {sample.key!r}")
        except BadImageError as exc:
            if not self.skip_bad_images:
                raise
            logger.warning("skipping item %d: %s", index, exc)
            return None
        return {
            "image": self.transform(image),
            "caption": sample.caption,
            "index": index,
            "image_id": self.image_id_offset + index,
        }
