"""params.yaml -> one resolved dict per (stage, variant), and where a run writes.

`params.yaml` is the single source of truth. A *variant* (ALBEF, +VD, NAS, ...) is a partial
params overlay under `variants.<name>`; a *profile* (the paper scale) is a params file of its own
with the same keys. A stage sees `merge(params, variants[variant])`, minus the variants table,
plus any `key=value` overrides from the command line. `nas.config.schema.check_params` resolves and
checks the whole result (every key of every section, whichever stage runs) before a stage starts;
the stage then turns the sections it reads into their dataclasses (`nas.config.from_dict`).

An overlay may inherit: `variants.k32: {base: nas, model: {overrides: {vd: {num_codes: 32}}}}` is the
`nas` variant (its own bases first, recursively) with k32's keys merged on top. Unknown bases and
cycles are errors naming them, for the whole table, whichever variant runs.

Where a run writes (`decide_output_root`): a *pipeline run* (DVC runs the stage, or it runs by hand
with the tracked params.yaml and no `--set`) writes the paths dvc.yaml names; any other run is *ad
hoc* and writes the same tree under `runs/adhoc/<tag>/` (`tag`: the params file and the `--set`
list), so it never touches a DVC output.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas.config.base import ConfigError, describe, did_you_mean, merge, set_dotted

# Keys a run adds to the resolved params (`variant` from --variant, `stage` from the stage command,
# `output_root` on ad-hoc runs only): never keys of a params file, of an overlay or of a --set.
DERIVED_KEYS = ("variant", "stage", "output_root")
_SET_FROM = {
    "variant": "--variant",
    "stage": "the stage it runs",
    "output_root": "how it runs: ad-hoc runs write under runs/adhoc/",
}

# The key of an overlay that names the variant it inherits from.
BASE = "base"


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


def _not_a_params_key(key: str) -> str:
    return f"{key!r} is not a params key (a run sets it from {_SET_FROM[key]})"


def variants_of(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """The `variants` table of a params file: names -> overlays (mappings; null is an empty one).

    Every overlay's `base` names another variant of the table, and no chain of bases is a cycle."""
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
    for name in variants:
        variant_chain(variants, name, source)
    return variants


def variant_chain(variants: Mapping[str, Any], name: str, source: str = "params.yaml") -> list[str]:
    """`[name, its base, the base's base, ...]`: the variants whose overlays `name` merges, the variant
    itself first. An unknown base or a cycle is a ConfigError naming the overlay and the chain."""
    chain = [name]
    while True:
        overlay = variants[chain[-1]] or {}
        if BASE not in overlay:
            return chain
        base, where = overlay[BASE], f"variants.{chain[-1]}.{BASE}"
        if not isinstance(base, str):
            raise ConfigError(
                f"{source}: {where} must name another variant (a string), got {describe(base)}",
                path=where,
            )
        if base not in variants:
            raise ConfigError(
                f"{source}: {where}: {base!r} is not a variant{did_you_mean(base, variants)}; "
                f"{source} defines: {sorted(variants)}",
                path=where,
            )
        if base in chain:
            cycle = " -> ".join([*chain[chain.index(base) :], base])
            raise ConfigError(f"{source}: {where}: the bases form a cycle: {cycle}", path=where)
        chain.append(base)


def own_overlay(overlay: dict[str, Any] | None) -> dict[str, Any]:
    """The params keys an overlay sets itself (without `base`)."""
    return {key: value for key, value in (overlay or {}).items() if key != BASE}


def variant_lineage(
    params: dict[str, Any], variant: str, source: str = "params.yaml"
) -> list[dict[str, Any]]:
    """The overlays `variant` resolves with, in merge order (its root base first, the variant last):
    `[{"variant": name, "overlay": keys it sets}, ...]`. The resolved params of the variant are a
    function of this list and the params sections, so a DVC dependency on it (see `main`) reruns a
    variant's stages when one of its bases changes, and only then."""
    variants = variants_of(params, source)
    if variant not in variants:
        raise ConfigError(
            f"unknown variant {variant!r}{did_you_mean(variant, variants)}; {source} defines: {sorted(variants)}"
        )
    chain = variant_chain(variants, variant, source)
    return [{"variant": name, "overlay": own_overlay(variants[name])} for name in reversed(chain)]


