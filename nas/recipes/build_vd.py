"""Stage `build_vd`: the initial visual dictionary of a variant (NAS_METHOD.md §3, [D]).

`vd.init: kmeans` (default): k-means over the neck features of a sample of training images, taken
from the very model stage 1 starts from (same seed, same registry entry), with the EMA state seeded
consistently (N_j = cluster sizes, m_j = d_j N_j). `vd.init: random`: the sources' behaviour.
One per pretraining replicate k (`--run seed=k`, an offset of `study.seeds`; dvc.yaml's matrix entry
`build_vd@<variant>-<k>`): `runs/build_vd/<variant>/seed<k>/vd_init.pt` holds the VD state (neck + codebook +
EMA state); its health (codes in use, perplexity, dead codes) goes to metrics/build_vd/<variant>/seed<k>.json.
Variants without a visual dictionary (the ALBEF baseline) record that they have none.
An ad-hoc run (`--set`, another `--params`) writes the same files under runs/adhoc/<tag>/ instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.config import from_dict
from nas.config.data import DataConfig
from nas.config.params import PIPELINE_ROOT, output_root
from nas.config.stages import ModelSpec, TrainStageConfig
from nas.recipes.stage import Recorder, run_replicate_stage


def build_vd_paths(variant: str, root: Path = PIPELINE_ROOT) -> dict[str, Path]:
    """The stage's outputs under the output root `root` (the repository root: the paths dvc.yaml names)."""
    return {
        "run": root / "runs" / "build_vd" / variant,
        "metrics": root / "metrics" / "build_vd" / variant,  # one <replicate>.json per seed
    }


def stage(cfg: dict[str, Any], record: Recorder, *, seed: int) -> None:
    """The initial dictionary of pretraining replicate `seed` (an offset of `study.seeds`): its k-means runs
    on the model stage 1 builds with seed `params.seed + seed`."""
    from nas.config.stages import checked_offset, replicate_config
    from nas.engine.checkpoint import atomic_write_text
    from nas.recipes.pretrain import init_source, replicate_paths, write_replicate_metrics

    variant = cfg["variant"]
    offset = checked_offset(cfg, seed)
    paths = replicate_paths(build_vd_paths(variant, output_root(cfg)), offset)
    out_dir = paths["run"]
    source = init_source(cfg, "pretrain_stage1")
    if source != variant:  # study.stage1_of: this variant continues another's stage 1, dictionary included
        note = {"variant": variant, "shared_with": source, "seed_offset": offset}
        atomic_write_text(out_dir / "shared.json", json.dumps(note) + "\n")
        atomic_write_text(paths["metrics"], json.dumps(note, indent=2) + "\n")
        print(f"build_vd[{variant} seed+{offset}]: stage 1 is {source}'s (study.stage1_of); nothing to build")
        return
    built = build_replicate(replicate_config(cfg, offset), out_dir, record)
    write_replicate_metrics(paths["metrics"], {"seed_offset": offset, **built}, record)


def build_replicate(cfg: dict[str, Any], out_dir: Path, record: Recorder) -> dict[str, Any]:
    import ignite.distributed as idist
    import torch
    from ignite.utils import manual_seed

    from nas.engine.checkpoint import atomic_write_text
    from nas.recipes.pretrain import build_model, has_dictionary

    variant = cfg["variant"]
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = from_dict(ModelSpec, cfg["model"], "model")
    stage1 = from_dict(TrainStageConfig, cfg["pretrain_stage1"], "pretrain_stage1")
    # Exactly the model stage 1 builds (same seed, same overrides), so the k-means sees its features.
    manual_seed(cfg["seed"] + idist.get_rank())
    model = build_model(spec, stage1.model_overrides)
    label = f"{variant} {out_dir.name}"
    if not has_dictionary(model):
        note = f"variant {variant!r} ({spec.name}) has no visual dictionary: nothing to build"
        atomic_write_text(
            out_dir / "vd_init.json", json.dumps({"variant": variant, "vd": False, "note": note}) + "\n"
        )
        print(f"build_vd[{label}]: {note}")
        return {"vd": False}
    from nas.data.captions import load_split_images
    from nas.models.vd_build import build_initial_dictionary

    data = from_dict(DataConfig, cfg["data"], "data")
    images = load_split_images(data, model.vd.config.kmeans_sample_images)
    generator = torch.Generator().manual_seed(cfg["seed"])
    built = build_initial_dictionary(model, images, generator, path=out_dir / "vd_init.pt")
    health = built["health"] or {}
    print(
        f"build_vd[{label}]: init={built['init']} over {built['num_images']} images "
        f"({built['num_features']} patch features): {health}"
    )
    for key, value in health.items():
        record.log_scalar(f"vd_init.{out_dir.name}.{key}", value)
    record.add_artifact(out_dir / "vd_init.pt", name=f"vd_init_{out_dir.name}.pt")
    return {"vd": True, "init": built["init"], "num_images": built["num_images"], **health}


def main(argv=None) -> None:
    run_replicate_stage("build-vd", stage, argv)  # --run seed=<offset>


if __name__ == "__main__":
    main()
