"""The schema of a whole params file, checked once before any stage work and before Sacred starts.

Each stage types only the sections it reads, so on its own a typo in another section (or at the top
level) would never be seen: the run would record the junk and ignore the value. `check_params`
resolves the params of a run (file, variant overlay, `--set` overrides) and checks all of it:

* every top-level key: the run `seed` (an integer), the sections of `SECTIONS`, nothing else;
* every section through the dataclass it maps to (`from_dict`: unknown keys at any depth, wrong
  types, the dataclass's own checks), `<section>.train.seed` refused (every stage sets it);
* model overrides against the registered model's config (`nas.models.registry`): `model.overrides` and
  each stage's `model_overrides` merged on top, `mug.model` with every MUG arm, `uta.student.model`;
  the loader and transform overlays of MUG and UTA; the stage names `init_from` points to;
* mapping keys the run record (Sacred) can store (no '.', no leading '$');
* combinations a stage would only meet late: a training batch larger than the synthetic data set.

A variant's overlay is checked merged: `variants.<name>` with the overlays of its `base` chain under it
(`nas.config.params.resolve`); `base` itself is a key of the overlay, never of the resolved params, and
an unknown base or a cycle of bases is an error for the whole table.

An error is one `ConfigError` naming the key, the value, and where it was set (the params file,
`<file> variants.<name>`, `<file> variants.<base> (a base of variants.<name>)`, or the `--set` that
brought it in).

Sections typed above nas.config are registered from above with `register_section` (the `finetune` and
`evaluate` sections, by nas/recipes/stage.py) or, for the MUG and UTA recipe cards, named here as
"module:Class" strings imported on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nas.config.base import ConfigError, describe, did_you_mean, from_dict, merge, to_dict
from nas.config.params import (
    DERIVED_KEYS,
    parse_override,
    resolve,
    show_override,
    variant_chain,
    variants_of,
)

SEED = "seed"
VARIANTS = "variants"


# ---- sections ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """How one top-level params section is typed and checked.

    `type`: its dataclass, or "module:Class" (imported on first use). `model_overrides(spec, typed)`:
    the overrides the section's NAS model is built with (`spec`: the typed `model` section), checked
    against the registered model's config. `check(name, typed, sections)`: what the dataclass alone
    cannot check (`sections`: every typed section of the run); raises ConfigError with its `path`.
    """

    type: type | str
    model_overrides: Callable[[Any, Any], dict[str, Any]] | None = None
    check: Callable[[str, Any, Mapping[str, Any]], None] | None = None

    def dataclass(self) -> type:
        if isinstance(self.type, str):
            module, _, name = self.type.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.type


# Stages whose run checkpoint (runs/<stage>/<variant>/checkpoint.pt) a later stage starts from, in order.
CHECKPOINT_STAGES = ("pretrain_stage1", "pretrain_stage2")


def stage_model_overrides(spec: Any, stage: Any) -> dict[str, Any]:
    """A pretraining stage's model: `model.overrides` with the stage's `model_overrides` on top."""
    return merge(spec.overrides, stage.model_overrides)


def check_init_from(name: str, typed: Any, sections: Mapping[str, Any]) -> None:
    """`<name>.init_from` names a stage before `name` that leaves a checkpoint (or null, if allowed)."""
    init = typed.init_from
    if init is None:
        return
    earlier = [s for s in CHECKPOINT_STAGES if s != name]
    if name in CHECKPOINT_STAGES:
        earlier = list(CHECKPOINT_STAGES[: CHECKPOINT_STAGES.index(name)])
    if init not in earlier:
        choices = f"choose from {earlier}" if earlier else "it starts from scratch (null)"
        raise ConfigError(
            f"{name}.init_from: {init!r} is not an earlier stage with a checkpoint"
            f"{did_you_mean(init, CHECKPOINT_STAGES)}; {choices}",
            path=f"{name}.init_from",
        )


def by_name(target: str) -> Callable[[str, Any, Mapping[str, Any]], None]:
    """A section check defined above nas.config ("module:function"), imported when a check runs."""

    def check(name: str, typed: Any, sections: Mapping[str, Any]) -> None:
        module, _, attr = target.partition(":")
        getattr(importlib.import_module(module), attr)(name, typed, sections)

    return check


# Top-level section -> how it is typed. `nas/recipes/stage.py` adds `finetune` and `evaluate`.
SECTIONS: dict[str, Section] = {
    "data": Section("nas.config.data:DataConfig"),
    "model": Section("nas.config.stages:ModelSpec"),
    "loader": Section("nas.config.data:LoaderConfig"),
    "pretrain_stage1": Section(
        "nas.config.stages:TrainStageConfig", model_overrides=stage_model_overrides, check=check_init_from
    ),
    "pretrain_stage2": Section(
        "nas.config.stages:TrainStageConfig", model_overrides=stage_model_overrides, check=check_init_from
    ),
    "report": Section("nas.config.report:ReportConfig"),
    "study": Section("nas.config.stages:StudyConfig"),
    # The sections typed above nas.config (finetune, evaluate, and the companion recipes' mug and uta, typed
    # by their cards) are registered from above: nas/recipes/__init__.py.
}


def register_section(name: str, section: Section) -> None:
    """Type the top-level params section `name` with `section` (a second registration replaces the first)."""
    if name in (SEED, VARIANTS, *DERIVED_KEYS):
        raise ValueError(f"register_section: {name!r} is a top-level key, not a section")
    SECTIONS[name] = section


# ---- registered models ---------------------------------------------------------------------------------

# A model named in params is checked against the model registry (nas.models.registry: name -> config class
# and base dict). The registry sits above nas.config: the layer that checks params names it
# (`use_model_registry`, nas/recipes/__init__.py), and it is imported when params are checked.
_MODEL_REGISTRY: list[str] = []


def use_model_registry(module: str) -> None:
    """Name the module (`list_models`, `model_entry`) that model specs in params are checked against."""
    _MODEL_REGISTRY[:] = [module]


def _model_registry() -> Any:
    if not _MODEL_REGISTRY:
        raise RuntimeError(
            "no model registry to check params against: import nas.recipes (it names nas.models.registry)"
        )
    return importlib.import_module(_MODEL_REGISTRY[0])


def model_config(
    name: str, overrides: dict[str, Any], *, family: str, path: str, overrides_path: str | None = None
) -> Any:
    """The config `create_model(name, **overrides)` builds, typed without building the model; `name` must
    be a `family` model. Errors name `<path>.name` or `overrides_path` (default `<path>.overrides`)."""
    registry = _model_registry()
    family_models = registry.list_models(family)
    if name not in family_models:
        known = registry.list_models()
        what = (
            f"a {registry.model_entry(name).family} model"
            if name in known
            else f"not a registered model{did_you_mean(name, family_models)}"
        )
        raise ConfigError(
            f"{path}.name: {name!r} is {what}; {path} builds one of {family_models}",
            path=f"{path}.name",
        )
    return registry.model_entry(name).resolve(overrides, overrides_path or f"{path}.overrides")


# ---- validation ----------------------------------------------------------------------------------------


def validate(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """Check a resolved params dict (see the module docstring); returns its typed sections by name.
    The first problem, in the order of the params, is a ConfigError naming its key and value."""
    if not isinstance(resolved, Mapping):
        raise ConfigError(f"params must be a mapping of sections, got {describe(resolved)}")
    typed: dict[str, Any] = {}
    for key, value in resolved.items():
        if key in DERIVED_KEYS:
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be a string, got {describe(value)}", path=str(key))
        elif key == SEED:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(
                    f"seed must be an integer (the run seed; rank r uses seed + r), got {describe(value)}",
                    path=SEED,
                )
        elif key == VARIANTS:
            raise ConfigError(
                "variants: resolved params have no variants table (resolve the params for a variant first)",
                path=VARIANTS,
            )
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{key} must be a mapping of {key} settings, got {describe(value)}", path=key
                )
            typed[key] = from_dict(SECTIONS[key].dataclass(), value, key)
        else:
            accepted = sorted([SEED, VARIANTS, *SECTIONS])
            raise ConfigError(
                f"unknown config key {key!r}{did_you_mean(key, accepted)}; a params file holds: {accepted}",
                path=str(key),
            )
    if SEED not in resolved:
        raise ConfigError("missing required config key 'seed' (the run seed; ALBEF: 42)", path=SEED)
    _check_keys(resolved, "")
    for name, value in typed.items():
        _check_train_seeds(type(value), resolved[name], name)
    _check_models(typed)
    for name, value in typed.items():
        check = SECTIONS[name].check
        if check is not None:
            check(name, value, typed)
    check_batches(typed)
    return typed


def _check_keys(node: Any, path: str) -> None:
    """Every mapping key a string the run record can store (Sacred: no '.', no leading '$')."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                raise ConfigError(
                    f"{path or 'params'}: key {describe(key)} must be a string", path=path or None
                )
            if "." in key or key.startswith("$"):
                raise ConfigError(
                    f"{path or 'params'}: key {key!r} has a '.' or starts with '$', which the run record "
                    "(Sacred) cannot store",
                    path=where,
                )
            _check_keys(value, where)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            _check_keys(value, f"{path}[{index}]")