def resolve(
    params: dict[str, Any],
    variant: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    source: str = "params.yaml",
) -> dict[str, Any]:
    """Params as one variant sees them: base merged with `variants.<variant>` (its bases' overlays
    first, recursively), then overrides.

    `source` names the params file in error messages. Only the shape of the variants table and of the
    overrides is checked here; `nas.config.schema.check_params` checks the result."""
    for key in DERIVED_KEYS:
        if key in params:
            raise ConfigError(f"{source}: {_not_a_params_key(key)}", path=key)
    variants = variants_of(params, source)
    base = copy.deepcopy({k: v for k, v in params.items() if k != "variants"})  # never mutate the caller's
    if variant is not None:
        if variant not in variants:
            raise ConfigError(
                f"unknown variant {variant!r}{did_you_mean(variant, variants)}; {source} defines: {sorted(variants)}"
            )
        for name in reversed(variant_chain(variants, variant, source)):
            base = merge(base, copy.deepcopy(own_overlay(variants[name])))
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
            raise ConfigError(f"{show_override(text)}: {_not_a_params_key(head)}", path=key)
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


# ---- where a run writes --------------------------------------------------------------------------------
#
# dvc.yaml names every stage's outputs relative to the repository root (runs/<stage>/<variant>,
# checkpoints/..., metrics/...). A run writes that tree under its *output root*: the repository root for
# a pipeline run, `runs/adhoc/<tag>/` for an ad-hoc one. Nothing under runs/adhoc/ is a DVC output or
# dependency (the report stage depends on the whole metrics/ folder, so ad-hoc metrics stay out of it).

PIPELINE_ROOT = Path(".")
ADHOC_DIR = Path("runs") / "adhoc"
TRACKED_PARAMS = "params.yaml"  # the params file dvc.yaml's stages read
DVC_STAGE_ENV = "DVC_STAGE"  # DVC (3.x) sets it for every stage command: `<stage>` or `<stage>@<key>`


@dataclass(frozen=True)
class OutputRoot:
    """Where a run writes: `path` (the repository root `.` for a pipeline run), and why."""

    path: Path
    pipeline: bool
    reason: str

    def describe(self) -> str:
        """One line for the start of a run."""
        if self.pipeline:
            return f"pipeline run ({self.reason}): outputs at the paths dvc.yaml names"
        return (
            f"ad-hoc run ({self.reason}): outputs under {self.path}/, none at the pipeline's paths; "
            "to run it as a tracked experiment of the pipeline, use `dvc exp run -S key=value`"
        )


def stage_address(stage: str, variant: str | None) -> str:
    """The name DVC gives the stage (a `foreach` over the variants: `<stage>@<variant>`)."""
    return stage if variant is None else f"{stage}@{variant}"


