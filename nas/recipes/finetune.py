"""Stage `finetune`: text-augmented fine-tuning (NAS_METHOD.md §5, §6).

Per variant and replicate k: start from `runs/pretrain_stage2/<variant>/seed<k>/checkpoint.pt` (model only: weights, momentum
copies, queues, VD), raise the resolution (position embeddings of the online and momentum ViT
interpolated, before the optimizer exists), and train ITC + ITM on the training pairs, each with its NTA
hard-negative caption as an extra ITC negative text and an extra ITM negative (nas.data.finetune_data).
NAS variants overlay `model_overrides` (VD frozen, NVA on and not detached, §4.8).

Seeds: one replicate per pretraining replicate (`--run seed=k`, an offset of `study.seeds`; dvc.yaml's
matrix entry `finetune@<variant>-<k>`): replicate k fine-tunes pretraining replicate k's checkpoint with seed
`params.seed + k` (data order, NTA draws, NVA draws), so a figure's spread over replicates includes
pretraining's (issue 12).

Outputs (paths fixed for dvc.yaml; an ad-hoc run, with `--set` or another `--params`, writes the same
tree under its own runs/adhoc/<tag>/ instead), per replicate `s`:
  runs/finetune/<variant>/seed<s>/train_nta.json   the NTA annotation file the run trained on
  runs/finetune/<variant>/seed<s>/checkpoint.pt    the run's last.pt (a hard link; "model": the weights)
  runs/finetune/<variant>/seed<s>/config.json      the resolved config, with the EFFECTIVE model
                                                   overrides and image size (fine-tuning size in
                                                   `model.overrides.vision.img_size` and
                                                   `data.transform.image_size`), so evaluation rebuilds
                                                   exactly this model and its input size
  checkpoints/finetune/<variant>/seed<s>/<digest>/ resumable checkpoints (last.pt only once the run is
                                                   done: train.prune_when_done)
  metrics/finetune/<variant>/seed<s>.json          the replicate's losses and NTA counts
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.config import from_dict, merge
from nas.config.data import DataConfig
from nas.config.distillation import DistillationConfig
from nas.config.params import PIPELINE_ROOT, input_root, output_root
from nas.config.stages import LoaderConfig, ModelSpec, checked_offset, replicate_config
from nas.config.train import TrainConfig
from nas.data.nta import NTAConfig
from nas.recipes.pretrain import (
    build_model,
    check_training_set,
    has_dictionary,
    replicate_paths,
    run_reads,
    stage_paths,
    write_replicate_metrics,
)
from nas.recipes.pretrain import (
    replicate_dir as pretrain_replicate_dir,
)
from nas.recipes.stage import Recorder, run_replicate_stage

STAGE = "finetune"


@dataclass
class FinetuneConfig:
    """The `finetune` params section. Defaults: the tiny profile; paper values in comments.

    Paper recipe (NAS_METHOD §5, ALBEF's retrieval fine-tuning): 384 px, AdamW lr 1e-5 → 1e-6 cosine,
    weight decay 0.02, 5 epochs of COCO, VD frozen, NVA on (not detached), queue updated, no MLM.
    """

    init_from: str = "pretrain_stage2"  # the variant's checkpoint the stage starts from (§6)
    # Fine-tuning resolution; paper: 384 (pretraining 256) [P]. The tiny default keeps the pretraining
    # 64 px (a raise costs time and the evaluate stage reads data.transform.image_size).
    image_size: int = 64
    nta: NTAConfig = field(default_factory=NTAConfig)  # edit kinds; vocabularies come from the data set
    # ALBEF's retrieval fine-tuning has no MLM [B]; > 0 adds it with this weight.
    mlm_weight: float = 0.0
    # Architecture switches of this stage, merged into `model.overrides` (NAS: `{vd: {frozen: true},
    # nva_enabled: true, nva: {detach: false}}`); `vision.img_size` and `mlm_weight` are set by the stage.
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    # ALBEF's momentum distillation weight α, fed to the model each step ([B] Retrieval_coco: 0.4, ramped).
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.mlm_weight < 0:
            raise ValueError(f"mlm_weight must be >= 0, got {self.mlm_weight}")
        if not self.init_from:
            raise ValueError("init_from must name the stage whose checkpoint fine-tuning starts from")
        if "mlm_weight" in self.model_overrides or "img_size" in self.model_overrides.get("vision", {}):
            raise ValueError(
                "model_overrides must not set mlm_weight or vision.img_size: use finetune.mlm_weight and "
                "finetune.image_size"
            )


def effective_overrides(spec: ModelSpec, cfg: FinetuneConfig, *, image_size: int) -> dict[str, Any]:
    """The model overrides the fine-tuned model is built with (recorded in config.json)."""
    stage = merge(cfg.model_overrides, {"mlm_weight": cfg.mlm_weight, "vision": {"img_size": image_size}})
    return merge(spec.overrides, stage)


def write_negatives(data: DataConfig, cfg: FinetuneConfig, out_file: Path, seed: int) -> dict[str, Any]:
    """The NTA annotation file of the training split: role edits on synthetic data, spaCy on real files."""
    from nas.data.finetune_data import write_nta_annotations, write_spacy_nta_annotations

    if data.source == "synthetic":
        split = Path(data.train_file).stem  # train.json <-> train_scenes.json
        return write_nta_annotations(data.root, split, out_file, cfg.nta, seed)
    return write_spacy_nta_annotations(data.path(data.train_file), out_file, cfg.nta, seed)


def build_finetune_model(spec: ModelSpec, cfg: FinetuneConfig, init_checkpoint: Path):
    """The model at its pretraining size with the stage's switches, the init checkpoint loaded, then
    resized to `cfg.image_size` (online and momentum ViT); the optimizer must be built after this."""
    from nas.engine.checkpoint import read_checkpoint

    pretrain_size = spec.overrides.get("vision", {}).get("img_size", "its default")
    model = build_model(spec, merge(cfg.model_overrides, {"mlm_weight": cfg.mlm_weight}))
    state = read_checkpoint(init_checkpoint)
    if "model" not in state:
        raise KeyError(f"{init_checkpoint} holds no 'model' entry (it has {sorted(state)})")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RuntimeError(
            f"{init_checkpoint} does not fit the model {spec.name} at {pretrain_size} px: {exc}"
        ) from exc
    if has_dictionary(model) and not model.cfg.vd.frozen:
        raise ValueError(
            "finetune: the visual dictionary is frozen in fine-tuning (NAS_METHOD §6); set "
            "finetune.model_overrides.vd.frozen: true for this variant"
        )
    if model.cfg.vision.img_size != cfg.image_size:
        model.set_image_size(cfg.image_size)
    return model


def build_nta_loader(data: DataConfig, loader: LoaderConfig, annotation_file: Path, image_size: int):
    from nas.data.finetune_data import NTACaptionDataset, make_nta_collate
    from nas.data.loader import build_loader
    from nas.data.tokenizer import load_tokenizer
    from nas.data.transforms import build_train_transform

    transform = dataclasses.replace(data.transform, image_size=image_size)
    dataset = NTACaptionDataset(
        annotation_file,
        data.images,
        build_train_transform(transform),
        skip_bad_images=data.skip_bad_images,
        max_words=data.max_words,
        allow_outside_root=data.allow_outside_root,
    )
    collate = make_nta_collate(load_tokenizer(), data.text_max_length, unk_only=data.unk_only_captions)
    return build_loader(dataset, loader, collate, shuffle=True)


def replicate_dir(variant: str, seed: int, root: Path = PIPELINE_ROOT) -> Path:
    return replicate_paths(stage_paths(STAGE, variant, root), seed)["run"]


def stage(cfg: dict[str, Any], record: Recorder, *, seed: int) -> None:
    """Fine-tune pretraining replicate `seed` (an offset of `study.seeds`) of the variant; its summary goes
    to metrics/finetune/<variant>/seed<k>.json."""
    variant = cfg["variant"]
    offset = checked_offset(cfg, seed)
    section = dict(cfg[STAGE])
    section["train"] = {**section.get("train", {}), "seed": cfg["seed"]}
    ft = from_dict(FinetuneConfig, section, STAGE)
    root = output_root(cfg)
    init_in = input_root(root, stage_paths(ft.init_from, variant)["run"], ft.init_from)
    init_checkpoint = pretrain_replicate_dir(ft.init_from, variant, offset, init_in) / "checkpoint.pt"
    if not init_checkpoint.is_file():
        raise FileNotFoundError(f"{STAGE}: {init_checkpoint} is missing; run {ft.init_from} first")
    paths = replicate_paths(stage_paths(STAGE, variant, root), offset)
    summary = finetune_replicate(cfg, ft, offset, init_checkpoint, paths, record)
    if summary is None:
        return  # ranks other than 0
    summary = {"stage": STAGE, "variant": variant, "seed_offset": offset, **summary}
    write_replicate_metrics(paths["metrics"], summary, record)


def finetune_replicate(
    cfg: dict[str, Any],
    ft: FinetuneConfig,
    offset: int,
    init_checkpoint: Path,
    paths: dict[str, Path],
    record: Recorder,
) -> dict[str, Any] | None:
    """Fine-tune one replicate (seed `params.seed + offset`) into its matrix entry's `paths`; its summary
    on rank 0, None elsewhere."""
    import ignite.distributed as idist

    from nas.engine.run import RunSpec, summary_of, train_run

    variant, seed = cfg["variant"], cfg["seed"] + offset
    data = from_dict(DataConfig, cfg["data"], "data")
    loader_cfg = from_dict(LoaderConfig, cfg["loader"], "loader")
    spec = from_dict(ModelSpec, cfg["model"], "model")
    ft = dataclasses.replace(ft, train=dataclasses.replace(ft.train, seed=seed))
    run_dir = paths["run"]
    name = f"{STAGE}[{variant} seed+{offset}]"
    annotation_file = run_dir / "train_nta.json"
    outcome: dict[str, Any] = {"nta": None, "preflight": None}

    def build():
        run_dir.mkdir(parents=True, exist_ok=True)
        if idist.get_rank() == 0:
            outcome["nta"] = write_negatives(data, ft, annotation_file, seed)
            print(f"{name}: NTA negatives {outcome['nta']}")
        if idist.get_world_size() > 1:
            idist.barrier()  # every rank reads the file rank 0 wrote
        model = build_finetune_model(spec, ft, init_checkpoint)
        loader = build_nta_loader(data, loader_cfg, annotation_file, ft.image_size)
        outcome["preflight"] = check_training_set(name, loader, data, seed)
        return model, loader

    # The replicate's config as it runs: its seed, sizes and EFFECTIVE model overrides (evaluation
    # rebuilds exactly this model at this input size). Its digest is blind to the list of seeds.
    recorded_reads = replicate_config(cfg, offset)
    recorded = replicate_config(cfg, offset)
    recorded["model"]["overrides"] = effective_overrides(spec, ft, image_size=ft.image_size)
    recorded["data"].setdefault("transform", {})["image_size"] = ft.image_size
    # init_checkpoint only names the run (identity): the weights are loaded (and resized) in build(), and
    # a resumed run loads its own.
    run = RunSpec(
        stage=STAGE,
        label=f"{variant}/seed{offset}",
        seed=seed,
        reads=run_reads(recorded_reads, STAGE),
        train=ft.train,
        checkpoints=paths["checkpoints"],
        run_dir=run_dir,
        model=recorded["model"],
        config=recorded,
        data_files=[annotation_file],
        init_checkpoint=init_checkpoint,
        init_by_build=True,
        tensorboard_dir=paths["tensorboard"],
        step_inputs=ft.distillation.step_inputs,  # α each step; `finetune.distillation` is in reads
    )
    result = train_run(run, build, record)
    if idist.get_rank() != 0:
        return None
    record.add_artifact(run_dir / "config.json", name=f"resolved_config_seed{offset}.json")
    return {
        "seed": seed,
        "config_digest": result["config_digest"],
        "identity": result["identity"],
        "init_checkpoint": str(init_checkpoint),
        "image_size": ft.image_size,
        "nta": outcome["nta"],
        "preflight": outcome["preflight"],
    } | summary_of(result, "resumed_from", "final", "epochs", "steps")


def main(argv=None) -> None:
    run_replicate_stage("finetune", stage, argv)  # --run seed=<offset>


if __name__ == "__main__":
    main()