def _check_train_seeds(cls: type, raw: Any, path: str) -> None:
    """`train.seed` is never read from params: every stage sets it (the run `seed`, or a section's `seeds`)."""
    from nas.config.stages import TrainConfig

    if not dataclasses.is_dataclass(cls) or not isinstance(raw, dict):
        return
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in raw:
            continue
        tp, where = hints[field.name], f"{path}.{field.name}"
        if tp is TrainConfig and isinstance(raw[field.name], dict) and "seed" in raw[field.name]:
            raise ConfigError(
                f"{where}.seed: the stage sets the training seed (from the top-level `seed`, or the "
                f"section's `seeds`), so {describe(raw[field.name]['seed'])} would be ignored; set `seed` instead",
                path=f"{where}.seed",
            )
        _check_train_seeds(tp, raw[field.name], where)


def _check_models(typed: Mapping[str, Any]) -> None:
    """`model` against its registered config, and every section's model overrides merged on top."""
    users = [name for name in typed if SECTIONS[name].model_overrides is not None]
    if "model" not in typed and not users:
        return
    from nas.config.stages import ModelSpec

    spec = typed.get("model") or ModelSpec()
    model_config(spec.name, spec.overrides, family="nas", path="model")
    for name in users:
        overrides = SECTIONS[name].model_overrides(spec, typed[name])
        model_config(
            spec.name, overrides, family="nas", path="model", overrides_path=f"{name}.model_overrides"
        )


