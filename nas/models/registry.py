"""Model registry in timm's habit: `@register_model` entrypoints, `create_model(name, **overrides)`.

An entrypoint is a few lines: a base config dict (the variant) merged with the caller's overrides
(nested dicts allowed: `create_model("albef_tiny", text={"num_fusion_layers": 1})`) and built
strictly, so an unknown or mistyped key is a `ConfigError` naming its dotted path.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from nas.config.base import ConfigError, from_dict, merge

T = TypeVar("T")
Entrypoint = Callable[..., nn.Module]

_ENTRYPOINTS: dict[str, Entrypoint] = {}
# Modules whose import registers entrypoints; imported on first lookup so that importing the
# registry stays cheap and free of import cycles. A new model file adds itself here.
_MODEL_MODULES = (
    "nas.models.albef",
    "nas.models.nas_model",
    "nas.models.mug",
    "nas.models.uta",
    "nas.models.clip_teacher",
)


def register_model(fn: Entrypoint) -> Entrypoint:
    """Register `fn` under its function name; a second model with the same name is an error."""
    name = fn.__name__
    if name in _ENTRYPOINTS and _ENTRYPOINTS[name] is not fn:
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _ENTRYPOINTS[name] = fn
    return fn


def _load_model_modules() -> None:
    for module in _MODEL_MODULES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _load_model_modules()
    return sorted(_ENTRYPOINTS)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build registered model `name` with config `overrides` (nested dicts merge into the variant)."""
    _load_model_modules()
    if name not in _ENTRYPOINTS:
        close = difflib.get_close_matches(name, list(_ENTRYPOINTS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}; registered: {sorted(_ENTRYPOINTS)}")
    try:
        return _ENTRYPOINTS[name](**overrides)
    except ConfigError as exc:
        raise ConfigError(f"create_model({name!r}): {exc}") from exc


def build_config(cls: type[T], variant: dict[str, Any], overrides: dict[str, Any]) -> T:
    """`cls` from the variant's dict with `overrides` merged on top, strictly (unknown key → error)."""
    return from_dict(cls, merge(variant, overrides))
