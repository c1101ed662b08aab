"""Where the paper-scale data comes from: every corpus, benchmark file and weight file the `paper`
profile needs, with its URL, size and checksum where those are known.

Sources of the facts (so each entry can be re-checked):
- COCO / Visual Genome / CC3M / SBU: the paper's pretraining corpora [P]; ALBEF's JSON pair lists
  (salesforce/ALBEF README, `json_pretrain.zip`) give the exact pairs ALBEF-4M used [B].
- Benchmarks: BENCHMARKS.md §0.1 (pinned commits), §1.1 (ARO Drive ids), §2.1 (Winoground),
  §3.1 (VALSE image sources), §4 (SugarCrepe).
- Sizes: byte counts that download logs of these exact URLs report (COCO, VG); they are not
  published by the hosts, so they only size the plan and are never enforced. None = unknown.
- Checksums: only where published or shipped. VALSE and SugarCrepe JSONs: the project's own
  `nas/resources/benchmarks/*/SHA256SUMS` (byte-identical to upstream at the pinned commits);
  Winoground `examples.jsonl`: BENCHMARKS.md §2.1. Only full digests count: DeiT's file name carries
  an 8-digit sha256 prefix (torch.hub's convention), which is not a checksum. Everything else has
  none: `download` records the sha256 of the first download in the manifest and checks later copies
  against it.

Image shards of CC3M and SBU come from URL lists through img2dataset (`ShardJob`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Literal

Method = Literal["http", "gdrive", "gated", "manual", "shipped"]

# BENCHMARKS.md §0.1: the commits the shipped copies were taken from.
VALSE_COMMIT = "2152d90d4aecd11f7f74cf03420abcb63efff9c5"
SUGARCREPE_COMMIT = "0047054b243992f0fad63d6f64f7544862daf846"
BLIP_BUCKET = "https://storage.googleapis.com/sfr-vision-language-research/datasets"
ALBEF_BUCKET = "https://storage.googleapis.com/sfr-pcl-data-research/ALBEF"
COCO_ZIPS = "http://images.cocodataset.org"
WINOGROUND_HUB = "https://huggingface.co/datasets/facebook/winoground/resolve/main"
BERT_HUB = "https://huggingface.co/google-bert/bert-base-uncased/resolve/main"


@dataclass(frozen=True)
class Resource:
    """One file to fetch (or place by hand). Paths are relative to the data root."""

    key: str  # "<group>.<name>", unique
    description: str
    method: Method
    filename: str  # where the file lands, relative to the data root
    url: str | None = None  # None for manual steps; for those, `instructions` says what to do
    size: int | None = None  # bytes, where known (planning only, never enforced)
    sha256: str | None = None  # published/shipped checksum: the full 64 hex digits (prefixes are refused)
    extract_to: str | None = None  # archives: folder (relative to the root) to extract into
    licence: str = ""
    source: str = ""  # where the URL / size / checksum are documented
    instructions: str = ""  # manual and gated steps: the one thing a person must do
    shipped: str | None = None  # package resource ("benchmarks/valse/existence.json") to copy instead


@dataclass(frozen=True)
class ShardJob:
    """Image shards downloaded by img2dataset from a URL list (CC3M, SBU)."""

    key: str
    description: str
    url_list: str  # relative to the root: the file img2dataset reads
    input_format: Literal["tsv", "json", "csv", "parquet"]
    url_col: str
    caption_col: str
    output_folder: str  # relative to the root: where the .tar shards go
    source: str = ""
    prepare: str = ""  # a step before img2dataset (e.g. CC3M's TSV has no header)


def _shipped_sums(benchmark: str) -> dict[str, str]:
    """name -> sha256 from the shipped SHA256SUMS of `benchmark`."""
    text = (resources.files("nas") / "resources" / "benchmarks" / benchmark / "SHA256SUMS").read_text()
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest
    return sums


def _coco() -> list[Resource]:
    licence = "annotations CC BY 4.0; images under Flickr terms"
    logs = "byte counts from download logs of these URLs (COCO publishes none)"
    zips = [
        ("train2014", "COCO 2014 train images (82,783)", 13_510_573_713),
        ("val2014", "COCO 2014 val images (40,504; all Karpathy val/test images)", 6_645_013_297),
    ]
    out = [
        Resource(
            f"coco.{name}",
            text,
            "http",
            f"coco/{name}.zip",
            f"{COCO_ZIPS}/zips/{name}.zip",
            size=size,
            extract_to="coco",
            licence=licence,
            source=logs,
        )
        for name, text, size in zips
    ]
    # Only the benchmarks need COCO 2017 (SugarCrepe, VALSE plurals/relations): a group of its own, so
    # the pretraining selection does not fetch it.
    out.append(
        Resource(
            "coco2017.val2017",
            "COCO 2017 val images (5,000)",
            "http",
            "coco/val2017.zip",
            f"{COCO_ZIPS}/zips/val2017.zip",
            size=815_585_330,
            extract_to="coco",
            licence=licence,
            source=logs,
        )
    )
    out.append(
        Resource(
            "coco.annotations2014",
            "COCO 2014 captions and instances",
            "http",
            "coco/annotations_trainval2014.zip",
            f"{COCO_ZIPS}/annotations/annotations_trainval2014.zip",
            size=252_872_794,
            extract_to="coco",
            licence=licence,
            source=logs,
        )
    )
    for split in ("train", "val", "test"):
        out.append(
            Resource(
                f"coco.karpathy_{split}",
                f"COCO Karpathy {split} split (BLIP's JSON)",
                "http",
                f"coco/coco_karpathy_{split}.json",
                f"{BLIP_BUCKET}/coco_karpathy_{split}.json",
                licence="CC BY 4.0 (COCO annotations)",
                source="BENCHMARKS.md §1.1 (BLIP bucket)",
            )
        )
    return out


def _visual_genome() -> list[Resource]:
    licence = "CC BY 4.0"
    logs = "byte counts from download logs of these URLs (VG publishes none)"
    return [
        Resource(
            "vg.images",
            "Visual Genome images, part 1 (VG_100K/)",
            "http",
            "vg/images.zip",
            "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
            size=9_731_705_982,
            extract_to="vg",
            licence=licence,
            source=logs,
        ),
        Resource(
            "vg.images2",
            "Visual Genome images, part 2 (VG_100K_2/)",
            "http",
            "vg/images2.zip",
            "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
            size=5_471_658_058,
            extract_to="vg",
            licence=licence,
            source=logs,
        ),
        Resource(
            "vg.region_descriptions",
            "Visual Genome region descriptions (v1.2)",
            "http",
            "vg/region_descriptions.json.zip",
            "http://visualgenome.org/static/data/dataset/region_descriptions.json.zip",
            size=127_377_968,
            extract_to="vg",
            licence=licence,
            source=logs,
        ),
    ]


def _albef_json() -> list[Resource]:
    return [
        Resource(
            "albef_json.pretrain",
            "ALBEF's pretraining pair lists (coco.json, vg.json, cc3m_*.json, sbu.json): the 4M set's "
            "exact pairs; image paths must be rewritten to the local folders",
            "http",
            "albef/json_pretrain.zip",
            f"{ALBEF_BUCKET}/json_pretrain.zip",
            extract_to="albef",
            licence="BSD-3-Clause (ALBEF); captions keep their corpora's terms",
            source="salesforce/ALBEF README, 'Dataset json files for pre-training'",
        )
    ]


def _cc3m() -> list[Resource]:
    return [
        Resource(
            "cc3m.train_tsv",
            "Conceptual Captions 3M training URL list (caption<TAB>url, no header)",
            "manual",
            "cc3m/Train_GCC-training.tsv",
            url="https://ai.google.com/research/ConceptualCaptions/download",
            licence="Google: free use with attribution; images belong to their owners",
            source="img2dataset dataset_examples/cc3m.md (about 500 MB)",
            instructions="open https://ai.google.com/research/ConceptualCaptions/download, download the "
            "training split and save it as <root>/cc3m/Train_GCC-training.tsv",
        )
    ]


def _sbu() -> list[Resource]:
    return [
        Resource(
            "sbu.captions",
            "SBU Captions URL list (sbu-captions-all.json)",
            "http",
            "sbu/sbu-captions-all.tar.gz",
            "https://www.cs.rice.edu/~vo9/sbucaptions/sbu-captions-all.tar.gz",
            extract_to="sbu",
            licence="research use; images belong to their Flickr owners",
            source="img2dataset dataset_examples/SBUcaptions.md",
        )
    ]


def _gdrive(file_id: str) -> str:
    # The direct endpoint; `confirm=t` skips the virus-scan page Drive shows for large files.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _aro() -> list[Resource]:
    licence = "code MIT; VG/GQA images CC BY 4.0"
    source = "BENCHMARKS.md §1.1 (no checksums or sizes published)"
    return [
        Resource(
            "aro.vg_relation",
            "ARO VG-Relation (23,937 cases)",
            "gdrive",
            "aro/visual_genome_relation.json",
            _gdrive("1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3"),
            licence=licence,
            source=source,
        ),
        Resource(
            "aro.vg_attribution",
            "ARO VG-Attribution",
            "gdrive",
            "aro/visual_genome_attribution.json",
            _gdrive("13tWvOrNOLHxl3Rm9cR3geAdHx2qR3-Tw"),
            licence=licence,
            source=source,
        ),
        Resource(
            "aro.vgr_vga_images",
            "ARO VG images (about 1 GB; a GQA subset), unzipped to aro/images/",
            "gdrive",
            "aro/vgr_vga_images.zip",
            _gdrive("1qaPlrwhGNMrR3a11iopZUT_GPP_LrgP9"),
            extract_to="aro",
            licence=licence,
            source=source,
        ),
        Resource(
            "aro.flickr30k_test",
            "Flickr30k Karpathy test split (BLIP's JSON), for Flickr30k-Order",
            "http",
            "flickr30k/flickr30k_test.json",
            f"{BLIP_BUCKET}/flickr30k_test.json",
            licence="Flickr30k terms",
            source="BENCHMARKS.md §1.1",
        ),
        Resource(
            "aro.flickr30k_images",
            "Flickr30k images (access form)",
            "manual",
            "flickr30k/flickr30k-images",
            licence="non-commercial research only",
            source="BENCHMARKS.md §1.1",
            instructions="request access at https://forms.illinois.edu/sec/229675, then place the images so "
            "that <root>/flickr30k/flickr30k-images/*.jpg exists",
        ),
    ]


def _winoground() -> list[Resource]:
    instructions = (
        "log in on https://huggingface.co/datasets/facebook/winoground and accept the licence "
        "(research use only, no redistribution); then either export HF_TOKEN=<a read token> and re-run "
        "(the files are fetched with it), or download data/examples.jsonl and data/images.zip yourself and "
        "place them at <root>/winoground/examples.jsonl and <root>/winoground/images.zip"
    )
    licence = "Winoground Dataset License Agreement (Meta): no redistribution"
    return [
        Resource(
            "winoground.examples",
            "Winoground examples (400 lines)",
            "gated",
            "winoground/examples.jsonl",
            f"{WINOGROUND_HUB}/data/examples.jsonl",
            size=115_079,
            sha256="055f68668e60bb9bac18ec37dcbb40b935690302011e3f8f53767f0b68a65911",
            licence=licence,
            source="BENCHMARKS.md §2.1",
            instructions=instructions,
        ),
        Resource(
            "winoground.images",
            "Winoground images (PNG), unzipped to winoground/images/",
            "gated",
            "winoground/images.zip",
            f"{WINOGROUND_HUB}/data/images.zip",
            extract_to="winoground",
            licence=licence,
            source="BENCHMARKS.md §2.1 (size not checked)",
            instructions=instructions,
        ),
    ]


def _valse() -> list[Resource]:
    sums = _shipped_sums("valse")
    out = [
        Resource(
            f"valse.{name.removesuffix('.json')}",
            f"VALSE {name}",
            "shipped",
            f"valse/{name}",
            f"https://raw.githubusercontent.com/Heidelberg-NLP/VALSE/{VALSE_COMMIT}/data/{name}",
            sha256=digest,
            licence="MIT",
            source="BENCHMARKS.md §0.2, §3.1; shipped SHA256SUMS",
            shipped=f"benchmarks/valse/{name}",
        )
        for name, digest in sorted(sums.items())
    ]
    out += [
        Resource(
            "valse.visual7w_images",
            "Visual7W images (existence, counting)",
            "http",
            "valse/visual7w_images.zip",
            "http://vision.stanford.edu/yukezhu/visual7w_images.zip",
            extract_to="valse/visual7w",
            licence="Visual7W terms",
            source="BENCHMARKS.md §3.1",
        ),
        Resource(
            "valse.swig_images",
            "SWiG/imSitu images_512 (actions)",
            "http",
            "valse/images_512.zip",
            "https://swig-data-weights.s3.us-east-2.amazonaws.com/images_512.zip",
            extract_to="valse/swig",
            licence="imSitu terms",
            source="BENCHMARKS.md §3.1; SWiG README",
        ),
        Resource(
            "valse.visdial_val_images",
            "VisDial v1.0 val images (coreference-hard)",
            "http",
            "valse/VisualDialog_val2018.zip",
            "https://www.dropbox.com/s/twmtutniktom7tu/VisualDialog_val2018.zip?dl=1",
            extract_to="valse/visdial",
            licence="VisDial terms (COCO images)",
            source="BENCHMARKS.md §3.1; visualdialog.org v1.0 links",
        ),
    ]
    return out


def _sugarcrepe() -> list[Resource]:
    sums = _shipped_sums("sugarcrepe")
    return [
        Resource(
            f"sugarcrepe.{name.removesuffix('.json')}",
            f"SugarCrepe {name}",
            "shipped",
            f"sugarcrepe/{name}",
            f"https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/{SUGARCREPE_COMMIT}/data/{name}",
            sha256=digest,
            licence="MIT",
            source="BENCHMARKS.md §4; shipped SHA256SUMS",
            shipped=f"benchmarks/sugarcrepe/{name}",
        )
        for name, digest in sorted(sums.items())
    ]


def _weights() -> list[Resource]:
    return [
        Resource(
            "weights.deit_base",
            "DeiT-base/16 224 ImageNet weights (image encoder init [P])",
            "http",
            "weights/deit_base_patch16_224-b5f2ef4d.pth",
            "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth",
            # torch.hub convention: the file name carries the sha256's first 8 hex digits (ALBEF loads
            # it with check_hash=True). A prefix is not a checksum and no full digest is published, so
            # the first download's sha256 is recorded in the manifest (trust on first use).
            sha256=None,
            licence="Apache-2.0",
            source="ALBEF models/vit.py; DeiT README",
        ),
        *[
            Resource(
                f"weights.bert_base_uncased_{name.split('.')[0]}",
                f"bert-base-uncased {name} (text init [P])",
                "http",
                f"weights/bert-base-uncased/{name}",
                f"{BERT_HUB}/{name}",
                licence="Apache-2.0",
                source="Hugging Face google-bert/bert-base-uncased",
            )
            for name in ("config.json", "vocab.txt", "model.safetensors")
        ],
    ]


def _imagenet21k() -> list[Resource]:
    return [
        Resource(
            "imagenet21k.winter21",
            "ImageNet-21K (winter 2021 release, processed): UTA's pretraining images [P]",
            "manual",
            "imagenet21k/winter21_whole.tar.gz",
            url="https://image-net.org/download-images.php",
            size=None,
            licence="ImageNet terms of access: non-commercial research and education only",
            source="MUG_UTA.md §2 paper card (ImageNet-21K, 224 px)",
            instructions="log in at https://image-net.org/download-images.php (accept the terms of "
            "access), download the winter 2021 ImageNet-21K release and save it as "
            "<root>/imagenet21k/winter21_whole.tar.gz",
        )
    ]


def _datacomp() -> list[Resource]:
    return [
        Resource(
            "datacomp.metadata",
            "DataComp-style URL list (url, text parquet): UTA's contrastive fine-tuning pairs [P]",
            "manual",
            "datacomp/metadata",
            url="https://github.com/mlfoundations/datacomp",
            licence="CC-BY-4.0 (metadata); images belong to their owners",
            source="MUG_UTA.md §2 (DataComp-1B); datacomp README `download_upstream.py`",
            instructions="fetch a DataComp pool's metadata parquet files (e.g. the `small` pool with "
            "datacomp's download_upstream.py --skip_shards, or the Hugging Face dataset "
            "mlfoundations/datacomp_small) into <root>/datacomp/metadata/",
        ),
    ]


def _teachers() -> list[Resource]:
    return [
        Resource(
            "teachers.eva02_e14",
            "EVA02-E-14 open_clip weights: the frozen UTA teacher at paper scale [D]",
            "manual",
            "teachers/EVA02-E-14/open_clip_pytorch_model.bin",
            url="https://github.com/mlfoundations/open_clip",
            licence="MIT (EVA-CLIP)",
            source="open_clip pretrained tag laion2b_s4b_b115k",
            instructions="on a machine with internet, run open_clip.create_model_and_transforms("
            "'EVA02-E-14', pretrained='laion2b_s4b_b115k') and copy the downloaded "
            "open_clip_pytorch_model.bin to <root>/teachers/EVA02-E-14/",
        ),
    ]


def _shard_jobs() -> list[ShardJob]:
    return [
        ShardJob(
            "cc3m.shards",
            "CC3M images as webdataset shards",
            "cc3m/cc3m_with_header.tsv",
            "tsv",
            "url",
            "caption",
            "cc3m/shards",
            source="img2dataset dataset_examples/cc3m.md",
            prepare="the Google TSV has no header: `prepare_cc3m_url_list` writes a copy with 'caption<TAB>url'",
        ),
        ShardJob(
            "sbu.shards",
            "SBU Captions images as webdataset shards",
            "sbu/sbu-captions-all.json",
            "json",
            "image_urls",
            "captions",
            "sbu/shards",
            source="img2dataset dataset_examples/SBUcaptions.md",
        ),
        ShardJob(
            "datacomp.shards",
            "DataComp images as webdataset shards",
            "datacomp/metadata",
            "parquet",
            "url",
            "text",
            "datacomp/shards",
            source="datacomp README; img2dataset dataset_examples/laion400m.md (parquet url/text columns)",
        ),
    ]


_BUILDERS = {
    "coco": _coco,
    "vg": _visual_genome,
    "albef_json": _albef_json,
    "cc3m": _cc3m,
    "sbu": _sbu,
    "aro": _aro,
    "winoground": _winoground,
    "valse": _valse,
    "sugarcrepe": _sugarcrepe,
    "weights": _weights,
    "imagenet21k": _imagenet21k,
    "datacomp": _datacomp,
    "teachers": _teachers,
}
# Besides its own files, a group needs these from others (deduplicated by key in `select`).
_NEEDS = {
    "aro": ("coco.val2014", "coco.karpathy_test"),  # COCO-Order: Karpathy test images are all in val2014
    # VALSE plurals/relations use COCO 2017 val; coreference-standard and foil-it COCO 2014.
    "valse": ("coco2017.val2017", "coco.train2014", "coco.val2014"),
    "sugarcrepe": ("coco2017.val2017",),
}
# Named selections. `pretrain` = the paper's 4M corpora [P] plus the weights the encoders start from.
SETS = {
    "pretrain": ("coco", "vg", "albef_json", "cc3m", "sbu", "weights"),
    "benchmarks": ("aro", "winoground", "valse", "sugarcrepe"),
    # UTA at paper scale (MUG_UTA.md §2): ImageNet-21K, a DataComp pool and the EVA-CLIP teacher.
    "uta": ("imagenet21k", "datacomp", "teachers"),
    "all": tuple(_BUILDERS),
}


def catalog() -> dict[str, Resource]:
    """Every resource, by key."""
    return {r.key: r for build in _BUILDERS.values() for r in build()}


def shard_jobs() -> dict[str, ShardJob]:
    return {job.key: job for job in _shard_jobs()}


def select(names: Iterable[str]) -> tuple[list[Resource], list[ShardJob]]:
    """Resources and shard jobs of the named groups, sets ("pretrain", "benchmarks", "all") or single
    resource keys, each once, in catalogue order. An unknown name is an error listing the known ones."""
    everything, jobs = catalog(), shard_jobs()
    wanted: set[str] = set()
    for name in names:
        groups = SETS.get(name, (name,) if name in _BUILDERS else ())
        if not groups and name not in everything and name not in jobs:
            known = sorted({*SETS, *_BUILDERS, *everything, *jobs})
            raise KeyError(f"unknown data selection {name!r}; choose from: {', '.join(known)}")
        for group in groups:
            wanted.update(key for key in everything if key.split(".")[0] == group)
            wanted.update(key for key in jobs if key.split(".")[0] == group)
            wanted.update(_NEEDS.get(group, ()))
        if name in everything or name in jobs:
            wanted.add(name)
    return [r for k, r in everything.items() if k in wanted], [j for k, j in jobs.items() if k in wanted]
