"""The hyperparameter audit: a run's resolved config against the paper card.

One row per checked value: hyperparameter, params path, paper value, source, run value, verdict.
Verdicts: "match"; "deviation" (unexplained); "known difference (<source>)" (the value another
source used, e.g. [A]'s 30 stage-1 passes); "ablation" (a component switched off, e.g. the ALBEF
baseline has no visual dictionary); "n/a" (the entry concerns a component the model lacks, e.g. NVA
rows of a variant without NVA, or a pretraining value a fine-tuning run's config no longer holds);
"unchecked" (the card names it but no param holds it yet). Only deviations make the exit code
non-zero: the default (tiny) profile fails the audit on purpose, the paper profile passes it.

Input: a resolved config (`nas.config.params.resolve`), a run folder's `config.json` (Sacred's
`runs/sacred/<stage>/<variant>/<id>/`, the stage's own `runs/<stage>/<variant>/` or a fine-tuning
replicate's `runs/finetune/<variant>/seed<k>/`), or a params file + variant (`main`). Sections are
read the way the stages read them, dataclass defaults included, and the model's fields as the
registry builds it (see nas/config/card.py).

A fine-tuning replicate's config.json records the model it fine-tuned: `model.overrides` holds the
EFFECTIVE overrides (`finetune.model_overrides`, `finetune.mlm_weight` and `finetune.image_size`
merged in) and `data.transform.image_size` the fine-tuning size (experiments/finetune.py). Read as
pretraining values they would be wrong (NVA "on" in stage 1, the codebook frozen, no MLM, 384 px),
so the pretraining rows whose value the fine-tuning stage replaced are "n/a" there, with the
replaced value shown; the fine-tuning rows are checked as usual (merging the stage's overrides again
changes nothing).
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from nas.config.base import ConfigError, from_dict, merge, to_dict
from nas.config.card import MISSING, CardEntry, SameAs, same_value, show
from nas.jsonfile import read_json_file

MATCH, DEVIATION, ABLATION, NOT_APPLICABLE, UNCHECKED = "match", "deviation", "ablation", "n/a", "unchecked"

STAGE_SECTIONS = ("pretrain_stage1", "pretrain_stage2")
FT = "finetune"
E2 = "pretrain_stage2.model_overrides"  # the model as stage 2 builds it
# In the view of a fine-tuning replicate's config.json: the params paths (and everything under them)
# whose pretraining value that config no longer holds (see the module docstring).
REPLACED_KEY = "_replaced_by_finetune"
REPLACED_NOTE = (
    "a fine-tuning run's config: this is the fine-tuned model's value (the stage merged finetune's "
    "overrides into model.overrides and data.transform); audit the pretraining value in "
    "runs/pretrain_stage2/<variant>/config.json"
)

# The recipes' cards, each beside its recipe: recipe -> module defining `CARD` (NAS's: nas/recipes/paper_card.py;
# the companion recipes', MUG_UTA.md, also `<recipe>_view(run_config)`: its params section typed, defaults
# filled in). A run's recipe is the prefix of its recorded stage name (`mug_pretrain` -> mug); NAS's own
# stages are "nas", viewed by `audit_view`. The recipes register their cards from above
# (nas/recipes/__init__.py: `register_card`), so reporting imports no recipe.
NAS = "nas"
RECIPE_CARDS: dict[str, str] = {}


def register_card(recipe: str, module: str) -> None:
    """Make `recipe`'s card (module path of its `CARD`, and but for NAS its `<recipe>_view`) known."""
    RECIPE_CARDS[recipe] = module


def recipes() -> tuple[str, ...]:
    """The recipes whose cards are registered, the paper's own (`nas`) first."""
    return tuple(sorted(RECIPE_CARDS, key=lambda recipe: recipe != NAS))


def recipe_of(run_config: dict[str, Any]) -> str:
    prefix = str(run_config.get("stage") or "").split("_", 1)[0]
    return prefix if prefix in RECIPE_CARDS and prefix != NAS else NAS


