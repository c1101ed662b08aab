"""params.yaml -> one resolved dict per (stage, variant).

`params.yaml` is the single source of truth. A *variant* (ALBEF, +VD, NAS, ...) is a partial
params overlay under `variants.<name>`; a *profile* (the paper scale) is a params file of its own
with the same keys. A stage sees `merge(params, variants[variant])`, minus the variants table,
plus any `key=value` overrides from the command line. `nas.config.schema.check_params` resolves and
checks the whole result (every key of every section, whichever stage runs) before a stage starts;
the stage then turns the sections it reads into their dataclasses (`nas.config.from_dict`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from nas.config.base import ConfigError, describe, did_you_mean, merge, set_dotted

# Keys a run adds to the resolved params (`variant` from --variant, `stage` from the stage command):
# never keys of a params file or of a --set.
DERIVED_KEYS = ("variant", "stage")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path} (run from the repository root)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of params sections at the top level, got {describe(data)}"
        )
    return data


def show_override(text: str) -> str:
    """`--set key=value` as error messages name it (quoted when it holds spaces)."""
    return f"--set {text}" if text and not any(c.isspace() for c in text) else f"--set {text!r}"


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-4` -> ("train.lr", 1e-4); the value is read as YAML (lists, bools, null)."""
    if "=" not in text:
        raise ConfigError(f"{show_override(text)}: an override must look like key.path=value (a YAML value)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or not all(key.split(".")):
        raise ConfigError(f"{show_override(text)}: {key!r} is not a dotted key path (key.path=value)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{show_override(text)}: the value {raw!r} is not valid YAML ({problem})") from exc
    return key, value


def variants_of(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """The `variants` table of a params file: names -> overlays (mappings; null is an empty one)."""
    variants = params.get("variants")
    if variants is None:
        return {}
    if not isinstance(variants, dict):
        raise ConfigError(
            f"{source}: variants must be a mapping of variant names to params overlays, got {describe(variants)}",
            path="variants",
        )
    for name, overlay in variants.items():
        if not isinstance(name, str):
            raise ConfigError(f"{source}: variants: a variant name must be a string, got {describe(name)}")
        if overlay is not None and not isinstance(overlay, dict):
            raise ConfigError(
                f"{source}: variants.{name} must be a mapping (a params overlay), got {describe(overlay)}",
                path=f"variants.{name}",
            )
        for key in ("variants", *DERIVED_KEYS):
            if key in (overlay or {}):
                raise ConfigError(
                    f"{source}: variants.{name}.{key}: an overlay holds params keys, and {key!r} is not one",
                    path=f"variants.{name}.{key}",
                )
    return variants


def resolve(
    params: dict[str, Any],
    variant: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    source: str = "params.yaml",
) -> dict[str, Any]:
    """Params as one variant sees them: base merged with `variants.<variant>`, then overrides.

    `source` names the params file in error messages. Only the shape of the variants table and of the
    overrides is checked here; `nas.config.schema.check_params` checks the result."""
    for key in DERIVED_KEYS:
        if key in params:
            raise ConfigError(
                f"{source}: {key!r} is not a params key (a run sets it from "
                f"{'--variant' if key == 'variant' else 'the stage it runs'})",
                path=key,
            )
    variants = variants_of(params, source)
    base = copy.deepcopy({k: v for k, v in params.items() if k != "variants"})  # never mutate the caller's
    if variant is not None:
        if variant not in variants:
            raise ConfigError(
                f"unknown variant {variant!r}{did_you_mean(variant, variants)}; {source} defines: {sorted(variants)}"
            )
        base = merge(base, copy.deepcopy(variants[variant] or {}))
        base["variant"] = variant
    for text in overrides:
        key, value = parse_override(text)
        head = key.split(".")[0]
        if head == "variants":
            raise ConfigError(
                f"{show_override(text)}: an override applies to the params the variant sees, after "
                "`variants.<name>` is merged in; set the key itself (e.g. model.name=nas_tiny) or edit the "
                "params file",
                path=key,
            )
        if head in DERIVED_KEYS:
            raise ConfigError(
                f"{show_override(text)}: {head!r} is not a params key (a run sets it from "
                f"{'--variant' if head == 'variant' else 'the stage it runs'})",
                path=key,
            )
        try:
            set_dotted(base, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{show_override(text)}: {exc}", path=exc.path) from None
    return base


def section(resolved: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The named top-level sections of a resolved params dict; a missing one names itself."""
    out = {}
    for key in keys:
        if key not in resolved:
            raise ConfigError(f"params has no section {key!r}", path=key)
        out[key] = resolved[key]
    return out