# ---- impossible combinations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Consumer:
    """One training loader of a stage: the pairs of one annotation file, one batch size per process."""

    stage: str  # the stage that trains with it
    section: str  # the params section of its training settings
    batch_key: str  # where its batch size and drop_last are set
    batch: int
    drop_last_key: str
    drop_last: bool
    train_file: str
    processes: int
    with_shards: bool  # data.train_shards join its training set (pretraining only)


# The annotation files the synthetic data set writes (nas/data/synthetic.py) -> its split-size param.
SYNTHETIC_SPLITS = {"train.json": "n_train", "val.json": "n_val", "test.json": "n_test"}


def _consumers(typed: Mapping[str, Any]) -> list[_Consumer]:
    """Every training loader the params describe (the stages of dvc.yaml that train)."""
    from nas.config.data import LoaderConfig

    data = typed["data"]
    base = to_dict(typed.get("loader") or LoaderConfig())
    out = []

    def add(stage, section, train, overlay=None, train_file=None, shards=False, one_process=False):
        loader = LoaderConfig(**merge(base, overlay or {}))
        keys = {k: f"{section}.loader.{k}" if k in (overlay or {}) else f"loader.{k}" for k in vars(loader)}
        out.append(
            _Consumer(
                stage=stage,
                section=section,
                batch_key=keys["batch_size_per_gpu"],
                batch=loader.batch_size_per_gpu,
                drop_last_key=keys["drop_last"],
                drop_last=loader.drop_last,
                train_file=train_file or data.train_file,
                processes=1 if one_process else train.launch.nproc_per_node,
                with_shards=shards,
            )
        )

    for name in ("pretrain_stage1", "pretrain_stage2", "finetune"):
        if name in typed:
            add(name, name, typed[name].train, shards=name != "finetune")
    if "mug" in typed:
        mug = typed["mug"]
        add("mug_pretrain", "mug", mug.train, mug.loader, mug.train_file)
    if "uta" in typed:
        uta = typed["uta"]
        if not uta.teacher.pretrained:
            add("uta_teacher", "uta.teacher", uta.teacher.train, uta.teacher.loader)
        add("uta_pretrain", "uta.student", uta.student.train, uta.student.loader, uta.student.train_file)
        if uta.finetune.enabled:  # uta_finetune runs in one process
            ft = uta.finetune
            add("uta_finetune", "uta.finetune", ft.train, ft.loader, ft.train_file, one_process=True)
    return out


