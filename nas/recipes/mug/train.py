"""The stages `mug_vocabulary` (the training captions, checked once) and `mug_pretrain` (one run: an
ablation arm x a seed, through the run layer `nas.engine.run.train_run`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from nas.atomic import atomic_write_text
from nas.config.base import ConfigError, to_dict
from nas.config.params import input_root, output_root
from nas.recipes.mug.card import MUGSection, effective_sections
from nas.recipes.mug.data import build_train_loader, caption_census, caption_tokenizer
from nas.recipes.mug.paths import (
    CAPTIONS,
    SUMMARY,
    TENSORBOARD,
    VOCABULARY,
    VOCABULARY_DIR,
    run_checkpoints,
    run_dir,
)
from nas.recipes.stage import Recorder


def set_threads(section: MUGSection) -> None:
    if section.torch_threads is not None:
        import torch

        torch.set_num_threads(section.torch_threads)


def new_mug(section: MUGSection, arm: str, bpe_ids: list[int]):
    """The arm's model from the current RNG state, with the corpus vocabulary of the training captions."""
    from nas.models.registry import create_model

    spec = section.arm_model(arm)
    model = create_model(spec.name, **spec.overrides)
    model.set_vocabulary(bpe_ids)
    return model


def build_mug(section: MUGSection, arm: str, seed: int, bpe_ids: list[int]):
    """The arm's model, initialised from `seed` exactly as its training run starts (`train_run` seeds
    `seed + rank`, then builds)."""
    from ignite.utils import manual_seed

    manual_seed(seed)
    return new_mug(section, arm, bpe_ids)


def run_config(cfg: dict[str, Any], section: MUGSection, arm: str, seed: int) -> dict[str, Any]:
    """The resolved config of one run, as the audit reads it: `mug.model` carries the arm's overrides."""
    out = json.loads(json.dumps(cfg))
    out["mug"] = to_dict(section) | {"model": to_dict(section.arm_model(arm))}
    out["run"] = {"arm": arm, "seed": seed}
    return out


def run_reads(cfg: dict[str, Any], arm: str, seed: int, section: MUGSection) -> dict[str, Any]:
    """What a run's weights depend on, and only that (its checkpoint digest): `data`, `loader`, the `mug`
    section without the evaluation knobs, the thread count and the other arms and seeds; the arm's
    model and the seed. An edit to another section (another recipe's, the report's) keeps the digest."""
    training = {
        k: v for k, v in cfg["mug"].items() if k not in ("evaluate", "torch_threads", "arms", "seeds")
    }
    shared = {k: cfg[k] for k in ("data", "loader") if k in cfg} | {"mug": training}
    return shared | {"arm": arm, "model": to_dict(section.arm_model(arm)), "seed": seed}


def read_vocabulary(root: Path) -> tuple[Path, dict[str, Any]]:
    """(file, content) of the census `mug_vocabulary` wrote: {"annotation", "bpe_ids", "targets"}."""
    folder = input_root(root, VOCABULARY_DIR, "mug_vocabulary") / VOCABULARY_DIR
    path = folder / VOCABULARY
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the mug_vocabulary stage first")
    return path, json.loads(path.read_text())


def read_captions(root: Path) -> dict[str, Any]:
    """The census summary `mug_vocabulary` wrote: {"captions", "vocabulary_size"}."""
    folder = input_root(root, VOCABULARY_DIR, "mug_vocabulary") / VOCABULARY_DIR
    return json.loads((folder / CAPTIONS).read_text())


# ---- mug_vocabulary -------------------------------------------------------------------------------


def vocabulary(cfg: dict[str, Any], record: Recorder) -> None:
    """Check the training captions once and write the decoder's corpus vocabulary (paths.py)."""
    root = output_root(cfg)
    typed = effective_sections(cfg)
    section, data = typed["section"], typed["data"]
    out = root / VOCABULARY_DIR
    census = caption_census(
        data.path(section.train_file or data.train_file),
        caption_tokenizer(section),
        section.empty_captions,
        out,
    )
    captions = {k: v for k, v in census.items() if k not in ("targets", "bpe_ids")}
    print(
        f"mug_vocabulary: {census['pairs']} training pairs, {len(census['bpe_ids'])} distinct BPE ids, "
        f"{census['truncated']} captions cut to the context, {census['empty_skipped']} empty captions skipped"
    )
    record.info("captions", captions)
    summary = {"captions": captions, "vocabulary_size": len(census["bpe_ids"]) + 1}
    atomic_write_text(out / CAPTIONS, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(
        out / VOCABULARY,
        json.dumps(
            {"annotation": census["annotation"], "bpe_ids": census["bpe_ids"], "targets": census["targets"]}
        )
        + "\n",
    )
    record.add_artifact(out / CAPTIONS, name="mug_captions.json")


# ---- mug_pretrain ---------------------------------------------------------------------------------


def check_run(section: MUGSection, arm: str, seed: int) -> None:
    if arm not in section.arms:
        raise ConfigError(f"--run arm={arm}: not an arm of mug.arms ({list(section.arms)})", path="mug.arms")
    if seed not in section.seeds:
        raise ConfigError(f"--run seed={seed}: not among mug.seeds ({list(section.seeds)})", path="mug.seeds")


def pretrain(cfg: dict[str, Any], record: Recorder, *, arm: str, seed: int) -> None:
    """Train one run (`arm` of `mug.arms`, `seed` of `mug.seeds`) and hand it over (paths.py)."""
    import ignite.distributed as idist

    from nas.engine.run import RunSpec, summary_of, train_run

    cfg = dict(
        cfg, stage="mug_pretrain"
    )  # run_stage ran this as the DVC matrix entry mug_pretrain@<arm>-<seed>
    root = output_root(cfg)
    typed = effective_sections(cfg)
    section = typed["section"]
    check_run(section, arm, seed)
    set_threads(section)
    vocabulary_file, vocab = read_vocabulary(root)
    tokenizer = caption_tokenizer(section)

    def build():
        model = new_mug(section, arm, vocab["bpe_ids"])  # train_run has seeded `seed + rank`
        return model, build_train_loader(typed, vocab["annotation"], tokenizer)

    out = run_dir(arm, seed, root)
    spec = RunSpec(
        stage="mug_pretrain",
        label=f"{arm}/seed{seed}",
        seed=seed,
        reads=run_reads(cfg, arm, seed, section),
        train=replace(section.train, seed=seed),
        checkpoints=run_checkpoints(arm, seed, root),
        run_dir=out,
        model=to_dict(section.arm_model(arm)),
        config=run_config(cfg, section, arm, seed),
        data_files=[vocab["annotation"], vocabulary_file],
        tensorboard_dir=root / TENSORBOARD / arm / f"seed{seed}",
    )
    result = train_run(spec, build, record)
    if idist.get_rank() != 0:
        return
    summary = {"arm": arm, "seed": seed} | summary_of(
        result, "config_digest", "resumed_from", "seconds", "final", "epochs", "steps"
    )
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    record.add_artifact(out / SUMMARY, name="mug_pretrain.json")