def card_for(
    recipe: str,
) -> tuple[Sequence[CardEntry], Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]]]:
    """(card, view function) of a recipe."""
    if recipe not in RECIPE_CARDS:
        hint = " (its card registers when nas.recipes is imported)" if recipe == NAS else ""
        raise AuditError(f"unknown recipe {recipe!r}{hint}; known: {list(recipes())}")
    module = importlib.import_module(RECIPE_CARDS[recipe])
    if recipe == NAS:
        return module.CARD, audit_view
    view = getattr(module, f"{recipe}_view")

    def recipe_view(run_config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        try:
            return view(run_config), []
        except ConfigError as exc:
            raise AuditError(f"the {recipe} section is not valid: {exc}") from exc

    return module.CARD, recipe_view


class AuditError(ValueError):
    """The run config cannot be audited (unreadable, or a section is not a valid config)."""


@dataclass
class AuditRow:
    key: str
    hyperparameter: str
    path: str
    paper_value: str
    source: str
    run_value: str
    verdict: str
    note: str = ""


# ---- reading the run config as the stages do ------------------------------------------------------------


def effective_model_config(name: str, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The model config `create_model(name, **overrides)` would build, as a dict; None for a model the
    audit does not know (not a registered model of the `model` section: its defaults cannot be filled in)."""
    from nas.models.registry import list_models, model_entry

    if name not in list_models("nas"):
        return None
    return to_dict(model_entry(name).resolve(overrides, "model.overrides"))


def finetune_overlay(section: dict[str, Any]) -> dict[str, Any]:
    """What the `finetune` stage merges into `model.overrides` (experiments/finetune.py
    `effective_overrides`): its `model_overrides`, then `mlm_weight` and `image_size` as `vision.img_size`."""
    overlay = dict(section.get("model_overrides") or {})
    if "mlm_weight" in section:
        overlay = merge(overlay, {"mlm_weight": section["mlm_weight"]})
    if "image_size" in section:
        overlay = merge(overlay, {"vision": {"img_size": section["image_size"]}})
    return overlay


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted path: value} of the non-mapping values of a nested dict (empty mappings merge as nothing)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _replaced_by_finetune(run_config: dict[str, Any]) -> list[str]:
    """The params paths whose pretraining value a fine-tuning replicate's config.json replaced; [] for
    any other config (a params file, a pretraining run, or Sacred's record of the stage's input, whose
    `model.overrides` do not hold the fine-tuning overlay yet)."""
    section, model = run_config.get(FT), run_config.get("model")
    if run_config.get("stage") != FT or not isinstance(section, dict) or not isinstance(model, dict):
        return []
    overrides = model.get("overrides") or {}
    leaves = _leaves(finetune_overlay(section))
    if not leaves or not all(same_value(lookup(overrides, k), v) for k, v in leaves.items()):
        return []
    replaced = ["data.transform.image_size", *(f"model.overrides.{k}" for k in leaves)]
    for name in STAGE_SECTIONS:
        own = (run_config.get(name) or {}).get("model_overrides") or {}
        # A stage's own override of the same field still says what that stage ran.
        replaced += [f"{name}.model_overrides.{k}" for k in leaves if lookup(own, k) is MISSING]
    return replaced


def replaced_by_finetune(view: dict[str, Any], path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in view.get(REPLACED_KEY, ()))


def audit_view(run_config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The run config with defaults filled in (see the module docstring), and notes on what could not be."""
    from nas.config.data import DataConfig
    from nas.config.stages import LoaderConfig, ModelSpec, TrainStageConfig
    from nas.engine.trainer import TrainConfig

    view = json.loads(json.dumps(run_config, default=str))  # a deep, plain copy
    notes: list[str] = []
    sections = {"data": DataConfig, "loader": LoaderConfig, "model": ModelSpec}
    sections.update({name: TrainStageConfig for name in STAGE_SECTIONS})
    typed: dict[str, Any] = {}
    for name, cls in sections.items():
        if name not in view:
            continue
        try:
            typed[name] = from_dict(cls, view[name], name)
        except ConfigError as exc:
            raise AuditError(f"section {name!r} is not a valid {cls.__name__}: {exc}") from exc
        view[name] = to_dict(typed[name])
    # `finetune` is typed by experiments/finetune.py (FinetuneConfig), which nas/ does not import: its
    # own fields are read as they are, its `train` as the engine's TrainConfig.
    finetune, overlay = view.get(FT), {}
    if finetune is not None:
        if not isinstance(finetune, dict) or not isinstance(finetune.get("model_overrides") or {}, dict):
            raise AuditError(f"section {FT!r} is not a mapping with a mapping `model_overrides`")
        overlay = finetune_overlay(finetune)
        try:
            finetune["train"] = to_dict(from_dict(TrainConfig, finetune.get("train") or {}, f"{FT}.train"))
        except ConfigError as exc:
            raise AuditError(f"section '{FT}.train' is not a valid TrainConfig: {exc}") from exc
    replaced = _replaced_by_finetune(run_config)
    if replaced:
        view[REPLACED_KEY] = replaced
        notes.append(
            "a fine-tuning run's config: model.overrides and data.transform.image_size hold the fine-tuned "
            "model's values, so the pretraining rows they replaced are n/a here (audit "
            "runs/pretrain_stage2/<variant>/config.json for those)"
        )
    spec = typed.get("model")
    if spec is None:
        return view, notes
    try:
        model = effective_model_config(spec.name, spec.overrides)
        if model is None:
            notes.append(
                f"model {spec.name!r} is unknown to the audit (not a registered model of `model`, nas.models.registry): its "
                "registered defaults are not filled in, only the overrides are read"
            )
            return view, notes
        view["model"]["overrides"] = model
        for name in STAGE_SECTIONS:
            if name in typed:
                stage_overrides = getattr(typed[name], "model_overrides", {}) or {}
                view[name]["model_overrides"] = effective_model_config(
                    spec.name, merge(spec.overrides, stage_overrides)
                )
        if finetune is not None:
            finetune["model_overrides"] = effective_model_config(spec.name, merge(spec.overrides, overlay))
    except ConfigError as exc:
        raise AuditError(f"the model {spec.name!r} cannot be built from this config: {exc}") from exc
    return view, notes


def lookup(view: dict[str, Any], path: str) -> Any:
    """The value at dotted `path`, or MISSING."""
    node: Any = view
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


# ---- the audit ---------------------------------------------------------------------------------------


def _applies(entry: CardEntry, view: dict[str, Any]) -> tuple[bool, str]:
    if entry.requires == "vd" and lookup(view, "model.overrides.vd") is MISSING:
        return False, "the model has no visual dictionary"
    if entry.requires == "nva" and lookup(view, f"{E2}.nva_enabled") is not True:
        return False, "stage 2 runs without NVA"
    return True, ""


def _entry_rows(entry: CardEntry, view: dict[str, Any]) -> list[AuditRow]:
    def row(path: str, run_value: str, verdict: str, note: str) -> AuditRow:
        return AuditRow(
            entry.key, entry.hyperparameter, path, entry.paper_value, entry.source, run_value, verdict, note
        )

    info = [f"{d.source}: {d.note}" for d in entry.known_differences if d.path is None or d.value is MISSING]
    applies, why = _applies(entry, view)
    if not applies:
        return [row("", "", NOT_APPLICABLE, why)]
    if not entry.checks:
        return [row("", "", UNCHECKED, "; ".join([entry.note, *info]).strip("; "))]
    rows = []
    for index, (path, expected) in enumerate(entry.checks):
        value = lookup(view, path)
        notes = list(info) if index == 0 else []
        if isinstance(expected, SameAs):
            expected = replace(expected, value=lookup(view, expected.path))
        known = entry.known_value(path, value)
        if replaced_by_finetune(view, path):
            verdict = NOT_APPLICABLE
            notes.insert(0, REPLACED_NOTE)
        elif expected.matches(value):
            verdict = MATCH
        elif known is not None:
            verdict = f"known difference ({known.source})"
            notes.insert(0, f"{known.source}: {known.note}")
        elif entry.kind == "switch":
            verdict = ABLATION
            notes.insert(0, "component off in this run")
        else:
            verdict = DEVIATION
            notes.insert(0, f"expected {expected}" + (": not in the run config" if value is MISSING else ""))
        rows.append(row(path, show(value), verdict, "; ".join(notes)))
    return rows


def audit(
    run_config: dict[str, Any], card: Sequence[CardEntry] | None = None, recipe: str | None = None
) -> list[AuditRow]:
    """Rows of the audit of `run_config` (a resolved params dict) against `card` (default: the card
    of the run's recipe, from its stage name or `recipe`)."""
    recipe_card, view_of = card_for(recipe or recipe_of(run_config))
    view, _ = view_of(run_config)
    return [row for entry in (card or recipe_card) for row in _entry_rows(entry, view)]


def exit_code(rows: Sequence[AuditRow]) -> int:
    """1 if any row is an unexplained deviation, else 0."""
    return int(any(row.verdict == DEVIATION for row in rows))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(
    rows: Sequence[AuditRow], title: str = "Hyperparameter audit", notes: Sequence[str] = ()
) -> str:
    lines = [f"## {title}", ""]
    lines += [f"> {note}" for note in notes]
    lines += [
        "| hyperparameter | param | paper value | source | run value | verdict | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        verdict = f"**{row.verdict}**" if row.verdict == DEVIATION else row.verdict
        cells = (row.hyperparameter, f"`{row.path}`" if row.path else "", row.paper_value, row.source)
        cells += (row.run_value, verdict, row.note)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    counts: dict[str, int] = {}
    for row in rows:
        label = "known difference" if row.verdict.startswith("known difference") else row.verdict
        counts[label] = counts.get(label, 0) + 1
    summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    outcome = "FAILED: unexplained deviations" if exit_code(rows) else "passed: no unexplained deviation"
    lines += ["", f"{summary}. Audit {outcome}."]
    return "\n".join(lines)


# ---- run folders and the command line ---------------------------------------------------------------


def load_run_config(path: str | Path) -> dict[str, Any]:
    """A run's resolved config: `path` is a config.json or a folder holding one."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        replicates = sorted(p.parent.name for p in path.glob("seed*/config.json")) if path.is_dir() else []
        hint = (
            f"; this folder holds replicates {replicates}: audit one, e.g. {path / replicates[0]}"
            if replicates
            else ""
        )
        raise FileNotFoundError(
            f"no run config at {file}: give a config.json, a Sacred run folder (runs/sacred/<stage>/<variant>/<id>) "
            f"or a stage output folder (runs/<stage>/<variant>, runs/finetune/<variant>/seed<k>){hint}"
        )
    return read_json_file(file, expect=dict, error=AuditError)


def render(
    run_config: dict[str, Any],
    card: Sequence[CardEntry] | None = None,
    title: str = "Hyperparameter audit",
    recipe: str | None = None,
) -> tuple[str, int]:
    """(markdown table, exit code) of the audit of `run_config`; the title names its stage and variant."""
    recipe_card, view_of = card_for(recipe or recipe_of(run_config))
    view, notes = view_of(run_config)
    rows = [row for entry in (card or recipe_card) for row in _entry_rows(entry, view)]
    stage, variant = run_config.get("stage"), run_config.get("variant")
    named = [f"stage {stage}" if stage else "", f"variant {variant}" if variant else ""]
    suffix = " ".join(part for part in named if part)
    return to_markdown(rows, f"{title} ({suffix})" if suffix else title, notes), exit_code(rows)


def audit_run(
    path: str | Path, card: Sequence[CardEntry] | None = None, echo: Callable[[str], Any] = print
) -> int:
    """Audit a run folder's config.json, print the markdown table, return the exit code."""
    text, code = render(load_run_config(path), card, f"Hyperparameter audit: {path}")
    echo(text)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """`nas audit [RUN] | [--params FILE --variant V --set K=V ...]`; returns the exit code."""
    from nas.config.params import load_params, resolve

    parser = argparse.ArgumentParser(
        prog="nas audit",
        description="Compare a run's hyperparameters with the paper card (NAS_METHOD.md §1, §3-§6). "
        "Exit code 1 on an unexplained deviation.",
    )
    parser.add_argument("run", nargs="?", help="a run's config.json or its folder; omit to audit --params")
    parser.add_argument("--params", default="params.yaml", help="params file to audit (default: params.yaml)")
    parser.add_argument("--variant", default=None, help="a key of `variants` in the params file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--recipe",
        choices=recipes(),
        default=None,
        help="which paper card (default: from the run's stage name; nas for a params file)",
    )
    parser.add_argument("--output", default=None, help="also write the table (.md) or the rows (.json) here")
    args = parser.parse_args(argv)

    if args.run is not None:
        config, source = load_run_config(args.run), args.run
    else:
        config, source = resolve(load_params(args.params), args.variant, args.overrides), args.params
    recipe = args.recipe or recipe_of(config)
    text, code = render(config, None, f"Hyperparameter audit: {source}", recipe)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".json":
            rows = audit(config, recipe=recipe)
            out.write_text(
                json.dumps({"exit_code": code, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
            )
        else:
            out.write_text(text + "\n")
    return code