def check_batches(typed: Mapping[str, Any]) -> None:
    """A training loader that would have no batch: with `drop_last`, a batch per process larger than the
    share of the training pairs each process gets. Known from params alone for the synthetic data set (its
    split sizes are params); other data sets are counted when a stage builds its loader."""
    data = typed.get("data")
    if data is None or data.source != "synthetic":
        return
    synthetic = data.synthetic
    empty: dict[tuple[str, int, int, str], list[_Consumer]] = {}
    for consumer in _consumers(typed):
        split = SYNTHETIC_SPLITS.get(consumer.train_file)
        if not consumer.drop_last or split is None or (consumer.with_shards and data.train_shards):
            continue  # a partial batch is kept; or a set the params cannot count (the stage does)
        pairs = getattr(synthetic, split) * synthetic.captions_per_image
        if consumer.batch > math.ceil(pairs / consumer.processes):
            empty.setdefault((consumer.batch_key, consumer.batch, consumer.processes, split), []).append(
                consumer
            )
    if not empty:
        return
    (key, batch, processes, split), consumers = next(iter(empty.items()))
    first, size = consumers[0], getattr(synthetic, split)
    pairs = size * synthetic.captions_per_image
    count = (
        f"the synthetic training set, {pairs} pairs (data.synthetic.{split}={size} x "
        f"captions_per_image={synthetic.captions_per_image})"
    )
    if processes > 1:
        count = (
            f"the {math.ceil(pairs / processes)} pairs per process of {count} over {processes} processes "
            f"({first.section}.train.launch.nproc_per_node={processes})"
        )
    raise ConfigError(
        f"{key}={batch} is larger than {count}: with {first.drop_last_key}=true, "
        f"{_and([c.stage for c in consumers])} would have no batch to train on; lower the batch size or "
        "enlarge the data set",
        path=key,
    )


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


# ---- a run's params ------------------------------------------------------------------------------------


def _touches(key: str, path: str) -> bool:
    """Whether setting dotted `key` can change the value at `path` (one is a prefix of the other)."""
    path = path.split("[", 1)[0]
    return key == path or key.startswith(path + ".") or path.startswith(key + ".")


def check_params(
    params: dict[str, Any],
    variant: str | None = None,
    overrides: Sequence[str] = (),
    *,
    source: str = "params.yaml",
) -> dict[str, Any]:
    """`resolve(params, variant, overrides)`, checked whole before any stage work (`validate`).

    The file's own params are checked first, then with the variant's overlay (a variant with a `base`:
    with each overlay of its chain in turn, root base first), then with the overrides, so an error says
    where the offending value was set: `<source>`, `<source> variants.<name>`, or the `--set` items that
    touch its key (all of them when none does)."""
    layers: list[tuple[str | None, Sequence[str], str]] = [(None, (), source)]
    if variant is not None:
        variants = variants_of(params, source)
        # A variant with a `base`: each overlay of its chain is checked as it is merged in (root base
        # first), so an error names the overlay that set the value: `variants.k32`, or `variants.nas
        # (a base of variants.k32)`. An unknown variant: `resolve` says so.
        chain = variant_chain(variants, variant, source) if variant in variants else [variant]
        for name in reversed(chain):
            base_of = "" if name == variant else f" (a base of variants.{variant})"
            layers.append((name, (), f"{source} variants.{name}{base_of}"))
    if overrides:
        layers.append((variant, tuple(overrides), ""))
    resolved: dict[str, Any] = {}
    for layer_variant, layer_overrides, origin in layers:
        resolved = resolve(params, layer_variant, layer_overrides, source=source)
        try:
            validate(resolved)
        except ConfigError as exc:
            if not origin:
                touching = [
                    text for text in overrides if exc.path and _touches(parse_override(text)[0], exc.path)
                ]
                origin = " ".join(show_override(text) for text in (touching or overrides))
            raise ConfigError(f"{origin}: {exc}", path=exc.path) from None
    return resolved
