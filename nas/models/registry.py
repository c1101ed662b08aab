"""Model registry as data, in timm's habit: `create_model(name, **overrides)` over registered variants.

One registration gives a model name everything the rest of the harness needs to know about it:

    register_model("albef_tiny", config=ALBEFConfig, base={}, build=ALBEF, family="nas", doc="...")

* `config`: the model's config dataclass; `base`: the variant's values over the dataclass defaults (a
  nested dict; `{}`: the defaults); `build`: config instance -> `nn.Module`;
* `family`: which params section may build it (`nas`: `model`, `mug`: `mug.model`, `uta`:
  `uta.student.model`, `uta_teacher`: `uta.teacher.model`); `doc`: one line for `nas models`.

`resolve_config(name, **overrides)` is the config `create_model(name, **overrides)` builds, typed
without building the model (the audit, the params schema and the recipe cards read it): the base dict
deep-merged with the overrides, then typed strictly (`nas.config.base.from_dict`: an unknown or
mistyped key is a `ConfigError` naming its dotted path). A nested override such as `vision: {depth: 2}`
changes that one key of the variant's `vision` (and of a nested field's own default), nothing else.
"""

from __future__ import annotations

import copy
import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from nas.config.base import ConfigError, from_dict, merge

T = TypeVar("T")
FAMILIES = ("nas", "mug", "uta", "uta_teacher")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: `build(resolve(overrides))` is `create_model(name, **overrides)`."""

    name: str
    config: type  # the config dataclass
    base: Mapping[str, Any]  # the variant's values over the config's defaults (nested); read-only
    build: Callable[[Any], nn.Module]  # config instance -> model
    family: str  # which params section may build it (see the module docstring)
    doc: str = ""

    def resolve(self, overrides: Mapping[str, Any] | None = None, path: str = "") -> Any:
        """The typed config for `overrides` (merged into `base`); errors name keys under dotted `path`."""
        return from_dict(self.config, merge(copy.deepcopy(dict(self.base)), dict(overrides or {})), path)


_REGISTRY: dict[str, ModelEntry] = {}
# Modules whose import registers models; imported on first lookup so that importing the registry stays
# cheap and free of import cycles. A new model file adds itself here.
_MODEL_MODULES = (
    "nas.models.albef",
    "nas.models.nas_model",
    "nas.models.mug",
    "nas.models.uta",
    "nas.models.clip_teacher",
)


def register_model(
    name: str,
    *,
    config: type,
    build: Callable[[Any], nn.Module],
    base: Mapping[str, Any] | None = None,
    family: str,
    doc: str = "",
) -> ModelEntry:
    """Register model `name` (see the module docstring); a second model with the same name is an error."""
    if family not in FAMILIES:
        raise ValueError(f"register_model({name!r}): family {family!r} is not one of {FAMILIES}")
    entry = ModelEntry(name, config, copy.deepcopy(dict(base or {})), build, family, doc)
    known = _REGISTRY.get(name)
    if known is not None and (known.config, known.build, known.base) != (config, build, entry.base):
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _REGISTRY[name] = entry
    return entry


def _load_model_modules() -> None:
    for module in _MODEL_MODULES:
        importlib.import_module(module)


def list_models(family: str | None = None) -> list[str]:
    """Names of all registered models (of one `family`, if given), sorted."""
    _load_model_modules()
    return sorted(name for name, e in _REGISTRY.items() if family is None or e.family == family)


def model_entry(name: str) -> ModelEntry:
    """The registration of `name` (config class, base dict, builder, family, doc); KeyError if unknown."""
    _load_model_modules()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def resolve_config(name: str, /, **overrides: Any) -> Any:
    """The config `create_model(name, **overrides)` builds, without building the model."""
    entry = model_entry(name)
    try:
        return entry.resolve(overrides)
    except ConfigError as exc:
        raise ConfigError(f"resolve_config({name!r}): {exc}", path=exc.path) from exc


def create_model(name: str, /, **overrides: Any) -> nn.Module:
    """Build registered model `name` with config `overrides` (nested dicts merge into the variant)."""
    entry = model_entry(name)
    try:
        return entry.build(entry.resolve(overrides))
    except ConfigError as exc:
        raise ConfigError(f"create_model({name!r}): {exc}", path=exc.path) from exc


def build_config(cls: type[T], variant: dict[str, Any], overrides: dict[str, Any]) -> T:
    """`cls` from the variant's dict with `overrides` merged on top, strictly (unknown key → error)."""
    return from_dict(cls, merge(variant, overrides))