def is_tracked_params(params_path: str | Path, cwd: str | Path | None = None) -> bool:
    """Whether `params_path` is the params.yaml of the working directory (the repository root)."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    path = Path(params_path)
    path = path if path.is_absolute() else cwd / path
    return path.resolve() == (cwd / TRACKED_PARAMS).resolve()


def pipeline_run(
    stage: str,
    variant: str | None,
    params_path: str | Path,
    overrides: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> tuple[bool, str]:
    """(whether the run is a pipeline run, why). DVC runs it: `DVC_STAGE` names this very stage (a
    stage command that starts another stage by hand is not that stage). By hand: the tracked
    params.yaml and no `--set` (the run DVC would do)."""
    environ = os.environ if environ is None else environ
    expected = stage_address(stage, variant)
    dvc_stage = environ.get(DVC_STAGE_ENV)
    if dvc_stage:
        # `<dvc.yaml path>:<stage>` when the dvc.yaml is not at the repository root.
        if dvc_stage == expected or dvc_stage.endswith(f":{expected}"):
            return True, f"DVC stage {dvc_stage}"
        return False, f"{DVC_STAGE_ENV}={dvc_stage} is another stage than {expected}"
    if overrides:
        return False, " ".join(show_override(text) for text in overrides)
    if not is_tracked_params(params_path, cwd):
        return False, f"--params {params_path}"
    return True, f"by hand, {TRACKED_PARAMS} without --set"


def adhoc_tag(params_path: str | Path, overrides: Sequence[str], cwd: str | Path | None = None) -> str:
    """10 hex digits naming an ad-hoc run's folder: the params file (its path) and what the `--set`
    items set (applied in order to an empty mapping, so their order matters only where it changes the
    result). Every stage and variant run with the same params file and `--set` list shares one folder,
    so a downstream stage finds the upstream outputs of the same exploration there."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    path = Path(params_path)
    path = (path if path.is_absolute() else cwd / path).resolve()
    try:
        shown = path.relative_to(cwd.resolve()).as_posix()
    except ValueError:
        shown = path.as_posix()
    effect: Any = {}
    try:
        for text in overrides:
            key, value = parse_override(text)
            set_dotted(effect, key, value)
    except ConfigError:  # the run refuses it anyway; name the folder after the items as given
        effect = list(overrides)
    blob = json.dumps({"params": shown, "set": effect}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def decide_output_root(
    stage: str,
    variant: str | None,
    params_path: str | Path,
    overrides: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> OutputRoot:
    """Where a run of `stage` writes: the pipeline's paths, or `runs/adhoc/<tag>/` (see the module)."""
    pipeline, reason = pipeline_run(stage, variant, params_path, overrides, environ=environ, cwd=cwd)
    if pipeline:
        return OutputRoot(PIPELINE_ROOT, True, reason)
    return OutputRoot(ADHOC_DIR / adhoc_tag(params_path, overrides, cwd), False, reason)


def adhoc_manifest(params_path: str | Path, overrides: Sequence[str]) -> dict[str, Any]:
    """What an ad-hoc folder holds runs of (written as `<root>/adhoc.json` by the run)."""
    return {"params": str(params_path), "set": list(overrides)}


def output_root(resolved: Mapping[str, Any]) -> Path:
    """The output root of a run from its resolved params: `output_root` (set on ad-hoc runs only),
    else the repository root (pipeline runs, and stages called directly, e.g. by tests)."""
    root = resolved.get("output_root")
    return PIPELINE_ROOT if root in (None, "") else Path(root)


_SAID: set[tuple[Path, Path]] = set()


def input_root(root: Path, output: Path, stage: str) -> Path:
    """The root to read `stage`'s output `output` (a pipeline path, e.g. runs/pretrain_stage1/nas) from:
    `root` when the run is a pipeline run or its ad-hoc folder holds that output (an earlier stage of
    the same exploration), else the pipeline's (said once on stdout: the run reads what DVC produced)."""
    if root == PIPELINE_ROOT or (root / output).exists():
        return root
    if (root, output) not in _SAID:
        _SAID.add((root, output))
        print(f"ad-hoc run: no {stage} output at {root / output}; reading the pipeline's {output}")
    return PIPELINE_ROOT


# ---- `python -m nas.config.params`: a variant's lineage, for DVC -------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Write `variant_lineage` as JSON (the file a variant's DVC stages depend on instead of
    `variants.<name>` alone, so editing a base reruns the variants built on it)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m nas.config.params",
        description="Write the overlays a variant resolves with (its bases first), as JSON.",
    )
    parser.add_argument("--params", default=TRACKED_PARAMS, help="params file (default: params.yaml)")
    parser.add_argument("--variant", required=True, help="a key of `variants` in the params file")
    parser.add_argument("--out", default="-", help="output file (default: stdout)")
    args = parser.parse_args(argv)
    try:
        lineage = variant_lineage(load_params(args.params), args.variant, source=args.params)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    text = json.dumps({"variant": args.variant, "lineage": lineage}, indent=2, sort_keys=True) + "\n"
    if args.out == "-":
        print(text, end="")
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
