"""The `build_vd` stage's library side: the initial visual dictionary, built once and saved as an artifact
(spec NAS_METHOD.md §3, "VD construction stage" [D]).

`init: kmeans` clusters the neck features `x = ReLU(LN(Linear(v)))` of the model's own ViT patch tokens,
for the first `vd.kmeans_sample_images` training images, and seeds the EMA state consistently
(N_j = cluster size, m_j = d_j · N_j) so the first update does not erase it. `init: random` is the
sources' behaviour (N(0, 1) codebook, EMA state zero). Either way the artifact holds the whole VD state
(neck weights, codebook, EMA state, step counter), so stage 1 starts from exactly the neck the features
came from, plus the dictionary's health on the sample.

Run it in one process: stage 1 loads the same artifact on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from nas.atomic import atomic_save
from nas.config.base import to_dict
from nas.models.nas_model import NAS, eval_mode

logger = logging.getLogger(__name__)

FORMAT = "nas-vd-init/1"
_RECORD_KEYS = ("format", "init", "num_images", "num_features", "health", "vd_config", "vd_state")

ImageSource = torch.Tensor | Iterable[torch.Tensor | Mapping[str, Any]]


def _image_batches(images: ImageSource, limit: int) -> Iterator[torch.Tensor]:
    """Batches of at most `limit` images in all, from a tensor [N, 3, H, W] or an iterable of image
    tensors or loader batches (dicts with an "image" entry)."""
    batches: Iterable[Any] = [images] if torch.is_tensor(images) else images
    taken = 0
    for index, batch in enumerate(batches):
        if isinstance(batch, Mapping):
            if "image" not in batch:
                raise KeyError(f"build_vd: batch {index} has no 'image' entry; keys: {sorted(batch)}")
            batch = batch["image"]
        if not torch.is_tensor(batch) or batch.dim() != 4:
            shape = tuple(batch.shape) if torch.is_tensor(batch) else type(batch).__name__
            raise ValueError(f"build_vd: batch {index} must be images [B, 3, H, W], got {shape}")
        batch = batch[: limit - taken]
        taken += batch.shape[0]
        yield batch
        if taken >= limit:
            return


@torch.no_grad()
def sample_neck_features(model: NAS, images: ImageSource, limit: int) -> tuple[torch.Tensor, int]:
    """Neck features [N·L, D] of the first `limit` images (ViT and VD in eval mode) and N."""
    device = model.vd.codebook.device
    features, num_images = [], 0
    with eval_mode(model.visual_encoder, model.vd):
        for batch in _image_batches(images, limit):
            tokens = model.visual_encoder.forward_features(batch.to(device))
            features.append(model.vd.features(tokens[:, 1:]).flatten(0, 1))
            num_images += batch.shape[0]
    if not num_images:
        raise ValueError("build_vd: no images to build the dictionary from")
    return torch.cat(features), num_images


@torch.no_grad()
def build_initial_dictionary(
    model: NAS,
    images: ImageSource | None,
    generator: torch.Generator | None = None,
    *,
    path: str | Path | None = None,
) -> dict[str, Any]:
    """Initialise `model.vd` as `vd.init` says and return (and save to `path`) the record stage 1 loads.

    `images`: training images (a tensor or batches); required for "kmeans", optional for "random"
    (then only the health needs them). The record: the VD's `state_dict()` (on the CPU), its config, the
    number of images and features used, and `health` on the sample (None without images).
    """
    vd = model.vd
    cfg = vd.config
    wanted = cfg.kmeans_sample_images
    features, num_images = (None, 0) if images is None else sample_neck_features(model, images, wanted)
    if cfg.init == "kmeans" and num_images < wanted:
        logger.warning(
            "build_vd: k-means over %d images, fewer than vd.kmeans_sample_images=%d", num_images, wanted
        )
    vd.initialize(features, generator)
    health = None
    if features is not None:
        health = vd.health(codes=vd.squared_distances(features).argmin(dim=-1))
    record = {
        "format": FORMAT,
        "init": cfg.init,
        "num_images": num_images,
        "num_features": 0 if features is None else int(features.shape[0]),
        "health": health,
        "vd_config": to_dict(cfg),
        "vd_state": {key: value.detach().cpu().clone() for key, value in vd.state_dict().items()},
    }
    if path is not None:
        atomic_save(record, path)  # fsync'd temporary file, then os.replace: stage 1 never reads half a file
    return record


def load_initial_dictionary(model: NAS, path: str | Path) -> dict[str, Any]:
    """Load a `build_initial_dictionary` artifact into `model.vd` (strictly) and return its record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"initial visual dictionary {path} does not exist (run the build_vd stage)")
    record = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in _RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing or record["format"] != FORMAT:
        raise ValueError(f"{path} is not an initial visual dictionary ({FORMAT}): missing {missing}")
    state = record["vd_state"]
    expected = model.vd.state_dict()
    for key, value in expected.items():
        if key in state and state[key].shape != value.shape:
            raise ValueError(
                f"{path}: vd_state[{key!r}] has shape {tuple(state[key].shape)}, this model's VD needs "
                f"{tuple(value.shape)} (vd.num_codes / vd.dim differ from the build_vd stage's)"
            )
    try:
        model.vd.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: vd_state does not fit this model's visual dictionary: {exc}") from exc
    return record
