"""params.yaml -> one resolved dict per (stage, variant).

`params.yaml` is the single source of truth. A *variant* (ALBEF, +VD, NAS, ...) is a partial
params overlay under `variants.<name>`; a *profile* (the paper scale) is a params file of its own
with the same keys. A stage sees `merge(params, variants[variant])`, minus the variants table,
plus any `key=value` overrides from the command line. Typing and unknown-key checks happen when a
stage turns this dict into its dataclass (`nas.config.from_dict`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from nas.config.base import ConfigError, merge, set_dotted


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path} (run from the repository root)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-4` -> ("train.lr", 1e-4); the value is read as YAML (lists, bools, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def resolve(
    params: dict[str, Any], variant: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Params as one variant sees them: base merged with `variants.<variant>`, then overrides."""
    base = copy.deepcopy({k: v for k, v in params.items() if k != "variants"})  # never mutate the caller's
    if variant is not None:
        variants = params.get("variants") or {}
        if variant not in variants:
            raise ConfigError(f"unknown variant {variant!r}; params.yaml defines: {sorted(variants)}")
        base = merge(base, copy.deepcopy(variants[variant] or {}))
        base["variant"] = variant
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(base, key, value)
    return base


def section(resolved: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The named top-level sections of a resolved params dict; a missing one names itself."""
    out = {}
    for key in keys:
        if key not in resolved:
            raise ConfigError(f"params has no section {key!r}")
        out[key] = resolved[key]
    return out
